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
  prefix and then calls the backend itself (``sdpa``, ``eager``, ...);
* the prefix meets keys and values as attention computes with them, whatever the cache keeps:
  multi-head latent attention (``glm4_moe_lite``, ``glm_moe_dsa``) caches a compressed latent,
  where a cache-borne prefix (peft's way) would have to live; here it is per-head keys and
  values like any other model's, with keys wider than values (:mod:`ptuning.layout`).

A forward pre-hook on the model builds, for every call, the position ids from the padding mask,
the prefix, and the attention each layer runs, once for all layers, in the cheapest exact form:

* a batch with no padding, causal mask and no prefix: no mask at all, so SDPA runs its causal
  kernel (``is_causal``);
* any other batch: one 4-D mask over the prefix and the real tokens, ``(1, 1, T, P + K)`` when
  every row sees the same (causal, no padding), else ``(B, 1, T, P + K)``; boolean for ``sdpa``
  (PyTorch 2.13's CPU SDPA runs faster with it: forward and backward of 8 x 6 heads x 190 queries
  x (32 + 190) keys took 110 ms with a boolean mask, 127 ms with the additive float one, on 2
  cores), additive float for ``eager``, which mis-reads boolean masks;
* a packed batch (``segment_ids``, from ``sft.data.encoding.PackingCollator``: the rows
  concatenated into one sequence ``(1, N)``, positions from 0 in each row): each layer attends row by row, one
  SDPA call per row over that row's slice of queries, keys and values plus the prefix, with
  ``is_causal`` or the row's own ``(1, 1, t, P + t)`` mask. No row can see another, and attention
  costs ``sum(t_i^2)``, where the equivalent dense block-diagonal mask (:func:`ptuning.masks.build_packed_mask`,
  the ``dense`` reference path) would compute all ``N^2`` scores. The sequence may end in a filler
  row (attention mask 0, a segment of its own: ``PackingCollator(pad_to_multiple_of=...)``), which
  attends to itself like any row and which nothing reads.
* on CPU, SDPA takes grouped keys and values as they are (``enable_gqa``): transformers' SDPA function
  repeats each key/value head for its group of query heads whenever there is a mask, a copy per row
  and layer (:func:`_grouped_sdpa`). Training in bf16 (or fp16) attends in fp32 there: PyTorch's CPU
  flash-attention backward is slower in bf16 than in fp32.
* a serving batch (``row_prefixes=``:class:`RowPrefixes`, from :mod:`sft.serving`): each row of a
  left-padded batch brings its own precomputed prefix keys/values (different checkpoints, different
  lengths, or none: padded to the longest) and its own mask type; one ``(B, 1, T, P + K)`` mask hides
  the slots a row does not have. The model then has no encoder of its own: a server computes each
  checkpoint's prefix once, at load, instead of running an encoder at every forward.

The model itself receives a zero-stride placeholder 4-D mask, which transformers passes through
to the layers untouched, so it builds no mask of its own. Models whose own code reads the mask
(DeepSeek sparse attention, below) get the dense additive mask over real tokens instead, which
each layer's wrapper widens by ``P`` always-visible columns as it prepends the prefix (the
``dense`` path). Everything else (the loss, ``generate()``) stays transformers' own.

DeepSeek sparse attention (``glm_moe_dsa``, GLM-5) lets an indexer pick the top-k keys each
query attends to. The indexer scores keys from the tokens' hidden states, which a virtual token
does not have, so it selects among real tokens exactly as without a prefix, and the prefix keys
are always attended, as in dense attention. transformers applies that selection to the mask
itself only for backends named ``eager`` and ``sdpa``; under ``ptuning_<backend>`` it hands the
indices on (meant for a sparse kernel), so the wrapper applies them (eager and sdpa backends only).

