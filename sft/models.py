"""Base models: where they come from, how they load, their defaults and their fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sft.embedded import DEFAULT_MODEL_DIR
from sft.errors import UserError

if TYPE_CHECKING:  # torch and transformers load with the first model, not with --help
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"  # how checkpoints name the shipped default, wherever the repo lives
DEFAULTS_FILE = "sft_defaults.json"  # optional, beside a base model: {"mask": ..., "template": ...}
DTYPE_NAMES = ("float32", "bfloat16", "float16")


class ModelLoadError(UserError):
    """A base model or tokenizer that cannot be used."""


def check_dtype(name: str | None, flag: str = "--dtype") -> None:
    """The one check of a dtype flag: ``auto``, a name in :data:`DTYPE_NAMES`, or unset."""
    if name is not None and name != "auto" and name not in DTYPE_NAMES:
        raise UserError(f"{flag}: expected auto or one of {', '.join(DTYPE_NAMES)}, found {name!r}")


def resolve_model_path(name_or_path: str) -> Path:
    """``"embedded"`` or a local directory -> the directory (never a hub download)."""
    path = DEFAULT_MODEL_DIR if name_or_path == EMBEDDED else Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"--model_name_or_path: expected a local model directory with config.json, found {path}")
    return path.resolve()


def check_mask(mask: str | None) -> None:
    """The one check of ``--mask``: ``auto``, one of :data:`ptuning.masks.MASK_TYPES`, or unset."""
    from ptuning.masks import MASK_TYPES  # torch: only once flags are really parsed, never for --help

    if mask is not None and mask != "auto" and mask not in MASK_TYPES:
        raise ValueError(f"--mask: expected auto or one of {', '.join(MASK_TYPES)}, found {mask!r}")


def portable_name(path: Path) -> str:
    """The name a checkpoint records for its base: ``embedded`` for the shipped default."""
    return EMBEDDED if path.resolve() == DEFAULT_MODEL_DIR.resolve() else str(path.resolve())


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively: AMX tiles (Intel Sapphire Rapids and later),
    where oneDNN's bf16 ``mm`` runs 7x faster than fp32's (1200 x 512 x 1536 on 2 cores: 0.72 against
    5.4 ms). Other CPUs emulate bf16, slower than fp32."""
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3; private, so looked up with care
    return bool(amx and amx() and torch.backends.mkldnn.is_available())


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it and fp32 otherwise."""
    import torch

    check_dtype(name)
    if name == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, name)


def base_defaults(path: Path) -> dict[str, str]:
    """Mask and template a base model was built for.

    A model directory may carry ``sft_defaults.json`` (the embedded default does: it was
    pretrained with prefix-LM masking). Otherwise GLM chat models are causal, and transformers'
    GLM families are GLM-4 chat models.
    """
    defaults_file = path / DEFAULTS_FILE
    if defaults_file.is_file():
        return json.loads(defaults_file.read_text(encoding="utf-8"))
    config_file = path / "config.json"
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "") if config_file.is_file() else ""
    template = "glm4" if model_type.startswith("glm") else "plain"
    return {"mask": "causal", "template": template}


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: Path, dtype: torch.dtype, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Load a causal LM from a local directory, offline."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    # transformers 5.25 swaps layers for kernels fetched from the Hub unless told not to (use_kernels
    # defaults to True there, False before): no download at run time, and the model computes what its
    # checkpoint and prefix were trained and tested with.
    model = AutoModelForCausalLM.from_pretrained(
        str(path), config=config, dtype=dtype, attn_implementation=attn_implementation, use_kernels=False
    )
    logger.info("loaded base model %s (%s, %.1fM parameters)", path, dtype, model.num_parameters() / 1e6)
    return model


def fingerprint(model: PreTrainedModel) -> str:
    """A short digest of a model's config and weights, cheap enough for 6B models.

    Each tensor contributes its name, shape and up to 4096 evenly strided values rounded to
    bf16, so the same weights loaded in fp32 or bf16 give the same digest and another
    checkpoint of the same architecture gives another.
    """
    import torch

    digest = hashlib.sha256()
    config = model.config.to_diff_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_attn_implementation"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096].to(torch.bfloat16)
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            digest.update(sample.view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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
