"""What one server serves: a base model and checkpoints on it, loaded once and shared.

Each servable name is a :class:`Servable`: the :class:`ModelGroup` whose forward runs it, and what
makes its rows differ from the base's inside that forward:

* the base itself: nothing;
* a P-tuning checkpoint: its prefix's per-layer keys and values, computed from the encoder once,
  here, and never again (or read from an exported ``prefix_kv`` directory, with no encoder at all);
* a LoRA checkpoint: a peft adapter loaded next to the others on the same base model, chosen per
  row through peft's ``adapter_names`` (mixed-batch inference);
* a full checkpoint: a whole model, so a group of its own.

Every checkpoint on the shared base must have been trained on it: its recorded fingerprint is
compared with the base's, as ``sft.infer`` does. Templates, prompt lengths and masks come from
each checkpoint (:func:`sft.eval.loading.checkpoint_data_arguments`), so a prompt is encoded here
exactly as ``sft.infer --checkpoint DIR`` encodes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sft.checkpoint import BASE, CheckpointInfo, is_checkpoint, load_checkpoint
from sft.data import DataArguments
from sft.errors import CheckpointError, UserError
from sft.eval.generation import eos_token_ids
from sft.eval.loading import checkpoint_data_arguments
from sft.models import EMBEDDED, base_defaults, fingerprint, load_base_model, load_tokenizer, resolve_dtype, resolve_model_path

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class ModelGroup:
    """One loaded model and every servable that runs on it; rows of one group share each forward."""

    name: str
    model: nn.Module  # the transformers model, or a peft model holding every LoRA adapter
    tokenizer: object
    eos: frozenset[int]
    max_positions: int
    peft: bool = False  # forward takes adapter_names

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(eq=False)
class Servable:
    """One name a client can ask for."""

    name: str
    group: ModelGroup
    info: CheckpointInfo
    data: DataArguments  # template and max_source_length, as sft.infer reads them
    prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # (L, kv_heads, P, head_dim), (..., value_head_dim)
    adapter: str = BASE_ADAPTER
    source: str = ""

    @property
    def prefix_length(self) -> int:
        return 0 if self.prefix is None else self.prefix[0].shape[2]


@dataclass
class Catalog:
    servables: dict[str, Servable] = field(default_factory=dict)  # in serving order: the base first
    groups: list[ModelGroup] = field(default_factory=list)

    def add(self, servable: Servable) -> None:
        if servable.name in self.servables:
            raise UserError(f"checkpoint name {servable.name!r}: expected a name unlike the others "
                            f"({', '.join(self.servables)}), found it twice")
        self.servables[servable.name] = servable


def base_name(model: str) -> str:
    """``base`` for the embedded model, else the model directory's name."""
    return "base" if model == EMBEDDED else Path(model).resolve().name


def load_catalog(model: str, checkpoints: dict[str, str], dtype: str = "auto") -> Catalog:
    """Load ``model`` and every checkpoint (name -> directory) onto it; see the module docstring."""
    path = resolve_model_path(model)
    resolved = resolve_dtype(dtype)
    base = _load_group(base_name(model), load_base_model(path, resolved).eval(), load_tokenizer(path),
                       base_defaults(path)["mask"])
    catalog = Catalog(groups=[base])
    defaults = base_defaults(path)
    info = CheckpointInfo.describe(BASE, None, base=path, base_fingerprint=fingerprint(base.model),
                                   mask=defaults["mask"], template=defaults["template"], dtype=resolved)
    catalog.add(Servable(base.name, base, info, checkpoint_data_arguments(info), source=str(path)))
    for name, directory in checkpoints.items():
        catalog.add(_load_checkpoint(name, Path(directory), base, info.base_fingerprint, catalog, dtype))
    logger.info("serving %s", ", ".join(f"{s.name} ({s.info.method})" for s in catalog.servables.values()))
    return catalog


def _load_group(name: str, model: nn.Module, tokenizer, mask: str) -> ModelGroup:
    from ptuning.injection import attach_prefix

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    attach_prefix(model, None, mask)  # masks and per-row prefixes come with each forward (RowPrefixes)
    return ModelGroup(name, model, tokenizer, frozenset(eos_token_ids(model, tokenizer)), _max_positions(model))


