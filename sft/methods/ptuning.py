"""P-Tuning v2: the base is frozen; a prefix encoder's soft prompts enter every layer's attention.

A checkpoint holds ``prefix.safetensors`` (:mod:`ptuning.checkpoint`); the checkpoint's
``ptuning`` section is the :class:`ptuning.encoder.PrefixConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sft.errors import CheckpointError
from sft.methods.base import Method

if TYPE_CHECKING:
    from ptuning.encoder import PrefixConfig, PrefixEncoder


@dataclass
class PtuningArguments:
    pre_seq_len: int = field(default=32, metadata={"help": "Number of virtual tokens (soft-prompt length)."})
    prefix_projection: bool = field(
        default=False, metadata={"help": "Reparameterize the prefix through an MLP (Linear-Tanh-Linear)."}
    )
    prefix_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width of the projection MLP (default: the base model's hidden size)."}
    )
    prefix_dropout: float = field(default=0.0, metadata={"help": "Dropout on the prefix keys/values while training."})

    def __post_init__(self) -> None:
        if self.pre_seq_len < 1:
            raise ValueError(f"--pre_seq_len: expected a positive integer, found {self.pre_seq_len}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ValueError(f"--prefix_dropout: expected a value in [0, 1), found {self.prefix_dropout}")


def attach_encoder(model, config: PrefixConfig) -> PrefixEncoder:
    """Freeze ``model`` and attach a fresh prefix encoder (the only trainable part)."""
    from ptuning.encoder import PrefixEncoder
    from ptuning.injection import attach_prefix

    model.requires_grad_(False)
    encoder = PrefixEncoder(config).to(model.device)
    attach_prefix(model, encoder, config.mask)
    return encoder


class PTuning(Method):
    name = "ptuning"
    default_learning_rate = 2e-2  # ChatGLM's P-tuning v2 scripts
    arguments = PtuningArguments  # files: loading names a missing prefix.safetensors itself

    def settings(self, model, args: PtuningArguments, mask: str) -> dict:
        from ptuning.encoder import PrefixConfig
        from ptuning.layout import kv_layout

        return PrefixConfig(
            pre_seq_len=args.pre_seq_len,
            layout=kv_layout(model.config),
            prefix_projection=args.prefix_projection,
            prefix_hidden_size=args.prefix_hidden_size,
            dropout=args.prefix_dropout,
            mask=mask,
        ).to_dict()

    def prepare(self, model, settings, mask):
        from ptuning.encoder import PrefixConfig

        attach_encoder(model, PrefixConfig.from_dict(settings))
        return model

    def save(self, model, directory: Path, *, tokenizer, mask, template, state_dict):
        from ptuning.checkpoint import save_prefix

        save_prefix(model.prefix_encoder, directory)

    def load(self, model, settings, mask, directory):
        from ptuning.encoder import PrefixConfig
        from ptuning.layout import kv_layout

        config = PrefixConfig.from_dict(settings)
        layout = kv_layout(model.config)
        if config.layout != layout:
            raise CheckpointError(f"{directory}: prefix built for {config.layout}, base model has {layout}")
        self.prepare(model, settings, mask)
        self.load_weights(model, directory)
        return model

    def load_weights(self, model, directory) -> bool:
        from ptuning.checkpoint import PrefixCheckpointError, load_prefix

        try:
            state = load_prefix(model.prefix_encoder.config, directory).state_dict()
        except PrefixCheckpointError as err:
            raise CheckpointError(str(err)) from None
        model.prefix_encoder.load_state_dict(state)
        return True
