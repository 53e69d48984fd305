"""Score a checkpoint on a dev file: ``python -m sft.evaluate --checkpoint DIR --validation_file F [flags]``.

The steps: load the checkpoint (base model and method from its ``sft_checkpoint.json``), read
the dev rows with the data settings it was trained with, generate the rows not generated yet,
score them as ChatGLM does (:mod:`sft.metrics`) and print the scores as a table.

Files written to ``--output_dir`` (default ``<checkpoint>/eval``):

* ``generated_predictions.jsonl``: one JSON object per row (``index``, ``prompt``: the raw
  prompt column text, ``prediction``, ``reference``), appended and flushed as rows are
  generated, so an interrupted run loses at most one batch. A rerun generates only the
  missing rows; at the end the file is rewritten in index order.
* ``generation_settings.json``: what decides the predictions (checkpoint, data, generation
  flags). A rerun with other settings refuses to mix them unless ``--overwrite``.
* ``metrics.json``: ``rouge-1``, ``rouge-2``, ``rouge-l``, ``bleu-4``, ``n``, ``empty``, the
  generation settings and the checkpoint.

:func:`evaluate_examples` is the same evaluation for code (the Trainer during training).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, PreTrainedModel, PreTrainedTokenizerBase

from sft.checkpoint import CheckpointError
from sft.cli import run_command
from sft.data import DataArguments, DataError, Example, encode_prompt, load_examples
from sft.data.reading import read_rows
from sft.generation import GenerationArguments, LoadArguments, checkpoint_data_arguments, generate_all, load_model
from sft.metrics import score_corpus
from sft.models import EMBEDDED, ModelLoadError

logger = logging.getLogger("sft.evaluate")

PREDICTIONS_FILE = "generated_predictions.jsonl"
SETTINGS_FILE = "generation_settings.json"
METRICS_FILE = "metrics.json"
TABLE_KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "n", "empty")


class EvaluationError(ValueError):
    """Existing outputs that a run cannot continue from, or flags that clash with the checkpoint."""


# Mistakes in what the user gave us: one line, no traceback. Anything else is our bug and keeps its traceback.
USER_ERRORS = (DataError, CheckpointError, ModelLoadError, EvaluationError)


@dataclass
class EvaluateArguments:
    """What to evaluate on and where the results go."""

    validation_file: str = field(default="data/adgen/dev.json", metadata={"help": "Dev data: JSON Lines or a JSON array."})
    eval_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where predictions and metrics go (default: <checkpoint>/eval)."}
    )
    prompt_column: str | None = field(default=None, metadata={"help": "Prompt column (default: the checkpoint's)."})
    response_column: str | None = field(default=None, metadata={"help": "Reference column (default: the checkpoint's)."})
    overwrite: bool = field(
        default=False, metadata={"help": "Start over even if the output directory holds predictions made otherwise."}
    )

    def __post_init__(self) -> None:
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ValueError(f"--eval_samples: expected at least 1, found {self.eval_samples}")


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_source_length: int,
    gen_args: GenerationArguments,
    *,
    done: dict[int, str] | None = None,
    on_result: Callable[[int, str], None] | None = None,
) -> tuple[list[str], dict]:
    """Generate a prediction for every example and score them against the examples' answers.

    Args:
        examples: rendered with the model's template (see :func:`sft.data.load_examples`).
        max_source_length: prompts are cut as in training (:func:`sft.data.encode_prompt`).
        done: predictions already made, by index; those rows are not generated again.
        on_result: called with ``(index, prediction)`` as each new row is generated.

    Returns:
        The predictions in example order and :func:`sft.metrics.score_corpus`'s scores.
        The model is put in eval mode while generating and given back in its former mode.
    """
    done = done or {}
    prompt_ids = [encode_prompt(example, tokenizer, max_source_length) for example in examples]
    was_training = model.training
    model.eval()
    try:
        generated = generate_all(model, tokenizer, prompt_ids, gen_args, on_result=on_result, skip=done.keys())
    finally:
        model.train(was_training)
    predictions = [done[i] if text is None else text for i, text in enumerate(generated)]
    return predictions, score_corpus(predictions, [example.answer for example in examples])


def raw_prompts(path: str, examples: list[Example], column: str | None) -> list[str]:
    """The prompt column's text of each example's row (the rendered prompt when the format has no such column)."""
    values = {row.line: row.value for row in read_rows(path) if isinstance(row.value, dict)}
    return [str(values.get(example.line, {}).get(column, example.prompt)) for example in examples]


def output_directory(args: EvaluateArguments, source: str) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    return Path("output/eval-embedded") if source == EMBEDDED else Path(source) / "eval"


def run_settings(load_args: LoadArguments, args: EvaluateArguments, data_args, gen_args: GenerationArguments) -> dict:
    """Everything that decides the predictions; two runs may share a predictions file only if these agree."""
    source = load_args.source()
    return {
        "checkpoint": source if source == EMBEDDED else str(Path(source).resolve()),
        "model_name_or_path": load_args.model_name_or_path,
        "validation_file": str(Path(args.validation_file).resolve()),
        "template": data_args.template,
        "prompt_column": data_args.prompt_column,
        "max_source_length": data_args.max_source_length,
        **gen_args.settings(),
    }


def check_settings(output_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to continue predictions that were made with other settings; then record ours."""
    predictions = output_dir / PREDICTIONS_FILE
    settings_file = output_dir / SETTINGS_FILE
    if predictions.exists() and not overwrite:
        before = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.exists() else {}
        changed = [f"{key} {before.get(key)!r} -> {new!r}" for key, new in settings.items() if before.get(key) != new]
        if changed:
            raise EvaluationError(
                f"{predictions}: expected predictions made with the same settings, found other ones "
                f"({'; '.join(changed)}); pass --overwrite to start over or choose another --output_dir"
            )
    if overwrite:
        predictions.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_done(path: Path, rows: list[dict]) -> dict[int, str]:
    """Predictions already in ``path`` for ``rows``, checked against them; a cut-off last line is dropped."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    done: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        try:
            saved = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the run was stopped while writing this row
            raise EvaluationError(f"{path}:{number}: expected a JSON object, found invalid JSON; pass --overwrite")
        index = saved.get("index") if isinstance(saved, dict) else None
        if not isinstance(index, int) or index >= len(rows) or index < 0:
            continue  # a row outside this run (e.g. a larger --eval_samples before)
        if (saved.get("prompt"), saved.get("reference")) != (rows[index]["prompt"], rows[index]["reference"]):
            raise EvaluationError(
                f"{path}:{number}: expected row {index} of the validation file, found another prompt or reference; "
                "pass --overwrite to start over"
            )
        done[index] = saved.get("prediction", "")
    return done


def write_predictions(path: Path, rows: list[dict], predictions: dict[int, str]) -> None:
    """Rewrite ``path`` with the rows that have a prediction, in index order."""
    with path.open("w", encoding="utf-8") as out:
        for index in sorted(predictions):
            out.write(json.dumps({**rows[index], "prediction": predictions[index]}, ensure_ascii=False) + "\n")


def format_table(metrics: dict) -> str:
    """``metric | score`` rows, aligned."""
    cells = [(key, f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else str(metrics[key]))
             for key in TABLE_KEYS]
    width = max(len(key) for key, _ in cells + [("metric", "")])
    score_width = max(len(value) for _, value in cells + [("", "score")])
    lines = [f"{'metric':<{width}} | {'score':>{score_width}}", f"{'-' * width}-|-{'-' * score_width}"]
    lines += [f"{key:<{width}} | {value:>{score_width}}" for key, value in cells]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[LoadArguments, EvaluateArguments, GenerationArguments]:
    parser = HfArgumentParser((LoadArguments, EvaluateArguments, GenerationArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def data_arguments(info, args: EvaluateArguments) -> DataArguments:
    """The checkpoint's data settings with the column overrides given on the command line."""
    try:
        return checkpoint_data_arguments(info, prompt_column=args.prompt_column, response_column=args.response_column)
    except ValueError as err:  # an override that clashes with the checkpoint's other column
        raise EvaluationError(str(err)) from None


