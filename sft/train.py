"""Fine-tune a GLM-family model: ``python -m sft.train --train_file ... [flags]`` (:mod:`sft.training.recipe`).

``--help`` lists this project's flags; every flag of transformers' ``TrainingArguments`` is
accepted too (``--help_all`` lists them, which takes a few seconds: it imports torch).
"""

from __future__ import annotations

import sys

from sft.cli import run_command, setup_logging

EPILOG = ("Every flag of transformers' TrainingArguments is accepted too (--num_train_epochs, --max_steps, "
          "--per_device_train_batch_size, --gradient_accumulation_steps, --learning_rate, --output_dir, --bf16, "
          "--activation_checkpointing, --deepspeed, --resume_from_checkpoint, ...): python -m sft.train --help_all")


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

    try:
        return run_command(parse, run, log_stream=sys.stdout)
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Leave torchrun's process group (the Trainer's arguments join it when parsed) while the interpreter
    is still whole: gloo's worker threads left running into its shutdown can abort the process (SIGABRT,
    "terminate called without an active exception") after it trained and saved. Nothing to do when no
    group was joined."""
    dist = sys.modules.get("torch.distributed")  # not imported: no group, and no torch import just for this
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
