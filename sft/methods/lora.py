"""LoRA: the base is frozen; peft adds a low-rank update ``B @ A * alpha / rank`` to each weight
``--lora_target`` names. A checkpoint is a standard peft adapter (``python -m sft.export`` merges it).

``--lora_target`` is a comma list of groups and names. The groups, by ``config.model_type``
(:data:`LORA_TARGETS`; a group takes the names the model has):

* ``attention``: ``q_proj k_proj v_proj o_proj`` (``glm``, ``glm4``, ``glm4_moe``); with
  multi-head latent attention (``glm4_moe_lite``, ``glm_moe_dsa``) ``q_a_proj q_b_proj``
  (``q_proj`` where the config has no ``q_lora_rank``) ``kv_a_proj_with_mqa kv_b_proj o_proj``.
* ``mlp``: the feed-forward layers that are plain linear layers: ``gate_up_proj down_proj``
  (``glm``, ``glm4``); in the MoE families the dense MLP of the first layers and the shared
  experts of the others, ``gate_proj up_proj down_proj``.
* ``experts`` (MoE families only): the routed experts, ``mlp.experts.gate_up_proj`` and
  ``mlp.experts.down_proj``, each expert with its own rank-``r`` update.
* ``all`` (default): every group the model has; for MoE models routed experts included.
  ``--lora_target attention,mlp`` leaves the routed experts frozen.

A name is the last part of a linear layer's name (``q_proj``) or the end of a parameter's name
(``mlp.experts.down_proj``). Linear layers go to peft's ``target_modules``; parameters to its
``target_parameters``, which adapts a weight directly. MoE models need the latter twice:

* transformers 5 stores each MoE layer's routed experts as two fused 3-D parameters (``(E, 2I, H)``
  and ``(E, H, I)``), not as linear layers, so ``target_modules`` cannot reach them by name;
* peft 0.21 rewrites the names ``gate_proj``, ``up_proj`` and ``down_proj`` on these model types
  into the routed experts' fused parameters (its conversion of adapters trained with
  transformers 4, huggingface/peft#3711), which would leave the dense MLP and the shared experts
  unadapted; so ``mlp`` names their weights (``gate_proj.weight``, ...), the same update.

peft applies no dropout to ``target_parameters``: ``--lora_dropout`` is then 0 by default and a
non-zero value is refused. peft merges them like any LoRA weight. The router (``mlp.gate``) and
``glm_moe_dsa``'s indexer are never adapted (transformers runs the indexer under ``no_grad``,
so it would get no gradient). After peft has built the adapter, :meth:`Lora.prepare` checks that
it adapted exactly the layers and parameters asked for and logs them by group, saying whether
routed experts were included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sft.errors import UserError
from sft.methods.base import Method
from sft.methods.sparse_dropout import use_sparse_dropout

logger = logging.getLogger(__name__)

_GQA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLA_ATTENTION = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
_MOE_MLP = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")  # weights, not names: see the docstring
_ROUTED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
_GQA_DENSE = {"attention": _GQA_ATTENTION, "mlp": ("gate_up_proj", "down_proj")}  # SwiGLU gate fused with up
_GQA_MOE = {"attention": _GQA_ATTENTION, "mlp": _MOE_MLP, "experts": _ROUTED_EXPERTS}
_MLA_MOE = {"attention": _MLA_ATTENTION, "mlp": _MOE_MLP, "experts": _ROUTED_EXPERTS}

# What each group names, by config.model_type (peft knows no defaults for these).
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "glm": _GQA_DENSE,
    "glm4": _GQA_DENSE,
    "glm4_moe": _GQA_MOE,
    "glm4_moe_lite": _MLA_MOE,
    "glm_moe_dsa": _MLA_MOE,
}
LORA_TARGET_GROUPS = ("all", "attention", "mlp", "experts")
_RENAMING_HINT = ("on MoE models peft renames gate_proj/up_proj/down_proj targets to the routed experts "
                  "(huggingface/peft#3711): name such layers' weights (down_proj.weight) or use the groups "
                  "mlp, experts")
DEFAULT_DROPOUT = 0.05


@dataclass
class LoraArguments:
    lora_rank: int = field(default=8, metadata={"help": "Rank r of each low-rank update B @ A."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling: updates are scaled by alpha / rank."})
    lora_dropout: float | None = field(
        default=None,
        metadata={"help": f"Dropout on the LoRA branch's input while training (default {DEFAULT_DROPOUT}; 0, the "
                          "only value peft supports there, where it adapts weights as parameters: MoE models' "
                          "routed experts, dense MLP and shared experts)."},
    )
    lora_target: str = field(
        default="all",
        metadata={"help": "What gets adapters, a comma list of groups and names. Groups: attention; mlp (the "
                          "feed-forward linear layers: in MoE models the dense MLP and the shared experts); experts "
                          "(MoE routed experts, every expert of every MoE layer); all (every group the model has, "
                          "routed experts included: attention,mlp leaves them out). With the MLP, LoRA comes "
                          "closest to full fine-tuning, as the QLoRA paper found; attention is what ChatGLM's own "
                          "LoRA demos adapt. Names: linear layers (q_proj,v_proj) or parameters "
                          "(mlp.experts.down_proj). Per model type: sft/methods/lora.py."},
    )

    def __post_init__(self) -> None:
        problems = []
        if self.lora_rank < 1:
            problems.append(f"--lora_rank: expected a positive integer, found {self.lora_rank}")
        if self.lora_alpha <= 0:
            problems.append(f"--lora_alpha: expected a positive number, found {self.lora_alpha}")
        if self.lora_dropout is not None and not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"--lora_dropout: expected a value in [0, 1), found {self.lora_dropout}")
        if not all(name.strip() for name in self.lora_target.split(",")):
            problems.append(f"--lora_target: expected a comma list of groups ({', '.join(LORA_TARGET_GROUPS)}) "
                            f"and layer or parameter names, found {self.lora_target!r}")
        if problems:
            raise ValueError("; ".join(problems))


def _groups_of(model_type: str, group: str) -> dict[str, tuple[str, ...]]:
    if model_type not in LORA_TARGETS:
        raise UserError(
            f"--lora_target: expected layer or parameter names for model type {model_type!r} (groups such as "
            f"'{group}' are known for {', '.join(LORA_TARGETS)}), found '{group}'"
        )
    known = LORA_TARGETS[model_type]
    if group == "all":
        return known
    if group not in known:
        raise UserError(f"--lora_target: expected one of all, {', '.join(known)} for model type {model_type!r}, "
                        f"found '{group}'")
    return {group: known[group]}


def lora_targets(model, target: str) -> tuple[list[str], list[str]]:
    """``--lora_target`` as ``(linear layer names, parameter names)`` of ``model``: peft's ``target_modules``
    and ``target_parameters``. A group keeps the names the model has; a name given outright must exist."""
    from torch import nn

    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    parameters = [name for name, _ in model.named_parameters()]

    def kind(name: str) -> str | None:
        if name in linear:
            return "module"
        if any(p == name or p.endswith("." + name) for p in parameters):
            return "parameter"
        return None

    model_type = getattr(model.config, "model_type", "")
    chosen: dict[str, str] = {}  # name -> kind, in order
    missing = []
    for item in (item.strip() for item in target.split(",")):
        if item in LORA_TARGET_GROUPS:
            for names in _groups_of(model_type, item).values():
                chosen.update({name: found for name in names if (found := kind(name))})
        elif found := kind(item):
            chosen[item] = found
        else:
            missing.append(item)
    if missing:
        raise UserError(
            f"--lora_target: expected linear layers of the base model ({', '.join(sorted(linear))}) or ends of "
            f"parameter names, found {', '.join(missing)}"
        )
    return ([name for name, k in chosen.items() if k == "module"],
            [name for name, k in chosen.items() if k == "parameter"])


def _expected_targets(model, modules: list[str], parameters: list[str]) -> set[str]:
    """Full names of the linear layers and parameters the targets select in the unwrapped ``model``."""
    from torch import nn

    found = {name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in modules}
    found |= {name for name, _ in model.named_parameters()
              if any(name == p or name.endswith("." + p) for p in parameters)}
    return found


def _adapted(peft_model) -> dict[str, int]:
    """What peft adapted, under the unwrapped model's names, with its number of LoRA parameters."""
    from peft.tuners.lora import LoraLayer, ParamWrapper

    adapted = {}
    for name, module in peft_model.base_model.model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        name = name.replace(".base_layer", "")  # ParamWrappers on one module nest
        if isinstance(module, ParamWrapper):
            name = f"{name}.{module.parameter_name}"
        adapted[name] = sum(p.numel() for part in (module.lora_A, module.lora_B) for p in part.parameters())
    return adapted