transformers renames what it passes to ``forward`` (5.24 passes the cache as ``cache=``, no
longer ``past_key_values=``), so nothing here depends on such names: the cache is found by
its type, and checks turn a silent failure into a loud one. Every layer's attention checks
that its keys span exactly the tokens the hook counted (a cache the hook did not see would make
the prefix-LM bound and the positions wrong) and that they have the heads and head sizes the
prefix was built for, and the first forward after attaching checks that the attention of every
layer received the prefix (one that did not would get no gradient, or be dropped by ``generate()``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import Cache
from transformers.masking_utils import AttentionMaskInterface

from .encoder import PrefixEncoder
from .layout import kv_layout
from .masks import as_mask, build_attention_mask, build_packed_mask, prompt_length_from_labels

INJECTION_KWARG = "ptuning_injection"
SEGMENTS_KWARG = "segment_ids"  # (1, N): the row of each token of a packed batch
SPARSE_INDICES_KWARG = "indices"  # how transformers' glm_moe_dsa hands its attention the indexer's top-k
ROWS_KWARG = "row_prefixes"  # a RowPrefixes: each row of the batch with its own prefix and mask (serving)
PROMPT_LABELS_KWARG = "prompt_labels"  # labels for the mask alone, where the loss is computed outside the model
_WRAPPED = "ptuning_"


class InjectionError(RuntimeError):
    """The installed transformers does not run the model the way prefix injection relies on."""


@dataclass
class RowPrefixes:
    """Precomputed soft prompts for a batch whose rows use different prefixes, or none (serving).

    Passed to the model's forward as ``row_prefixes=`` in place of a prefix encoder: a server
    computes each checkpoint's keys and values once, at load, and stacks them per row. Rows
    with shorter prefixes are padded at the end of the ``P`` axis; their missing slots are
    masked, so a row attends exactly to its own ``lengths[b]`` virtual tokens.

    Attributes:
        keys: ``(num_layers, B, kv_heads, P, head_dim)``, ``P`` the longest prefix (may be 0).
        values: ``(num_layers, B, kv_heads, P, value_head_dim)``.
        lengths: ``(B,)`` each row's number of virtual tokens (0: no prefix).
        prefix_lm: ``(B,)`` bool, rows masked prefix-LM (their prompt attends bidirectionally
            when prefilled); the others are causal, whatever mask the hook was attached with.
    """

    keys: torch.Tensor
    values: torch.Tensor
    lengths: torch.Tensor
    prefix_lm: torch.Tensor

    @property
    def width(self) -> int:
        return self.keys.shape[3]


@dataclass
class LayerInputs:
    """What one forward hands each layer's attention, through transformers' attention kwargs."""

    # (keys, values), each indexed by layer: PrefixEncoder's, one tensor per layer; RowPrefixes' per-row ones; or None
    prefix: tuple | None
    key_length: int  # cached + new tokens: what every layer's keys must span
    mask: torch.Tensor | None = None  # (B or 1, 1, T, P + K) over prefix and keys; None: SDPA's is_causal
    rows: list[tuple[int, int, torch.Tensor | None]] | None = None  # packed: (start, end, the row's mask)
    dense: bool = False  # use the mask the model hands the layer (real tokens only) and widen it per layer
    reached: set[int] = field(default_factory=set)  # layer indices whose attention ran through the wrapper
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # layer -> its real tokens' keys, values


def _backend_attention(module: nn.Module, backend: str):
    if backend == "eager":
        # transformers keeps each family's eager attention in its modeling module.
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise InjectionError(_unsupported(type(module).__name__, "has no eager_attention_forward"))
        return eager
    return AttentionInterface()[backend]


def _unsupported(model_class: str, what: str) -> str:
    return (f"P-tuning cannot run {model_class} with transformers {version('transformers')}: {what} "
            "(see README, Versions, for the tested range)")


def _prefixed_attention(module, query, key, value, attention_mask, *, backend: str, **kwargs):
    """Attention with the layer's soft prompt put before its keys and values.

    ``query`` is ``(B, heads, T, head_dim)``; ``key`` ``(B, kv_heads, K, head_dim)``; ``value``
    ``(B, kv_heads, K, value_head_dim)``; ``attention_mask`` ``(B, 1, T, K)`` over real tokens.
    """
    inputs: LayerInputs | None = kwargs.pop(INJECTION_KWARG, None)
    model_class = type(module).__name__
    if inputs is None:
        raise InjectionError(_unsupported(model_class, f"layer {module.layer_idx}'s attention ran without the prefix hook's inputs"))
    if key.shape[2] != inputs.key_length:
        raise InjectionError(_unsupported(
            model_class,
            f"layer {module.layer_idx} attends over {key.shape[2]} keys where the prefix hook counted "
            f"{inputs.key_length} tokens (a KV cache passed under a name or type the hook does not know)",
        ))
    inputs.reached.add(module.layer_idx)
    if inputs.captured is not None:
        inputs.captured[module.layer_idx] = (key.detach(), value.detach())
    attend = _backend_attention(module, backend)
    if inputs.rows is not None:
        return _attend_row_by_row(module, attend, inputs, query, key, value, kwargs)
    if not inputs.dense:
        if inputs.prefix is not None:
            key, value = _prepend_prefix(module, inputs.prefix, key, value)
        return _attention(module, attend, query, key, value, inputs.mask, kwargs)
    attention_mask = _select_sparse_keys(module, attention_mask, kwargs, backend)
    if inputs.prefix is not None:
        if attention_mask is None:
            raise InjectionError(_unsupported(model_class, f"layer {module.layer_idx}'s attention received no mask"))
        key, value = _prepend_prefix(module, inputs.prefix, key, value)
        attention_mask = _widen(attention_mask, inputs.prefix[0][0].shape[-2])
    return attend(module, query, key, value, attention_mask, **kwargs)


def _attend_row_by_row(module, attend, inputs: LayerInputs, query, key, value, kwargs: dict):
    """A packed batch's attention, one backend call per row.

    ``query`` ``(1, heads, N, head_dim)`` -> output ``(1, N, heads, value_head_dim)``, as the backend returns it.
    The rows tile the sequence, so one ``split`` per tensor cuts them (its backward is one ``cat``, where
    slicing each row would make a zero-filled gradient of the whole sequence per row). With a prefix, one
    ``cat`` per layer puts it before every row: keys ``(1, kv_heads, rows * P + N, head_dim)``.
    """
    lengths = [end - start for start, end, _ in inputs.rows]
    key_lengths = lengths
    if inputs.prefix is not None:
        prefix_key, prefix_value = (part[None] for part in _layer_prefix(module, inputs.prefix, key, value))
        key = torch.cat([piece for row in key.split(lengths, dim=2) for piece in (prefix_key, row)], dim=2)
        value = torch.cat([piece for row in value.split(lengths, dim=2) for piece in (prefix_value, row)], dim=2)
        key_lengths = [prefix_key.shape[2] + length for length in lengths]
    rows = zip(query.split(lengths, dim=2), key.split(key_lengths, dim=2), value.split(key_lengths, dim=2),
               inputs.rows)
    outputs = []
    for row_query, row_key, row_value, (_, _, mask) in rows:  # (1, heads or kv_heads, t or P + t, head_dim)
        output, _ = _attention(module, attend, row_query, row_key, row_value, mask, kwargs)
        outputs.append(output)  # (1, t, heads, value_head_dim)
    return torch.cat(outputs, dim=1), None


_SDPA = AttentionInterface()["sdpa"]


def _attention(module, attend, query, key, value, mask, kwargs: dict):
    """The backend's attention, or on CPU :func:`_grouped_sdpa` in place of transformers' SDPA function.

    PyTorch's CPU kernels take grouped keys and values (``enable_gqa``) with a mask; on CUDA a mask with
    ``enable_gqa`` falls back to the math kernel, so there transformers' repeated keys run faster. A single
    query (a decoding step) runs faster through transformers' function too, which folds the query heads
    of a group into one head's queries instead (72 against 102 us for 8 rows, 6 heads, 300 keys).
    """
    extras = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    if (attend is not _SDPA or query.device.type != "cpu" or query.shape[2] == 1 or extras
            or kwargs.get("output_attentions")):
        return attend(module, query, key, value, mask, **kwargs)
    return _grouped_sdpa(module, query, key, value, mask, kwargs.get("dropout", 0.0), kwargs.get("scaling"),
                         kwargs.get("is_causal")), None


def _grouped_sdpa(module, query, key, value, mask, dropout: float, scaling: float | None,
                  is_causal: bool | None) -> torch.Tensor:
    """SDPA over ``kv_heads`` keys and values shared by groups of query heads, without repeating them.

    transformers repeats each key/value head ``heads / kv_heads`` times whenever a mask is given: a copy
    per layer (and a reduction in the backward). ``query`` ``(B, heads, T, head_dim)`` -> ``(B, T, heads,
    value_head_dim)``, as transformers' function returns it.
    """
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    dtype = query.dtype
    fp32 = dtype != torch.float32 and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)
    if fp32:
        # PyTorch 2.13's CPU flash-attention backward is slower in bf16 than in fp32 (the bench's P-tuning
        # step in bf16: 654 against 215 ms over 6 steps), its forward faster: training attends in fp32,
        # under autocast too (which would cast SDPA's inputs back to bf16).
        query, key, value = query.float(), key.float(), value.float()
    with torch.autocast(query.device.type, enabled=not fp32 and torch.is_autocast_enabled(query.device.type)):
        output = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
            is_causal=bool(is_causal and mask is None and query.shape[2] > 1),
            enable_gqa=key.shape[1] != query.shape[1])
    return output.transpose(1, 2).contiguous().to(dtype)


