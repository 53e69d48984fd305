"""Evaluation by generation: generate for dev rows, score them as ChatGLM does (:mod:`sft.eval.scores`).

:func:`evaluate` is the job of ``python -m sft.evaluate``: load the checkpoint (base model and
method from its ``sft_checkpoint.json``), read the dev rows with the data settings it was
trained with, generate the rows not generated yet (:mod:`sft.eval.predictions` keeps the
predictions file resumable), score, and write ``metrics.json`` (``rouge-1``, ``rouge-2``,
``rouge-l``, ``bleu-4``, ``attribute_recall``, ``distinct``, ``n``, ``empty``, ``at_limit``,
``prompts_cut``, the generation settings and the checkpoint). Nothing is cut without a word:
the log says how many prompts ``max_source_length`` cut and how many answers ``max_new_tokens``
ended before an eos (``at_limit``, marked on their rows of the predictions file).

:func:`evaluate_examples` is the same evaluation for code (the Trainer during training).

Under ``torchrun --nproc-per-node N python -m sft.evaluate`` (:func:`process_group`) every process
loads the model and generates its share of the batches (:class:`sft.eval.generation.Shard`, which
argues why the texts are those of one process); process 0 alone reads and writes the files, so the
predictions file, its resumability and ``metrics.json`` are those of a single process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.data import DataArguments, Example, encode_prompt_counted, load_examples
from sft.data.reading import read_rows
from sft.eval.arguments import EvaluateArguments, GenerationArguments, LoadArguments
from sft.eval.generation import Answer, Shard, generate_all
from sft.eval.loading import checkpoint_data_arguments, load_model
from sft.eval.predictions import PREDICTIONS_FILE, EvaluationError, prediction_row, resume, write_predictions
from sft.eval.scores import score_corpus
from sft.models import EMBEDDED

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TABLE_KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "attribute_recall", "distinct", "n", "empty", "at_limit")


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_source_length: int,
    gen_args: GenerationArguments,
    *,
    done: dict[int, Answer] | None = None,
    on_result: Callable[[int, Answer], None] | None = None,
    shard: Shard = Shard(),
) -> tuple[list[Answer], dict]:
    """Generate a prediction for every example and score them against the examples' answers.

    Args:
        examples: rendered with the model's template (see :func:`sft.data.load_examples`).
        max_source_length: prompts are cut as in training (:func:`sft.data.encode_prompt`).
        done: predictions already made, by index; those rows are not generated again.
        on_result: called with ``(index, prediction)`` as each new row is generated.
        shard: this process's part when several generate together (every process gets every prediction).

    Returns:
        The predictions in example order and :func:`sft.eval.scores.score_corpus`'s scores, with
        ``at_limit`` (answers that ``gen_args.max_new_tokens`` ended before an eos) and ``prompts_cut``
        (prompts longer than ``max_source_length``, cut from the left as in training) counted.
        The model is put in eval mode while generating and given back in its former mode.
    """
    done = done or {}
    encoded = [encode_prompt_counted(example, tokenizer, max_source_length) for example in examples]
    prompt_ids = [ids for ids, _ in encoded]
    was_training = model.training
    model.eval()
    try:
        generated = generate_all(model, tokenizer, prompt_ids, gen_args, on_result=on_result, skip=done.keys(),
                                 shard=shard)
    finally:
        model.train(was_training)
    answers = [done[i] if answer is None else answer for i, answer in enumerate(generated)]
    references = [example.answer for example in examples]
    scores = score_corpus([a.text for a in answers], references, [example.prompt for example in examples])
    scores["at_limit"] = sum(answer.at_limit for answer in answers)
    scores["prompts_cut"] = sum(length > len(ids) for ids, length in encoded)
    return answers, scores


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


def format_table(columns: dict[str, dict]) -> str:
    """``metric | <column> ...`` rows of :data:`TABLE_KEYS`, aligned; a column is one run's metrics."""
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)

    rows = [["metric", *columns]] + [[key, *(cell(m.get(key)) for m in columns.values())] for key in TABLE_KEYS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


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


def generate_appending(model, tokenizer, examples, rows, max_source_length, gen_args, done, path: Path,
                       shard: Shard = Shard()) -> dict:
    """:func:`evaluate_examples`, appending each new row to ``path`` as it is made (by process 0 of a
    ``shard``: the others only generate); returns the scores."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(path.open("a", encoding="utf-8")) if shard.main else None

        def append(index: int, answer: Answer) -> None:
            out.write(json.dumps(prediction_row(rows[index], answer), ensure_ascii=False) + "\n")
            out.flush()

        answers, scores = evaluate_examples(
            model, tokenizer, examples, max_source_length, gen_args, done=done,
            on_result=append if shard.main else None, shard=shard,
        )
    if shard.main:
        write_predictions(path, rows, dict(enumerate(answers)))
    return scores


def write_metrics(output_dir: Path, metrics: dict) -> None:
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and %s to %s", PREDICTIONS_FILE, METRICS_FILE, output_dir)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Shard]:
    """This process's :class:`Shard` of a ``torchrun`` run (``WORLD_SIZE`` > 1), its process group joined
    for the duration: nccl with this process's GPU (``LOCAL_RANK``) as ``cuda``, or gloo on CPU. Outside
    ``torchrun``: one process, nothing to join."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield Shard.current()
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is this process's GPU
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Shard.current()
    finally:
        dist.destroy_process_group()


def evaluate(load_args: LoadArguments, args: EvaluateArguments, gen_args: GenerationArguments) -> dict:
    """Generate what is missing, score, write the outputs; returns ``metrics.json``'s content (in every
    process of a ``torchrun`` run; process 0 writes the files)."""
    shard = Shard.current()
    model, tokenizer, info = load_model(load_args)
    data_args = data_arguments(info, args)
    examples, rows = load_rows(args, data_args)
    output_dir = output_directory(args, load_args.source())
    settings = run_settings(load_args, args, data_args, gen_args)
    done = shard.on_main(lambda: resume(output_dir, rows, settings, args.overwrite))
    path = output_dir / PREDICTIONS_FILE
    scores = generate_appending(model, tokenizer, examples, rows, data_args.max_source_length, gen_args, done, path,
                                shard)
    metrics = {**scores, "generation": settings, "checkpoint": settings["checkpoint"], "method": info.method}
    if shard.main:
        report_cuts(metrics, data_args.max_source_length, gen_args.max_new_tokens, path)
        write_metrics(output_dir, metrics)
    return metrics


def report_cuts(metrics: dict, max_source_length: int, max_new_tokens: int, path: Path) -> None:
    """A warning for each limit that cut rows: scores of cut texts are not those of whole ones."""
    n = metrics["n"]
    if metrics["prompts_cut"]:
        logger.warning("the checkpoint's max_source_length %d cuts %d of %d prompts from the left, as in training",
                       max_source_length, metrics["prompts_cut"], n)
    if metrics["at_limit"]:
        logger.warning("--max_new_tokens %d ended %d of %d answers before an eos (\"at_limit\": true in %s); "
                       "raise it to let them finish", max_new_tokens, metrics["at_limit"], n, path)
