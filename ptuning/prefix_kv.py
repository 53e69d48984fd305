"""A P-tuning prefix as the keys and values attention uses: a file other engines can load without the encoder.

A P-Tuning v2 checkpoint stores the *encoder* (an embedding, perhaps an MLP); what attention sees
is its output, a fixed set of keys and values per layer. An inference engine needs only that
output, so ``python -m sft.export --prefix_kv OUT`` computes it once and writes:

* ``prefix_kv.safetensors``: for each layer ``i``, ``layers.{i}.keys`` ``(num_kv_heads, P, head_dim)``
  and ``layers.{i}.values`` ``(num_kv_heads, P, value_head_dim)``, in the encoder's dtype (fp32);
  keys are used as they are, with no rotary embedding (the prefix has no position);
* ``prefix_kv.json``: the layout (:class:`ptuning.layout.KVLayout`), ``pre_seq_len``, the dtype,
  the positions convention and the mask, plus what the caller adds (base model, fingerprint,
  template: :mod:`sft.export`).

How a consumer uses it, per layer: put the ``P`` prefix keys/values before the sequence's own
keys/values (after rotary has been applied to those); every query attends to all ``P`` of them;
the real tokens take positions ``0, 1, ...`` as if there were no prefix; with mask ``prefix_lm``
the prompt's tokens also attend to each other in both directions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .layout import KVLayout

KV_WEIGHTS = "prefix_kv.safetensors"
KV_DESCRIPTION = "prefix_kv.json"
KV_FORMAT = "ptuning-prefix-kv"
POSITIONS = ("real tokens take positions from 0 as without a prefix; prefix keys carry no position "
             "(no rotary) and are visible to every query")


class PrefixKVError(ValueError):
    """A prefix_kv directory that is incomplete or does not describe its tensors."""


def save_prefix_kv(keys: torch.Tensor, values: torch.Tensor, layout: KVLayout, mask: str, directory: str | Path,
                   extra: dict | None = None) -> Path:
    """Write ``keys`` ``(L, kv_heads, P, head_dim)`` and ``values`` ``(L, kv_heads, P, value_head_dim)``.

    ``extra`` goes into ``prefix_kv.json`` next to the format's own fields. Returns the JSON's path.
    """
    expected = (layout.num_layers, layout.num_kv_heads, keys.shape[2])
    if tuple(keys.shape[:3]) != expected or keys.shape[3] != layout.head_dim or values.shape[3] != layout.value_head_dim:
        raise PrefixKVError(f"save_prefix_kv: expected keys/values of {layout}, found {tuple(keys.shape)} and "
                            f"{tuple(values.shape)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(layout.num_layers):
        tensors[f"layers.{layer}.keys"] = keys[layer].detach().contiguous().cpu()
        tensors[f"layers.{layer}.values"] = values[layer].detach().contiguous().cpu()
    save_file(tensors, str(directory / KV_WEIGHTS), metadata={"format": "pt"})
    description = {
        "format": KV_FORMAT,
        "format_version": 1,
        "pre_seq_len": int(keys.shape[2]),
        "layout": layout.to_dict(),
        "dtype": str(keys.dtype).removeprefix("torch."),
        "tensors": {"keys": "layers.{i}.keys: (num_kv_heads, pre_seq_len, head_dim)",
                    "values": "layers.{i}.values: (num_kv_heads, pre_seq_len, value_head_dim)"},
        "positions": POSITIONS,
        "mask": mask,
        **(extra or {}),
    }
    path = directory / KV_DESCRIPTION
    path.write_text(json.dumps(description, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def is_prefix_kv(directory: str | Path) -> bool:
    return (Path(directory) / KV_DESCRIPTION).is_file()


def load_prefix_kv(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(keys, values, description)`` as :func:`save_prefix_kv` wrote them, every tensor checked against the layout."""
    directory = Path(directory)
    try:
        description = json.loads((directory / KV_DESCRIPTION).read_text(encoding="utf-8"))
        layout = KVLayout(**description["layout"])
        length = int(description["pre_seq_len"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise PrefixKVError(f"{directory / KV_DESCRIPTION}: expected a {KV_FORMAT} description with layout and "
                            f"pre_seq_len, found {type(err).__name__}: {err}") from None
    if not (directory / KV_WEIGHTS).is_file():
        raise PrefixKVError(f"{directory}: expected {KV_WEIGHTS} next to {KV_DESCRIPTION}, found none")
    tensors = load_file(str(directory / KV_WEIGHTS))
    shapes = {}
    for layer in range(layout.num_layers):
        shapes[f"layers.{layer}.keys"] = (layout.num_kv_heads, length, layout.head_dim)
        shapes[f"layers.{layer}.values"] = (layout.num_kv_heads, length, layout.value_head_dim)
    if set(tensors) != set(shapes):
        raise PrefixKVError(f"{directory / KV_WEIGHTS}: expected tensors {sorted(shapes)}, found {sorted(tensors)}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise PrefixKVError(f"{directory / KV_WEIGHTS}: {name} expected shape {shape}, "
                                f"found {tuple(tensors[name].shape)}")
    keys = torch.stack([tensors[f"layers.{i}.keys"] for i in range(layout.num_layers)])
    values = torch.stack([tensors[f"layers.{i}.values"] for i in range(layout.num_layers)])
    return keys, values, description
