"""Command-line configuration of training: typed dataclasses read by ``HfArgumentParser``.

Flag names follow THUDM's ChatGLM ``ptuning/`` scripts where their users know them
(``--pre_seq_len``, ``--prefix_projection``, ``--prompt_column``, ``--max_source_length``...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from sft.methods import LORA_TARGET_GROUPS, METHODS

MASK_CHOICES = ("auto", "causal", "prefix_lm")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="embedded",
        metadata={"help": "Base model: a local transformers model directory, or 'embedded' for the shipped default."},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Base weights dtype: auto|float32|bfloat16|float16. auto is bf16 on GPU and fp32 on CPU, "
                          "except for --finetuning_type full, which keeps fp32 weights (--bf16: mixed precision)."},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention backend: sdpa|eager"})
    mask: str = field(
        default="auto",
        metadata={"help": "Attention mask: prefix_lm (prompt bidirectional), causal, or auto (what the base was built for)"},
    )

    def __post_init__(self) -> None:
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
class LoraArguments:
    lora_rank: int = field(default=8, metadata={"help": "Rank r of each low-rank update B @ A."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling: updates are scaled by alpha / rank."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input while training."})
    lora_target: str = field(
        default="all",
        metadata={"help": "Which linear layers get adapters: all (attention and MLP of every block; with the "
                          "MLP, LoRA comes closest to full fine-tuning, as the QLoRA paper found), attention (what "
                          "ChatGLM's own LoRA demos adapt), mlp, or a comma list of module names, e.g. q_proj,v_proj "
                          "or, for ChatGLM2/3 remote code, query_key_value. Names per model family: sft/methods.py."},
    )

    def __post_init__(self) -> None:
        problems = []
        if self.lora_rank < 1:
            problems.append(f"--lora_rank: expected a positive integer, found {self.lora_rank}")
        if self.lora_alpha <= 0:
            problems.append(f"--lora_alpha: expected a positive number, found {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"--lora_dropout: expected a value in [0, 1), found {self.lora_dropout}")
        names = [name.strip() for name in self.lora_target.split(",")]
        if not all(names) or (len(names) > 1 and set(names) & set(LORA_TARGET_GROUPS)):
            problems.append(
                f"--lora_target: expected {', '.join(LORA_TARGET_GROUPS)} or a comma list of module names, "
                f"found {self.lora_target!r}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def section(self, target_modules: list[str]) -> dict:
        """The checkpoint's ``lora`` section, with the target modules resolved for the base model."""
        return {"rank": self.lora_rank, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target": self.lora_target, "target_modules": target_modules}


# Where each method's learning rate starts unless --learning_rate is given: ChatGLM's P-tuning v2 scripts,
# ChatGLM3's finetune_demo lora.yaml, ChatGLM-6B's ds_train_finetune.sh.
DEFAULT_LEARNING_RATES = {"ptuning": 2e-2, "lora": 3e-4, "full": 1e-4}


@dataclass
class SFTTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with the method to train and defaults for it.

    ``--finetuning_type`` lives here, not with the model flags, because the learning rate and
    output directory defaults follow it and TrainingArguments needs both in ``__post_init__``
    (DeepSpeed's ``"auto"`` values are filled there).
    """

    finetuning_type: str = field(
        default="ptuning",
        metadata={"help": "Method: ptuning (P-Tuning v2 prefix, frozen base) | lora (peft adapters, frozen base) | "
                          "full (every weight trains)."},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints and reports go (default: output/<finetuning_type>)."}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate (default by --finetuning_type: " +
                          ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATES.items()) + ")."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep dataset columns (they are all inputs)."})
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={"help": "Count the tokens trained on, for the report's tokens/s: non_padding (prompt and answer), "
                          "all (padding too) or no.", "choices": ["non_padding", "all", "no"]},
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
        if self.output_dir is None:
            self.output_dir = f"output/{self.finetuning_type}"
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATES[self.finetuning_type]
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate: expected a positive number, found {self.learning_rate}")
        if self.eval_samples < 0:
            raise ValueError(f"--eval_samples: expected 0 (off) or a positive number, found {self.eval_samples}")
        if self.finetuning_type == "ptuning" and self._zero_stage() == 3:
            # ZeRO-3 partitions the prefix encoder too, and prefix.safetensors would be saved from empty shards.
            raise ValueError("--deepspeed: expected ZeRO stage 0-2 for --finetuning_type ptuning (its few MB need "
                             "no partitioning), found stage 3")
        super().__post_init__()
        if self.activation_checkpointing and not self.activation_checkpointing_kwargs:
            # Non-reentrant checkpointing lets gradients reach the prefix or adapters while the base is frozen.
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs = {"use_reentrant": False}

    def _zero_stage(self) -> int | None:
        """The ZeRO stage of ``--deepspeed`` (a JSON file or dict), ``None`` without DeepSpeed."""
        config = self.deepspeed
        if isinstance(config, str):
            path = Path(config)
            config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return (config or {}).get("zero_optimization", {}).get("stage")
