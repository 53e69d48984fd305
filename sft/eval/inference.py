"""Generation for people: one prompt, a file of prompts, or an interactive loop (``python -m sft.infer``).

Prompts are rendered with the checkpoint's template and cut to its ``max_source_length``
exactly as in training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from sft.data import DataArguments, Example, encode_prompt
from sft.data.reading import read_objects
from sft.data.templates import Turn, get_template
from sft.eval.arguments import GenerationArguments, InferArguments, LoadArguments
from sft.eval.generation import generate_all, generate_batch
from sft.eval.loading import checkpoint_data_arguments, load_model

logger = logging.getLogger(__name__)

QUIT = "exit"


def prompt_ids(text: str, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> list[int]:
    """``text`` as the user turn of the checkpoint's template, encoded as training encodes prompts."""
    example = Example(get_template(data_args.template).render([Turn(text, "")]))
    return encode_prompt(example, tokenizer, data_args.max_source_length)


def read_prompts(path: str, column: str) -> list[tuple[dict, str]]:
    """``(row, prompt text)`` for each row of ``path``; a row without a text in ``column`` is a DataError."""
    return [(row, row[column]) for _, row in read_objects(path, (column,))]


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


def infer(load_args: LoadArguments, args: InferArguments, gen_args: GenerationArguments) -> None:
    """Answer ``--prompt``, ``--input_file`` or an interactive loop, as ``args`` says."""
    model, tokenizer, info = load_model(load_args)
    data_args = checkpoint_data_arguments(info)
    if args.prompt is not None:
        print(generate_batch(model, tokenizer, [prompt_ids(args.prompt, tokenizer, data_args)], gen_args)[0])
    elif args.input_file is not None:
        answer_file(model, tokenizer, data_args, args, gen_args)
    else:
        interact(model, tokenizer, data_args, gen_args)
