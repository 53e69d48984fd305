"""Text generation for evaluation and inference: batched, left-padded, with the KV cache.

What a generation run needs, and nothing more:

* :class:`LoadArguments` and :func:`load_model`: the model to generate with (a fine-tuning
  checkpoint, a plain model directory or ``embedded``), and :func:`checkpoint_data_arguments`,
  the data settings it was trained with, so prompts are rendered exactly as in training.
* :class:`GenerationArguments`: greedy by default, sampling on request, bounded by
  ``max_new_tokens`` (never a ``max_length`` that counts the prompt).
* :func:`generate_token_ids` / :func:`generate_batch`: one batch. Prompts are padded on the
  left so every row's next token sits in the last column; generation stops on every eos id
  the model declares (:func:`eos_token_ids`; GLM-4 declares three).
* :func:`generate_all`: many prompts, sorted by length so a batch wastes little padding,
  results handed back as rows finish and returned in input order.

A P-tuning prefix and the prefix-LM/causal mask are applied by hooks inside the model
(:mod:`ptuning.injection`), so nothing here depends on the fine-tuning method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from ptuning.masks import MASK_TYPES
from sft.checkpoint import CheckpointInfo, load_for_inference
from sft.data import DataArguments, DataCollator
from sft.models import EMBEDDED, ModelLoadError
from sft.templates import TEMPLATES

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "output/adgen-ptuning"  # what `bash scripts/train.sh` writes with no arguments


@dataclass
class LoadArguments:
    """Which model to generate with."""

    checkpoint: str | None = field(
        default=None,
        metadata={"help": "A fine-tuning checkpoint directory (base model and method are read from its "
                          "sft_checkpoint.json), a plain model directory, or 'embedded'. Default: --model_name_or_path "
                          f"if given, else {DEFAULT_CHECKPOINT} if it exists, else 'embedded'."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "With --checkpoint: read its base model from here instead (the fingerprint must match). "
                          "Alone: generate with this plain model."},
    )
    dtype: str | None = field(
        default=None, metadata={"help": "Weights dtype: auto|float32|bfloat16|float16 (default: the checkpoint's)."}
    )
    pre_seq_len: int | None = field(
        default=None, metadata={"help": "If given, must equal the checkpoint's (a guard against loading the wrong one)."}
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Prompt template; a checkpoint must agree, a plain model uses it instead of its default."},
    )
    mask: str | None = field(
        default=None,
        metadata={"help": "causal|prefix_lm; a checkpoint must agree, a plain model uses it instead of its default."},
    )
    device: str = field(
        default="auto", metadata={"help": "Where to generate: auto (cuda if available)|cpu|cuda|cuda:N."}
    )

    def __post_init__(self) -> None:
        # "auto" (as sft.train spells it) means what the checkpoint or model says: no constraint.
        self.mask = None if self.mask == "auto" else self.mask
        self.template = None if self.template == "auto" else self.template
        problems = []
        if self.mask is not None and self.mask not in MASK_TYPES:
            problems.append(f"--mask: expected one of {', '.join(MASK_TYPES)}, found {self.mask!r}")
        if self.template is not None and self.template not in TEMPLATES:
            problems.append(f"--template: expected one of {', '.join(TEMPLATES)}, found {self.template!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def source(self) -> str:
        """The path handed to :func:`sft.checkpoint.load_for_inference`.

        Without ``--checkpoint``: ``--model_name_or_path`` if given, else ``output/adgen-ptuning``
        (what ``bash scripts/train.sh`` writes) when it exists, else the embedded base model.
        """
        if self.checkpoint:
            return self.checkpoint
        if Path(DEFAULT_CHECKPOINT).is_dir() and not self.model_name_or_path:
            return DEFAULT_CHECKPOINT
        return self.model_name_or_path or EMBEDDED


def load_model(args: LoadArguments) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, CheckpointInfo]:
    """Model, tokenizer and checkpoint description, ready for ``generate()``.

    Raises:
        CheckpointError, ModelLoadError: the directory is missing, incomplete or does not
            match the flags (one-line messages).
    """
    source = args.source()
    if source != EMBEDDED and not Path(source).is_dir():
        flag = "--checkpoint" if args.checkpoint else "--model_name_or_path"
        hint = " (bash scripts/train.sh writes it)" if Path(source) == Path(DEFAULT_CHECKPOINT) else ""
        raise ModelLoadError(f"{flag}: expected a checkpoint or model directory, found no {source}{hint}")
    base_override = args.model_name_or_path if args.checkpoint else None
    expect = {"pre_seq_len": args.pre_seq_len, "template": args.template, "mask": args.mask}
    model, tokenizer, info = load_for_inference(
        source, model_name_or_path=base_override, dtype=args.dtype, expect=expect
    )
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model.to(device)  # the prefix encoder is a submodule: it moves too
    logger.info(
        "generating with %s on %s (method %s, template %s, mask %s)", source, device, info.method, info.template, info.mask
    )
    return model, tokenizer, info


def checkpoint_data_arguments(info: CheckpointInfo, **overrides) -> DataArguments:
    """The data settings a checkpoint was trained with (``DataArguments`` defaults for a plain model).

    ``overrides`` that are ``None`` are ignored, so unset command-line flags keep the checkpoint's.
    """
    known = {f.name for f in fields(DataArguments)}
    settings = {k: v for k, v in info.data.items() if k in known}
    settings.update(template=info.template, train_file=None, validation_file=None)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return DataArguments(**settings)


@dataclass
class GenerationArguments:
    """How new tokens are chosen (flag names as in ChatGLM's ptuning scripts)."""

    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per row (the prompt not counted)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (with --top_p, --temperature) instead of greedy."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling threshold, used with --do_sample."})
    temperature: float = field(default=0.95, metadata={"help": "Sampling temperature, used with --do_sample."})
    seed: int = field(default=42, metadata={"help": "Seed of the sampler, set before every batch so runs repeat."})
    batch_size: int = field(default=16, metadata={"help": "Prompts generated together (left-padded)."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: no beam search)."})

    def __post_init__(self) -> None:
        problems = [
            f"--{name}: expected at least 1, found {getattr(self, name)}"
            for name in ("max_new_tokens", "batch_size", "num_beams")
            if getattr(self, name) < 1
        ]
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"--top_p: expected a value in (0, 1], found {self.top_p}")
        if self.temperature <= 0.0:
            problems.append(f"--temperature: expected a positive value, found {self.temperature}")
        if problems:
            raise ValueError("; ".join(problems))

    def settings(self) -> dict:
        """What decides the generated text (batch size does not; sampling knobs only when sampling)."""
        settings = asdict(self)
        settings.pop("batch_size")
        if not self.do_sample:
            for name in ("top_p", "temperature", "seed"):
                settings.pop(name)
        return settings


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a generation: the model's generation config (int or list) and the tokenizer's eos."""
    declared = model.generation_config.eos_token_id
    if declared is None:
        declared = []
    elif isinstance(declared, int):
        declared = [declared]
    ids = list(dict.fromkeys([*declared, tokenizer.eos_token_id]))
    return [i for i in ids if i is not None]


def _cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos:
            return ids[:position]
    return ids


def generate_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    args: GenerationArguments,
    streamer: BaseStreamer | None = None,
) -> list[list[int]]:
    """Generate one batch; return each row's new token ids, up to (not including) its first eos."""
    if any(not ids for ids in prompt_ids):
        raise ValueError("generate_token_ids: expected non-empty prompts, found an empty one")
    eos = eos_token_ids(model, tokenizer)
    collator = DataCollator.for_tokenizer(tokenizer, padding_side="left")  # real tokens flush right
    inputs = {k: v.to(model.device) for k, v in collator([{"input_ids": ids} for ids in prompt_ids]).items()}
    sampling = {"top_p": args.top_p, "temperature": args.temperature} if args.do_sample else {}
    # Seeded in a forked RNG: runs repeat, and a caller's random stream (training's) is left as it was.
    cuda_devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(args.seed)
        output = model.generate(
            **inputs,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            num_beams=args.num_beams,
            eos_token_id=eos,
            pad_token_id=collator.pad_token_id,
            use_cache=True,
            streamer=streamer,
            **sampling,
        )  # (B, T + new)
    new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
    return [_cut_at_eos(ids, set(eos)) for ids in new_tokens]


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    args: GenerationArguments,
    streamer: BaseStreamer | None = None,
) -> list[str]:
    """Generate one batch; return each row's new text (special tokens dropped, stripped)."""
    new_ids = generate_token_ids(model, tokenizer, prompt_ids, args, streamer)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]


