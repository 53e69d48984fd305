"""What each fine-tuning method trains on a base model, and how its trainable part is built.

* ``ptuning``: the base is frozen; a prefix encoder's soft prompts enter every layer's
  attention (:mod:`ptuning.injection`).
* ``lora``: the base is frozen; peft adds low-rank updates ``B @ A`` beside the linear layers
  named by ``--lora_target`` (:data:`LORA_TARGETS` has the names per model family).
* ``full``: every weight trains.

All three run the base with the same attention mask (causal or prefix-LM, what the checkpoint
records): the mask hook sits on the transformers model itself, so it also applies under
peft's wrapper, whose ``forward`` and ``generate`` call the wrapped model.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from ptuning.encoder import PrefixConfig, PrefixEncoder
from ptuning.injection import attach_prefix

METHODS = ("ptuning", "lora", "full")

# The linear layers of one decoder block, by ``config.model_type`` (peft knows none for glm/glm4).
# transformers' Glm/Glm4 split q/k/v and fuse the SwiGLU gate with its up projection; THUDM's
# ChatGLM2/3 remote code fuses q/k/v into query_key_value and names its MLP dense_h_to_4h/_4h_to_h.
_TRANSFORMERS_GLM = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_up_proj", "down_proj")}
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "glm": _TRANSFORMERS_GLM,
    "glm4": _TRANSFORMERS_GLM,
    "chatglm": {"attention": ("query_key_value", "dense"), "mlp": ("dense_h_to_4h", "dense_4h_to_h")},
}
LORA_TARGET_GROUPS = ("all", "attention", "mlp")


class MethodError(ValueError):
    """Method settings that do not fit the base model (e.g. LoRA target modules it does not have)."""


def lora_target_modules(model: nn.Module, target: str) -> list[str]:
    """``--lora_target`` as module names: ``all`` (attention + MLP), ``attention``, ``mlp`` or a comma list.

    Every name must be the last part of some module's name in ``model``.
    """
    if target in LORA_TARGET_GROUPS:
        names = _group_modules(getattr(model.config, "model_type", ""), target)
    else:
        names = [name.strip() for name in target.split(",") if name.strip()]
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [name for name in names if name not in present]
    if missing:
        raise MethodError(
            f"--lora_target: expected linear layers of the base model ({', '.join(sorted(present))}), "
            f"found {', '.join(missing)}"
        )
    return names


def _group_modules(model_type: str, group: str) -> list[str]:
    if model_type not in LORA_TARGETS:
        raise MethodError(
            f"--lora_target: expected a comma list of module names for model type {model_type!r} (groups such as "
            f"'{group}' are known for {', '.join(LORA_TARGETS)}), found '{group}'"
        )
    layers = LORA_TARGETS[model_type]
    return [*layers["attention"], *layers["mlp"]] if group == "all" else list(layers[group])


def build_ptuning(model: PreTrainedModel, config: PrefixConfig) -> PrefixEncoder:
    """Freeze ``model`` and attach a fresh prefix encoder (the only trainable part)."""
    model.requires_grad_(False)
    encoder = PrefixEncoder(config).to(model.device)
    attach_prefix(model, encoder, config.mask)
    return encoder


def build_lora(model: PreTrainedModel, section: dict, mask: str) -> PeftModel:
    """Freeze ``model`` and wrap it with fresh LoRA adapters as ``section`` (a checkpoint's ``lora``) says."""
    attach_prefix(model, None, mask)  # on the inner model: peft's forward and generate go through it
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=section["rank"],
        lora_alpha=section["alpha"],
        lora_dropout=section["dropout"],
        target_modules=section["target_modules"],
    )
    return get_peft_model(model, config)


def build_full(model: PreTrainedModel, mask: str) -> PreTrainedModel:
    """Make every weight of ``model`` trainable, run with ``mask``."""
    model.requires_grad_(True)
    attach_prefix(model, None, mask)
    return model
