"""Fine-tune a GLM-family model: ``python -m sft.train --train_file ... [flags]`` (:mod:`sft.training.recipe`).

``--help`` lists this project's flags; every flag of transformers' ``TrainingArguments`` is
accepted too (``--help_all`` lists them, which takes a few seconds: it imports torch).
"""

from __future__ import annotations

import sys

from sft.cli import run_command, setup_logging

EPILOG = ("Every flag of transformers' TrainingArguments is accepted too (--num_train_epochs, --max_steps, "
          "--per_device_train_batch_size, --gradient_accumulation_steps, --learning_rate, --output_dir, --bf16, "
          "--gradient_checkpointing, --deepspeed, --resume_from_checkpoint, ...): python -m sft.train --help_all")


def print_help(everything: bool) -> None:
    """This project's flags (fast: no torch), or with ``everything`` the Trainer's too."""
    from transformers import HfArgumentParser

    from sft.data import DataArguments
    from sft.methods import METHODS
    from sft.training.arguments import MethodArguments, ModelArguments

    types = [ModelArguments, DataArguments, MethodArguments, *(m.arguments for m in METHODS.values() if m.arguments)]
    if everything:
        from sft.training.trainer import SFTTrainingArguments

        types.append(SFTTrainingArguments)
    HfArgumentParser(types, prog="python -m sft.train", epilog=None if everything else EPILOG).print_help()


def run(args) -> None:
    from sft.training.recipe import run as train

    setup_logging(sys.stdout, quiet=not args.training.should_log)  # training logs are the output
    train(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help", "--help_all"} & set(argv):
        print_help("--help_all" in argv)
        return 0

    def parse():
        from sft.training.recipe import parse_args

        return parse_args(argv)

    return run_command(parse, run, log_stream=sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
