"""Continuous batching: every running request of a model decodes in one forward per step.

A :class:`DecodeBatch` holds the rows of one :class:`~sft.serving.catalog.ModelGroup` that are
generating, with one KV cache for all of them, left-padded to a common length:

* **prefill**: newcomers run together in one forward (left-padded), which fills their cache and
  gives each its first token;
* **merge**: their cache joins the running one: both are padded on the left to the longer length
  and concatenated along the batch; the padding mask ``(B, K)`` records which columns are real;
* **step**: one forward of ``(B, 1)`` tokens for every running row;
* **keep**: finished or cancelled rows leave (their cache rows dropped), and columns that are
  padding in every remaining row are cut from the left, so the cache does not outgrow its rows.

Why left padding is exact: :mod:`ptuning.injection` derives each row's positions from the padding
mask (real tokens count from 0 whatever precedes them) and never lets a query see a padded key,
so a padded column contributes exactly zero attention weight, and the rotary embedding each cached
key got at its own position stays right after the merge. The rows' differences travel with every
forward: :class:`ptuning.injection.RowPrefixes` gives each row its own prefix keys/values (padded
to the longest, missing slots masked) and its own mask type, and peft's ``adapter_names`` its
LoRA adapter. A row's greedy answer therefore does not depend on what else is in the batch
(``tests/sft/serving/test_engine.py`` compares it with ``sft.infer``'s).

Failures: a forward that fails while prefilling several newcomers is retried one newcomer at a
time, so only a request that fails alone fails; a failed decoding step fails the rows of that
step (it cannot tell whose row broke it); an error while sampling or emitting one row fails that
row only.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from sft.serving.catalog import ModelGroup, Servable
from sft.serving.text import TextStream

if TYPE_CHECKING:
    from sft.serving.engine import Request

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Row:
    """One request while it generates."""

    request: Request
    stream: TextStream
    generator: torch.Generator
    generated: int = 0  # tokens sampled so far, eos included
    last: int = -1  # the token the next step feeds
    done: bool = False

    @classmethod
    def start(cls, request: Request) -> Row:
        tokenizer = request.servable.group.tokenizer
        stream = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), request.params.stop)
        seed = request.params.seed if request.params.seed is not None else random.getrandbits(63)
        return cls(request, stream, torch.Generator().manual_seed(seed))

    @property
    def servable(self) -> Servable:
        return self.request.servable

    def advance(self, token: int) -> None:
        """Take the sampled ``token``: stream the safe new text, or finish (eos, stop string, max_tokens)."""
        self.generated += 1
        self.last = token
        if token in self.servable.group.eos:
            return self._finish("stop")
        text, stopped = self.stream.push(token)
        if stopped or self.generated >= self.request.params.max_tokens:
            return self._finish("stop" if stopped else "length", text)
        if text:
            self.request.emit(text, None, self.generated)

    def _finish(self, reason: str, text: str = "") -> None:
        self.done = True
        self.request.emit(text + self.stream.finish(), reason, self.generated)

    def fail(self, error: BaseException) -> None:
        self.done = True
        self.request.fail(error)


def sample_row(logits: torch.Tensor, greedy: int, row: Row) -> int:
    """The next token of ``row`` from its logits ``(V,)``: ``greedy`` (the argmax) at temperature 0, else
    nucleus sampling with the row's own generator, so a seeded row repeats whatever else is in the batch."""
    params = row.request.params
    if params.temperature == 0:
        return greedy
    probs = F.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        probs = _nucleus(probs, params.top_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=row.generator))


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose cumulated probability first reaches ``top_p`` (at least one)."""
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(0) - sorted_probs  # mass of the more likely tokens
    sorted_probs[before >= top_p] = 0.0
    return torch.zeros_like(probs).scatter_(0, order, sorted_probs)


@dataclass(eq=False)
class DecodeBatch:
    """The generating rows of one model group and their shared, left-padded KV cache."""

    group: ModelGroup
    rows: list[Row] = field(default_factory=list)
    cache: DynamicCache | None = None  # per layer (B, kv_heads, K, head_dim) keys and values
    padding: torch.Tensor | None = None  # (B, K): 1 real token, 0 padding
    prefixes: object = None  # RowPrefixes of the current rows; None: rebuilt at the next forward

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def prefill(cls, group: ModelGroup, rows: list[Row]) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts of ``rows`` (left-padded) in one forward; return their batch and last logits ``(B, V)``."""
        device = group.device
        width = max(len(row.request.prompt_ids) for row in rows)
        pad = group.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        padding = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            prompt = row.request.prompt_ids
            ids[index, width - len(prompt):] = torch.tensor(prompt)
            padding[index, width - len(prompt):] = 1
        batch = cls(group, rows, DynamicCache(config=group.model.config), padding.to(device))
        return batch, batch._forward(ids.to(device))

    def step(self) -> torch.Tensor:
        """Feed every row's last token; return the next logits ``(B, V)``."""
        ids = torch.tensor([[row.last] for row in self.rows], device=self.padding.device)  # (B, 1)
        self.padding = F.pad(self.padding, (0, 1), value=1)  # (B, K + 1)
        return self._forward(ids)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """One forward over ``ids`` ``(B, T)``; the cache grows by ``T`` columns."""
        if self.prefixes is None:
            self.prefixes = self._row_prefixes()
        kwargs = {"input_ids": ids, "attention_mask": self.padding, "cache": self.cache, "use_cache": True,
                  "logits_to_keep": 1, "row_prefixes": self.prefixes}
        if self.group.peft:
            kwargs["adapter_names"] = [row.servable.adapter for row in self.rows]
        with torch.inference_mode():
            output = self.group.model(**kwargs)
        return output.logits[:, -1]  # (B, V)

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(keys, values) for keys, values, *_ in self.cache]

    def _set_layers(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.cache = DynamicCache(ddp_cache_data=layers, config=self.group.model.config)
        self.prefixes = None

    def _row_prefixes(self):
        """Each row's prefix keys/values, padded to the longest (:class:`ptuning.injection.RowPrefixes`)."""
        from ptuning.injection import RowPrefixes

        servables = [row.servable for row in self.rows]
        device = self.padding.device
        lengths = torch.tensor([s.prefix_length for s in servables], device=device)
        prefix_lm = torch.tensor([s.info.mask == "prefix_lm" for s in servables], device=device)
        with_prefix = [s for s in servables if s.prefix is not None]
        if not with_prefix:
            empty = torch.zeros((0, len(servables), 0, 0, 0), device=device)
            return RowPrefixes(empty, empty, lengths, prefix_lm)
        keys, values = (self._stack([s.prefix[part] if s.prefix is not None else None for s in servables],
                                    with_prefix[0].prefix[part], int(lengths.max())) for part in (0, 1))
        return RowPrefixes(keys, values, lengths, prefix_lm)

    @staticmethod
    def _stack(parts: list[torch.Tensor | None], like: torch.Tensor, width: int) -> torch.Tensor:
        """``(L, kv_heads, P_b, d)`` per row (``None``: no prefix) -> ``(L, B, kv_heads, width, d)``, zero-padded."""
        layers, heads, _, dim = like.shape
        out = like.new_zeros((layers, len(parts), heads, width, dim))
        for index, part in enumerate(parts):
            if part is not None:
                out[:, index, :, : part.shape[2]] = part
        return out

    def merge(self, other: DecodeBatch) -> None:
        """Append ``other``'s rows and cache, both left-padded to the longer length."""
        if not other.rows:  # every newcomer finished or was cancelled in its prefill
            return
        if not self.rows:
            self.rows, self.cache, self.padding, self.prefixes = other.rows, other.cache, other.padding, other.prefixes
            return
        length = max(self.padding.shape[1], other.padding.shape[1])

        def left(tensor: torch.Tensor, dim: int) -> torch.Tensor:  # pad ``dim`` on the left to ``length``
            missing = length - tensor.shape[dim]
            pads = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
            return F.pad(tensor, pads) if missing else tensor

        self._set_layers([(torch.cat([left(k1, 2), left(k2, 2)]), torch.cat([left(v1, 2), left(v2, 2)]))
                          for (k1, v1), (k2, v2) in zip(self._layers(), other._layers())])
        self.padding = torch.cat([left(self.padding, 1), left(other.padding, 1)])
        self.rows = self.rows + other.rows

    def drop_finished(self) -> None:
        """Remove done and cancelled rows; cut cache columns that no remaining row uses."""
        keep = [index for index, row in enumerate(self.rows) if not row.done and not row.request.cancelled]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[index] for index in keep]
        if not keep:
            self.cache, self.padding, self.prefixes = None, None, None
            return
        index = torch.tensor(keep, device=self.padding.device)
        padding = self.padding.index_select(0, index)
        start = int(padding.any(dim=0).nonzero()[0])  # first column some remaining row uses
        self.padding = padding[:, start:]
        self._set_layers([(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                          for k, v in self._layers()])
