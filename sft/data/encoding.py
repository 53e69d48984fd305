"""From rendered examples to ``input_ids``/``labels``, datasets and padded or packed batches.

The segments of an :class:`~sft.data.formats.Example` are encoded in order and the ids joined:
a special segment is its token's id; a text segment is tokenized with
``add_special_tokens=False`` (the template owns special tokens), together with the ``joined``
segments after it as one string, exactly as the model family tokenizes its prompt (see
:mod:`sft.data.templates`). Supervised and unsupervised text are never tokenized together, and the
final answer is always tokenized on its own, so no token can straddle the prompt/answer boundary
and labels are set by position: a token is a label exactly when its segment is supervised. Token
values never decide masking (ChatGLM2's script masked every token equal to the pad id, unk
included). Inside one string, a token belongs to the segment where the tokens of the text before
that segment, tokenized alone, stop matching: a token across a segment border counts as the later
segment's (for ``keep``, the answer cue's).

Lengths:

* ``max_source_length`` bounds the prompt. A longer prompt loses tokens from the left (system
  text and oldest turns first) but keeps the template's ``keep`` segments: the special-token
  prefix and the cue that opens the answer.
* ``max_target_length`` bounds the answer *with* its eos: the answer is cut to
  ``max_target_length - 1`` tokens and eos is always appended and supervised.

Copies (``--copy_loss_weight``): with ``copies=True`` a row also carries ``copies``, 1 on each answer
token whose id is one of the prompt's text tokens (those the model sees after truncation; special
tokens aside): where the answer repeats its prompt, as ADGEN's ad copy names each ``key#value`` value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sft.data.arguments import DataArguments
from sft.data.formats import Example, load_examples
from sft.data.templates import Segment
from sft.errors import UserError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that the loss ignores (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``)."""


@dataclass
class _Tokens:
    """Parallel per-token lists of a prompt: ids, labels, whether truncation must keep it, and whether it
    is a special token's."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    keep: list[bool] = field(default_factory=list)
    special: list[bool] = field(default_factory=list)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def eos_id(tokenizer: Any) -> int:
    """The tokenizer's eos id; a tokenizer without one cannot mark where answers end."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: expected an eos token, found none")
    return int(tokenizer.eos_token_id)


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its eos id when it has no pad token."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def _special_id(tokenizer: Any, token: str) -> int:
    """The id of a template's special token; a tokenizer without it has another model's vocabulary."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or (token_id == unk and token != getattr(tokenizer, "unk_token", None)):
        raise UserError(f"--template: expected the tokenizer to have the template's special token {token}, "
                        "found none (use the template of the model's family)")
    return int(token_id)


def _runs(segments: Sequence[Segment]) -> list[list[Segment]]:
    """Segments grouped into what is encoded at once: a special token, or a text and its ``joined`` followers."""
    runs: list[list[Segment]] = []
    for segment in segments:
        if segment.joined and runs and not runs[-1][0].special:
            assert segment.supervised == runs[-1][0].supervised, "joined text must share supervision"
            runs[-1].append(segment)
        else:
            runs.append([segment])
    return runs


def _encode_run(run: list[Segment], tokenizer: Any) -> list[list[int]]:
    """The ids of each segment of a run: the run's text is tokenized once and split where its
    prefixes, tokenized alone, stop matching."""
    if run[0].special:
        return [[_special_id(tokenizer, run[0].text)]]
    ids = _ids(tokenizer, "".join(segment.text for segment in run))
    starts, text = [0], ""
    for segment in run[:-1]:
        text += segment.text
        alone = _ids(tokenizer, text)
        shared = next((i for i, (a, b) in enumerate(zip(ids, alone)) if a != b), min(len(ids), len(alone)))
        starts.append(max(starts[-1], shared))
    starts.append(len(ids))
    return [ids[start:end] for start, end in zip(starts, starts[1:])]


def _encode_segments(segments: Sequence[Segment], tokenizer: Any) -> _Tokens:
    tokens = _Tokens()
    for run in _runs(segments):
        for segment, ids in zip(run, _encode_run(run, tokenizer)):
            tokens.ids += ids
            tokens.labels += ids if segment.supervised else [IGNORE_INDEX] * len(ids)
            tokens.keep += [segment.keep] * len(ids)
            tokens.special += [segment.special] * len(ids)
    return tokens


def _cut_left(tokens: _Tokens, limit: int) -> _Tokens:
    """Drop the leftmost tokens not marked ``keep`` until at most ``limit`` remain."""
    excess = len(tokens.ids) - limit
    if excess <= 0:
        return tokens
    droppable = [index for index, keep in enumerate(tokens.keep) if not keep]
    if len(droppable) < excess:
        fixed = len(tokens.ids) - len(droppable)
        raise ValueError(
            f"--max_source_length: expected at least the template's {fixed} fixed prompt tokens, found {limit}"
        )
    dropped = set(droppable[:excess])
    kept = [index for index in range(len(tokens.ids)) if index not in dropped]
    return _Tokens(*([values[i] for i in kept] for values in (tokens.ids, tokens.labels, tokens.keep, tokens.special)))


def _parts(example: Example, tokenizer: Any) -> tuple[_Tokens, list[int]]:
    """The prompt's tokens and the answer's ids, before truncation and eos."""
    return _encode_segments(example.segments[:-1], tokenizer), _ids(tokenizer, example.answer)


def _assemble(prompt: _Tokens, answer: list[int], eos: int, max_source_length: int, max_target_length: int,
              copies: bool = False) -> dict:
    prompt = _cut_left(prompt, max_source_length)
    answer = answer[: max_target_length - 1] + [eos]
    row = {"input_ids": prompt.ids + answer, "labels": prompt.labels + answer}
    if copies:
        row["copies"] = [0] * len(prompt.ids) + copy_marks(prompt, answer)
    return row


def copy_marks(prompt: _Tokens, answer: list[int]) -> list[int]:
    """1 on each answer token whose id is one of the prompt's text tokens, else 0."""
    text = {token for token, special in zip(prompt.ids, prompt.special) if not special}
    return [int(token in text) for token in answer]