def _check_adapted(peft_model, expected: set[str], settings: dict) -> dict[str, int]:
    """peft must have adapted exactly ``expected``; returns what it adapted."""
    from importlib.metadata import version

    adapted = _adapted(peft_model)
    if set(adapted) != expected:
        missing, extra = sorted(expected - set(adapted)), sorted(set(adapted) - expected)
        raise UserError(
            f"--lora_target {settings['target']}: peft {version('peft')} adapted {', '.join(extra) or 'nothing else'} "
            f"and not {', '.join(missing) or 'nothing missing'}; {_RENAMING_HINT}"
        )
    return adapted


def _log_adapted(model_type: str, settings: dict, adapted: dict[str, int]) -> None:
    """One line per group: which names, how many weights, how many LoRA parameters; and for MoE models
    whether the routed experts were included."""
    known = LORA_TARGETS.get(model_type, {})
    moe = "experts" in known
    labels = {"mlp": "mlp (dense MLP, shared experts)" if moe else "mlp", "experts": "routed experts"}
    groups = {name: labels.get(group, group) for group, names in known.items() for name in names}
    by_group: dict[str, dict] = {}
    for target in (*settings["target_modules"], *settings.get("target_parameters", ())):
        selected = [n for n in adapted if n.rsplit(".", 1)[-1] == target or n.endswith("." + target)]
        entry = by_group.setdefault(groups.get(target, "named layers"), {"names": [], "count": 0, "parameters": 0})
        entry["names"].append(target)
        entry["count"] += len(selected)
        entry["parameters"] += sum(adapted[n] for n in selected)
    for group, entry in by_group.items():
        logger.info("LoRA adapts %s: %s (%d weights, %d trainable parameters)",
                    group, ", ".join(entry["names"]), entry["count"], entry["parameters"])
    if moe and labels["experts"] not in by_group:
        logger.info("LoRA leaves the routed experts frozen (fused weights %s: add experts to --lora_target)",
                    ", ".join(_ROUTED_EXPERTS))