def load_rows(args: EvaluateArguments, data_args: DataArguments) -> tuple[list[Example], list[dict]]:
    """The examples to evaluate and their output rows (``index``, ``prompt``, ``reference``)."""
    examples = load_examples(args.validation_file, data_args)[: args.eval_samples]
    prompts = raw_prompts(args.validation_file, examples, data_args.prompt_column)
    rows = [{"index": i, "prompt": p, "reference": e.answer} for i, (e, p) in enumerate(zip(examples, prompts))]
    return examples, rows


def resume(output_dir: Path, rows: list[dict], settings: dict, overwrite: bool) -> dict[int, str]:
    """Predictions an earlier run with the same settings left in ``output_dir``."""
    check_settings(output_dir, settings, overwrite)
    path = output_dir / PREDICTIONS_FILE
    done = read_done(path, rows)
    write_predictions(path, rows, done)  # drops a cut-off last line before appending
    logger.info("%d of %d rows to generate (%d already in %s)", len(rows) - len(done), len(rows), len(done), path)
    return done


def generate_appending(model, tokenizer, examples, rows, max_source_length, gen_args, done, path: Path) -> dict:
    """:func:`evaluate_examples`, appending each new row to ``path`` as it is made; returns the scores."""
    with path.open("a", encoding="utf-8") as out:

        def append(index: int, prediction: str) -> None:
            out.write(json.dumps({**rows[index], "prediction": prediction}, ensure_ascii=False) + "\n")
            out.flush()

        predictions, scores = evaluate_examples(
            model, tokenizer, examples, max_source_length, gen_args, done=done, on_result=append
        )
    write_predictions(path, rows, dict(enumerate(predictions)))
    return scores


def write_metrics(output_dir: Path, scores: dict, settings: dict, method: str) -> dict:
    metrics = {**scores, "generation": settings, "checkpoint": settings["checkpoint"], "method": method}
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and %s to %s", PREDICTIONS_FILE, METRICS_FILE, output_dir)
    return metrics


def run(load_args: LoadArguments, args: EvaluateArguments, gen_args: GenerationArguments) -> dict:
    model, tokenizer, info = load_model(load_args)
    data_args = data_arguments(info, args)
    examples, rows = load_rows(args, data_args)
    output_dir = output_directory(args, load_args.source())
    settings = run_settings(load_args, args, data_args, gen_args)
    done = resume(output_dir, rows, settings, args.overwrite)
    path = output_dir / PREDICTIONS_FILE
    scores = generate_appending(model, tokenizer, examples, rows, data_args.max_source_length, gen_args, done, path)
    return write_metrics(output_dir, scores, settings, info.method)


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), lambda *args: print(format_table(run(*args))), USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
