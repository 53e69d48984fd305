"""Score a checkpoint on a dev file: ``python -m sft.evaluate --checkpoint DIR --validation_file F [flags]``.

Loads the checkpoint (base model and method from its ``sft_checkpoint.json``), generates for the
dev rows not generated yet, scores them as ChatGLM does and prints the scores as a table. Files
written to ``--output_dir`` (default ``<checkpoint>/eval``): ``generated_predictions.jsonl``
(resumable), ``generation_settings.json`` and ``metrics.json`` (:mod:`sft.eval.evaluation`).
"""

from __future__ import annotations

import sys

from sft.cli import run_command
from sft.eval.arguments import EvaluateArguments, GenerationArguments, LoadArguments


def parse_args(argv: list[str] | None = None) -> tuple[LoadArguments, EvaluateArguments, GenerationArguments]:
    from transformers import HfArgumentParser

    return HfArgumentParser((LoadArguments, EvaluateArguments, GenerationArguments)).parse_args_into_dataclasses(args=argv)


def run(args: tuple[LoadArguments, EvaluateArguments, GenerationArguments]) -> None:
    from sft.eval.evaluation import evaluate, format_table

    print(format_table({"score": evaluate(*args)}))


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
