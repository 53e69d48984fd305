"""Attention masks for causal and prefix-LM decoding.

Both masks are built as one 4-D tensor ``(B, 1, T, K)``: additive float (0 where a query may
attend, the dtype's minimum where it may not), read the same way by transformers' ``sdpa`` and
``eager`` attention, or boolean (``True`` where a query may attend), which only ``sdpa`` reads
right (``eager`` mis-reads boolean 4-D masks) and which PyTorch's CPU SDPA runs faster with.

* ``causal`` (ChatGLM2/3, GLM-4): a token attends to itself and every earlier token.
* ``prefix_lm`` (ChatGLM-6B, GLM's pretraining): tokens before a per-row boundary (the
  prompt) attend to each other in both directions; later tokens (the answer) attend
  causally to everything before them.

Packed batches (:class:`sft.data.encoding.PackingCollator`: the rows of a batch concatenated into one
sequence) confine each mask to its own row: :func:`build_packed_mask` is the dense form, block
diagonal over the rows, that :mod:`ptuning.injection` uses as the reference for its per-row path.

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
        dtype: dtype of the returned mask: the attention's compute dtype, or ``torch.bool``.

    Returns:
        ``(B, 1, T, K)`` additive mask (boolean, ``True`` where visible, for ``torch.bool``).
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
    return as_mask(allowed[:, None], dtype)  # (B, 1, T, K)


def as_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" tensor as a mask of ``dtype``: itself for ``torch.bool``, else additive."""
    if dtype == torch.bool:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def build_packed_mask(
    segment_ids: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    mask_type: str = "causal",
    bidirectional_length: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The dense block-diagonal mask of one packed sequence: each token sees only its own row.

    Args:
        segment_ids: ``(N,)`` the row of each token, rows contiguous.
        position_ids: ``(N,)`` each token's position in its row (from 0).
        bidirectional_length: ``(N,)`` for ``prefix_lm``: the prompt length of each token's row.

    Returns:
        ``(1, 1, N, N)`` mask of ``dtype``.
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"--mask: expected one of {', '.join(MASK_TYPES)}, found {mask_type!r}")
    same_row = segment_ids[:, None] == segment_ids[None, :]  # (N, N)
    allowed = position_ids[None, :] <= position_ids[:, None]  # key no later than query
    if mask_type == "prefix_lm":
        if bidirectional_length is None:
            raise ValueError("prefix_lm masking needs bidirectional_length")
        in_prompt = position_ids < bidirectional_length  # (N,)
        allowed = allowed | (in_prompt[:, None] & in_prompt[None, :])
    return as_mask((same_row & allowed)[None, None], dtype)


def prompt_length_from_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``(B, T)`` labels -> ``(B,)`` index of the first supervised position (``T`` if none).

    Everything before the first supervised token is the prompt of a prefix-LM row.
    """
    supervised = labels != ignore_index
    length = labels.shape[1]
    first = torch.where(supervised.any(dim=1), supervised.int().argmax(dim=1), torch.full_like(labels[:, 0], length))
    return first
