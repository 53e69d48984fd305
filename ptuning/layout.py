"""How a model family lays out its attention keys and values: the one place that reads those sizes.

A P-Tuning v2 prefix is put before the keys and values each layer's attention function receives,
so its sizes are theirs: keys ``(B, kv_heads, K, head_dim)``, values ``(B, kv_heads, K, value_head_dim)``.
transformers' GLM families give them in two ways:

* grouped-query attention (``glm``, ``glm4``, ``glm4_moe``): ``num_key_value_heads`` heads of
  ``head_dim`` (``hidden_size // num_attention_heads`` where the config has none), keys and
  values alike;
* multi-head latent attention, MLA (``glm4_moe_lite``, ``glm_moe_dsa``, after DeepSeek-V2): the KV
  cache holds a compressed latent that ``kv_b_proj`` expands, before attention, into
  ``num_attention_heads`` keys of ``qk_nope_head_dim + qk_rope_head_dim`` and values of
  ``v_head_dim``. Their configs' ``head_dim`` means the rotary part only (``glm4_moe_lite`` maps it
  to ``qk_rope_head_dim``, ``glm_moe_dsa`` sets it so), so it is not read for them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class KVLayout:
    """Per-layer key/value sizes of a decoder-only model, as its attention function receives them."""

    num_layers: int
    num_kv_heads: int
    head_dim: int  # of one key head
    hidden_size: int
    value_head_dim: int | None = None  # of one value head; None: head_dim (and what checkpoints before MLA hold)

    def __post_init__(self) -> None:
        if self.value_head_dim is None:
            object.__setattr__(self, "value_head_dim", self.head_dim)

    @property
    def key_size(self) -> int:
        """Width of one layer's keys for one virtual token (all kv heads)."""
        return self.num_kv_heads * self.head_dim

    @property
    def value_size(self) -> int:
        """Width of one layer's values for one virtual token (all kv heads)."""
        return self.num_kv_heads * self.value_head_dim

    @property
    def kv_size(self) -> int:
        """Width of one virtual token's soft prompt: keys and values of every layer."""
        return self.num_layers * (self.key_size + self.value_size)

    def to_dict(self) -> dict[str, int]:
        out = asdict(self)
        if self.value_head_dim == self.head_dim:
            del out["value_head_dim"]  # keys and values alike: the JSON every earlier checkpoint holds
        return out


def kv_layout(config) -> KVLayout:
    """Read layers, kv heads and key/value head sizes from a transformers config (see the module docstring)."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    sizes = {name: getattr(config, name, None) for name in ("num_hidden_layers", "num_attention_heads", "hidden_size")}
    missing = [name for name, value in sizes.items() if value is None]
    if missing:
        raise ValueError(f"config of type {type(config).__name__}: expected {', '.join(sizes)}, "
                         f"found no {', '.join(missing)}")
    layers, heads, hidden = (int(value) for value in sizes.values())
    if getattr(config, "qk_nope_head_dim", None) is not None:
        # MLA: kv_b_proj expands the latent into one key and one value per attention head.
        key_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        return KVLayout(num_layers=layers, num_kv_heads=heads, head_dim=int(key_dim), hidden_size=hidden,
                        value_head_dim=int(config.v_head_dim))
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return KVLayout(num_layers=layers, num_kv_heads=int(kv_heads), head_dim=int(head_dim), hidden_size=hidden)