class Lora(Method):
    name = "lora"
    default_learning_rate = 3e-4  # ChatGLM3 finetune_demo/configs/lora.yaml
    arguments = LoraArguments
    files = ("adapter_config.json", "adapter_model.safetensors")  # what peft's save_pretrained writes

    def settings(self, model, args: LoraArguments, mask: str) -> dict:
        modules, parameters = lora_targets(model, args.lora_target)
        dropout = args.lora_dropout
        if dropout is None:
            dropout = 0.0 if parameters else DEFAULT_DROPOUT
        if parameters and dropout:
            raise UserError(
                f"--lora_dropout: expected 0 where peft adapts weights as parameters ({', '.join(parameters)}: it "
                f"supports no dropout there), found {dropout}"
            )
        return {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": dropout, "target": args.lora_target,
                "target_modules": modules, "target_parameters": parameters}

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
            target_parameters=settings["target_parameters"] or None,
        )
        expected = _expected_targets(model, settings["target_modules"], settings["target_parameters"])
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as err:  # peft's word on targets it cannot adapt, e.g. renamed to fused experts
            raise UserError(f"--lora_target {settings['target']}: peft cannot adapt these targets ({err}); "
                            f"{_RENAMING_HINT}") from None
        _log_adapted(model.config.model_type, settings, _check_adapted(peft_model, expected, settings))
        use_sparse_dropout(peft_model)  # the same dropout, drawn faster on CPU (sft.methods.sparse_dropout)
        return peft_model

    def save(self, model, directory, *, tokenizer, mask, template, state_dict):
        model.save_pretrained(str(directory), state_dict=state_dict)

    def load(self, model, settings, mask, directory):
        from peft import PeftModel

        from ptuning.injection import attach_prefix

        attach_prefix(model, None, mask)
        expected = _expected_targets(model, settings["target_modules"], settings.get("target_parameters", []))
        peft_model = PeftModel.from_pretrained(model, str(directory))
        _check_adapted(peft_model, expected, settings)
        use_sparse_dropout(peft_model)
        return peft_model
