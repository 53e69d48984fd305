"""Prefix checkpoints: ``prefix.safetensors`` (fp32) and strict loading.

Loading never falls back to a freshly initialised prefix: a key that is missing, extra or
of the wrong shape is an error naming the key, the expected and the found shape. THUDM
ChatGLM2-6B P-tuning checkpoints (``pytorch_model.bin`` holding
``transformer.prefix_encoder.*``) can be imported; they are read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .encoder import PrefixConfig, PrefixEncoder

PREFIX_WEIGHTS = "prefix.safetensors"
CHATGLM2_PREFIX = "transformer.prefix_encoder."


class PrefixCheckpointError(ValueError):
    """A prefix checkpoint that does not fit the model it is loaded into."""


def save_prefix(encoder: PrefixEncoder, directory: str | Path) -> Path:
    """Write the encoder's weights (fp32) to ``directory/prefix.safetensors``."""
    path = Path(directory) / PREFIX_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in encoder.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt", "pre_seq_len": str(encoder.config.pre_seq_len)})
    return path


def check_state_dict(encoder: PrefixEncoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`PrefixCheckpointError` unless ``state`` has exactly the encoder's keys and shapes."""
    expected = {name: tuple(t.shape) for name, t in encoder.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise PrefixCheckpointError(
            f"{source}: expected keys {sorted(expected)}, found {sorted(state)}"
            f" (missing: {missing or 'none'}; unexpected: {extra or 'none'})"
        )
    for name, shape in expected.items():
        found = tuple(state[name].shape)
        if found != shape:
            hint = ""
            if name == "embedding.weight" and found[1:] == shape[1:]:
                hint = f" (checkpoint has pre_seq_len {found[0]}, model built with {shape[0]})"
            raise PrefixCheckpointError(f"{source}: {name} expected shape {shape}, found {found}{hint}")


def load_prefix(config: PrefixConfig, directory: str | Path) -> PrefixEncoder:
    """Build a :class:`PrefixEncoder` from ``config`` and load ``directory/prefix.safetensors`` strictly."""
    path = Path(directory) / PREFIX_WEIGHTS
    if not path.is_file():
        raise PrefixCheckpointError(f"{path}: expected a prefix checkpoint file, found none")
    encoder = PrefixEncoder(config)
    state = load_file(str(path))
    check_state_dict(encoder, state, str(path))
    encoder.load_state_dict({k: v.float() for k, v in state.items()})
    return encoder


def read_chatglm2_prefix(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the prefix-encoder tensors of a ChatGLM2-6B P-tuning checkpoint (file or directory).

    Returns them under this package's key names (``embedding.weight``, ``trans.0.weight``, ...).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "pytorch_model.bin", path / "model.safetensors"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise PrefixCheckpointError(f"{path}: expected a ChatGLM2 P-tuning checkpoint file, found none")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors have many types; report them in one line
            raise PrefixCheckpointError(f"{path}: expected a tensors-only checkpoint, found: {err}") from None
    prefix = {k[len(CHATGLM2_PREFIX) :]: v for k, v in state.items() if k.startswith(CHATGLM2_PREFIX)}
    if not prefix:
        raise PrefixCheckpointError(
            f"{path}: expected keys starting with {CHATGLM2_PREFIX!r}, found {sorted(state)[:5]}"
        )
    return prefix
