"""Attention masks for causal and prefix-LM decoding.

Both masks are built as one additive float tensor ``(B, 1, T, K)`` (0 where a query may
attend, the dtype's minimum where it may not). The additive form is read the same way by
transformers' ``sdpa`` and ``eager`` attention; ``eager`` mis-reads boolean 4-D masks.

* ``causal`` (ChatGLM2/3, GLM-4): a token attends to itself and every earlier token.
* ``prefix_lm`` (ChatGLM-6B, GLM's pretraining): tokens before a per-row boundary (the
  prompt) attend to each other in both directions; later tokens (the answer) attend
  causally to everything before them.

The mask covers real tokens only. :mod:`ptuning.injection` puts the ``P`` soft-prompt columns
before them inside each layer's attention, visible to every query: P-Tuning v2 prefixes are keys
and values only, so they never attend to anything themselves.
"""

from __future__ import annotations

import torch

MASK_TYPES = ("causal", "prefix_lm")


def build_attention_mask(
    padding_mask: torch.Tensor,
    query_length: int,
    *,
    mask_type: str = "causal",
    bidirectional_length: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return the additive 4-D attention mask for one forward pass.

    Args:
        padding_mask: ``(B, K)`` with 1 for real tokens and 0 for padding, covering the cached
            tokens and the ``query_length`` new ones (``K = past + T``), as ``generate()`` keeps it.
        query_length: ``T``, how many of the last ``K`` positions are queries in this pass.
        mask_type: ``"causal"`` or ``"prefix_lm"``.
        bidirectional_length: ``(B,)`` for ``prefix_lm``: positions ``< bidirectional_length[b]``
            (counted over all ``K`` positions, padding included) form the bidirectional prompt.
            ``0`` gives a plain causal row.
        dtype: dtype of the returned mask (the attention's compute dtype).

    Returns:
        ``(B, 1, T, K)`` additive mask.
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"--mask: expected one of {', '.join(MASK_TYPES)}, found {mask_type!r}")
    batch, total = padding_mask.shape
    past = total - query_length
    device = padding_mask.device
    key_pos = torch.arange(total, device=device)  # (K,)
    query_pos = torch.arange(past, total, device=device)  # (T,)
    allowed = key_pos[None, :] <= query_pos[:, None]  # (T, K) causal
    allowed = allowed[None].expand(batch, -1, -1)  # (B, T, K)
    if mask_type == "prefix_lm":
        if bidirectional_length is None:
            raise ValueError("prefix_lm masking needs bidirectional_length")
        bound = bidirectional_length.to(device)[:, None, None]  # (B, 1, 1)
        in_prompt = (query_pos[None, :, None] < bound) & (key_pos[None, None, :] < bound)
        allowed = allowed | in_prompt
    allowed = allowed & padding_mask.bool()[:, None, :]  # padded keys are never visible
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (B, 1, T, K)


def prompt_length_from_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``(B, T)`` labels -> ``(B,)`` index of the first supervised position (``T`` if none).

    Everything before the first supervised token is the prompt of a prefix-LM row.
    """
    supervised = labels != ignore_index
    length = labels.shape[1]
    first = torch.where(supervised.any(dim=1), supervised.int().argmax(dim=1), torch.full_like(labels[:, 0], length))
    return first