def _max_positions(model: nn.Module) -> int:
    """How many positions the model was built for (prompt and answer together)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "max_position_embeddings", 0) or 1 << 30)


def _load_checkpoint(name: str, directory: Path, base: ModelGroup, base_fingerprint: str, catalog: Catalog,
                     dtype: str) -> Servable:
    from ptuning.prefix_kv import PrefixKVError, is_prefix_kv, load_prefix_kv

    if is_prefix_kv(directory):
        try:
            keys, values, description = load_prefix_kv(directory)
        except PrefixKVError as err:
            raise CheckpointError(str(err)) from None
        info = CheckpointInfo(**description["checkpoint"])
        _check_base(directory, info, base_fingerprint)
        return _prefix_servable(name, base, info, (keys, values), directory)
    if not is_checkpoint(directory):
        raise CheckpointError(f"checkpoint {name!r}: expected a checkpoint directory (sft_checkpoint.json) or an "
                              f"exported prefix (prefix_kv.json), found neither in {directory}")
    info = CheckpointInfo.load(directory)
    if info.method == "full":
        return _full_servable(name, directory, dtype, catalog)
    _check_base(directory, info, base_fingerprint)
    if info.method == "ptuning":
        return _prefix_servable(name, base, info, _encode_prefix(info, directory), directory)
    if info.method == "lora":
        _check_mixable(directory)
        adapter = f"adapter_{sum(s.adapter != BASE_ADAPTER for s in catalog.servables.values())}"
        _add_adapter(base, directory, adapter)
        return Servable(name, base, info, checkpoint_data_arguments(info), adapter=adapter, source=str(directory))
    raise CheckpointError(f"{directory}: expected a ptuning, lora or full checkpoint, found method {info.method}")


def _check_base(directory: Path, info: CheckpointInfo, base_fingerprint: str) -> None:
    if info.base_fingerprint != base_fingerprint:
        raise CheckpointError(f"{directory}: checkpoint was trained on base model {info.base_model} (fingerprint "
                              f"{info.base_fingerprint}), the server's base has fingerprint {base_fingerprint}")


def _encode_prefix(info: CheckpointInfo, directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's prefix keys and values, computed once: ``(L, kv_heads, P, head_dim)`` each."""
    from ptuning.checkpoint import PrefixCheckpointError, load_prefix
    from ptuning.encoder import PrefixConfig

    try:
        encoder = load_prefix(PrefixConfig.from_dict(info.ptuning), directory).eval()
    except PrefixCheckpointError as err:
        raise CheckpointError(str(err)) from None
    with torch.no_grad():
        return encoder()


def _prefix_servable(name: str, base: ModelGroup, info: CheckpointInfo, prefix, directory: Path) -> Servable:
    from ptuning.layout import kv_layout

    layout = kv_layout(base.model.config)
    keys, values = prefix
    expected = (layout.num_layers, layout.num_kv_heads, keys.shape[2], layout.head_dim)
    if tuple(keys.shape) != expected or values.shape[-1] != layout.value_head_dim:
        raise CheckpointError(f"{directory}: prefix keys expected shape {expected} for the base's {layout}, "
                              f"found {tuple(keys.shape)}")
    dtype = next(base.model.parameters()).dtype  # attention casts the prefix to its dtype: do it once
    prefix = (keys.to(base.device, dtype), values.to(base.device, dtype))
    return Servable(name, base, info, checkpoint_data_arguments(info), prefix=prefix, source=str(directory))


def _check_mixable(directory: Path) -> None:
    """A LoRA adapter the server can choose per row: peft's mixed batches (``adapter_names``) take neither
    DoRA nor adapters on parameters (``target_parameters``, e.g. MoE experts), which would fail every request."""
    config_file = directory / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file}: expected a peft adapter config, found {err}") from None
    unmixable = [name for name, on in (("DoRA (use_dora)", config.get("use_dora")),
                                       ("target_parameters", config.get("target_parameters"))) if on]
    if unmixable:
        raise CheckpointError(
            f"{directory}: expected a LoRA adapter that can share a batch with other checkpoints, found "
            f"{' and '.join(unmixable)}, which peft cannot mix per row; serve it merged instead: "
            f"python -m sft.export --checkpoint {directory}, then --checkpoint NAME=<checkpoint>-merged"
        )


def _add_adapter(base: ModelGroup, directory: Path, adapter: str) -> None:
    """Load a LoRA adapter next to the others (the first one wraps the base model into a peft model)."""
    from peft import PeftModel

    if not base.peft:
        base.model = PeftModel.from_pretrained(base.model, str(directory), adapter_name=adapter).eval()
        base.peft = True
    else:
        base.model.load_adapter(str(directory), adapter_name=adapter)
    base.model.eval()


def _full_servable(name: str, directory: Path, dtype: str, catalog: Catalog) -> Servable:
    """A full checkpoint: a whole model of its own, loaded as sft.infer loads it."""
    model, tokenizer, info = load_checkpoint(directory, dtype=None if dtype == "auto" else dtype)
    model.to(catalog.groups[0].device)  # its mask hook was attached by the full method's load
    group = ModelGroup(name, model, tokenizer, frozenset(eos_token_ids(model, tokenizer)), _max_positions(model))
    catalog.groups.append(group)
    return Servable(name, group, info, checkpoint_data_arguments(info), source=str(directory))
