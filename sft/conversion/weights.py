"""THUDM ChatGLM2/ChatGLM3/GLM-4 weights -> transformers ``GlmForCausalLM`` weights, one shard at a time.

The mapping (layer ``N``; ``H`` query heads, ``G`` = ``multi_query_group_num`` key/value groups,
``d`` = ``kv_channels``; see :mod:`sft.conversion.thudm` for why each line holds):

================================================================  ==========================================
THUDM                                                             transformers
================================================================  ==========================================
``transformer.embedding.word_embeddings.weight``                  ``model.embed_tokens.weight``
``transformer.encoder.layers.N.input_layernorm.weight``           ``model.layers.N.input_layernorm.weight``
``transformer.encoder.layers.N.self_attention.query_key_value.*`` ``model.layers.N.self_attn.{q,k,v}_proj.*``
                                                                  (rows ``[H*d | G*d | G*d]``; bias alike)
``transformer.encoder.layers.N.self_attention.dense.weight``      ``model.layers.N.self_attn.o_proj.weight``
``transformer.encoder.layers.N.post_attention_layernorm.weight``  ``model.layers.N.post_attention_layernorm.weight``
``transformer.encoder.layers.N.mlp.dense_h_to_4h.weight``         ``model.layers.N.mlp.gate_up_proj.weight``
``transformer.encoder.layers.N.mlp.dense_4h_to_h.weight``         ``model.layers.N.mlp.down_proj.weight``
``transformer.encoder.final_layernorm.weight``                    ``model.norm.weight``
``transformer.output_layer.weight``                               ``lm_head.weight``
``transformer.rotary_pos_emb.inv_freq``                           checked, dropped (recomputed from the config)
``transformer.prefix_encoder.*``                                  a P-tuning checkpoint (:mod:`sft.convert`)
================================================================  ==========================================

Every key of every shard is checked against this table before anything is written: a key it does
not name, a missing key, a shape other than the config's, int8 weights or ``weight_scale`` keys
(a quantized checkpoint) each stop the conversion with one line naming the key and the shard.

Reading: the shards listed by ``model.safetensors.index.json`` (preferred when a directory has both
formats, as ChatGLM3-6B does) or ``pytorch_model.bin.index.json``, or a single
``model.safetensors``/``pytorch_model.bin``. ``.bin`` files go through ``torch.load(weights_only=True,
mmap=True)``: no code from the file runs, and a tensor is read from disk when it is used.
Writing: each source shard becomes one safetensors shard (``model-0000i-of-0000n.safetensors`` and
``model.safetensors.index.json``), so memory holds about two shards at a time (the source tensors
and safetensors' serialised copy), never the whole model. dtypes are kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ptuning.checkpoint import CHATGLM2_PREFIX as PREFIX
from sft.conversion.thudm import ConversionError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
SOURCES = (  # (index, single file), in order of preference
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
# Within a layer: THUDM name -> transformers name (query_key_value is split, see KeyMap).
LAYER_KEYS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",  # [gate; up] in both
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
QUANTIZED_DTYPES = ("int8", "uint8")


class KeyMap:
    """Every THUDM key one config implies: its transformers name(s) and its shape."""

    def __init__(self, config: dict) -> None:
        layers, hidden, ffn, vocab = (config[name] for name in ("num_layers", "hidden_size", "ffn_hidden_size",
                                                                  "padded_vocab_size"))
        heads, groups, head_dim = config["num_attention_heads"], config["multi_query_group_num"], config["kv_channels"]
        self.num_layers = layers
        self.qkv_rows = [heads * head_dim, groups * head_dim, groups * head_dim]  # [queries; keys; values]
        self.targets: dict[str, str | tuple[str, str, str]] = {
            "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
            "transformer.encoder.final_layernorm.weight": "model.norm.weight",
            "transformer.output_layer.weight": "lm_head.weight",
        }
        self.shapes: dict[str, tuple[int, ...]] = {
            "transformer.embedding.word_embeddings.weight": (vocab, hidden),
            "transformer.encoder.final_layernorm.weight": (hidden,),
            "transformer.output_layer.weight": (vocab, hidden),
        }
        layer_shapes = {
            "input_layernorm.weight": (hidden,),
            "self_attention.dense.weight": (hidden, heads * head_dim),
            "post_attention_layernorm.weight": (hidden,),
            "mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
            "mlp.dense_4h_to_h.weight": (hidden, ffn),
        }
        qkv_kinds = {"weight": (sum(self.qkv_rows), hidden), "bias": (sum(self.qkv_rows),)}
        if not config.get("add_qkv_bias", False):
            del qkv_kinds["bias"]
        for layer in range(layers):
            thudm, ours = f"transformer.encoder.layers.{layer}.", f"model.layers.{layer}."
            for name, target in LAYER_KEYS.items():
                self.targets[thudm + name] = ours + target
                self.shapes[thudm + name] = layer_shapes[name]
            for kind, shape in qkv_kinds.items():
                key = f"{thudm}self_attention.query_key_value.{kind}"
                self.targets[key] = tuple(f"{ours}self_attn.{part}_proj.{kind}" for part in "qkv")
                self.shapes[key] = shape

    def convert(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """The transformers tensors for one THUDM tensor."""
        target = self.targets[key]
        if isinstance(target, str):
            return {target: tensor.contiguous()}
        # Each part gets its own storage: safetensors refuses tensors that share memory.
        return {name: part.clone() for name, part in zip(target, tensor.split(self.qkv_rows, dim=0))}


class Shard:
    """One weights file read a tensor at a time: ``.safetensors`` through ``safe_open``, ``.bin`` through
    ``torch.load(weights_only=True, mmap=True)``."""

    def __init__(self, path: Path) -> None:
        import torch
        from safetensors import safe_open

        self.path = path
        self._file = self._tensors = None
        try:
            if path.suffix == ".safetensors":
                self._file = safe_open(str(path), framework="pt")
            else:
                self._tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # unpickling and format errors have many types: one line for all
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConversionError(f"{path}: expected a tensors-only weights file, found: {reason}") from None
        if self._file is None and not (isinstance(self._tensors, dict)
                                       and all(isinstance(t, torch.Tensor) for t in self._tensors.values())):
            raise ConversionError(f"{path}: expected a dict of tensors (a state dict), found "
                                  f"{type(self._tensors).__name__}")

    def keys(self) -> list[str]:
        return list(self._file.keys() if self._file is not None else self._tensors)

    def info(self, key: str) -> tuple[tuple[int, ...], str]:
        """``(shape, dtype name)`` without reading the values."""
        if self._file is not None:
            part = self._file.get_slice(key)
            return tuple(part.get_shape()), SAFETENSORS_DTYPES.get(part.get_dtype(), part.get_dtype())
        tensor = self._tensors[key]
        return tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")

    def tensor(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(key) if self._file is not None else self._tensors[key]


@dataclass
class ShardPlan:
    """A source shard and what it holds: model keys to convert, P-tuning prefix keys."""

    path: Path
    keys: list[str] = field(default_factory=list)
    prefix_keys: list[str] = field(default_factory=list)


@dataclass
class WeightPlan:
    """Checked source shards, ready to convert."""

    keymap: KeyMap
    shards: list[ShardPlan]
    dtype: str  # of the word embeddings: the checkpoint's dtype

    @property
    def has_prefix(self) -> bool:
        return any(shard.prefix_keys for shard in self.shards)


def find_shards(source: Path) -> list[Path]:
    """The source's weight files, in the order its index lists them."""
    for index_name, single in SOURCES:
        index = source / index_name
        if index.is_file():
            try:
                files = list(dict.fromkeys(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as err:
                raise ConversionError(f"{index}: expected a shard index with a weight_map, found unreadable "
                                      f"content ({err!r})") from None
            missing = [name for name in files if not (source / name).is_file()]
            if missing:
                raise ConversionError(f"{index}: expected the shards it lists, found no {', '.join(missing)}")
            return [source / name for name in files]
        if (source / single).is_file():
            return [source / single]
    names = ", ".join(name for pair in SOURCES for name in pair)
    raise ConversionError(f"--source: expected weights ({names}) in {source}, found none")


def plan_weights(source: Path, config: dict) -> WeightPlan:
    """Read every shard's keys, shapes and dtypes (not the values) and check them against ``config``."""
    keymap = KeyMap(config)
    found: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for path in find_shards(source):
        shard = Shard(path)
        keys = shard.keys()
        found.update({key: (path, *shard.info(key)) for key in keys})
        if INV_FREQ in keys:
            check_inv_freq(shard.tensor(INV_FREQ), config["kv_channels"], path)
    _check_keys(found, keymap, source)
    shards: dict[Path, ShardPlan] = {}
    for key, (path, _, _) in found.items():
        plan = shards.setdefault(path, ShardPlan(path))
        if key in keymap.targets:
            plan.keys.append(key)
        elif key.startswith(PREFIX):
            plan.prefix_keys.append(key)
    return WeightPlan(keymap, list(shards.values()), found["transformer.embedding.word_embeddings.weight"][2])


def _check_keys(found: dict[str, tuple[Path, tuple[int, ...], str]], keymap: KeyMap, source: Path) -> None:
    quantized = [key for key, (_, _, dtype) in found.items()
                 if dtype in QUANTIZED_DTYPES or key.endswith("weight_scale")]
    if quantized:
        path, _, dtype = found[quantized[0]]
        raise ConversionError(f"{path}: expected float weights, found a quantized checkpoint ({quantized[0]}: "
                              f"{dtype}): convert the unquantized release")
    prefix = [key for key in found if key.startswith(PREFIX)]
    if prefix and len(prefix) == len(found):
        raise ConversionError(f"--source: expected base model weights, found only {PREFIX}* in {source} (a P-tuning "
                              "checkpoint): pass it as --ptuning_checkpoint and its base model as --source")
    unmapped = [key for key in found if key not in keymap.targets and key != INV_FREQ and not key.startswith(PREFIX)]
    if unmapped:
        more = f" (and {len(unmapped) - 1} more)" if len(unmapped) > 1 else ""
        raise ConversionError(f"{found[unmapped[0]][0]}: expected ChatGLM2/ChatGLM3/GLM-4 weight names for "
                              f"{keymap.num_layers} layers, found unmapped key {unmapped[0]}{more}")
    missing = [key for key in keymap.targets if key not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"{source}: expected weight {missing[0]} (from config.json), found no such key in "
                              f"the shards{more}")
    for key, shape in keymap.shapes.items():
        path, found_shape, _ = found[key]
        if found_shape != shape:
            raise ConversionError(f"{path}: {key}: expected shape {shape} (from config.json), found {found_shape}")


def check_inv_freq(inv_freq: torch.Tensor, kv_channels: int, path: Path) -> None:
    """THUDM stores ``1 / 10000 ** (arange(0, r, 2) / r)`` with ``r = kv_channels // 2`` (rotary on half of
    each head) whatever ``rope_ratio`` is; anything else is a rotary the mapping does not know."""
    import torch

    rotary = kv_channels // 2
    expected = 1.0 / (10000.0 ** (torch.arange(0, rotary, 2, dtype=torch.float64) / rotary))
    found = inv_freq.detach().double().reshape(-1)
    if found.shape != expected.shape or not torch.allclose(found, expected, rtol=1e-2, atol=0.0):
        shown = ", ".join(f"{value:.4g}" for value in found[:4].tolist())
        raise ConversionError(f"{path}: {INV_FREQ}: expected {expected.numel()} base-10000 frequencies for rotary on "
                              f"{rotary} of {kv_channels} head dims, found {found.numel()} values ({shown}, ...)")


def read_prefix(plan: WeightPlan) -> dict[str, torch.Tensor]:
    """P-tuning prefix tensors held in the source shards, under ``ptuning``'s names (``embedding.weight``, ...)."""
    prefix = {}
    for part in plan.shards:
        if part.prefix_keys:
            shard = Shard(part.path)
            prefix.update({key[len(PREFIX):]: shard.tensor(key).clone() for key in part.prefix_keys})
    return prefix


def write_weights(plan: WeightPlan, out: Path) -> int:
    """Convert shard by shard into ``out``; returns the bytes written."""
    from safetensors.torch import save_file

    parts = [part for part in plan.shards if part.keys]
    names = ["model.safetensors"] if len(parts) == 1 else [
        f"model-{number:05d}-of-{len(parts):05d}.safetensors" for number in range(1, len(parts) + 1)]
    weight_map: dict[str, str] = {}
    total = 0
    for number, (part, name) in enumerate(zip(parts, names), start=1):
        shard = Shard(part.path)
        tensors: dict[str, torch.Tensor] = {}
        for key in part.keys:
            tensors.update(plan.keymap.convert(key, shard.tensor(key)))
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        total += size
        logger.info("shard %d/%d: %s -> %s (%d tensors, %.2f GB)", number, len(parts), part.path.name, name,
                    len(tensors), size / 1e9)
        del tensors, shard  # before the next shard is read
    if len(parts) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return total
