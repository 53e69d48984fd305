"""Generate ad text from a checkpoint or a base model: ``python -m sft.infer [flags]``.

Which model (see :class:`sft.generation.LoadArguments`):

* ``--checkpoint DIR``: a fine-tuning checkpoint; its ``sft_checkpoint.json`` names the base
  model, the method, the mask and the template, so nothing else is needed.
* ``--model_name_or_path DIR``: a plain model (or ``embedded``), with its own defaults.
* neither: ``output/adgen-ptuning`` (what ``bash scripts/train.sh`` writes) if it exists,
  else the embedded base model. The log says which one was loaded.

What to generate for:

* ``--prompt "类型#上衣*颜色#红色"``: prints one answer.
* ``--input_file F --output_file G``: F is JSON Lines (or a JSON array) with the prompt
  column (default: the checkpoint's, ``content`` for ADGEN); G gets each row with
  ``prediction`` added, in input order.
* nothing: an interactive loop; type a prompt after ``> ``, the answer streams token by
  token; ``exit`` or end of input (Ctrl-D) quits.

Prompts are rendered with the checkpoint's template and cut to its ``max_source_length``
exactly as in training. Generation flags are :class:`sft.generation.GenerationArguments`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from sft.checkpoint import CheckpointError
from sft.cli import run_command
from sft.data import DataArguments, DataError, Example, encode_prompt
from sft.data.reading import describe, read_rows
from sft.generation import (
    GenerationArguments,
    LoadArguments,
    checkpoint_data_arguments,
    generate_all,
    generate_batch,
    load_model,
)
from sft.models import ModelLoadError
from sft.templates import Turn, get_template

logger = logging.getLogger("sft.infer")

QUIT = "exit"
# Mistakes in what the user gave us: one line, no traceback. Anything else is our bug and keeps its traceback.
USER_ERRORS = (DataError, CheckpointError, ModelLoadError)


@dataclass
class InferArguments:
    """What to generate for (nothing: an interactive loop)."""

    prompt: str | None = field(default=None, metadata={"help": "One prompt, e.g. 类型#上衣*颜色#红色; prints its answer."})
    input_file: str | None = field(default=None, metadata={"help": "JSON Lines file of prompts (needs --output_file)."})
    output_file: str | None = field(default=None, metadata={"help": "Where --input_file's rows go, with 'prediction' added."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Prompt column of --input_file (default: the checkpoint's, content for ADGEN)."}
    )

    def __post_init__(self) -> None:
        if (self.input_file is None) != (self.output_file is None):
            raise ValueError("--input_file/--output_file: expected both or neither, found only one")
        if self.prompt is not None and self.input_file is not None:
            raise ValueError("--prompt: expected either --prompt or --input_file, found both")


def prompt_ids(text: str, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> list[int]:
    """``text`` as the user turn of the checkpoint's template, encoded as training encodes prompts."""
    example = Example(get_template(data_args.template).render([Turn(text, "")]))
    return encode_prompt(example, tokenizer, data_args.max_source_length)


def read_prompts(path: str, column: str) -> list[tuple[dict, str]]:
    """``(row, prompt text)`` for each row of ``path``; a row without a text in ``column`` is a DataError."""
    prompts = []
    for raw in read_rows(path):
        if raw.error is not None:
            raise raw.error
        if not isinstance(raw.value, dict):
            raise DataError(path, raw.line, "a JSON object", describe(raw.value))
        if not isinstance(raw.value.get(column), str):
            found = describe(raw.value[column]) if column in raw.value else "keys " + (", ".join(raw.value) or "none")
            raise DataError(path, raw.line, f'a string under "{column}"', found)
        prompts.append((raw.value, raw.value[column]))
    return prompts


def answer_file(model, tokenizer, data_args: DataArguments, args: InferArguments, gen_args: GenerationArguments) -> None:
    rows = read_prompts(args.input_file, args.prompt_column or data_args.prompt_column or "content")
    logger.info("%s: %d prompts", args.input_file, len(rows))
    ids = [prompt_ids(text, tokenizer, data_args) for _, text in rows]
    predictions = generate_all(model, tokenizer, ids, gen_args)
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output_file, "w", encoding="utf-8") as out:
        for (row, _), prediction in zip(rows, predictions):
            out.write(json.dumps({**row, "prediction": prediction}, ensure_ascii=False) + "\n")
    logger.info("wrote %d predictions to %s", len(rows), args.output_file)


def interact(model: PreTrainedModel, tokenizer, data_args: DataArguments, gen_args: GenerationArguments) -> None:
    """Read prompts from stdin until ``exit`` or end of input; stream each answer as it is generated."""
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    print(f"type a prompt (e.g. 类型#上衣*颜色#红色); '{QUIT}' or Ctrl-D quits", flush=True)
    while True:
        try:
            text = input("> ").strip()
        except EOFError:
            print()
            return
        if text == QUIT:
            return
        if text:
            generate_batch(model, tokenizer, [prompt_ids(text, tokenizer, data_args)], gen_args, streamer=streamer)


def parse_args(argv: list[str] | None = None) -> tuple[LoadArguments, InferArguments, GenerationArguments]:
    parser = HfArgumentParser((LoadArguments, InferArguments, GenerationArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def run(load_args: LoadArguments, args: InferArguments, gen_args: GenerationArguments) -> None:
    model, tokenizer, info = load_model(load_args)
    data_args = checkpoint_data_arguments(info)
    if args.prompt is not None:
        print(generate_batch(model, tokenizer, [prompt_ids(args.prompt, tokenizer, data_args)], gen_args)[0])
    elif args.input_file is not None:
        answer_file(model, tokenizer, data_args, args, gen_args)
    else:
        interact(model, tokenizer, data_args, gen_args)


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run, USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
