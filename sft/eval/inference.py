"""Generation for people: one prompt, a file of prompts, or an interactive loop (``python -m sft.infer``).

Prompts are rendered with the checkpoint's template and cut to its ``max_source_length``
exactly as in training. A cut prompt, and an answer that ``max_new_tokens`` ended before an eos,
get a warning on stderr (the answer on stdout stays as generated).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from sft.data import DataArguments, Example, encode_prompt_counted
from sft.data.reading import read_objects
from sft.data.templates import Turn, get_template
from sft.eval.arguments import GenerationArguments, InferArguments, LoadArguments
from sft.eval.generation import Answer, generate_all, generate_answers
from sft.eval.loading import checkpoint_data_arguments, load_model

logger = logging.getLogger(__name__)

QUIT = "exit"


def prompt_ids(text: str, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> list[int]:
    """``text`` as the user turn of the checkpoint's template, encoded as training encodes prompts."""
    return encode_text(text, tokenizer, data_args)[0]


def encode_text(text: str, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> tuple[list[int], int]:
    """:func:`prompt_ids` and the prompt's length in tokens before ``max_source_length`` cut it."""
    example = Example(get_template(data_args.template).render([Turn(text, "")]))
    return encode_prompt_counted(example, tokenizer, data_args.max_source_length)


def one_prompt(text: str, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> list[int]:
    """:func:`prompt_ids`, with a warning when ``max_source_length`` cuts the prompt."""
    ids, length = encode_text(text, tokenizer, data_args)
    if length > len(ids):
        logger.warning("the prompt is %d tokens with its template; the checkpoint's max_source_length %d keeps the "
                       "last %d, as in training", length, data_args.max_source_length, len(ids))
    return ids


def answered(answer: Answer, gen_args: GenerationArguments) -> str:
    """The answer's text; a warning when ``max_new_tokens`` ended it."""
    if answer.at_limit:
        logger.warning("--max_new_tokens %d ended the answer before an eos; raise it to let it finish",
                       gen_args.max_new_tokens)
    return answer.text


def read_prompts(path: str, column: str) -> list[tuple[dict, str]]:
    """``(row, prompt text)`` for each row of ``path``; a row without a text in ``column`` is a DataError."""
    return [(row, row[column]) for _, row in read_objects(path, (column,))]


def answer_file(model, tokenizer, data_args: DataArguments, args: InferArguments, gen_args: GenerationArguments) -> None:
    rows = read_prompts(args.input_file, args.prompt_column or data_args.prompt_column or "content")
    logger.info("%s: %d prompts", args.input_file, len(rows))
    encoded = [encode_text(text, tokenizer, data_args) for _, text in rows]
    cut = [number for number, (ids, length) in enumerate(encoded, start=1) if length > len(ids)]
    if cut:
        logger.warning("the checkpoint's max_source_length %d cuts %d of %d prompts from the left, as in training "
                       "(rows %s)", data_args.max_source_length, len(cut), len(rows), _some(cut))
    answers = generate_all(model, tokenizer, [ids for ids, _ in encoded], gen_args)
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output_file, "w", encoding="utf-8") as out:
        for (row, _), answer in zip(rows, answers):
            out.write(json.dumps({**row, "prediction": answer.text}, ensure_ascii=False) + "\n")
    logger.info("wrote %d predictions to %s", len(rows), args.output_file)
    at_limit = [number for number, answer in enumerate(answers, start=1) if answer.at_limit]
    if at_limit:
        logger.warning("--max_new_tokens %d ended %d of %d answers before an eos (rows %s); raise it to let them "
                       "finish", gen_args.max_new_tokens, len(at_limit), len(rows), _some(at_limit))


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
            [answer] = generate_answers(model, tokenizer, [one_prompt(text, tokenizer, data_args)], gen_args, streamer)
            answered(answer, gen_args)


def _some(numbers: list[int], shown: int = 5) -> str:
    """``1, 4, 9`` or ``1, 4, 9, 12, 20, ...``."""
    return ", ".join(map(str, numbers[:shown])) + (", ..." if len(numbers) > shown else "")


def infer(load_args: LoadArguments, args: InferArguments, gen_args: GenerationArguments) -> None:
    """Answer ``--prompt``, ``--input_file`` or an interactive loop, as ``args`` says."""
    model, tokenizer, info = load_model(load_args)
    data_args = checkpoint_data_arguments(info)
    if args.prompt is not None:
        [answer] = generate_answers(model, tokenizer, [one_prompt(args.prompt, tokenizer, data_args)], gen_args)
        print(answered(answer, gen_args))
    elif args.input_file is not None:
        answer_file(model, tokenizer, data_args, args, gen_args)
    else:
        interact(model, tokenizer, data_args, gen_args)