def _widen(mask: torch.Tensor, num_virtual: int) -> torch.Tensor:
    """``(B, 1, T, K)`` mask -> ``(B, 1, T, P + K)``: the ``P`` prefix columns first, visible to every query."""
    visible_shape = (*mask.shape[:-1], num_virtual)  # (B, 1, T, P)
    visible = mask.new_ones(visible_shape) if mask.dtype == torch.bool else mask.new_zeros(visible_shape)
    return torch.cat([visible, mask], dim=-1)


def _prepend_prefix(module, prefix, key, value):
    """``key``/``value`` with this layer's ``P`` prefix rows first (one prefix for all rows, or one per row)."""
    prefix_key, prefix_value = _layer_prefix(module, prefix, key, value)
    batch = key.shape[0]
    key = torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2)  # (B, kv_heads, P + K, head_dim)
    value = torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2)
    return key, value


def _layer_prefix(module, prefix, key, value) -> tuple[torch.Tensor, torch.Tensor]:
    """This layer's prefix keys and values in ``key``'s dtype: ``(kv_heads, P, head_dim)`` (one prefix for all
    rows) or ``(B, kv_heads, P, head_dim)`` (one per row), checked against the layer's keys and values."""
    layer = module.layer_idx
    prefix_key = prefix[0][layer]
    prefix_value = prefix[1][layer]  # (..., value_head_dim)
    found = (key.shape[1], key.shape[-1], value.shape[-1])
    expected = (prefix_key.shape[-3], prefix_key.shape[-1], prefix_value.shape[-1])
    if found != expected:
        raise InjectionError(_unsupported(
            type(module).__name__,
            f"layer {layer}'s attention has {found[0]} key/value heads of key size {found[1]} and value size "
            f"{found[2]}, where the prefix layout read from the config has {expected[0]}, {expected[1]} and "
            f"{expected[2]}",
        ))
    return prefix_key.to(key.dtype), prefix_value.to(value.dtype)


