"""Score a predictions file as ChatGLM's ptuning scripts do: ``python -m sft.metrics --predictions FILE``;
or put evaluations side by side: ``python -m sft.metrics --compare base=DIR/metrics.json tuned=...``.

FILE is JSON Lines (or a JSON array) with string fields ``prediction`` and ``reference`` and,
optionally, ``prompt`` (attribute recall needs it) and ``at_limit``, as ``sft.evaluate`` writes
``generated_predictions.jsonl``. Prints one JSON object (ROUGE-1/2/L, BLEU-4, attribute recall,
distinct share, ``n``, ``empty``: :func:`sft.eval.scores.score_corpus`; ``at_limit``: the rows marked
``"at_limit": true``, answers ``max_new_tokens`` ended before an eos) and writes it to ``--output``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sft.cli import run_command
from sft.data.reading import DataError, read_objects

logger = logging.getLogger("sft.metrics")


@dataclass
class MetricsArguments:
    predictions: str | None = field(
        default=None, metadata={"help": 'JSON Lines file with string fields "prediction" and "reference".'}
    )
    output: str | None = field(default=None, metadata={"help": "Also write the JSON metrics here."})
    compare: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=metrics.json ... (what sft.evaluate writes): print these runs as one table."},
    )

    def __post_init__(self) -> None:
        if (self.predictions is None) == (not self.compare):
            raise ValueError("--predictions/--compare: expected one of them, found "
                             + ("both" if self.compare else "neither"))
        for item in self.compare:
            if "=" not in item:
                raise ValueError(f"--compare: expected NAME=path/to/metrics.json, found {item!r}")


def compare(items: list[str]) -> None:
    """Print the evaluations ``NAME=metrics.json`` side by side."""
    from sft.eval.evaluation import format_table

    columns = {}
    for item in items:
        name, _, path = item.partition("=")
        try:
            columns[name] = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(path, None, "a metrics.json written by sft.evaluate", type(err).__name__) from None
    print(format_table(columns))


def read_predictions(path: str) -> tuple[list[str], list[str], list[str] | None, int]:
    """``(predictions, references, prompts, at_limit)`` of every row (prompts ``None`` unless every row has
    one; ``at_limit`` the rows marked so); a row without both strings is a :class:`DataError`."""
    rows = [row for _, row in read_objects(path, ("prediction", "reference"))]
    if not rows:
        raise DataError(path, None, "at least one row", "none")
    prompts = [row.get("prompt") for row in rows]
    prompts = prompts if all(isinstance(prompt, str) for prompt in prompts) else None
    at_limit = sum(row.get("at_limit") is True for row in rows)
    return [row["prediction"] for row in rows], [row["reference"] for row in rows], prompts, at_limit


def run(args: MetricsArguments) -> None:
    if args.compare:
        return compare(args.compare)
    from sft.eval.scores import score_corpus  # jieba, nltk: loaded for work only

    predictions, references, prompts, at_limit = read_predictions(args.predictions)
    logger.info("scoring %d rows from %s", len(predictions), args.predictions)
    text = json.dumps({**score_corpus(predictions, references, prompts), "at_limit": at_limit}, ensure_ascii=False)
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
