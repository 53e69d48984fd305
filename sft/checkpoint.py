"""Fine-tuning checkpoints that describe themselves.

A checkpoint directory holds what one method trained (:mod:`sft.methods`) and
``sft_checkpoint.json`` with everything needed to rebuild the model from the directory alone:
the base model and its fingerprint, the method and its settings, the mask, the prompt template,
the dtype and the library versions. Loading verifies all of it and fails with one line on a
mismatch.

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
from pathlib import Path
from typing import TYPE_CHECKING

from sft.errors import CheckpointError
from sft.methods import Method, get_method
from sft.models import (
    EMBEDDED,
    base_defaults,
    cpu_computes_bf16,
    fingerprint,
    load_base_model,
    load_tokenizer,
    portable_name,
    resolve_dtype,
    resolve_model_path,
)
from sft.versions import library_versions

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "sft_checkpoint.json"
BASE = "base"  # the method of a plain model directory loaded for generation


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

    @classmethod
    def describe(
        cls,
        method: str,
        settings: dict | None,
        *,
        base: Path,
        base_fingerprint: str,
        mask: str,
        template: str,
        dtype: torch.dtype | str,
        data: dict | None = None,
    ) -> CheckpointInfo:
        """The one place a description is assembled: ``settings`` goes under the method's name."""
        sections = {method: settings} if settings is not None else {}
        return cls(
            method=method,
            base_model=portable_name(base),
            base_fingerprint=base_fingerprint,
            template=template,
            mask=mask,
            dtype=str(dtype).removeprefix("torch."),
            data=dict(data or {}),
            **sections,
        )

    @property
    def settings(self) -> dict | None:
        """The method's own section (``ptuning``, ``lora``; none for ``full``)."""
        return getattr(self, self.method, None)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CHECKPOINT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> CheckpointInfo:
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            raise CheckpointError(f"{directory}: expected a checkpoint directory with {CHECKPOINT_FILE}, found none")
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"{path}: expected a checkpoint description, found unreadable content ({err})")


def save_checkpoint(
    model,
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
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    get_method(info.method, "method").save(
        model, directory, tokenizer=tokenizer, mask=info.mask, template=info.template, state_dict=state_dict
    )
    info.save(directory)


def _check_expectations(info: CheckpointInfo, expect: dict, directory: Path) -> None:
    """Flags given on the command line must agree with the checkpoint, not silently win."""
    recorded = dict(info.settings or {})
    recorded.update(method=info.method, template=info.template, mask=info.mask)
    for key, wanted in expect.items():
        if wanted is None or key not in recorded:
            continue
        if recorded[key] != wanted:
            raise CheckpointError(f"{directory}: checkpoint has {key} {recorded[key]}, --{key} says {wanted}")


def _require_files(directory: Path, method: Method) -> None:
    missing = [name for name in method.files if not any((directory / option).is_file() for option in name.split("|"))]
    if missing:
        raise CheckpointError(f"{directory}: expected the {method.name} checkpoint files {', '.join(method.files)}, "
                              f"found no {', '.join(missing)}")


def _load_base(
    directory: Path, info: CheckpointInfo, method: Method, model_name_or_path: str | None, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model the method's weights go onto: the checkpoint itself for a whole model, else the recorded
    base (or ``model_name_or_path``), refused unless its fingerprint matches."""
    if method.own_model:
        if model_name_or_path:
            raise CheckpointError(f"{directory}: a {method.name} fine-tuning checkpoint is a whole model, found "
                                  f"--model_name_or_path {model_name_or_path} (leave it out)")
        return load_base_model(directory.resolve(), dtype), load_tokenizer(directory.resolve())
    base_path = resolve_model_path(model_name_or_path or info.base_model)
    model = load_base_model(base_path, dtype)
    found = fingerprint(model)
    if found != info.base_fingerprint:
        raise CheckpointError(
            f"{directory}: checkpoint was trained on base model {info.base_model} (fingerprint "
            f"{info.base_fingerprint}), found {base_path} with fingerprint {found}"
        )
    return model, load_tokenizer(base_path)


def loading_dtype(dtype: str | None, recorded: str) -> torch.dtype:
    """The dtype a checkpoint loads in: ``dtype`` if given, else the one it trained in, except bf16 or fp16 on a
    machine that only emulates them (no GPU; a CPU without AMX for bf16, any CPU for fp16), where fp32 runs
    faster: a checkpoint trained on a GPU, or on a CPU with AMX, still evaluates at full speed elsewhere."""
    import torch

    if dtype is None and recorded in ("bfloat16", "float16") and not torch.cuda.is_available():
        if recorded == "float16" or not cpu_computes_bf16():
            logger.info("loading in float32: the checkpoint trained in %s, which this CPU emulates "
                        "(--dtype %s to keep it)", recorded, recorded)
            return torch.float32
    return resolve_dtype(dtype or recorded)


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
    method = get_method(info.method, f"{directory / CHECKPOINT_FILE}: method")
    _check_expectations(info, expect or {}, directory)
    _require_files(directory, method)
    model, tokenizer = _load_base(directory, info, method, model_name_or_path, loading_dtype(dtype, info.dtype))
    model = method.load(model, info.settings, info.mask, directory).eval()
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
    from ptuning.injection import attach_prefix

    if path != EMBEDDED and is_checkpoint(path):
        return load_checkpoint(path, model_name_or_path=model_name_or_path, dtype=dtype, expect=expect)
    base_path = resolve_model_path(path)
    defaults = base_defaults(base_path)
    defaults.update({k: v for k, v in (expect or {}).items() if k in ("mask", "template") and v not in (None, "auto")})
    resolved = resolve_dtype(dtype or "auto")
    model = load_base_model(base_path, resolved).eval()
    attach_prefix(model, None, defaults["mask"])
    info = CheckpointInfo.describe(BASE, None, base=base_path, base_fingerprint=fingerprint(model),
                                   mask=defaults["mask"], template=defaults["template"], dtype=resolved)
    return model, load_tokenizer(base_path), info
