"""Command-line configuration of ``sft.train`` besides the Trainer's own flags: typed dataclasses
read by ``HfArgumentParser``. They import neither torch nor transformers, so ``--help`` is fast;
:class:`sft.training.trainer.SFTTrainingArguments` holds transformers' ``TrainingArguments``.

Flag names follow THUDM's ChatGLM ``ptuning/`` scripts where their users know them
(``--pre_seq_len``, ``--prefix_projection``, ``--prompt_column``, ``--max_source_length``...).
Each method's own flags live with the method (:mod:`sft.methods`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sft.methods import METHODS
from sft.models import check_dtype, check_mask


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="embedded",
        metadata={"help": "Base model: a local transformers model directory, or 'embedded' for the shipped default."},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Base weights dtype: auto|float32|bfloat16|float16. auto is bf16 on a GPU, and on a CPU with "
                          "AMX (bf16 matrix units) for ptuning and lora; fp32 elsewhere and for --finetuning_type "
                          "full, which keeps fp32 weights (--bf16: mixed precision)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention backend: sdpa|eager"})
    mask: str = field(
        default="auto",
        metadata={"help": "Attention mask: prefix_lm (prompt bidirectional), causal, or auto (what the base was built for)"},
    )

    def __post_init__(self) -> None:
        check_mask(self.mask)
        check_dtype(self.dtype)
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"--attn_implementation: expected sdpa or eager, found {self.attn_implementation!r}")


@dataclass
class MethodArguments:
    """Which method trains, and what the run reports besides the loss."""

    finetuning_type: str = field(
        default="ptuning",
        metadata={"help": "Method: ptuning (P-Tuning v2 prefix, frozen base) | lora (peft adapters, frozen base) | "
                          "full (every weight trains). The default --learning_rate follows it: " +
                          ", ".join(f"{m.name} {m.default_learning_rate:g}" for m in METHODS.values()) + "; "
                          "--output_dir defaults to output/<finetuning_type>."},
    )
    eval_samples: int = field(
        default=0,
        metadata={"help": "At every evaluation also generate for this many dev rows and log ROUGE/BLEU-4 (0: off)."},
    )
    eval_max_new_tokens: int = field(default=128, metadata={"help": "max_new_tokens of that generation."})
    eval_base_loss: bool = field(
        default=False,
        metadata={"help": "Before training, report the base model's dev loss as it is (no prefix, no adapters)."},
    )

    def __post_init__(self) -> None:
        if self.finetuning_type not in METHODS:
            raise ValueError(f"--finetuning_type: expected one of {', '.join(METHODS)}, found {self.finetuning_type!r}")
        if self.eval_samples < 0:
            raise ValueError(f"--eval_samples: expected 0 (off) or a positive number, found {self.eval_samples}")
