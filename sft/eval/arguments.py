"""What ``sft.evaluate`` and ``sft.infer`` are told on the command line: which model, how to generate,
what to evaluate. Light dataclasses (no torch, no transformers), so ``--help`` is fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sft.data.templates import get_template
from sft.models import EMBEDDED, check_dtype, check_mask

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
        check_mask(self.mask)
        check_dtype(self.dtype)
        if self.template is not None:
            get_template(self.template)

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


@dataclass
class GenerationArguments:
    """How new tokens are chosen (flag names as in ChatGLM's ptuning scripts)."""

    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per row (the prompt not counted)."})
    min_new_tokens: int = field(
        default=0,
        metadata={"help": "No eos before this many new tokens (0: none), for a model that stops mid-sentence."},
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample (with --top_p, --temperature) instead of greedy."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling threshold, used with --do_sample."})
    temperature: float = field(default=0.95, metadata={"help": "Sampling temperature, used with --do_sample."})
    seed: int = field(default=42, metadata={"help": "Seed of the sampler, set before every batch so runs repeat."})
    batch_size: int = field(default=16, metadata={"help": "Prompts generated together (left-padded)."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: no beam search)."})
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "Make the tokens the answer has already used less likely (CTRL's penalty: their positive "
                          "scores divided by this, negative ones multiplied; 1: off). The prompt's tokens are not "
                          "penalised: an answer should name them."},
    )
    no_repeat_ngram_size: int = field(
        default=0,
        metadata={"help": "Never write the same run of this many tokens twice in one answer (0: off). "
                          "Runs from the prompt may still be copied once."},
    )

    def __post_init__(self) -> None:
        problems = [
            f"--{name}: expected at least 1, found {getattr(self, name)}"
            for name in ("max_new_tokens", "batch_size", "num_beams")
            if getattr(self, name) < 1
        ]
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(f"--min_new_tokens: expected 0 to --max_new_tokens ({self.max_new_tokens}), "
                            f"found {self.min_new_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"--top_p: expected a value in (0, 1], found {self.top_p}")
        if self.temperature <= 0.0:
            problems.append(f"--temperature: expected a positive value, found {self.temperature}")
        if self.repetition_penalty <= 0.0:
            problems.append(f"--repetition_penalty: expected a positive value, found {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            problems.append(f"--no_repeat_ngram_size: expected 0 or more, found {self.no_repeat_ngram_size}")
        if problems:
            raise ValueError("; ".join(problems))

    def settings(self) -> dict:
        """What decides the generated text (batch size does not; sampling knobs only when sampling)."""
        settings = asdict(self)
        settings.pop("batch_size")
        for name, off in (("min_new_tokens", 0), ("repetition_penalty", 1.0), ("no_repeat_ngram_size", 0)):
            if getattr(self, name) == off:  # as before the flag existed: earlier outputs still match
                settings.pop(name)
        if not self.do_sample:
            for name in ("top_p", "temperature", "seed"):
                settings.pop(name)
        return settings


@dataclass
class EvaluateArguments:
    """What to evaluate on and where the results go."""

    validation_file: str = field(default="data/adgen/dev.json", metadata={"help": "Dev data: JSON Lines or a JSON array."})
    eval_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where predictions and metrics go (default: <checkpoint>/eval)."}
    )
    prompt_column: str | None = field(default=None, metadata={"help": "Prompt column (default: the checkpoint's)."})
    response_column: str | None = field(default=None, metadata={"help": "Reference column (default: the checkpoint's)."})
    overwrite: bool = field(
        default=False, metadata={"help": "Start over even if the output directory holds predictions made otherwise."}
    )

    def __post_init__(self) -> None:
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ValueError(f"--eval_samples: expected at least 1, found {self.eval_samples}")


@dataclass
class InferArguments:
    """What to generate for (nothing: an interactive loop)."""

    prompt: str | None = field(default=None, metadata={"help": "One prompt, e.g. 类型#上衣*颜色#红色; prints its answer."})
    input_file: str | None = field(default=None, metadata={"help": "JSON Lines file of prompts (needs --output_file)."})
    output_file: str | None = field(default=None, metadata={"help": "Where --input_file's rows go, with 'prediction' added."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Prompt column of --input_file (default: the checkpoint's, content for ADGEN)."}
    )

    def __post_init__(self) -> None:
        if (self.input_file is None) != (self.output_file is None):
            raise ValueError("--input_file/--output_file: expected both or neither, found only one")
        if self.prompt is not None and self.input_file is not None:
            raise ValueError("--prompt: expected either --prompt or --input_file, found both")
