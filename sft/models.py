"""Base models: where they come from, how they load, their defaults and their fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sft.embedded import DEFAULT_MODEL_DIR

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"  # how checkpoints name the shipped default, wherever the repo lives
DEFAULTS_FILE = "sft_defaults.json"  # optional, beside a base model: {"mask": ..., "template": ...}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A base model or tokenizer that cannot be used."""


def resolve_model_path(name_or_path: str) -> Path:
    """``"embedded"`` or a local directory -> the directory (never a hub download)."""
    path = DEFAULT_MODEL_DIR if name_or_path == EMBEDDED else Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"--model_name_or_path: expected a local model directory with config.json, found {path}")
    return path.resolve()


def portable_name(path: Path) -> str:
    """The name a checkpoint records for its base: ``embedded`` for the shipped default."""
    return EMBEDDED if path.resolve() == DEFAULT_MODEL_DIR.resolve() else str(path.resolve())


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it and fp32 otherwise."""
    if name == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype: expected auto or one of {', '.join(DTYPES)}, found {name!r}")
    return DTYPES[name]


def base_defaults(path: Path) -> dict[str, str]:
    """Mask and template a base model was built for.

    A model directory may carry ``sft_defaults.json`` (the embedded default does: it was
    pretrained with prefix-LM masking). Otherwise GLM chat models are causal; transformers'
    ``glm``/``glm4`` checkpoints are GLM-4 chat models, THUDM's ``chatglm`` ones ChatGLM2/3.
    """
    defaults_file = path / DEFAULTS_FILE
    if defaults_file.is_file():
        return json.loads(defaults_file.read_text(encoding="utf-8"))
    config_file = path / "config.json"
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "") if config_file.is_file() else ""
    template = {"glm": "glm4", "glm4": "glm4", "chatglm": "chatglm3"}.get(model_type, "plain")
    return {"mask": "causal", "template": template}


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: Path, dtype: torch.dtype, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Load a causal LM from a local directory, offline."""
    config = AutoConfig.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(
        str(path), config=config, dtype=dtype, attn_implementation=attn_implementation
    )
    logger.info("loaded base model %s (%s, %.1fM parameters)", path, dtype, model.num_parameters() / 1e6)
    return model


def fingerprint(model: PreTrainedModel) -> str:
    """A short digest of a model's config and weights, cheap enough for 6B models.

    Each tensor contributes its name, shape and up to 4096 evenly strided values rounded to
    bf16, so the same weights loaded in fp32 or bf16 give the same digest and another
    checkpoint of the same architecture gives another.
    """
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
