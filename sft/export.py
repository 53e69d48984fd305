"""Merge a LoRA checkpoint into a standalone model: ``python -m sft.export --checkpoint DIR [--output_dir OUT]``;
write a P-tuning prefix as attention keys/values: ``python -m sft.export --checkpoint DIR --prefix_kv OUT``.

The steps: read the checkpoint's ``sft_checkpoint.json``, load base model + adapter (the base
fingerprint verified as for inference), fold each ``B @ A * alpha / rank`` into its weight
(peft's ``merge_and_unload``) and save a plain transformers model directory: safetensors,
config, generation config, tokenizer and ``sft_defaults.json`` with the checkpoint's mask and
template. ``sft.infer``/``sft.evaluate`` (``--checkpoint OUT`` or ``--model_name_or_path OUT``)
and ``sft.train --model_name_or_path OUT --template auto --mask auto`` then use what the
adapter was trained with; anything else that reads transformers models reads it too (with
``--mask prefix_lm`` checkpoints it should also mask the prompt bidirectionally, as trained).

A ``full`` checkpoint already is such a directory. A ``ptuning`` prefix enters attention as
extra keys and values, not as a change of weights, so it cannot be merged (exit 2). What it
*can* be is those keys and values themselves: ``--prefix_kv OUT`` runs the prefix encoder once and
writes its output per layer (:mod:`ptuning.prefix_kv`: ``prefix_kv.safetensors`` + ``prefix_kv.json``
with layout, dtype, positions convention and mask), plus the base model's name and fingerprint, the
template and the whole ``sft_checkpoint.json``, so ``Engine.load`` (``python -m sft.serve``) serves it
without the encoder and other engines know how to put it before their keys and values.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sft.checkpoint import CheckpointInfo
from sft.cli import run_command
from sft.errors import UserError
from sft.models import check_dtype

logger = logging.getLogger("sft.export")


class ExportError(UserError):
    """A checkpoint that cannot be merged, or an output directory that would be overwritten."""


@dataclass
class ExportArguments:
    checkpoint: str = field(
        default="output/adgen-lora",
        metadata={"help": "A LoRA checkpoint directory (what METHOD=lora bash scripts/train.sh writes)."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where the merged model goes (default: <checkpoint>-merged); must be new or empty."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Read the checkpoint's base model from here instead (the fingerprint must match)."},
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "dtype of the merged weights: float32|bfloat16|float16 (default: the checkpoint's)."},
    )
    prefix_kv: str | None = field(
        default=None,
        metadata={"help": "Instead of merging: write a P-tuning checkpoint's per-layer prefix keys/values here "
                          "(prefix_kv.safetensors + prefix_kv.json; must be new or empty)."},
    )

    def __post_init__(self) -> None:
        check_dtype(self.dtype)


def output_directory(args: ExportArguments) -> Path:
    return _new_directory(args.output_dir or f"{args.checkpoint.rstrip('/')}-merged", "--output_dir")


def _new_directory(path: str, flag: str) -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{flag}: expected a new or empty directory, found existing files in {out}")
    return out


def export_prefix_kv(args: ExportArguments) -> Path:
    """Write the prefix of the P-tuning checkpoint ``args.checkpoint`` as keys/values into ``args.prefix_kv``."""
    import dataclasses

    import torch

    from ptuning.checkpoint import PrefixCheckpointError, load_prefix
    from ptuning.encoder import PrefixConfig
    from ptuning.prefix_kv import save_prefix_kv

    info = CheckpointInfo.load(args.checkpoint)
    if info.method != "ptuning":
        raise ExportError(f"--prefix_kv: expected a ptuning checkpoint, found method {info.method} in {args.checkpoint}")
    out = _new_directory(args.prefix_kv, "--prefix_kv")
    config = PrefixConfig.from_dict(info.ptuning)
    try:
        encoder = load_prefix(config, args.checkpoint).eval()  # no base model needed: the encoder alone
    except PrefixCheckpointError as err:
        raise ExportError(str(err)) from None
    with torch.no_grad():
        keys, values = encoder()  # (L, kv_heads, P, head_dim), (L, kv_heads, P, value_head_dim)
    extra = {"base_model": info.base_model, "base_fingerprint": info.base_fingerprint, "template": info.template,
             "source": str(Path(args.checkpoint).resolve()), "checkpoint": dataclasses.asdict(info)}
    save_prefix_kv(keys, values, config.layout, info.mask, out, extra)
    logger.info("wrote the prefix of %s (%d virtual tokens, %d layers) to %s", args.checkpoint,
                config.pre_seq_len, config.layout.num_layers, out)
    return out


def export(args: ExportArguments) -> Path | None:
    """Merge ``args.checkpoint`` into ``args.output_dir`` (or write its prefix to ``args.prefix_kv``); ``None``
    for a full checkpoint (nothing to do)."""
    if args.prefix_kv is not None:
        return export_prefix_kv(args)
    info = CheckpointInfo.load(args.checkpoint)
    if info.method == "full":
        logger.info("%s is a full fine-tuning checkpoint: already a standalone model directory", args.checkpoint)
        return None
    if info.method != "lora":
        raise ExportError(
            f"{args.checkpoint}: expected a lora checkpoint, found method {info.method} "
            "(a P-tuning prefix is extra attention keys/values, not a weight change: it cannot be merged; "
            "--prefix_kv OUT writes those keys/values)"
        )
    from sft.checkpoint import load_checkpoint
    from sft.models import save_model_dir

    out = output_directory(args)
    model, tokenizer, info = load_checkpoint(
        args.checkpoint, model_name_or_path=args.model_name_or_path, dtype=args.dtype
    )
    merged = model.merge_and_unload(safe_merge=True)  # refuses NaN/inf weights
    save_model_dir(merged, tokenizer, info.mask, info.template, out)
    logger.info("merged %s into %s (template %s, mask %s)", args.checkpoint, out, info.template, info.mask)
    return out


def run(args: ExportArguments) -> None:
    out = export(args)
    print(out if out is not None else f"{args.checkpoint} is already a standalone model directory")


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    return run_command(lambda: HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)[0], run)


if __name__ == "__main__":
    sys.exit(main())