def _select_sparse_keys(module, attention_mask, kwargs: dict, backend: str):
    """DeepSeek sparse attention: mask every real key its indexer did not select (see the module docstring).

    The indices are ``(B, T, topk)`` positions among the real keys, passed as ``indices``.
    """
    indices = kwargs.pop(SPARSE_INDICES_KWARG, None)
    if indices is None:
        if getattr(getattr(module, "config", None), "index_topk", None) is not None:
            raise InjectionError(_unsupported(
                type(module).__name__,
                f"layer {module.layer_idx} uses DeepSeek sparse attention but passed its attention no top-k "
                f"key indices under {SPARSE_INDICES_KWARG!r}",
            ))
        return attention_mask
    if backend not in ("eager", "sdpa"):
        raise InjectionError(_unsupported(
            type(module).__name__,
            f"DeepSeek sparse attention runs with P-tuning's mask on eager or sdpa attention, found {backend!r}",
        ))
    unselected = torch.ones(*indices.shape[:2], attention_mask.shape[-1], dtype=torch.bool, device=indices.device)
    unselected = unselected.scatter(-1, indices.long(), False).unsqueeze(1)  # (B, 1, T, K)
    if attention_mask.dtype == torch.bool:
        return attention_mask & ~unselected
    return attention_mask.masked_fill(unselected, torch.finfo(attention_mask.dtype).min)


