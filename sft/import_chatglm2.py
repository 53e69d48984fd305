"""Turn a THUDM ChatGLM2-6B P-tuning checkpoint into one of ours.

``python -m sft.import_chatglm2 --source DIR_OR_FILE --model_name_or_path BASE --output_dir OUT``

ChatGLM2's ``ptuning/main.py`` saves ``pytorch_model.bin`` holding only
``transformer.prefix_encoder.*``. Its tensors are read with ``weights_only=True`` (no code
from the file runs), their shapes decide ``pre_seq_len`` and the projection, the base model's
config must match their width, and the result is a normal checkpoint directory that
``sft.evaluate`` and ``sft.infer`` load like any other. The base must already be a transformers
model directory; ``python -m sft.convert --ptuning_checkpoint`` converts a THUDM base and its
prefix in one run through :func:`import_prefix`.
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
    from ptuning.checkpoint import PrefixCheckpointError, read_chatglm2_prefix
    from sft.errors import CheckpointError
    from sft.models import resolve_model_path

    try:
        state = read_chatglm2_prefix(args.source)
    except PrefixCheckpointError as err:
        raise CheckpointError(str(err)) from None
    base = resolve_model_path(args.model_name_or_path)
    return import_prefix(state, args.source, base, args.output_dir, mask=args.mask, template=args.template)


def import_prefix(state: dict, source: str, base: Path, output_dir: str | Path, *, mask: str, template: str) -> Path:
    """Write prefix-encoder tensors (``ptuning``'s names, as :func:`ptuning.checkpoint.read_chatglm2_prefix`
    returns them) read from ``source`` as a P-tuning checkpoint on the model directory ``base``.

    The base is loaded only to fingerprint it and to size the encoder: in bf16, which halves the memory
    of a 6B model and gives the same fingerprint (:func:`sft.models.fingerprint` rounds to bf16).
    """
    from ptuning.checkpoint import PrefixCheckpointError, check_state_dict
    from sft.checkpoint import CheckpointInfo, save_checkpoint
    from sft.errors import CheckpointError
    from sft.methods.ptuning import attach_encoder
    from sft.models import fingerprint, load_base_model, resolve_dtype

    if "embedding.weight" not in state:
        raise CheckpointError(f"{source}: expected transformer.prefix_encoder.embedding.weight, found none")
    model = load_base_model(base, resolve_dtype("bfloat16"))
    base_fp = fingerprint(model)
    config = prefix_config_for(state, model, mask)
    encoder = attach_encoder(model, config)
    try:
        check_state_dict(encoder, state, source)
    except PrefixCheckpointError as err:
        raise CheckpointError(str(err)) from None
    encoder.load_state_dict({k: v.float() for k, v in state.items()})
    data = {"max_source_length": 64, "max_target_length": 128, "imported_from": str(Path(source).resolve())}
    info = CheckpointInfo.describe("ptuning", config.to_dict(), base=base, base_fingerprint=base_fp, mask=mask,
                                   template=template, dtype="float32", data=data)
    save_checkpoint(model, info, output_dir)
    logger.info("imported %s (pre_seq_len %d) into %s", source, config.pre_seq_len, output_dir)
    return Path(output_dir)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    return run_command(lambda: HfArgumentParser(ImportArguments).parse_args_into_dataclasses(args=argv)[0], run)


if __name__ == "__main__":
    sys.exit(main())