def length_sorted_batches(prompt_ids: list[list[int]], batch_size: int, skip: Iterable[int] = ()) -> list[list[int]]:
    """Indices of the rows not in ``skip``, longest first, cut into batches.

    Longest first: the batch that needs the most memory runs first, so a too-large
    ``batch_size`` fails at once rather than at the end.
    """
    skipped = set(skip)
    todo = sorted((i for i in range(len(prompt_ids)) if i not in skipped), key=lambda i: (-len(prompt_ids[i]), i))
    return [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]


def generate_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    args: GenerationArguments,
    *,
    on_result: Callable[[int, str], None] | None = None,
    skip: Iterable[int] = (),
) -> list[str | None]:
    """Generate for every prompt not in ``skip``, in batches of similar length, with a progress bar.

    ``on_result(index, text)`` is called for each row as its batch finishes. Returns the texts
    in input order; rows in ``skip`` are ``None``.
    """
    results: list[str | None] = [None] * len(prompt_ids)
    batches = length_sorted_batches(prompt_ids, args.batch_size, skip)
    with tqdm(total=sum(map(len, batches)), desc="generating", unit="row") as progress:
        for batch in batches:
            texts = generate_batch(model, tokenizer, [prompt_ids[i] for i in batch], args)
            for index, text in zip(batch, texts):
                results[index] = text
                if on_result is not None:
                    on_result(index, text)
            progress.update(len(batch))
    return results

