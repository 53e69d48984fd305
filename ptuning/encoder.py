"""P-Tuning v2 prefix encoder (Liu et al., 2021; parameterization of THUDM's ChatGLM2-6B)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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

    Without projection the prefix is an embedding of ``P`` rows of width
    ``num_layers * 2 * kv_heads * head_dim``; with projection that embedding goes through
    ``Linear(kv_size, prefix_hidden) -> Tanh -> Linear(prefix_hidden, kv_size)``. Parameter
    names (``embedding.weight``, ``trans.0.*``, ``trans.2.*``) are ChatGLM2's, so its P-tuning
    checkpoints load directly. The encoder is built in fp32 and its output is cast to the
    attention's dtype at use, so a bf16/fp16 base trains an fp32 prefix (cast the base
    *before* attaching: ``model.to(dtype)`` afterwards would cast the encoder too).

    Output of :meth:`forward`: ``(num_layers, 2, num_kv_heads, P, head_dim)`` — keys at
    index 0 and values at index 1 of dim 1, ready to be put before a layer's keys/values.
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

    def forward(self) -> torch.Tensor:
        layout = self.config.layout
        prefix = self.embedding.weight  # (P, kv_size)
        if self.config.prefix_projection:
            prefix = self.trans(prefix)
        prefix = self.dropout(prefix)
        # kv_size is laid out as [layer][key|value][kv head][head dim], as in ChatGLM2.
        prefix = prefix.view(self.config.pre_seq_len, layout.num_layers, 2, layout.num_kv_heads, layout.head_dim)
        return prefix.permute(1, 2, 3, 0, 4)  # (L, 2, kv_heads, P, head_dim)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
