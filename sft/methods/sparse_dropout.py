"""Dropout that draws only the elements it drops: LoRA's input dropout at a fraction of its cost on CPU.

peft puts an ``nn.Dropout(lora_dropout)`` in front of every adapted layer. On CPU, that dropout draws
one Bernoulli variable per element of the layer's input (``bernoulli_``: ~5 ns an element, one thread):
with the default 0.05 on every linear layer of the throughput bench's model, a fifth of a LoRA training
step goes to drawing masks, more than attention takes.

With ``p`` small, almost every draw says "keep". The positions of the dropped elements can be drawn
directly instead: the gaps between successive successes of independent Bernoulli(``p``) trials are
independent and geometric, ``P(gap = k) = (1 - p)^(k-1) p`` for ``k >= 1``. So ``n p`` draws (plus a
margin) of the gaps, a cumulative sum, and the positions below ``n`` are exactly a Bernoulli(``p``)
mask's zeros, in distribution; the gaps come from uniforms by inversion, ``1 + floor(log(1 - u) /
log(1 - p))``, in float64. The output is the input scaled by ``1 / (1 - p)`` with those positions set
to 0, as ``nn.Dropout`` computes it, and the backward zeroes the same positions of the gradient; it
stores the positions (``n p`` integers) instead of a mask of ``n`` bytes.

:class:`SparseDropout` is an ``nn.Dropout`` (peft and anyone else who checks still sees one); it
takes this path in training on CPU for ``p`` up to :data:`MAX_SPARSE_P`, and is ``nn.Dropout``
elsewhere: CUDA's Bernoulli kernel is fast, and at large ``p`` drawing gaps saves little.
The random numbers come from torch's default generator, so ``torch.manual_seed`` repeats a run; the
masks differ from ``nn.Dropout``'s own for the same seed (their distribution does not).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_SPARSE_P = 0.25  # above this the gap draws approach n and the plain Bernoulli mask is as cheap


@torch.compiler.disable  # a loop on drawn values: torch.compile runs it as Python, without a word
def dropped_positions(n: int, p: float, draws: int | None = None) -> torch.Tensor:
    """Sorted positions in ``range(n)``, each in the result independently with probability ``p``
    (``0 < p < 1``): the successes of ``n`` Bernoulli trials, drawn as geometric gaps, ``draws`` at a
    time (default: enough to cover ``n`` at the first batch but once in a few million). (K,) int64."""
    log_keep = math.log1p(-p)
    expected = n * p
    draws = draws or int(expected + 6 * math.sqrt(expected) + 16)
    chunks, start = [torch.empty(0, dtype=torch.int64)], 0  # start: the first position no gap has reached yet
    while start < n:
        uniform = torch.rand(draws, dtype=torch.float64)
        gaps = torch.log1p(-uniform).div_(log_keep).floor_().add_(1).to(torch.int64)  # Geometric(p) on 1, 2, ...
        positions = gaps.cumsum_(0).add_(start - 1)
        chunks.append(positions)
        start = int(positions[-1]) + 1
    positions = torch.cat(chunks)
    return positions[: int(torch.searchsorted(positions, n))]


class _ScaleAndZero(torch.autograd.Function):
    """``x * scale`` with the flat (row-major) ``positions`` set to 0; the backward likewise."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return _scale_and_zero(x, positions, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (positions,) = ctx.saved_tensors
        return _scale_and_zero(grad, positions, ctx.scale), None, None


def _scale_and_zero(x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.mul(x, scale).contiguous()
    out.view(-1)[positions] = 0
    return out


class SparseDropout(nn.Dropout):
    """``nn.Dropout(p)`` that, training on CPU with ``p <= MAX_SPARSE_P``, draws only the dropped
    positions (:func:`dropped_positions`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.inplace or x.device.type != "cpu" or self.p > MAX_SPARSE_P or not x.is_floating_point():
            return super().forward(x)
        return _ScaleAndZero.apply(x, dropped_positions(x.numel(), self.p), 1.0 / (1.0 - self.p))


def use_sparse_dropout(model: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` under ``model`` whose name ends in ``lora_dropout.<adapter>``
    (peft's LoRA input dropout) with a :class:`SparseDropout` of the same ``p``; returns how many."""
    replaced = 0
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if type(module) is nn.Dropout and parent_name.endswith("lora_dropout"):
            setattr(model.get_submodule(parent_name), child, SparseDropout(module.p))
            replaced += 1
    return replaced
