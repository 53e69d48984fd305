"""P-Tuning v2 prefix encoder (Liu et al., 2021; parameterization of THUDM's ChatGLM2-6B)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .layout import KVLayout


@dataclass
class PrefixConfig:
    """Everything that fixes the shape and meaning of a prefix encoder's weights."""

    pre_seq_len: int
    layout: KVLayout
    prefix_projection: bool = False
    prefix_hidden_size: int | None = None  # None: the base model's hidden size, as ChatGLM2
    dropout: float = 0.0
    mask: str = "causal"

    def __post_init__(self) -> None:
        if self.pre_seq_len < 1:
            raise ValueError(f"--pre_seq_len: expected a positive number of virtual tokens, found {self.pre_seq_len}")
        if self.prefix_projection and self.prefix_hidden_size is None:
            self.prefix_hidden_size = self.layout.hidden_size

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layout"] = self.layout.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PrefixConfig":
        data = dict(data)
        data["layout"] = KVLayout(**data["layout"])
        return cls(**data)


class PrefixEncoder(nn.Module):
    """Learned per-layer key/value soft prompts.

    Without projection the prefix is an embedding of ``P`` rows of width ``kv_size``
    (:attr:`KVLayout.kv_size`); with projection that embedding goes through
    ``Linear(kv_size, prefix_hidden) -> Tanh -> Linear(prefix_hidden, kv_size)``. Parameter
    names (``embedding.weight``, ``trans.0.*``, ``trans.2.*``) are ChatGLM2's, so its P-tuning
    checkpoints load directly. The encoder is built in fp32 and its output is cast to the
    attention's dtype at use, so a bf16/fp16 base trains an fp32 prefix (cast the base
    *before* attaching: ``model.to(dtype)`` afterwards would cast the encoder too).

    A row is laid out ``[layer][keys of every kv head | values of every kv head]``, each head's
    features contiguous. Where keys and values have the same head size this is ChatGLM2's
    ``[layer][key|value][kv head][head dim]``; multi-head latent attention has keys wider than
    values, hence two outputs rather than one stacked tensor.

    Output of :meth:`forward`: ``(keys, values)``, ``(num_layers, kv_heads, P, head_dim)`` and
    ``(num_layers, kv_heads, P, value_head_dim)``, ready to be put before a layer's keys/values.
    """

    def __init__(self, config: PrefixConfig):
        super().__init__()
        self.config = config
        kv_size = config.layout.kv_size
        self.embedding = nn.Embedding(config.pre_seq_len, kv_size)
        if config.prefix_projection:
            self.trans = nn.Sequential(
                nn.Linear(kv_size, config.prefix_hidden_size),
                nn.Tanh(),
                nn.Linear(config.prefix_hidden_size, kv_size),
            )
        self.dropout = nn.Dropout(config.dropout)
        self.float()

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.config.layout
        prefix = self.embedding.weight  # (P, kv_size)
        if self.config.prefix_projection:
            prefix = self.trans(prefix)
        prefix = self.dropout(prefix)
        # kv_size is laid out as [layer][keys of all kv heads | values of all kv heads].
        prefix = prefix.view(self.config.pre_seq_len, layout.num_layers, layout.key_size + layout.value_size)
        keys, values = prefix.split([layout.key_size, layout.value_size], dim=-1)
        keys = keys.reshape(self.config.pre_seq_len, layout.num_layers, layout.num_kv_heads, layout.head_dim)
        values = values.reshape(self.config.pre_seq_len, layout.num_layers, layout.num_kv_heads, layout.value_head_dim)
        return keys.permute(1, 2, 0, 3), values.permute(1, 2, 0, 3)  # (L, kv_heads, P, head_dim), (..., value_head_dim)

    @torch.no_grad()
    def set_key_values(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make :meth:`forward` return ``keys``/``values`` (its own output layout; no projection).

        How the prefix can start from keys and values the base computed itself for real tokens
        (:func:`ptuning.injection.capture_key_values`) instead of random numbers.
        """
        if self.config.prefix_projection:
            raise ValueError("set_key_values: the prefix goes through a projection MLP; its output cannot be set")
        layout, length = self.config.layout, self.config.pre_seq_len
        expected_keys = (layout.num_layers, layout.num_kv_heads, length, layout.head_dim)
        expected_values = (*expected_keys[:3], layout.value_head_dim)
        if tuple(keys.shape) != expected_keys or tuple(values.shape) != expected_values:
            raise ValueError(f"set_key_values: expected keys {expected_keys} and values {expected_values}, found "
                             f"{tuple(keys.shape)} and {tuple(values.shape)}")
        # (L, kv_heads, P, d) -> (P, L, kv_heads * d): the row layout forward() reads.
        keys = keys.permute(2, 0, 1, 3).reshape(length, layout.num_layers, layout.key_size)
        values = values.permute(2, 0, 1, 3).reshape(length, layout.num_layers, layout.value_size)
        self.embedding.weight.copy_(torch.cat([keys, values], dim=-1).reshape(length, -1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
