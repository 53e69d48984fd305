"""Fine-tuning checkpoints that describe themselves.

A checkpoint directory holds the trained weights of one method and ``sft_checkpoint.json``
with everything needed to rebuild the model from the directory alone: the base model and
its fingerprint, the method and its settings, the mask, the prompt template, the dtype and
the library versions. Loading verifies all of it and fails with one line on a mismatch.

* ``ptuning``: ``prefix.safetensors`` (a few MB at most).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ptuning.checkpoint import PrefixCheckpointError, load_prefix, save_prefix
from ptuning.encoder import PrefixConfig, PrefixEncoder
from ptuning.injection import attach_prefix
from ptuning.layout import kv_layout
from sft.models import (
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
METHODS = ("ptuning",)


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


def save_trained(model: PreTrainedModel, info: CheckpointInfo, directory: str | Path) -> None:
    """Write the trained part of ``model`` and ``info`` into ``directory``."""
    if info.method == "ptuning":
        save_prefix(model.prefix_encoder, directory)
    info.save(directory)


def load_trained(model: PreTrainedModel, info: CheckpointInfo, directory: str | Path) -> PreTrainedModel:
    """Load the weights saved by :func:`save_trained` into a model prepared the same way."""
    if info.method == "ptuning":
        state = load_prefix(model.prefix_encoder.config, directory).state_dict()
        model.prefix_encoder.load_state_dict(state)
    return model


def _check_expectations(info: CheckpointInfo, expect: dict, directory: Path) -> None:
    """Flags given on the command line must agree with the checkpoint, not silently win."""
    recorded = dict(info.ptuning or {})
    recorded.update(method=info.method, template=info.template, mask=info.mask)
    for key, wanted in expect.items():
        if wanted is None or key not in recorded:
            continue
        if recorded[key] != wanted:
            raise CheckpointError(f"{directory}: checkpoint has {key} {recorded[key]}, --{key} says {wanted}")


def build_ptuning(model: PreTrainedModel, config: PrefixConfig) -> PrefixEncoder:
    """Freeze ``model`` and attach a fresh prefix encoder (the only trainable part)."""
    model.requires_grad_(False)
    encoder = PrefixEncoder(config).to(model.device)
    attach_prefix(model, encoder, config.mask)
    return encoder


def load_checkpoint(
    directory: str | Path,
    *,
    model_name_or_path: str | None = None,
    dtype: str | None = None,
    expect: dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, CheckpointInfo]:
    """Rebuild base model + trained method from a checkpoint directory, verifying everything.

    ``model_name_or_path`` overrides where the base model is read from (its fingerprint must
    still match); ``expect`` holds settings the caller was given (e.g. ``pre_seq_len``).
    """
    directory = Path(directory)
    info = CheckpointInfo.load(directory)
    if info.method not in METHODS:
        raise CheckpointError(f"{directory}: expected method one of {', '.join(METHODS)}, found {info.method!r}")
    _check_expectations(info, expect or {}, directory)
    base_path = resolve_model_path(model_name_or_path or info.base_model)
    model = load_base_model(base_path, resolve_dtype(dtype or info.dtype))
    found = fingerprint(model)
    if found != info.base_fingerprint:
        raise CheckpointError(
            f"{directory}: checkpoint was trained on base model {info.base_model} (fingerprint "
            f"{info.base_fingerprint}), found {base_path} with fingerprint {found}"
        )
    tokenizer = load_tokenizer(base_path)
    if info.method == "ptuning":
        config = PrefixConfig.from_dict(info.ptuning)
        layout = kv_layout(model.config)
        if config.layout != layout:
            raise CheckpointError(f"{directory}: prefix built for {config.layout}, base model has {layout}")
        build_ptuning(model, config)
    try:
        load_trained(model, info, directory)
    except PrefixCheckpointError as err:
        raise CheckpointError(str(err)) from None
    model.eval()
    logger.info("loaded %s checkpoint %s on %s", info.method, directory, base_path)
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