def token_lengths(example: Example, tokenizer: Any) -> tuple[int, int]:
    """``(prompt tokens, answer tokens)`` before truncation; the answer's count excludes eos."""
    prompt, answer = _parts(example, tokenizer)
    return len(prompt.ids), len(answer)


def encode_prompt(example: Example, tokenizer: Any, max_source_length: int) -> list[int]:
    """The prompt ids exactly as training sees them: what generation starts from."""
    return encode_prompt_counted(example, tokenizer, max_source_length)[0]


def encode_prompt_counted(example: Example, tokenizer: Any, max_source_length: int) -> tuple[list[int], int]:
    """:func:`encode_prompt`'s ids and the prompt's length in tokens before ``max_source_length`` cut it."""
    tokens = _encode_segments(example.segments[:-1], tokenizer)
    return _cut_left(tokens, max_source_length).ids, len(tokens.ids)


def encode_example(example: Example, tokenizer: Any, max_source_length: int, max_target_length: int) -> dict:
    """Encode one example for training.

    Returns:
        ``{"input_ids": list[int], "labels": list[int]}`` of equal length: prompt then answer
        then eos; labels are ``IGNORE_INDEX`` over unsupervised prompt tokens and equal to
        ``input_ids`` elsewhere.
    """
    return _assemble(*_parts(example, tokenizer), eos_id(tokenizer), max_source_length, max_target_length)


class EncodedDataset(torch.utils.data.Dataset):
    """Encoded rows for ``transformers.Trainer``.

    Items are ``{"input_ids": list[int], "labels": list[int]}``, so the Trainer's
    ``train_sampling_strategy="group_by_length"`` can read their lengths. ``examples[i]`` is
    the row ``i`` came from (prompt and reference answer for evaluation).
    """

    def __init__(self, examples: list[Example], rows: list[dict]) -> None:
        assert len(examples) == len(rows)
        self.examples = examples
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    @property
    def lengths(self) -> list[int]:
        """Tokens per row, for length-grouped sampling."""
        return [len(row["input_ids"]) for row in self.rows]


def build_dataset(path: str | Path, tokenizer: Any, args: DataArguments, split: str = "train",
                  copies: bool = False) -> EncodedDataset:
    """Load, render and encode ``path``; logs how many rows the length limits cut.

    Args:
        split: ``"train"`` or ``"eval"``: which of ``args.max_train_samples`` /
            ``args.max_eval_samples`` caps the number of rows.
        copies: give each row its ``copies`` marks too (:func:`copy_marks`).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"build_dataset split: expected 'train' or 'eval', found {split!r}")
    max_samples = args.max_train_samples if split == "train" else args.max_eval_samples
    examples = load_examples(path, args)[:max_samples]
    parts = [_parts(example, tokenizer) for example in examples]
    eos = eos_id(tokenizer)
    rows = [_assemble(prompt, answer, eos, args.max_source_length, args.max_target_length, copies)
            for prompt, answer in parts]
    cut_prompts = sum(len(prompt.ids) > args.max_source_length for prompt, _ in parts)
    cut_answers = sum(len(answer) + 1 > args.max_target_length for _, answer in parts)
    if cut_prompts or cut_answers:
        logger.warning(
            "%s: --max_source_length %d cuts %d of %d prompts, --max_target_length %d cuts %d answers",
            path, args.max_source_length, cut_prompts, len(rows), args.max_target_length, cut_answers,
        )
    logger.info("%s: encoded %d rows, longest %d tokens", path, len(rows), max(len(r["input_ids"]) for r in rows))
    return EncodedDataset(examples, rows)


@dataclass
class DataCollator:
    """Pad a list of encoded rows to the longest of the batch.

    Returns ``input_ids`` ``(B, T)``, ``attention_mask`` ``(B, T)`` (1 on real tokens) and,
    when the rows have them, ``labels`` ``(B, T)`` padded with ``IGNORE_INDEX`` and ``copies``
    ``(B, T)`` padded with 0. Rows are padded
    on the right for training and on the left for generation (new tokens follow the prompt).

    Attributes:
        pad_token_id: id written into padded positions of ``input_ids``.
        padding_side: ``"right"`` or ``"left"``.
        pad_to_multiple_of: round ``T`` up to a multiple of this.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side: expected 'right' or 'left', found {self.padding_side!r}")

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        """A collator padding with the tokenizer's pad id (its eos id when it has no pad token)."""
        return cls(pad_id(tokenizer), padding_side, pad_to_multiple_of)

    def __call__(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": self._pad([row["input_ids"] for row in rows], width, self.pad_token_id),
            "attention_mask": self._pad([[1] * len(row["input_ids"]) for row in rows], width, 0),
        }
        if "labels" in rows[0]:
            batch["labels"] = self._pad([row["labels"] for row in rows], width, IGNORE_INDEX)
        if "copies" in rows[0]:
            batch["copies"] = self._pad([row["copies"] for row in rows], width, 0)
        return batch

    def _pad(self, sequences: list[Sequence[int]], width: int, value: int) -> torch.Tensor:
        padded = torch.full((len(sequences), width), value, dtype=torch.long)  # (B, T)
        for index, sequence in enumerate(sequences):
            if sequence:
                span = slice(0, len(sequence)) if self.padding_side == "right" else slice(width - len(sequence), width)
                padded[index, span] = torch.tensor(sequence, dtype=torch.long)
        return padded


