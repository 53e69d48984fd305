"""Command-line configuration of training: typed dataclasses read by ``HfArgumentParser``.

Flag names follow THUDM's ChatGLM ``ptuning/`` scripts where their users know them
(``--pre_seq_len``, ``--prefix_projection``, ``--prompt_column``, ``--max_source_length``...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

FINETUNING_TYPES = ("ptuning",)
MASK_CHOICES = ("auto", "causal", "prefix_lm")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="embedded",
        metadata={"help": "Base model: a local transformers model directory, or 'embedded' for the shipped default."},
    )
    finetuning_type: str = field(default="ptuning", metadata={"help": "Method: " + "|".join(FINETUNING_TYPES)})
    dtype: str = field(
        default="auto", metadata={"help": "Base weights dtype: auto (bf16 on GPU, fp32 on CPU)|float32|bfloat16|float16"}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention backend: sdpa|eager"})
    mask: str = field(
        default="auto",
        metadata={"help": "Attention mask: prefix_lm (prompt bidirectional), causal, or auto (what the base was built for)"},
    )

    def __post_init__(self) -> None:
        if self.finetuning_type not in FINETUNING_TYPES:
            raise ValueError(f"--finetuning_type: expected one of {', '.join(FINETUNING_TYPES)}, found {self.finetuning_type!r}")
        if self.mask not in MASK_CHOICES:
            raise ValueError(f"--mask: expected one of {', '.join(MASK_CHOICES)}, found {self.mask!r}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"--attn_implementation: expected sdpa or eager, found {self.attn_implementation!r}")


@dataclass
class PtuningArguments:
    pre_seq_len: int = field(default=32, metadata={"help": "Number of virtual tokens (soft-prompt length)."})
    prefix_projection: bool = field(
        default=False, metadata={"help": "Reparameterize the prefix through an MLP (Linear-Tanh-Linear)."}
    )
    prefix_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width of the projection MLP (default: the base model's hidden size)."}
    )
    prefix_dropout: float = field(default=0.0, metadata={"help": "Dropout on the prefix keys/values while training."})

    def __post_init__(self) -> None:
        if self.pre_seq_len < 1:
            raise ValueError(f"--pre_seq_len: expected a positive integer, found {self.pre_seq_len}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ValueError(f"--prefix_dropout: expected a value in [0, 1), found {self.prefix_dropout}")


@dataclass
class SFTTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for P-tuning a GLM model."""

    output_dir: str | None = field(default="output/ptuning", metadata={"help": "Where checkpoints and reports go."})
    learning_rate: float = field(default=2e-2, metadata={"help": "Peak learning rate (ChatGLM P-tuning uses 2e-2)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep dataset columns (they are all inputs)."})
    eval_samples: int = field(
        default=0,
        metadata={"help": "At every evaluation also generate for this many dev rows and log ROUGE/BLEU-4 (0: off)."},
    )
    eval_max_new_tokens: int = field(default=128, metadata={"help": "max_new_tokens of that generation."})
    eval_base_loss: bool = field(
        default=False, metadata={"help": "Before training, report the base model's dev loss without any prefix."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_samples < 0:
            raise ValueError(f"--eval_samples: expected 0 (off) or a positive number, found {self.eval_samples}")
        if self.gradient_checkpointing and not self.gradient_checkpointing_kwargs:
            # Non-reentrant checkpointing lets gradients reach the prefix while the base is frozen.
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
