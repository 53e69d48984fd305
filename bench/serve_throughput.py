"""Serving throughput: 16 concurrent clients against the same requests one at a time, through the Engine
(a benchmark, not a test; no HTTP).

    python bench/serve_throughput.py [--clients 16] [--max_tokens 64] [--checkpoints name=DIR,...] [--repeats 2]
        [--threads N]

The engine serves the embedded base and, unless ``--checkpoints`` names others, three checkpoints
trained here for a few steps with ``sft.train``: a P-tuning prefix on ADGEN (prefix-LM mask, 16
virtual tokens), one on alpaca (causal mask, projected prefix, 8 virtual tokens) and a LoRA adapter
on ADGEN. Request ``i`` asks checkpoint ``i mod 4`` (the base included) about the ``i``-th ADGEN dev
prompt, greedy, at most ``--max_tokens`` new tokens, so the concurrent batch mixes prefixes of
different lengths, no prefix, and an adapter in every step.

* sequential: each request runs alone, the next one starts when it has finished;
* concurrent: all requests start at once (``asyncio.gather``) and decode together.

Tokens/s: generated tokens (``completion_tokens`` of the last piece, eos included) over the wall
time of the whole run; time to first token: from the call to ``generate`` to the first piece with
text, median over the requests. Each mode runs ``--repeats`` times, alternating; medians printed.

``--threads``: torch's intra-op threads (default: torch's choice, one per core). On a 2-core machine
shared with other work, two threads can make a 16-row matmul several times slower than one thread
(a thread descheduled at every barrier: ``(16, 256) @ (256, 8000)`` took 31 ms with 2 threads and
5 ms with 1 under a load average of 5), so both settings are worth measuring there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train_checkpoints(root: Path) -> dict[str, str]:
    """Three checkpoints on the embedded model, a few ``sft.train`` steps each (seconds on a CPU)."""
    from sft.training import recipe

    common = ["--model_name_or_path", "embedded", "--max_train_samples", "32", "--per_device_train_batch_size", "8",
              "--max_steps", "4", "--max_source_length", "128", "--max_target_length", "64", "--save_strategy", "no",
              "--report_to", "none", "--seed", "3", "--logging_steps", "2"]
    adgen, alpaca = str(REPO / "data/adgen/train.json"), str(REPO / "data/alpaca/train.json")
    runs = {
        "adgen-pt": ["--finetuning_type", "ptuning", "--train_file", adgen, "--pre_seq_len", "16",
                     "--learning_rate", "0.05"],
        "alpaca-pt": ["--finetuning_type", "ptuning", "--train_file", alpaca, "--format", "alpaca", "--template",
                      "alpaca", "--mask", "causal", "--pre_seq_len", "8", "--prefix_projection", "--learning_rate",
                      "0.02"],
        "adgen-lora": ["--finetuning_type", "lora", "--train_file", adgen, "--learning_rate", "0.01"],
    }
    for name, flags in runs.items():
        recipe.run(recipe.parse_args([*common, *flags, "--output_dir", str(root / name)]))
    return {name: str(root / name) for name in runs}


def requests(engine, clients: int, max_tokens: int) -> list[tuple[str, list[int], object]]:
    from sft.eval.inference import read_prompts
    from sft.serving import SamplingParams

    prompts = [text for _, text in read_prompts(str(REPO / "data/adgen/dev.json"), "content")]
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    out = []
    for i in range(clients):
        name = engine.names[i % len(engine.names)]
        out.append((name, engine.completion_prompt(name, prompts[i % len(prompts)]), params))
    return out


async def timed(engine, name: str, ids: list[int], params) -> tuple[int, float]:
    """``(completion tokens, seconds to the first piece with text)``."""
    start, first, tokens = time.perf_counter(), None, 0
    async for delta in engine.generate(name, ids, params):
        if first is None and (delta.text or delta.finish_reason):
            first = time.perf_counter() - start
        tokens = delta.completion_tokens
    return tokens, first


async def run_mode(engine, work, concurrent: bool) -> dict:
    start = time.perf_counter()
    if concurrent:
        results = await asyncio.gather(*(timed(engine, *request) for request in work))
    else:
        results = [await timed(engine, *request) for request in work]
    seconds = time.perf_counter() - start
    tokens = sum(t for t, _ in results)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "ttft_median_s": statistics.median(f for _, f in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--checkpoints", default=None, help="name=DIR,... (default: train three here)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sft.serving import Engine

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoints:
            checkpoints = dict(item.split("=", 1) for item in args.checkpoints.split(","))
        else:
            checkpoints = train_checkpoints(Path(tmp))
        engine = Engine.load("embedded", checkpoints, max_batch_size=args.clients)
    engine.start()
    work = requests(engine, args.clients, args.max_tokens)
    asyncio.run(run_mode(engine, work[:2], concurrent=True))  # warm-up
    runs = {"sequential": [], "concurrent": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(asyncio.run(run_mode(engine, work, concurrent=mode == "concurrent")))
    engine.close()
    summary = {mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for mode, results in runs.items()}
    ratio = summary["concurrent"]["tokens_per_s"] / summary["sequential"]["tokens_per_s"]
    print(json.dumps({"clients": args.clients, "max_tokens": args.max_tokens, "names": engine.names,
                      "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                      "load_average": os.getloadavg()[0], "machine": platform.processor() or platform.machine(),
                      **summary, "ratio": ratio}))
    for mode, result in summary.items():
        print(f"{mode:>10}: {result['tokens_per_s']:8.1f} tokens/s ({result['tokens']:.0f} tokens in "
              f"{result['seconds']:.2f} s), time to first token {result['ttft_median_s'] * 1000:.0f} ms (median)")
    print(f"     ratio: {ratio:.1f}x ({args.clients} concurrent clients over one at a time, checkpoints mixed)")


if __name__ == "__main__":
    main()
