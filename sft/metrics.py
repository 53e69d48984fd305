"""Score a predictions file as ChatGLM's ptuning scripts do: ``python -m sft.metrics --predictions FILE``.

FILE is JSON Lines (or a JSON array) with string fields ``prediction`` and ``reference``, as
``sft.evaluate`` writes ``generated_predictions.jsonl``. Prints one JSON object (ROUGE-1/2/L,
BLEU-4, ``n``, ``empty``: :func:`sft.eval.scores.score_corpus`) and writes it to ``--output``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sft.cli import run_command
from sft.data.reading import DataError, describe, read_rows

logger = logging.getLogger("sft.metrics")


@dataclass
class MetricsArguments:
    predictions: str = field(
        metadata={"help": 'JSON Lines file with string fields "prediction" and "reference".'}
    )
    output: str | None = field(default=None, metadata={"help": "Also write the JSON metrics here."})


def read_predictions(path: str) -> tuple[list[str], list[str]]:
    """``(predictions, references)`` of every row; a row without both strings is a :class:`DataError`."""
    pairs = []
    for row in read_rows(path):
        if row.error is not None:
            raise row.error
        if not isinstance(row.value, dict):
            raise DataError(path, row.line, "a JSON object", describe(row.value))
        for name in ("prediction", "reference"):
            if not isinstance(row.value.get(name), str):
                found = describe(row.value[name]) if name in row.value else "fields " + (", ".join(row.value) or "none")
                raise DataError(path, row.line, f'a string under "{name}"', found)
        pairs.append((row.value["prediction"], row.value["reference"]))
    if not pairs:
        raise DataError(path, None, "at least one row", "none")
    predictions, references = zip(*pairs)
    return list(predictions), list(references)


def run(args: MetricsArguments) -> None:
    from sft.eval.scores import score_corpus  # jieba, nltk: loaded for work only

    predictions, references = read_predictions(args.predictions)
    logger.info("scoring %d rows from %s", len(predictions), args.predictions)
    text = json.dumps(score_corpus(predictions, references), ensure_ascii=False)
    print(text)
    if args.output is not None:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        logger.info("saved metrics to %s", args.output)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    return run_command(lambda: HfArgumentParser(MetricsArguments).parse_args_into_dataclasses(args=argv)[0], run)


if __name__ == "__main__":
    sys.exit(main())