def _wrap_attention(model: nn.Module) -> str:
    """Route ``model``'s attention through :func:`_prefixed_attention`; returns the backend it had."""
    backend = model.config._attn_implementation or "sdpa"  # read once; the hook keeps it
    if backend.startswith(_WRAPPED):
        raise ValueError(f"{type(model).__name__} already has a prefix hook: remove() it before attaching another")
    name = _WRAPPED + backend
    AttentionInterface.register(name, partial(_prefixed_attention, backend=backend))
    masks = AttentionMaskInterface()
    if backend in masks:
        AttentionMaskInterface.register(name, masks[backend])
    model.set_attn_implementation(name)
    return backend


@dataclass
class PrefixHook:
    """What :func:`attach_prefix` installed; :meth:`remove` restores the model."""

    model: nn.Module
    encoder: PrefixEncoder | None
    mask_type: str
    backend: str
    num_layers: int
    sparse: bool = False  # DeepSeek sparse attention: its indexer reads the mask the model receives
    dense: bool = False  # the reference path: dense masks (real tokens, widened per layer; packed: block-diagonal)
    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)
    verified: bool = False  # a forward has shown that every layer receives the injection
    current: LayerInputs | None = None
    capture: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # set by capture_key_values

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        if self.encoder is not None:
            del self.model.prefix_encoder
        self.model.set_attn_implementation(self.backend)

    def check_reached(self, cause: Exception | None = None) -> None:
        """After a forward: every layer's attention must have run with the injection."""
        reached = self.current.reached if self.current is not None else set()
        missing = sorted(set(range(self.num_layers)) - reached)
        if missing or cause is not None:
            what = "the prefix" if self.encoder is not None else "the attention mask"
            raise InjectionError(_unsupported(
                type(self.model).__name__,
                f"the attention of layer(s) {', '.join(map(str, missing)) or 'none'} of {self.num_layers} "
                f"did not receive {what}" + (f" ({cause})" if cause is not None else ""),
            )) from cause
        self.verified = True

    def probe(self) -> None:
        """One 2-token forward that must reach the wrapped attention of every layer (skipped while the
        weights are not materialized, e.g. partitioned by DeepSpeed ZeRO-3: the first real forward checks)."""
        if any(p.numel() == 0 or p.is_meta for p in self.model.parameters()):
            return
        training = self.model.training
        self.model.eval()  # no dropout: the probe draws no random numbers
        try:
            with torch.no_grad():
                self.model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=self.model.device))
        except Exception as err:  # any failure inside the model: say which layers the injection reached
            self.check_reached(cause=err)
        finally:
            self.model.train(training)
            self.current = None


