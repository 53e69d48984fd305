"""LoRA: the base is frozen; peft adds low-rank updates ``B @ A`` beside the linear layers named by
``--lora_target``. A checkpoint is a standard peft adapter (``python -m sft.export`` merges it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sft.errors import UserError
from sft.methods.base import Method

# The linear layers of one decoder block, by ``config.model_type`` (peft knows none for glm/glm4).
# transformers' Glm/Glm4 split q/k/v and fuse the SwiGLU gate with its up projection.
_TRANSFORMERS_GLM = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_up_proj", "down_proj")}
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {"glm": _TRANSFORMERS_GLM, "glm4": _TRANSFORMERS_GLM}
LORA_TARGET_GROUPS = ("all", "attention", "mlp")


@dataclass
class LoraArguments:
    lora_rank: int = field(default=8, metadata={"help": "Rank r of each low-rank update B @ A."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling: updates are scaled by alpha / rank."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input while training."})
    lora_target: str = field(
        default="all",
        metadata={"help": "Which linear layers get adapters: all (attention and MLP of every block; with the "
                          "MLP, LoRA comes closest to full fine-tuning, as the QLoRA paper found), attention (what "
                          "ChatGLM's own LoRA demos adapt), mlp, or a comma list of module names, e.g. q_proj,v_proj. "
                          "Names per model family: sft/methods/lora.py."},
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


def lora_target_modules(model, target: str) -> list[str]:
    """``--lora_target`` as module names: ``all`` (attention + MLP), ``attention``, ``mlp`` or a comma list.

    Every name must be the last part of some linear module's name in ``model``.
    """
    from torch import nn

    if target in LORA_TARGET_GROUPS:
        names = _group_modules(getattr(model.config, "model_type", ""), target)
    else:
        names = [name.strip() for name in target.split(",") if name.strip()]
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [name for name in names if name not in present]
    if missing:
        raise UserError(
            f"--lora_target: expected linear layers of the base model ({', '.join(sorted(present))}), "
            f"found {', '.join(missing)}"
        )
    return names


def _group_modules(model_type: str, group: str) -> list[str]:
    if model_type not in LORA_TARGETS:
        raise UserError(
            f"--lora_target: expected a comma list of module names for model type {model_type!r} (groups such as "
            f"'{group}' are known for {', '.join(LORA_TARGETS)}), found '{group}'"
        )
    layers = LORA_TARGETS[model_type]
    return [*layers["attention"], *layers["mlp"]] if group == "all" else list(layers[group])


class Lora(Method):
    name = "lora"
    default_learning_rate = 3e-4  # ChatGLM3 finetune_demo/configs/lora.yaml
    arguments = LoraArguments
    files = ("adapter_config.json", "adapter_model.safetensors")  # what peft's save_pretrained writes

    def settings(self, model, args: LoraArguments, mask: str) -> dict:
        return {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                "target": args.lora_target, "target_modules": lora_target_modules(model, args.lora_target)}

    def prepare(self, model, settings, mask):
        from peft import LoraConfig, get_peft_model

        from ptuning.injection import attach_prefix

        attach_prefix(model, None, mask)  # on the inner model: peft's forward and generate go through it
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=settings["rank"],
            lora_alpha=settings["alpha"],
            lora_dropout=settings["dropout"],
            target_modules=settings["target_modules"],
        )
        return get_peft_model(model, config)

    def save(self, model, directory, *, tokenizer, mask, template, state_dict):
        model.save_pretrained(str(directory), state_dict=state_dict)

    def load(self, model, settings, mask, directory):
        from peft import PeftModel

        from ptuning.injection import attach_prefix

        attach_prefix(model, None, mask)
        return PeftModel.from_pretrained(model, str(directory))
