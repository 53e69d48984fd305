"""The predictions file of an evaluation run, which a rerun continues instead of starting over.

* ``generated_predictions.jsonl``: one JSON object per row (``index``, ``prompt``: the raw
  prompt column text, ``prediction``, ``reference``; ``at_limit``: true where ``max_new_tokens``
  ended the prediction before an eos), appended and flushed as rows are
  generated, so an interrupted run loses at most one batch. A rerun generates only the
  missing rows; at the end the file is rewritten in index order.
* ``generation_settings.json``: what decides the predictions (checkpoint, data, generation
  flags). A rerun with other settings refuses to mix them unless ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sft.data.reading import read_rows
from sft.errors import UserError
from sft.eval.generation import Answer

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
SETTINGS_FILE = "generation_settings.json"


class EvaluationError(UserError):
    """Existing outputs that a run cannot continue from, or flags that clash with the checkpoint."""


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


def read_done(path: Path, rows: list[dict]) -> dict[int, Answer]:
    """Predictions already in ``path`` for ``rows``, checked against them; a cut-off last line is dropped."""
    if not path.exists() or not path.read_bytes().strip():
        return {}
    saved_rows = read_rows(path)
    done: dict[int, Answer] = {}
    for number, row in enumerate(saved_rows, start=1):
        if row.error is not None:
            if number == len(saved_rows):
                break  # the run was stopped while writing this row
            raise EvaluationError(f"{row.error}; pass --overwrite")
        saved = row.value
        index = saved.get("index") if isinstance(saved, dict) else None
        if not isinstance(index, int) or index >= len(rows) or index < 0:
            continue  # a row outside this run (e.g. a larger --eval_samples before)
        if (saved.get("prompt"), saved.get("reference")) != (rows[index]["prompt"], rows[index]["reference"]):
            raise EvaluationError(
                f"{path}:{row.line}: expected row {index} of the validation file, found another prompt or reference; "
                "pass --overwrite to start over"
            )
        done[index] = Answer(saved.get("prediction", ""), saved.get("at_limit") is True)
    return done


def prediction_row(row: dict, answer: Answer) -> dict:
    """A line of the predictions file: the row, its prediction and, when true, ``at_limit``."""
    return {**row, "prediction": answer.text, **({"at_limit": True} if answer.at_limit else {})}


def write_predictions(path: Path, rows: list[dict], predictions: dict[int, Answer]) -> None:
    """Rewrite ``path`` with the rows that have a prediction, in index order."""
    with path.open("w", encoding="utf-8") as out:
        for index in sorted(predictions):
            out.write(json.dumps(prediction_row(rows[index], predictions[index]), ensure_ascii=False) + "\n")


def resume(output_dir: Path, rows: list[dict], settings: dict, overwrite: bool) -> dict[int, Answer]:
    """Predictions an earlier run with the same settings left in ``output_dir``."""
    check_settings(output_dir, settings, overwrite)
    path = output_dir / PREDICTIONS_FILE
    done = read_done(path, rows)
    write_predictions(path, rows, done)  # drops a cut-off last line before appending
    logger.info("%d of %d rows to generate (%d already in %s)", len(rows) - len(done), len(rows), len(done), path)
    return done
