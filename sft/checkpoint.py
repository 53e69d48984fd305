"""Fine-tuning checkpoints that describe themselves.

A checkpoint directory holds the trained weights of one method and ``sft_checkpoint.json``
with everything needed to rebuild the model from the directory alone: the base model and
its fingerprint, the method and its settings, the mask, the prompt template, the dtype and
the library versions. Loading verifies all of it and fails with one line on a mismatch.

* ``ptuning``: ``prefix.safetensors`` (a few MB at most), used with the recorded base model.
* ``lora``: a standard peft adapter (``adapter_config.json``, ``adapter_model.safetensors``),
  used with the recorded base model; ``python -m sft.export`` merges it into a standalone model.
* ``full``: a standalone transformers model directory (``config.json``, ``model.safetensors``,
  ``generation_config.json``, the tokenizer and ``sft_defaults.json``). It loads from the
  directory itself; the recorded base fingerprint is that of the model training started from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ptuning.checkpoint import PrefixCheckpointError, load_prefix, save_prefix
from ptuning.encoder import PrefixConfig
from ptuning.injection import attach_prefix
from ptuning.layout import kv_layout
from sft.methods import METHODS, build_ptuning
from sft.models import (
    DEFAULTS_FILE,
    ModelLoadError,
    base_defaults,
    fingerprint,
    load_base_model,
    load_tokenizer,
    portable_name,
    resolve_dtype,
    resolve_model_path,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "sft_checkpoint.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft's save_pretrained writes
MODEL_FILES = ("config.json", "model.safetensors|model.safetensors.index.json")  # a|b: either (big models shard)


class CheckpointError(ValueError):
    """A checkpoint that is incomplete or does not match what it is loaded with."""


def library_versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "transformers", "peft", "glm-sft"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


@dataclass
class CheckpointInfo:
    """The content of ``sft_checkpoint.json``."""

    method: str
    base_model: str
    base_fingerprint: str
    template: str
    mask: str
    dtype: str
    data: dict = field(default_factory=dict)
    ptuning: dict | None = None
    lora: dict | None = None
    versions: dict = field(default_factory=library_versions)
    format_version: int = 1

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CHECKPOINT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "CheckpointInfo":
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            raise CheckpointError(f"{directory}: expected a checkpoint directory with {CHECKPOINT_FILE}, found none")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"{path}: expected a checkpoint description, found unreadable content ({err})")


def save_model_dir(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    mask: str,
    template: str,
    directory: str | Path,
    state_dict: dict | None = None,
) -> None:
    """A standalone transformers model directory: safetensors weights, config, generation config, tokenizer,
    and ``sft_defaults.json``, so that ``--mask auto``/``--template auto`` and ``sft.infer`` use the mask
    and template it was trained with.
    """
    directory = Path(directory)
    model.save_pretrained(str(directory), state_dict=state_dict)
    tokenizer.save_pretrained(str(directory))
    defaults = {"mask": mask, "template": template}
    (directory / DEFAULTS_FILE).write_text(json.dumps(defaults) + "\n", encoding="utf-8")


def save_trained(
    model: PreTrainedModel,
    info: CheckpointInfo,
    directory: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    state_dict: dict | None = None,
) -> None:
    """Write what ``info.method`` trained and ``info`` into ``directory``.

    ``tokenizer`` is needed for ``full`` (its directory is a whole model); ``state_dict`` is the
    gathered one the Trainer hands over under DeepSpeed ZeRO-3 (LoRA and full only).
    """
    if info.method == "ptuning":
        save_prefix(model.prefix_encoder, directory)
    elif info.method == "lora":
        model.save_pretrained(str(directory), state_dict=state_dict)
    else:
        assert tokenizer is not None, "a full fine-tuning checkpoint includes the tokenizer"
        save_model_dir(model, tokenizer, info.mask, info.template, directory, state_dict)
    info.save(directory)


def load_trained(model: PreTrainedModel, info: CheckpointInfo, directory: str | Path) -> PreTrainedModel:
    """Load a prefix saved by :func:`save_trained` into a model prepared the same way.

    LoRA adapters and full models are peft's and transformers' own formats: their libraries
    (and transformers' Trainer, when resuming) load them.
    """
    if info.method == "ptuning":
        state = load_prefix(model.prefix_encoder.config, directory).state_dict()
        model.prefix_encoder.load_state_dict(state)
    return model


def _check_expectations(info: CheckpointInfo, expect: dict, directory: Path) -> None:
    """Flags given on the command line must agree with the checkpoint, not silently win."""
    recorded = {**(info.ptuning or {}), **(info.lora or {})}
    recorded.update(method=info.method, template=info.template, mask=info.mask)
    for key, wanted in expect.items():
        if wanted is None or key not in recorded:
            continue
        if recorded[key] != wanted:
            raise CheckpointError(f"{directory}: checkpoint has {key} {recorded[key]}, --{key} says {wanted}")


def _require_files(directory: Path, info: CheckpointInfo, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not any((directory / option).is_file() for option in name.split("|"))]
    if missing:
        raise CheckpointError(f"{directory}: expected the {info.method} checkpoint files {', '.join(names)}, "
                              f"found no {', '.join(missing)}")


def _load_verified_base(
    directory: Path, info: CheckpointInfo, model_name_or_path: str | None, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The recorded base model (or ``model_name_or_path``), refused unless its fingerprint matches."""
    base_path = resolve_model_path(model_name_or_path or info.base_model)
    model = load_base_model(base_path, dtype)
    found = fingerprint(model)
    if found != info.base_fingerprint:
        raise CheckpointError(
            f"{directory}: checkpoint was trained on base model {info.base_model} (fingerprint "
            f"{info.base_fingerprint}), found {base_path} with fingerprint {found}"
        )
    return model, load_tokenizer(base_path)


def _rebuild_ptuning(model: PreTrainedModel, info: CheckpointInfo, directory: Path) -> PreTrainedModel:
    config = PrefixConfig.from_dict(info.ptuning)
    layout = kv_layout(model.config)
    if config.layout != layout:
        raise CheckpointError(f"{directory}: prefix built for {config.layout}, base model has {layout}")
    build_ptuning(model, config)
    try:
        return load_trained(model, info, directory)
    except PrefixCheckpointError as err:
        raise CheckpointError(str(err)) from None


def _rebuild_lora(model: PreTrainedModel, info: CheckpointInfo, directory: Path) -> PeftModel:
    _require_files(directory, info, ADAPTER_FILES)
    attach_prefix(model, None, info.mask)  # on the inner model: peft's forward and generate go through it
    return PeftModel.from_pretrained(model, str(directory))


def _load_full(
    directory: Path, info: CheckpointInfo, model_name_or_path: str | None, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A full fine-tuning checkpoint is its own model: there is no other base to read."""
    if model_name_or_path:
        raise CheckpointError(
            f"{directory}: a full fine-tuning checkpoint is a whole model, found --model_name_or_path "
            f"{model_name_or_path} (leave it out)"
        )
    _require_files(directory, info, MODEL_FILES)
    model = load_base_model(directory.resolve(), dtype)
    attach_prefix(model, None, info.mask)
    return model, load_tokenizer(directory.resolve())


def load_checkpoint(
    directory: str | Path,
    *,
    model_name_or_path: str | None = None,
    dtype: str | None = None,
    expect: dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, CheckpointInfo]:
    """Rebuild base model + trained method from a checkpoint directory, verifying everything.

    ``model_name_or_path`` overrides where the base model is read from (its fingerprint must
    still match; a full checkpoint has no separate base); ``expect`` holds settings the caller
    was given (e.g. ``pre_seq_len``). A LoRA checkpoint comes back as a peft ``PeftModel``.
    """
    directory = Path(directory)
    info = CheckpointInfo.load(directory)
    if info.method not in METHODS:
        raise CheckpointError(f"{directory}: expected method one of {', '.join(METHODS)}, found {info.method!r}")
    _check_expectations(info, expect or {}, directory)
    torch_dtype = resolve_dtype(dtype or info.dtype)
    if info.method == "full":
        model, tokenizer = _load_full(directory, info, model_name_or_path, torch_dtype)
    else:
        model, tokenizer = _load_verified_base(directory, info, model_name_or_path, torch_dtype)
        rebuild = _rebuild_ptuning if info.method == "ptuning" else _rebuild_lora
        model = rebuild(model, info, directory)
    model.eval()
    logger.info("loaded %s checkpoint %s (base model %s)", info.method, directory, info.base_model)
    return model, tokenizer, info


def is_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / CHECKPOINT_FILE).is_file()


def load_for_inference(
    path: str, *, model_name_or_path: str | None = None, dtype: str | None = None, expect: dict | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, CheckpointInfo]:
    """A fine-tuning checkpoint directory, a plain model directory or ``embedded``, ready to generate.

    For a plain model the returned info has method ``base`` and the mask and template the
    model was built for (:func:`sft.models.base_defaults`), overridable through ``expect``.
    """
    if path != "embedded" and is_checkpoint(path):
        return load_checkpoint(path, model_name_or_path=model_name_or_path, dtype=dtype, expect=expect)
    base_path = resolve_model_path(path)
    defaults = base_defaults(base_path)
    overrides = {k: v for k, v in (expect or {}).items() if k in ("mask", "template") and v not in (None, "auto")}
    defaults.update(overrides)
    resolved = resolve_dtype(dtype or "auto")
    model = load_base_model(base_path, resolved).eval()
    attach_prefix(model, None, defaults["mask"])
    info = CheckpointInfo(
        method="base",
        base_model=portable_name(base_path),
        base_fingerprint=fingerprint(model),
        template=defaults["template"],
        mask=defaults["mask"],
        dtype=str(resolved).removeprefix("torch."),
    )
    return model, load_tokenizer(base_path), info
