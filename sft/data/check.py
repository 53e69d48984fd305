"""``python -m sft.data check``: what a data file holds, before any training run.

Prints per file: rows, bad rows (each on stderr as ``FILE:LINE: expected ..., found ...``),
token-length percentiles of prompt and answer, how many rows the length limits would cut, and
rows whose answer has no token besides eos. Exit status 2 when there are bad rows (unless
``--skip_bad_rows``) or the file or flags cannot be used.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.data.arguments import DataArguments
from sft.data.formats import Example, read_examples
from sft.data.reading import DataError
from sft.cli import run_command
from sft.embedded import DEFAULT_MODEL_DIR
from sft.errors import UserError
from sft.models import base_defaults

USAGE = "usage: python -m sft.data check --train_file FILE [--format FORMAT] [--tokenizer DIR] [...] (--help for all)"


@dataclass
class CheckArguments:
    """Flags of ``check`` besides :class:`DataArguments`."""

    tokenizer: str = field(
        default=str(DEFAULT_MODEL_DIR),
        metadata={"help": "Tokenizer directory used to count tokens (default: the embedded model's)."},
    )


def check(check_args: CheckArguments, data_args: DataArguments) -> None:
    """Print row counts, bad rows and token-length statistics of the files ``data_args`` names."""
    if data_args.template == "auto":
        data_args.template = base_defaults(Path(check_args.tokenizer))["template"]
    files = [path for path in (data_args.train_file, data_args.validation_file) if path]
    if not files:
        raise UserError("--train_file: expected a file to check, found none")
    scans = [(path, *read_examples(path, data_args)) for path in files]
    bad = sum(_report_rows(path, examples, errors, data_args) for path, examples, errors in scans)
    if bad and not data_args.skip_bad_rows:
        raise UserError(f"{bad} bad rows: fix them, or pass --skip_bad_rows to leave them out")
    tokenizer = _load_tokenizer(check_args.tokenizer)
    for path, examples, _ in scans:
        print(f"{path}: token lengths (tokenizer {check_args.tokenizer}, template {data_args.template})")
        print("\n".join(_length_report(examples, tokenizer, data_args)))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sft.data check ...``; returns the exit status (0 or 2)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0

    def parse() -> tuple[CheckArguments, DataArguments]:
        if not argv or argv[0] != "check":
            raise UserError(USAGE)
        from transformers import HfArgumentParser

        parser = HfArgumentParser((CheckArguments, DataArguments), prog="python -m sft.data check")
        return parser.parse_args_into_dataclasses(args=argv[1:])

    return run_command(parse, lambda args: check(*args))


def _report_rows(path: str, examples: list[Example], errors: list[DataError], args: DataArguments) -> int:
    """Print the row counts of one file and its bad rows; return how many rows were bad."""
    status = "skipped" if args.skip_bad_rows else "bad"
    lines = ", ".join(str(error.line) for error in errors)
    print(f"{path}: {len(examples)} rows, {len(errors)} bad rows" + (f" ({status}: lines {lines})" if errors else ""))
    for error in errors:
        print(error, file=sys.stderr)
    if not examples:
        raise DataError(path, None, "at least one usable row", "none")
    return len(errors)


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--tokenizer: expected a tokenizer directory, found {path!r} ({reason})") from None


def _percentile(ordered: list[int], percent: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _length_report(examples: list[Example], tokenizer: Any, args: DataArguments) -> list[str]:
    from sft.data.encoding import token_lengths  # torch: not for --help

    lengths = [token_lengths(example, tokenizer) for example in examples]
    prompts = sorted(prompt for prompt, _ in lengths)
    answers = sorted(answer + 1 for _, answer in lengths)  # + eos
    report = [f"  {'tokens':<12}" + "".join(f"{name:>7}" for name in ("p50", "p90", "p99", "max"))]
    for name, ordered in (("prompt", prompts), ("answer+eos", answers)):
        report.append(f"  {name:<12}" + "".join(f"{_percentile(ordered, p):>7}" for p in (50, 90, 99, 100)))
    cut_prompts = sum(length > args.max_source_length for length in prompts)
    cut_answers = sum(length > args.max_target_length for length in answers)
    unsupervised = sum(answer == 0 or args.max_target_length == 1 for _, answer in lengths)
    report += [
        f"  --max_source_length {args.max_source_length} cuts {cut_prompts} prompts (from the left, answer cue kept)",
        f"  --max_target_length {args.max_target_length} cuts {cut_answers} answers (eos kept)",
        f"  rows with no supervised token besides eos: {unsupervised}",
    ]
    return report
