"""Score a checkpoint on a dev file: ``python -m sft.evaluate --checkpoint DIR --validation_file F [flags]``.

Loads the checkpoint (base model and method from its ``sft_checkpoint.json``), generates for the
dev rows not generated yet, scores them as ChatGLM does and prints the scores as a table. Files
written to ``--output_dir`` (default ``<checkpoint>/eval``): ``generated_predictions.jsonl``
(resumable), ``generation_settings.json`` and ``metrics.json`` (:mod:`sft.eval.evaluation`).

``torchrun --nproc-per-node N -m sft.evaluate ...`` (``NPROC=N bash scripts/evaluate.sh``) splits the
generation over N processes and writes the same files as one process.
"""

from __future__ import annotations

import sys

from sft.cli import run_command, setup_logging
from sft.eval.arguments import EvaluateArguments, GenerationArguments, LoadArguments


def parse_args(argv: list[str] | None = None) -> tuple[LoadArguments, EvaluateArguments, GenerationArguments]:
    from transformers import HfArgumentParser

    return HfArgumentParser((LoadArguments, EvaluateArguments, GenerationArguments)).parse_args_into_dataclasses(args=argv)


def run(args: tuple[LoadArguments, EvaluateArguments, GenerationArguments]) -> None:
    from sft.eval.evaluation import evaluate, format_table, process_group

    with process_group(args[0].device) as shard:
        if not shard.main:
            setup_logging(quiet=True)  # one log, one table: process 0's
        metrics = evaluate(*args)
    if shard.main:
        print(format_table({"score": metrics}))


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
