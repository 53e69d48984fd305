"""How a model family lays out its key/value cache: the one place that reads those sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class KVLayout:
    """Per-layer key/value sizes of a decoder-only model."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def kv_size(self) -> int:
        """Width of one virtual token's soft prompt: keys and values of every layer."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _first(config, *names: str):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def kv_layout(config) -> KVLayout:
    """Read layers, kv heads and head size from a transformers config.

    Covers transformers' ``Glm``/``Glm4`` and Llama-like configs (``num_key_value_heads``,
    ``head_dim``) as well as THUDM's remote ChatGLM2/3 configs (``num_layers``,
    ``multi_query_group_num``, ``kv_channels``).
    """
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = _first(config, "hidden_size")
    heads = _first(config, "num_attention_heads")
    layers = _first(config, "num_hidden_layers", "num_layers")
    if getattr(config, "multi_query_attention", False):
        kv_heads = config.multi_query_group_num
    else:
        kv_heads = _first(config, "num_key_value_heads") or heads
    head_dim = _first(config, "head_dim", "kv_channels") or hidden // heads
    if None in (hidden, heads, layers):
        raise ValueError(f"cannot read layers/heads/hidden size from config of type {type(config).__name__}")
    return KVLayout(num_layers=int(layers), num_kv_heads=int(kv_heads), head_dim=int(head_dim), hidden_size=int(hidden))
