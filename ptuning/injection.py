"""Put a prefix encoder's soft prompts into a frozen decoder-only transformers model.

The prefix is concatenated to each layer's keys and values *inside attention*, not stored
in the KV cache:

* the cache then holds real tokens only, so ``generate()`` (batching, left padding,
  ``num_return_sequences``, beams) manages it without knowing about the prefix, and real
  tokens start at position 0 as in ChatGLM2;
* the prefix is recomputed on every forward and reaches attention as a keyword argument,
  which survives gradient checkpointing (transformers drops ``past_key_values`` under
  checkpointing, which is where peft's prefix tuning breaks);
* any attention backend works: the wrapper registered under ``ptuning_<backend>`` adds the
  prefix and then calls the backend itself (``sdpa``, ``eager``, ...).

A forward pre-hook on the model builds, for every call, the additive 4-D mask (causal or
prefix-LM, prefix columns included), the position ids from the padding mask, and the
prefix. Everything else (the loss, ``generate()``) stays transformers' own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from .encoder import PrefixEncoder
from .masks import build_attention_mask, prompt_length_from_labels

PREFIX_KWARG = "ptuning_prefix"
_WRAPPED = "ptuning_"


def _backend_attention(module: nn.Module, backend: str):
    if backend == "eager":
        # transformers keeps each family's eager attention in its modeling module.
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[backend]


def _prefixed_attention(module, query, key, value, attention_mask, *, backend: str, **kwargs):
    """Attention with the layer's soft prompt put before its keys and values.

    ``query`` is ``(B, heads, T, head_dim)``; ``key``/``value`` ``(B, kv_heads, K, head_dim)``;
    the prefix for all layers is ``(L, 2, kv_heads, P, head_dim)``.
    """
    prefix = kwargs.pop(PREFIX_KWARG, None)
    if prefix is not None:
        layer_prefix = prefix[module.layer_idx].to(key.dtype)  # (2, kv_heads, P, head_dim)
        batch = key.shape[0]
        prefix_key = layer_prefix[0].unsqueeze(0).expand(batch, -1, -1, -1)
        prefix_value = layer_prefix[1].unsqueeze(0).expand(batch, -1, -1, -1)
        key = torch.cat([prefix_key, key], dim=2)  # (B, kv_heads, P + K, head_dim)
        value = torch.cat([prefix_value, value], dim=2)
    return _backend_attention(module, backend)(module, query, key, value, attention_mask, **kwargs)


def _use_prefixed_attention(model: nn.Module) -> None:
    backend = model.config._attn_implementation or "sdpa"
    if backend.startswith(_WRAPPED):
        return
    name = _WRAPPED + backend
    AttentionInterface.register(name, partial(_prefixed_attention, backend=backend))
    if backend in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[backend])
    model.set_attn_implementation(name)


@dataclass
class PrefixHook:
    """What :func:`attach_prefix` installed; :meth:`remove` restores the model."""

    model: nn.Module
    encoder: PrefixEncoder | None
    mask_type: str
    handle: torch.utils.hooks.RemovableHandle

    @property
    def num_virtual_tokens(self) -> int:
        return self.encoder.config.pre_seq_len if self.encoder is not None else 0

    def remove(self) -> None:
        self.handle.remove()
        if self.encoder is not None:
            del self.model.prefix_encoder
        backend = self.model.config._attn_implementation
        if backend.startswith(_WRAPPED):
            self.model.set_attn_implementation(backend[len(_WRAPPED) :])


def _bidirectional_length(mask_type: str, labels, past: int, total: int, batch: int, device) -> torch.Tensor | None:
    if mask_type != "prefix_lm":
        return None
    if labels is not None:
        # Training and scoring: the prompt is everything before the first supervised token.
        return prompt_length_from_labels(labels).to(device) + past
    if past == 0:
        # Prefill in generation: the whole input is the prompt.
        return torch.full((batch,), total, device=device)
    # A decoding step: its single query sees every earlier token anyway. (Feeding several new
    # tokens onto an existing cache, e.g. a next chat turn, treats them causally.)
    return torch.zeros(batch, dtype=torch.long, device=device)


def _prepare_kwargs(hook: PrefixHook, kwargs: dict) -> dict:
    """Replace the 2-D padding mask by the full 4-D mask; add positions and the prefix."""
    tokens = kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs["inputs_embeds"][..., 0]
    batch, length = tokens.shape[:2]
    device = tokens.device
    cache = kwargs.get("past_key_values")
    past = cache.get_seq_length() if cache is not None else 0
    padding = kwargs.get("attention_mask")
    if padding is None:
        padding = torch.ones(batch, past + length, dtype=torch.long, device=device)
    if padding.dim() != 2:
        # Static/compileable caches make generate() build 4-D masks itself; the prefix needs the 2-D one.
        raise ValueError(
            f"P-tuning expects a 2-D padding mask (use the default dynamic cache), found shape {tuple(padding.shape)}"
        )
    if kwargs.get("position_ids") is None:
        # Real tokens count from 0 whatever the left padding or the prefix length.
        kwargs["position_ids"] = (padding.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    bidirectional = _bidirectional_length(hook.mask_type, kwargs.get("labels"), past, past + length, batch, device)
    kwargs["attention_mask"] = build_attention_mask(
        padding,
        length,
        mask_type=hook.mask_type,
        bidirectional_length=bidirectional,
        num_virtual_tokens=hook.num_virtual_tokens,
        dtype=hook.model.dtype,
    )
    if hook.encoder is not None:
        kwargs[PREFIX_KWARG] = hook.encoder()
    return kwargs


def attach_prefix(model: nn.Module, encoder: PrefixEncoder | None, mask_type: str = "causal") -> PrefixHook:
    """Make every forward of ``model`` use ``encoder``'s soft prompts and ``mask_type``.

    ``model`` is a transformers causal LM (``GlmForCausalLM``, ``Glm4ForCausalLM``, Llama-like)
    whose attention goes through transformers' attention interface. ``encoder`` may be
    ``None`` to apply only the mask (a base model run with prefix-LM masking). The encoder
    becomes the submodule ``model.prefix_encoder``; the caller decides what is trainable.
    """
    if encoder is not None:
        model.prefix_encoder = encoder
    _use_prefixed_attention(model)
    hook = PrefixHook(model=model, encoder=encoder, mask_type=mask_type, handle=None)  # type: ignore[arg-type]

    def pre_hook(module, args, kwargs):
        if args:
            raise TypeError("call the model with keyword arguments (input_ids=..., attention_mask=...)")
        return args, _prepare_kwargs(hook, kwargs)

    hook.handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return hook
