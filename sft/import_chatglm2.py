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

from sft.cli import run_command
from sft.data.templates import get_template
from sft.models import check_mask

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
        if self.mask == "auto":
            raise ValueError("--mask: expected causal or prefix_lm (what the prefix was trained with), found 'auto'")
        check_mask(self.mask)
        get_template(self.template)


def prefix_config_for(state: dict, model, mask: str):
    """``pre_seq_len`` and projection from the tensors; sizes from the base model."""
    from ptuning.encoder import PrefixConfig
    from ptuning.layout import kv_layout

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
    from ptuning.checkpoint import PrefixCheckpointError, check_state_dict, read_chatglm2_prefix
    from sft.checkpoint import CheckpointInfo, save_checkpoint
    from sft.errors import CheckpointError
    from sft.methods.ptuning import attach_encoder
    from sft.models import fingerprint, load_base_model, resolve_dtype, resolve_model_path

    try:
        state = read_chatglm2_prefix(args.source)
    except PrefixCheckpointError as err:
        raise CheckpointError(str(err)) from None
    if "embedding.weight" not in state:
        raise CheckpointError(f"{args.source}: expected transformer.prefix_encoder.embedding.weight, found none")
    base = resolve_model_path(args.model_name_or_path)
    model = load_base_model(base, resolve_dtype("float32"))
    base_fp = fingerprint(model)
    config = prefix_config_for(state, model, args.mask)
    encoder = attach_encoder(model, config)
    try:
        check_state_dict(encoder, state, args.source)
    except PrefixCheckpointError as err:
        raise CheckpointError(str(err)) from None
    encoder.load_state_dict({k: v.float() for k, v in state.items()})
    data = {"max_source_length": 64, "max_target_length": 128, "imported_from": str(Path(args.source).resolve())}
    info = CheckpointInfo.describe("ptuning", config.to_dict(), base=base, base_fingerprint=base_fp, mask=args.mask,
                                   template=args.template, dtype="float32", data=data)
    save_checkpoint(model, info, args.output_dir)
    logger.info("imported %s (pre_seq_len %d) into %s", args.source, config.pre_seq_len, args.output_dir)
    return Path(args.output_dir)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    return run_command(lambda: HfArgumentParser(ImportArguments).parse_args_into_dataclasses(args=argv)[0], run)


if __name__ == "__main__":
    sys.exit(main())