def capture_key_values(hook: PrefixHook, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values every layer's attention computes for ``input_ids`` ``(1, T)``, run causally.

    Keys are as attention uses them (rotary applied, positions ``0..T-1``), as a KV cache holds them.
    The hook must have no encoder: a prefix would change every layer's input after the first.
    Returns ``(num_layers, kv_heads, T, head_dim)`` and ``(num_layers, kv_heads, T, value_head_dim)``.
    """
    if hook.encoder is not None:
        raise ValueError("capture_key_values: expected a hook without a prefix encoder (the base's own keys/values)")
    if hook.mask_type != "causal":
        raise ValueError(f"capture_key_values: expected a causal hook, found mask {hook.mask_type!r}")
    model = hook.model
    training = model.training
    hook.capture = {}
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(model.device), use_cache=False)
        captured = hook.capture
    finally:
        hook.capture = None
        model.train(training)
    keys = torch.stack([captured[layer][0][0] for layer in range(hook.num_layers)])
    values = torch.stack([captured[layer][1][0] for layer in range(hook.num_layers)])
    return keys, values


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


def find_cache(kwargs: dict) -> Cache | None:
    """The KV cache among a forward's keyword arguments, whatever transformers names it."""
    caches = [value for value in kwargs.values() if isinstance(value, Cache)]
    if len(caches) > 1:
        raise InjectionError(f"expected at most one KV cache among forward's arguments, found {len(caches)}")
    return caches[0] if caches else None


def _prepare_kwargs(hook: PrefixHook, kwargs: dict) -> dict:
    """Replace the 2-D padding mask by the attention every layer runs; add positions and the prefix."""
    segment_ids = kwargs.pop(SEGMENTS_KWARG, None)
    # The Trainer takes the labels out when it computes the loss itself (label smoothing, compute_loss_func);
    # prefix-LM masking still needs them to find each prompt, so they come as prompt_labels then.
    prompt_labels = kwargs.pop(PROMPT_LABELS_KWARG, None)
    labels = kwargs.get("labels") if kwargs.get("labels") is not None else prompt_labels
    tokens = kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs["inputs_embeds"][..., 0]
    batch, length = tokens.shape[:2]
    device = tokens.device
    cache = find_cache(kwargs)
    past = cache.get_seq_length() if cache is not None else 0
    padding = kwargs.get("attention_mask")
    if padding is None:
        padding = torch.ones(batch, past + length, dtype=torch.long, device=device)
    if padding.dim() != 2:
        # Static/compileable caches make generate() build 4-D masks itself; the prefix needs the 2-D one.
        raise ValueError(
            f"P-tuning expects a 2-D padding mask (use the default dynamic cache), found shape {tuple(padding.shape)}"
        )
    rows = kwargs.pop(ROWS_KWARG, None)
    # Each layer's keys and values apart, once per forward: a layer indexing the stacked tensor would make
    # its backward a zero-filled gradient of every layer's (a sum of those per row and layer, packed).
    prefix = tuple(part.unbind(0) for part in hook.encoder()) if hook.encoder is not None else None
    inputs = LayerInputs(prefix=prefix, key_length=past + length, dense=hook.dense, captured=hook.capture)
    if rows is not None:
        _plan_rows(hook, kwargs, inputs, rows, padding, length, past, packed=segment_ids is not None)
    elif segment_ids is not None:
        _plan_packed(hook, kwargs, inputs, segment_ids, padding, past, labels)
    else:
        _plan_padded(hook, kwargs, inputs, padding, length, past, labels)
    hook.current = kwargs[INJECTION_KWARG] = inputs
    return kwargs


def _mask_dtype(hook: PrefixHook) -> torch.dtype:
    return torch.bool if hook.backend == "sdpa" else hook.model.dtype


def _placeholder_mask(batch: int, queries: int, keys: int, device) -> torch.Tensor:
    """A ``(B, 1, T, K)`` 4-D mask of no memory: transformers passes 4-D masks to the layers as they are."""
    return torch.ones((), dtype=torch.bool, device=device).expand(batch, 1, queries, keys)


def _plan_padded(hook: PrefixHook, kwargs: dict, inputs: LayerInputs, padding, length: int, past: int,
                 labels: torch.Tensor | None) -> None:
    """A padded (or unpadded) batch ``(B, T)``: one mask for every layer, or none (see the module docstring)."""
    batch, device = padding.shape[0], padding.device
    if kwargs.get("position_ids") is None:
        # Real tokens count from 0 whatever the left padding or the prefix length.
        kwargs["position_ids"] = (padding.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    bidirectional = _bidirectional_length(hook.mask_type, labels, past, past + length, batch, device)
    if inputs.dense:
        # Real tokens only: each layer's wrapper adds the prefix columns (after any model-specific masking).
        kwargs["attention_mask"] = build_attention_mask(
            padding, length, mask_type=hook.mask_type, bidirectional_length=bidirectional, dtype=hook.model.dtype
        )
        return
    unpadded = bool(padding.all())
    num_virtual = hook.encoder.config.pre_seq_len if hook.encoder is not None else 0
    causal = hook.mask_type == "causal"
    if causal and unpadded and not num_virtual and hook.backend == "sdpa" and (past == 0 or length == 1):
        inputs.mask = None  # SDPA's is_causal (one query after a cache: every key is visible)
    else:
        shared = causal and unpadded  # every row sees the same: one (1, 1, T, K) mask broadcasts
        mask = build_attention_mask(padding[:1] if shared else padding, length, mask_type=hook.mask_type,
                                    bidirectional_length=bidirectional, dtype=_mask_dtype(hook))
        inputs.mask = _widen(mask, num_virtual) if num_virtual else mask  # (B or 1, 1, T, P + K)
    kwargs["attention_mask"] = _placeholder_mask(batch, length, past + length, device)


def _plan_rows(hook: PrefixHook, kwargs: dict, inputs: LayerInputs, rows: RowPrefixes, padding, length: int,
               past: int, packed: bool) -> None:
    """A padded batch ``(B, T)`` whose rows carry their own prefix and mask (:class:`RowPrefixes`).

    The mask is ``(B, 1, T, P + K)``: row ``b`` sees its first ``lengths[b]`` prefix slots and its
    real tokens, causally or (prefilling a ``prefix_lm`` row) its whole prompt both ways.
    """
    problems = []
    if hook.encoder is not None:
        problems.append("a model without a prefix encoder of its own (attach_prefix(model, None, ...))")
    if hook.dense or packed:
        problems.append("a padded batch of a model without DeepSeek sparse attention (no segment_ids)")
    batch = padding.shape[0]
    if rows.keys.shape[1] != batch or rows.lengths.shape != (batch,) or rows.prefix_lm.shape != (batch,):
        problems.append(f"keys (layers, {batch}, kv_heads, P, head_dim) and lengths, prefix_lm ({batch},), found "
                        f"{tuple(rows.keys.shape)}, {tuple(rows.lengths.shape)}, {tuple(rows.prefix_lm.shape)}")
    if problems:
        raise ValueError(f"per-row prefixes ({ROWS_KWARG}=...) need " + "; ".join(problems))
    device = padding.device
    if kwargs.get("position_ids") is None:
        kwargs["position_ids"] = (padding.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    if rows.width:
        inputs.prefix = (rows.keys, rows.values)
    prompt = past + length if past == 0 else 0  # prefill: the whole input is the prompt (see _bidirectional_length)
    bidirectional = torch.where(rows.prefix_lm.to(device), prompt, 0)  # (B,): 0 is a plain causal row
    allowed = build_attention_mask(padding, length, mask_type="prefix_lm", bidirectional_length=bidirectional,
                                   dtype=torch.bool)  # (B, 1, T, K)
    slots = torch.arange(rows.width, device=device)[None, :] < rows.lengths.to(device)[:, None]  # (B, P)
    slots = slots[:, None, None, :].expand(-1, -1, length, -1)  # (B, 1, T, P)
    inputs.mask = as_mask(torch.cat([slots, allowed], dim=-1), _mask_dtype(hook))  # (B, 1, T, P + K)
    kwargs["attention_mask"] = _placeholder_mask(batch, length, past + length, device)


def _plan_packed(hook: PrefixHook, kwargs: dict, inputs: LayerInputs, segment_ids, padding, past: int,
                 labels: torch.Tensor | None) -> None:
    """A packed batch ``(1, N)``: each row attends to itself (and the prefix) only."""
    problems = []
    if segment_ids.dim() != 2 or segment_ids.shape[0] != 1 or segment_ids.shape != padding.shape:
        problems.append(f"{SEGMENTS_KWARG} of shape (1, N) like the tokens, found {tuple(segment_ids.shape)}"
                        f" for tokens {tuple(padding.shape)}")
    if past:
        problems.append("no KV cache")
    elif not problems and not _filler_at_end(segment_ids[0], padding[0]):
        problems.append("padding only as a row of its own at the end (PackingCollator's filler)")
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        problems.append("position_ids counting from 0 in each row")
    if hook.sparse:
        problems.append("a model without DeepSeek sparse attention (its indexer picks keys across the whole sequence)")
    if hook.mask_type == "prefix_lm" and labels is None:
        problems.append("labels (they mark each row's prompt for prefix_lm)")
    if problems:
        raise ValueError(f"a packed batch ({SEGMENTS_KWARG}=...) needs " + "; ".join(problems))
    segments, positions = segment_ids[0], position_ids[0]
    lengths = torch.unique_consecutive(segments, return_counts=True)[1].tolist()
    ends = torch.tensor(lengths).cumsum(0).tolist()
    starts = [end - length for end, length in zip(ends, lengths)]
    if positions[starts].any():
        raise ValueError("a packed batch needs position_ids counting from 0 in each row, found rows starting at "
                         f"{positions[starts].tolist()}")
    prompts = None
    if hook.mask_type == "prefix_lm":
        prompts = [prompt_length_from_labels(labels[:, start:end]) for start, end in zip(starts, ends)]
    if inputs.dense:  # the reference: one block-diagonal mask over the whole sequence
        bidirectional = torch.cat([p.expand(n) for p, n in zip(prompts, lengths)]) if prompts else None
        inputs.mask = build_packed_mask(segments, positions, mask_type=hook.mask_type,
                                        bidirectional_length=bidirectional, dtype=hook.model.dtype)
        inputs.dense = False  # the mask is built over all N tokens: the wrapper uses it as it is
        if inputs.prefix is not None:
            inputs.mask = _widen(inputs.mask, inputs.prefix[0][0].shape[-2])
    else:
        inputs.rows = list(zip(starts, ends, _row_masks(hook, lengths, prompts, padding.device)))
    kwargs["attention_mask"] = _placeholder_mask(1, len(segments), len(segments), padding.device)


def _filler_at_end(segments: torch.Tensor, padding: torch.Tensor) -> bool:
    """Whether a packed sequence's padding (``padding`` 0), if any, is one whole segment at the end."""
    real = int(padding.sum())
    if real == len(padding):
        return True
    return (real > 0 and bool(padding[:real].all()) and bool((segments[real:] == segments[real]).all())
            and bool(segments[real] != segments[real - 1]))


def _row_masks(hook: PrefixHook, lengths: list[int], prompts, device) -> list[torch.Tensor | None]:
    """Each packed row's ``(1, 1, t, P + t)`` mask, or ``None`` where SDPA's is_causal is exact."""
    num_virtual = hook.encoder.config.pre_seq_len if hook.encoder is not None else 0
    if prompts is None and not num_virtual and hook.backend == "sdpa":
        return [None] * len(lengths)
    dtype = _mask_dtype(hook)
    if prompts is None:
        # Causal: every row's mask is the top-left corner of the longest row's.
        longest = max(lengths)
        full = _widen(build_attention_mask(torch.ones(1, longest, device=device), longest, dtype=dtype), num_virtual)
        return [full[..., :length, : num_virtual + length] for length in lengths]
    masks = []
    for length, prompt in zip(lengths, prompts):
        mask = build_attention_mask(torch.ones(1, length, device=device), length, mask_type="prefix_lm",
                                    bidirectional_length=prompt, dtype=dtype)
        masks.append(_widen(mask, num_virtual) if num_virtual else mask)
    return masks


def attach_prefix(model: nn.Module, encoder: PrefixEncoder | None, mask_type: str = "causal") -> PrefixHook:
    """Make every forward of ``model`` use ``encoder``'s soft prompts and ``mask_type``.

    ``model`` is a transformers causal LM whose attention goes through transformers' attention
    interface: every GLM family (``glm``, ``glm4``, ``glm4_moe``, ``glm4_moe_lite``,
    ``glm_moe_dsa``) and Llama-like models. ``encoder`` may be ``None`` to apply only the mask
    (a base model run with prefix-LM masking, or under LoRA and full fine-tuning). The encoder
    becomes the submodule ``model.prefix_encoder``; the caller decides what is trainable.
    Raises :class:`InjectionError` at once (or at the first forward, while the weights are not
    materialized) if the attention of some layer does not run with the injection.
    """
    backend = _wrap_attention(model)
    if encoder is not None:
        model.prefix_encoder = encoder
    layers = encoder.config.layout.num_layers if encoder is not None else kv_layout(model.config).num_layers
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    sparse = getattr(text_config, "index_topk", None) is not None
    hook = PrefixHook(model=model, encoder=encoder, mask_type=mask_type, backend=backend, num_layers=layers,
                      sparse=sparse, dense=sparse)

    def pre_hook(module, args, kwargs):
        if args:
            raise TypeError("call the model with keyword arguments (input_ids=..., attention_mask=...)")
        return args, _prepare_kwargs(hook, kwargs)

    def post_hook(module, args, kwargs, output):
        if not hook.verified:
            hook.check_reached()
        hook.current = None  # the prefix tensor and its graph are not kept between forwards
        return output

    hook.handles = [
        model.register_forward_pre_hook(pre_hook, with_kwargs=True),
        model.register_forward_hook(post_hook, with_kwargs=True),
    ]
    try:
        hook.probe()
    except InjectionError:
        hook.remove()  # leave the model as it was
        raise
    return hook
