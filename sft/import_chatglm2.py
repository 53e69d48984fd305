"""Turn a THUDM ChatGLM2-6B P-tuning checkpoint into one of ours.

``python -m sft.import_chatglm2 --source DIR_OR_FILE --model_name_or_path BASE --output_dir OUT``

ChatGLM2's ``ptuning/main.py`` saves ``pytorch_model.bin`` holding only
``transformer.prefix_encoder.*``. Its tensors are read with ``weights_only=True`` (no code
from the file runs), their shapes decide ``pre_seq_len`` and the projection, the base model's
config must match their width, and the result is a normal checkpoint directory that
``sft.evaluate`` and ``sft.infer`` load like any other.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ptuning.checkpoint import PrefixCheckpointError, check_state_dict, read_chatglm2_prefix
from ptuning.encoder import PrefixConfig
from ptuning.layout import kv_layout
from sft.checkpoint import CheckpointInfo, build_ptuning, save_trained
from sft.cli import run_command
from sft.models import (
    ModelLoadError,
    fingerprint,
    load_base_model,
    portable_name,
    resolve_dtype,
    resolve_model_path,
)

logger = logging.getLogger("sft.import_chatglm2")


@dataclass
class ImportArguments:
    source: str = field(default="", metadata={"help": "ChatGLM2 P-tuning checkpoint: directory or pytorch_model.bin."})
    model_name_or_path: str = field(default="", metadata={"help": "Local directory of the base model it was trained on."})
    output_dir: str = field(default="", metadata={"help": "Where to write the imported checkpoint."})
    mask: str = field(default="causal", metadata={"help": "Mask it was trained with (ChatGLM2/3: causal)."})
    template: str = field(default="chatglm2", metadata={"help": "Prompt template it was trained with."})

    def __post_init__(self) -> None:
        for flag in ("source", "model_name_or_path", "output_dir"):
            if not getattr(self, flag):
                raise ValueError(f"--{flag}: expected a path, found none")


def prefix_config_for(state: dict, model, mask: str) -> PrefixConfig:
    """``pre_seq_len`` and projection from the tensors; sizes from the base model."""
    embedding = state["embedding.weight"]  # (pre_seq_len, kv_size)
    projection = "trans.0.weight" in state
    hidden = state["trans.0.weight"].shape[0] if projection else None
    return PrefixConfig(
        pre_seq_len=embedding.shape[0],
        layout=kv_layout(model.config),
        prefix_projection=projection,
        prefix_hidden_size=hidden,
        mask=mask,
    )


def run(args: ImportArguments) -> Path:
    state = read_chatglm2_prefix(args.source)
    if "embedding.weight" not in state:
        raise PrefixCheckpointError(f"{args.source}: expected transformer.prefix_encoder.embedding.weight, found none")
    base = resolve_model_path(args.model_name_or_path)
    model = load_base_model(base, resolve_dtype("float32"))
    base_fp = fingerprint(model)
    config = prefix_config_for(state, model, args.mask)
    encoder = build_ptuning(model, config)
    check_state_dict(encoder, state, args.source)
    encoder.load_state_dict({k: v.float() for k, v in state.items()})
    info = CheckpointInfo(
        method="ptuning",
        base_model=portable_name(base),
        base_fingerprint=base_fp,
        template=args.template,
        mask=args.mask,
        dtype="float32",
        data={"max_source_length": 64, "max_target_length": 128, "imported_from": str(Path(args.source).resolve())},
        ptuning=config.to_dict(),
    )
    save_trained(model, info, args.output_dir)
    logger.info("imported %s (pre_seq_len %d) into %s", args.source, config.pre_seq_len, args.output_dir)
    return Path(args.output_dir)


def main(argv: list[str] | None = None) -> int:
    def parse() -> tuple[ImportArguments]:
        return HfArgumentParser(ImportArguments).parse_args_into_dataclasses(args=argv)

    return run_command(parse, run, (ModelLoadError, PrefixCheckpointError))


if __name__ == "__main__":
    sys.exit(main())
