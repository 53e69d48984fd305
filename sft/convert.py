"""Turn a THUDM checkpoint into a transformers model directory: ``python -m sft.convert --source DIR --output_dir OUT``.

Takes ChatGLM2-6B (and codegeex2-6b, ChatGLM2-6B-32k), ChatGLM3-6B (-base, -32k) and GLM-4
(glm-4-9b, -chat, -chat-1m) as THUDM publishes them (``config.json`` with ``model_type``
``chatglm``, ``.bin`` or ``.safetensors`` shards, the tokenizer files) and writes a directory that
``GlmForCausalLM.from_pretrained`` loads with no remote code:

* ``config.json`` (:func:`sft.conversion.thudm.glm_config`; ``rope_ratio`` kept),
  ``model.safetensors`` or ``model-*.safetensors`` + index, written shard by shard
  (:mod:`sft.conversion.weights`: the key mapping, the ``query_key_value`` split);
* ``generation_config.json`` stopping on every id the family's chat stops on, and
  ``sft_defaults.json`` (causal mask, the family's template), so ``sft.train``, ``sft.evaluate`` and
  ``sft.infer`` need no further flags;
* the tokenizer (:func:`sft.conversion.tokenizer.convert_tokenizer`), whose ids for the stop tokens
  are checked against the generation config; ``--skip_tokenizer`` leaves it out.

The family (``chatglm2``/``chatglm3``/``glm4``) is read from the config and the tokenizer files
(:func:`sft.conversion.thudm.detect_family`); ``--family`` overrides it.

**P-tuning checkpoints.** ``--ptuning_checkpoint DIR`` (what THUDM's ``ptuning/main.py`` saves: a
``pytorch_model.bin`` with only ``transformer.prefix_encoder.*``) is converted in the same run onto
the converted base, into ``OUT/ptuning`` unless ``--ptuning_output_dir`` says otherwise; a prefix
found inside the base's own weights goes there too. ``python -m sft.infer --checkpoint OUT/ptuning
--prompt ...`` then uses it (mask causal, the family's template). ``OUT/ptuning`` sits beside the
weights it was trained on and is invisible to ``from_pretrained(OUT)``. Importing the prefix loads
the converted base once, in bf16, to fingerprint it (about 12 GB for a 6B model).

Every refusal (a quantized or ChatGLM-6B v1 checkpoint, a directory that is not THUDM's, a config
the mapping does not cover, an unmapped, missing or misshaped key) is one line and exit status 2,
before anything is written. Memory follows the largest shard, not the model: converting
ChatGLM2-6B-shaped fp16 checkpoints of 2.7 GB and 4.3 GB in shards of at most 1 GB peaks at 1.4 GB
RSS either way, 0.25 GB of it the imports (``bench/convert_memory.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sft.cli import run_command
from sft.conversion.thudm import FAMILIES, ConversionError, check_family

logger = logging.getLogger("sft.convert")

PTUNING_SUBDIR = "ptuning"


@dataclass
class ConvertArguments:
    source: str = field(default="", metadata={"help": "THUDM checkpoint directory (config.json, weights, tokenizer)."})
    output_dir: str = field(default="", metadata={"help": "Where the transformers model goes; must be new or empty."})
    family: str = field(
        default="auto", metadata={"help": f"auto (from config and tokenizer files) or one of {', '.join(FAMILIES)}."}
    )
    ptuning_checkpoint: str | None = field(
        default=None,
        metadata={"help": "A THUDM P-tuning checkpoint (directory or pytorch_model.bin) trained on --source: "
                          "converted too, onto the converted base."},
    )
    ptuning_output_dir: str | None = field(
        default=None,
        metadata={"help": f"Where the converted P-tuning checkpoint goes (default: <output_dir>/{PTUNING_SUBDIR})."},
    )
    skip_tokenizer: bool = field(
        default=False, metadata={"help": "Write no tokenizer (add one yourself before generating)."}
    )

    def __post_init__(self) -> None:
        for flag in ("source", "output_dir"):
            if not getattr(self, flag):
                raise ValueError(f"--{flag}: expected a path, found none")
        check_family(self.family)


def check_output_directory(path: str, flag: str = "--output_dir") -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{flag}: expected a new or empty directory, found existing files in {out}")
    return out


def convert(args: ConvertArguments) -> Path:
    """The whole conversion; returns the output directory."""
    from sft.conversion.thudm import detect_family, read_config
    from sft.conversion.weights import plan_weights, write_weights

    source, out = Path(args.source), check_output_directory(args.output_dir)
    if args.ptuning_output_dir:
        check_output_directory(args.ptuning_output_dir, "--ptuning_output_dir")
    config = read_config(source)
    family = detect_family(source, args.family)
    plan = plan_weights(source, config)
    prefix = read_ptuning_prefix(args, plan, config)  # before the long part: a bad prefix fails fast
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_tokenizer:
            write_tokenizer(source, out, family)  # quick and the likelier to fail: before the weights
        logger.info("converting %s (%s, %d layers, %s, %d shards) into %s", source, family, config["num_layers"],
                    plan.dtype, len(plan.shards), out)
        total = write_weights(plan, out)
        write_model_files(config, family, plan.dtype, out)
    except BaseException:
        if created:  # no half-written model directory that looks like a whole one
            shutil.rmtree(out, ignore_errors=True)
        raise
    if prefix is not None:  # the base is whole now: a failure here leaves it for sft.import_chatglm2
        from sft.import_chatglm2 import import_prefix

        state, origin = prefix
        pt_out = Path(args.ptuning_output_dir or out / PTUNING_SUBDIR)
        import_prefix(state, origin, out.resolve(), pt_out, mask="causal", template=family)
    logger.info("wrote %s: %.2f GB of weights, template %s", out, total / 1e9, family)
    return out


def read_ptuning_prefix(args: ConvertArguments, plan, config: dict) -> tuple[dict, str] | None:
    """The P-tuning prefix to convert and where it came from: ``--ptuning_checkpoint``'s or one inside the
    base's weights. Its width is checked against the THUDM config now rather than after the conversion."""
    from ptuning.checkpoint import PrefixCheckpointError, read_chatglm2_prefix
    from sft.conversion.weights import read_prefix

    if args.ptuning_checkpoint and plan.has_prefix:
        raise ConversionError(f"--ptuning_checkpoint: expected one prefix, found {args.ptuning_checkpoint} and "
                              f"transformer.prefix_encoder.* in the weights of {args.source}")
    if args.ptuning_checkpoint:
        try:
            prefix, origin = read_chatglm2_prefix(args.ptuning_checkpoint), args.ptuning_checkpoint
        except PrefixCheckpointError as err:
            raise ConversionError(str(err)) from None
    elif plan.has_prefix:
        prefix, origin = read_prefix(plan), args.source
    else:
        return None
    # ChatGLM2's layout: embedding rows of num_layers * 2 * groups * kv_channels (with or without projection).
    width = config["num_layers"] * 2 * config["multi_query_group_num"] * config["kv_channels"]
    embedding = prefix.get("embedding.weight")
    if embedding is None or embedding.dim() != 2 or embedding.shape[1] != width:
        found = f"shape {tuple(embedding.shape)}" if embedding is not None else "none"
        raise ConversionError(f"{origin}: expected transformer.prefix_encoder.embedding.weight of shape (pre_seq_len, "
                              f"{width}) for this base (num_layers * 2 * multi_query_group_num * kv_channels), "
                              f"found {found}")
    return prefix, origin


def write_model_files(config: dict, family: str, dtype: str, out: Path) -> None:
    """``config.json``, ``generation_config.json`` and ``sft_defaults.json``."""
    from transformers import GenerationConfig

    from sft.conversion.thudm import glm_config, stop_token_ids
    from sft.models import DEFAULTS_FILE

    glm = glm_config(config, family, dtype)
    glm.save_pretrained(str(out))
    GenerationConfig(eos_token_id=stop_token_ids(family), pad_token_id=glm.pad_token_id).save_pretrained(str(out))
    (out / DEFAULTS_FILE).write_text(json.dumps({"mask": "causal", "template": family}) + "\n", encoding="utf-8")


def write_tokenizer(source: Path, out: Path, family: str) -> None:
    """The tokenizer, converted; its stop-token ids must be the generation config's."""
    from sft.conversion.thudm import check_stop_tokens
    from sft.conversion.tokenizer import convert_tokenizer
    from sft.models import load_tokenizer

    convert_tokenizer(source, out, family)
    check_stop_tokens(load_tokenizer(out), family, out)


def run(args: ConvertArguments) -> None:
    print(convert(args))


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    return run_command(lambda: HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(args=argv)[0], run)


if __name__ == "__main__":
    sys.exit(main())
