"""P-Tuning v2: the base is frozen; a prefix encoder's soft prompts enter every layer's attention.

A checkpoint holds ``prefix.safetensors`` (:mod:`ptuning.checkpoint`); the checkpoint's
``ptuning`` section is the :class:`ptuning.encoder.PrefixConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sft.errors import CheckpointError, UserError
from sft.methods.base import Method

if TYPE_CHECKING:
    import torch

    from ptuning.encoder import PrefixConfig, PrefixEncoder

PREFIX_INITS = ("random", "rows")


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
    prefix_init: str = field(
        default="random",
        metadata={"help": "How the prefix starts: random (ChatGLM's, N(0, 1)) or rows: the keys/values the base itself "
                          "computes for the first training rows as encoded, cut to --pre_seq_len tokens, so training "
                          "starts from a real context (Li & Liang, 2021); not with --prefix_projection."},
    )

    def __post_init__(self) -> None:
        if self.pre_seq_len < 1:
            raise ValueError(f"--pre_seq_len: expected a positive integer, found {self.pre_seq_len}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ValueError(f"--prefix_dropout: expected a value in [0, 1), found {self.prefix_dropout}")
        if self.prefix_init not in PREFIX_INITS:
            raise ValueError(f"--prefix_init: expected one of {', '.join(PREFIX_INITS)}, found {self.prefix_init!r}")
        if self.prefix_init == "rows" and self.prefix_projection:
            raise ValueError("--prefix_init rows: expected no --prefix_projection (the keys/values the base computes "
                             "are the encoder's output, which a projection MLP does not let one set), found both")


def initial_tokens(rows: Sequence[dict], length: int) -> torch.Tensor:
    """``(1, length)``: the encoded rows' tokens one after another, from the first row, repeated if they are fewer."""
    import torch

    tokens: list[int] = []
    while len(tokens) < length:
        before = len(tokens)
        for row in rows:
            tokens.extend(row["input_ids"])
            if len(tokens) >= length:
                break
        if len(tokens) == before:
            raise ValueError("--prefix_init rows: expected training rows with tokens, found none")
    return torch.tensor([tokens[:length]])


def attach_encoder(model, config: PrefixConfig, init_tokens: torch.Tensor | None = None) -> PrefixEncoder:
    """Freeze ``model`` and attach a fresh prefix encoder (the only trainable part).

    With ``init_tokens`` ``(1, pre_seq_len)`` the prefix starts as the keys/values the base computes
    for those tokens (causally, positions from 0), otherwise random.
    """
    from ptuning.encoder import PrefixEncoder
    from ptuning.injection import attach_prefix, capture_key_values

    model.requires_grad_(False)
    encoder = PrefixEncoder(config).to(model.device)
    if init_tokens is not None:
        hook = attach_prefix(model, None, "causal")
        try:
            encoder.set_key_values(*capture_key_values(hook, init_tokens))
        finally:
            hook.remove()
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

    def prepare_to_train(self, model, settings, mask, flags: PtuningArguments, train_rows):
        if flags.prefix_init != "rows":
            return self.prepare(model, settings, mask)
        from ptuning.encoder import PrefixConfig

        if any(p.numel() == 0 or p.is_meta for p in model.parameters()):
            raise UserError("--prefix_init rows: expected the base's weights in memory to compute its keys/values, "
                            "found them partitioned (DeepSpeed ZeRO-3); use --prefix_init random")
        config = PrefixConfig.from_dict(settings)
        attach_encoder(model, config, initial_tokens(train_rows, config.pre_seq_len))
        return model

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
