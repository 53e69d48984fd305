"""Evaluation throughput at batch 1 versus batch 16 on the same rows (a benchmark, not a test).

    python bench/eval_throughput.py [--checkpoint DIR | --model_name_or_path DIR]
        [--validation_file data/adgen/dev.json] [--rows 64] [--max_new_tokens 128]

Defaults: the embedded base model and the first 64 rows of data/adgen/dev.json
(``--validation_file ../shared/adgen/dev500.json`` works too). Both runs are greedy with the
same ``max_new_tokens`` and go through :mod:`sft.eval.generation` exactly as evaluation does
(length-sorted batches, left padding, KV cache, eos stopping). New tokens are counted up to
each row's eos, so a batch's padding after a row has finished is not counted as work done.
Prints rows/s and new tokens/s for each batch size, the speed-up, and whether both runs
produced the same text (they should: greedy decoding does not depend on the batch).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from sft.data import encode_prompt, load_examples
from sft.eval.arguments import GenerationArguments, LoadArguments
from sft.eval.generation import generate_token_ids, length_sorted_batches
from sft.eval.loading import checkpoint_data_arguments, load_model


@dataclass
class BenchArguments:
    validation_file: str = field(default="data/adgen/dev.json", metadata={"help": "Rows to generate for (ADGEN format)."})
    rows: int = field(default=64, metadata={"help": "How many rows (the first N of the file)."})
    batch_sizes: str = field(default="1,16", metadata={"help": "Comma-separated batch sizes to time, side by side."})
    max_new_tokens: int = field(default=128, metadata={"help": "Most new tokens per row, the same for every run."})


def timed_run(model, tokenizer, prompt_ids: list[list[int]], args: GenerationArguments) -> tuple[float, int, list]:
    """``(seconds, new tokens, new ids per row in input order)`` for one pass over the rows."""
    outputs: list = [None] * len(prompt_ids)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in length_sorted_batches(prompt_ids, args.batch_size):
        for index, ids in zip(batch, generate_token_ids(model, tokenizer, [prompt_ids[i] for i in batch], args)):
            outputs[index] = ids
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(map(len, outputs)), outputs


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    load_args, bench = HfArgumentParser((LoadArguments, BenchArguments)).parse_args_into_dataclasses()
    model, tokenizer, info = load_model(load_args)
    data_args = checkpoint_data_arguments(info)
    examples = load_examples(bench.validation_file, data_args)[: bench.rows]
    prompt_ids = [encode_prompt(example, tokenizer, data_args.max_source_length) for example in examples]
    warmup = GenerationArguments(max_new_tokens=4, batch_size=1)
    generate_token_ids(model, tokenizer, prompt_ids[:1], warmup)  # first-call allocations are not throughput
    print(f"model {load_args.source()} ({info.method}, {model.num_parameters() / 1e6:.1f}M parameters, "
          f"{model.dtype}, {model.device}, torch threads {torch.get_num_threads()})")
    print(f"{len(prompt_ids)} rows of {bench.validation_file}, greedy, max_new_tokens {bench.max_new_tokens}")
    print(f"{'batch':>5} | {'seconds':>8} | {'rows/s':>7} | {'new tok/s':>9} | {'new tokens':>10}")
    results = {}
    for batch_size in (int(size) for size in bench.batch_sizes.split(",")):
        args = GenerationArguments(max_new_tokens=bench.max_new_tokens, batch_size=batch_size)
        seconds, tokens, outputs = timed_run(model, tokenizer, prompt_ids, args)
        results[batch_size] = (seconds, outputs)
        print(f"{batch_size:>5} | {seconds:>8.2f} | {len(prompt_ids) / seconds:>7.2f} | {tokens / seconds:>9.1f} | {tokens:>10}")
    (small, (t_small, out_small)), *rest = sorted(results.items())
    for size, (seconds, outputs) in rest:
        same = sum(a == b for a, b in zip(out_small, outputs))
        print(f"batch {size} vs {small}: {t_small / seconds:.2f}x rows/s; identical outputs {same}/{len(outputs)}")


if __name__ == "__main__":
    main()