@dataclass
class PackingCollator:
    """Concatenate a batch's encoded rows into one sequence, without padding.

    Returns ``input_ids``, ``labels``, ``position_ids`` (from 0 in each row), ``segment_ids`` (the
    row of each token) and ``attention_mask`` (1 on the rows' tokens, so the Trainer counts real
    tokens) and, when the rows have them, ``copies``, each ``(1, N)`` with ``N`` the rows' total length.
    :func:`ptuning.injection.attach_prefix`'s hook confines attention to each row from ``segment_ids``;
    the model pops nothing else (the trainer takes ``copies``).

    With ``pad_to_multiple_of``, a filler row of ``pad_token_id`` (attention mask 0, no labels, a
    segment of its own) ends the sequence at the next multiple. Sequence lengths then repeat from
    batch to batch, which matters to oneDNN's bf16 matrix products on CPU: it builds a kernel for
    each new shape (some 3 ms) and caches it (about 1 MB each, up to 1024), so packed lengths that
    never repeat made a bf16 P-tuning run grow by 11 MB a step (2.5 GB of RSS after 160 steps of the
    training bench) and spend an eighth of its time building kernels.

    The causal LM loss shifts labels over the whole sequence, so the first label of each row would
    be predicted from the previous row's last token: it is ``IGNORE_INDEX`` here. In a padded batch
    the first label of a row is never predicted either (nothing precedes it), and it is a prompt
    token anyway, so both batches supervise the same (context, token) pairs and the Trainer counts
    the same items (``labels[..., 1:] != -100``).
    """

    pad_to_multiple_of: int | None = None
    pad_token_id: int = 0

    def __call__(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        lengths = [len(row["input_ids"]) for row in rows]
        fill = -sum(lengths) % self.pad_to_multiple_of if self.pad_to_multiple_of else 0
        ids = [token for row in rows for token in row["input_ids"]] + [self.pad_token_id] * fill
        spans = lengths + [fill] * bool(fill)
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),  # (1, N)
            "attention_mask": torch.tensor([[1] * sum(lengths) + [0] * fill], dtype=torch.long),
            "position_ids": torch.cat([torch.arange(length) for length in spans])[None],
            "segment_ids": torch.repeat_interleave(torch.arange(len(spans)), torch.tensor(spans))[None],
        }
        if "labels" in rows[0]:
            labels = [[IGNORE_INDEX, *row["labels"][1:]] if row["labels"] else [] for row in rows]
            labels.append([IGNORE_INDEX] * fill)
            batch["labels"] = torch.tensor([[label for row in labels for label in row]], dtype=torch.long)
        if "copies" in rows[0]:
            copies = [mark for row in rows for mark in row["copies"]] + [0] * fill
            batch["copies"] = torch.tensor([copies], dtype=torch.long)
        return batch


def unpack(batch: Mapping[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A :class:`PackingCollator` batch as the right-padded batch of its rows (``B, T``), which any
    model runs without the packing hook; other batches are returned as they are."""
    if "segment_ids" not in batch:
        return dict(batch)
    real = int(batch["attention_mask"][0].sum()) if "attention_mask" in batch else batch["segment_ids"].shape[1]
    batch = {key: value[:, :real] for key, value in batch.items()}  # without the filler row
    segments = batch["segment_ids"][0]
    lengths = torch.unique_consecutive(segments, return_counts=True)[1].tolist()
    rows = [{key: part.tolist() for key, part in zip(("input_ids", "labels"), parts)}
            for parts in zip(*(batch[key][0].split(lengths) for key in ("input_ids", "labels") if key in batch))]
    return DataCollator(pad_token_id)(rows)
