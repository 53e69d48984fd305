"""Training throughput and peak memory: ours (default flags) against peft + Trainer and ChatGLM2-style
fixed padding (a benchmark, not a test).

    python bench/train_throughput.py [--data /work/shared/adgen] [--rows 800] [--steps 24] [--batch_size 8]
        [--warmup_steps 4] [--repeats 3] [--arms ptuning,ptuning_fp32,peft_prefix,...]

The same model, rows, order, batch size and number of steps for every arm: a random ~20M-parameter
``GlmConfig`` (hidden 384, 8 layers, 6 heads, 2 kv heads) with the embedded tokenizer, saved once;
the first ``--rows`` rows of ``train5k.json`` (``train.json`` when absent) under ``--data``, encoded
by :func:`sft.data.build_dataset` with ``--max_source_length 64 --max_target_length 128``; on CPU;
seed 42 (the Trainer's sampler draws the same rows for every arm); causal mask.

Arms (each is P-tuning with ``pre_seq_len`` 32, LoRA r 8 on every linear layer, or full):

* ``ptuning``, ``lora``, ``full``: ``sft.train``'s recipe with its default flags (packed batches;
  ``--dtype auto``: a bf16 base for P-tuning and LoRA on a CPU with AMX, else fp32);
* ``ptuning_fp32``, ``lora_fp32``: the same with ``--dtype float32`` (what ``auto`` is on other CPUs);
* ``peft_prefix``: peft ``PrefixTuningConfig`` + transformers' Trainer, dynamic padding
  (``DataCollatorForSeq2Seq``), fp32 (``from_pretrained``'s default);
* ``chatglm2_fixed``: the same peft prefix (in the KV cache, as ChatGLM2's own P-tuning), every row
  padded to ``max_source_length + max_target_length + 1`` as ChatGLM2's ``ptuning/main.py`` does;
* ``peft_lora``: peft ``LoraConfig`` (the same targets, rank, alpha, dropout) + Trainer, dynamic padding;
* ``peft_prefix_bf16``, ``peft_lora_bf16``: those two with the base loaded in bf16 (``dtype=torch.bfloat16``);
* ``trainer_full``: the plain model + Trainer, dynamic padding, fp32.

Each run is its own subprocess (the arms alternate, ``--repeats`` rounds), so imports, warm-up and
memory start alike. Positions: the tokens that the batches trained on make the model compute, padding
included (ours: the real tokens, plus the filler that ends a bf16 packed sequence at a multiple of 64).
Tokens/s: real tokens (prompt and answer, no padding: the Trainer's ``num_input_tokens_seen`` with
``non_padding``) of the ``--steps`` timed steps over their seconds, timed by a Trainer callback from
the end of the ``--warmup_steps`` untimed steps that come first to the end of the last (saving
afterwards is not counted). The first steps of a process pay once for what later steps reuse (oneDNN
builds kernels for new shapes; glibc's malloc maps fresh pages until its mmap threshold adapts to the
buffers the steps free) and weigh differently on different arms; a run of hundreds of steps hardly
sees them. Peak memory:
the subprocess's peak RSS (``ru_maxrss``: model, optimizer, activations and the Python runtime).
Prints the medians and each of ours over its comparison arms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("ptuning", "ptuning_fp32", "peft_prefix", "peft_prefix_bf16", "chatglm2_fixed", "lora", "lora_fp32",
        "peft_lora", "peft_lora_bf16", "full", "trainer_full")
VERSUS = {"ptuning": ("peft_prefix", "chatglm2_fixed", "peft_prefix_bf16"),
          "ptuning_fp32": ("peft_prefix", "chatglm2_fixed"), "lora": ("peft_lora", "peft_lora_bf16"),
          "lora_fp32": ("peft_lora",), "full": ("trainer_full",)}
LEARNING_RATES = {"ptuning": 2e-2, "lora": 3e-4, "full": 1e-4}
METHOD_OF = {"peft_prefix": "ptuning", "peft_prefix_bf16": "ptuning", "chatglm2_fixed": "ptuning", "peft_lora": "lora",
             "peft_lora_bf16": "lora", "trainer_full": "full", "ptuning_fp32": "ptuning", "lora_fp32": "lora"}
MAX_SOURCE, MAX_TARGET, PRE_SEQ_LEN, SEED = 64, 128, 32, 42


def build_model_dir(directory: Path) -> Path:
    """The random ~20M-parameter GLM with the embedded tokenizer, causal mask and chatglm3 template."""
    import torch
    from transformers import AutoTokenizer, GlmConfig, GlmForCausalLM

    from sft.embedded import DEFAULT_MODEL_DIR
    from sft.models import DEFAULTS_FILE

    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    torch.manual_seed(SEED)
    config = GlmConfig(vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=8, num_attention_heads=6,
                       num_key_value_heads=2, head_dim=64, intermediate_size=1024, max_position_embeddings=512,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    GlmForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / DEFAULTS_FILE).write_text(json.dumps({"mask": "causal", "template": "chatglm3"}), encoding="utf-8")
    return directory


def train_file(data: Path) -> Path:
    for name in ("train5k.json", "train.json"):
        if (data / name).is_file():
            return data / name
    raise SystemExit(f"--data: expected train5k.json or train.json in {data}, found neither")


def step_timer(warmup_steps: int):
    """A Trainer callback timing from the end of step ``warmup_steps`` (the start of training when 0) to
    the end of the last step, and counting the real tokens those steps trained on."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        start = end = 0.0
        tokens_before = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()
            if state.global_step == warmup_steps:
                self.start, self.tokens_before = self.end, state.num_input_tokens_seen

    return StepTimer()


def total_steps(args) -> int:
    return args.warmup_steps + args.steps


def shared_flags(args, out: Path) -> dict:
    return dict(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=total_steps(args),
                seed=SEED, use_cpu=True, report_to="none", logging_steps=total_steps(args), remove_unused_columns=False,
                include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)


def run_ours(arm: str, args, model_dir: Path, out: Path, timer) -> int:
    from sft.data import encoding
    from sft.training import recipe

    method = METHOD_OF.get(arm, arm)
    argv = ["--model_name_or_path", str(model_dir), "--train_file", str(train_file(Path(args.data))),
            "--max_train_samples", str(args.rows), "--max_source_length", str(MAX_SOURCE),
            "--max_target_length", str(MAX_TARGET), "--finetuning_type", method, "--mask", "causal",
            "--pre_seq_len", str(PRE_SEQ_LEN), "--output_dir", str(out), "--per_device_train_batch_size",
            str(args.batch_size), "--max_steps", str(total_steps(args)), "--seed", str(SEED), "--use_cpu",
            "--logging_steps", str(total_steps(args)), "--report_to", "none",
            *(["--dtype", "float32"] if arm.endswith("_fp32") else [])]
    pack, counter = encoding.PackingCollator.__call__, CountingCollator(None)

    def counted(self, rows):  # the positions of every packed batch, filler rows included
        counter.collator = partial(pack, self)
        return counter(rows)

    encoding.PackingCollator.__call__ = counted  # this child process only
    trainer, _ = recipe.run(recipe.parse_args(argv), callbacks=[timer])
    timer.positions = counter.positions(args.warmup_steps, total_steps(args))
    return trainer.state.num_input_tokens_seen - timer.tokens_before


def run_baseline(arm: str, args, model_dir: Path, out: Path, timer) -> int:
    import torch
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, GlmForCausalLM, Trainer, TrainingArguments

    from sft.data import DataArguments, DataCollator, build_dataset
    from sft.methods.lora import lora_targets

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data_args = DataArguments(train_file=str(train_file(Path(args.data))), max_train_samples=args.rows,
                              max_source_length=MAX_SOURCE, max_target_length=MAX_TARGET, template="chatglm3")
    dataset = build_dataset(data_args.train_file, tokenizer, data_args)
    dtype = torch.bfloat16 if arm.endswith("_bf16") else torch.float32
    model = GlmForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa",
                                            use_kernels=False)  # every arm the same layers (sft.models)
    torch.manual_seed(SEED)
    if arm in ("peft_prefix", "peft_prefix_bf16", "chatglm2_fixed"):
        model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PRE_SEQ_LEN))
    elif arm in ("peft_lora", "peft_lora_bf16"):
        modules, _ = lora_targets(model, "all")
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=modules))
    if arm == "chatglm2_fixed":  # every row padded to max_source_length + max_target_length + 1
        collator = DataCollator(tokenizer.pad_token_id, pad_to_multiple_of=MAX_SOURCE + MAX_TARGET + 1)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    training = TrainingArguments(learning_rate=LEARNING_RATES[METHOD_OF[arm]], save_strategy="no",
                                 **shared_flags(args, out))
    trainer = Trainer(model=model, args=training, train_dataset=dataset, data_collator=CountingCollator(collator),
                      callbacks=[timer])
    trainer.train()
    timer.positions = trainer.data_collator.positions(args.warmup_steps, total_steps(args))
    return trainer.state.num_input_tokens_seen - timer.tokens_before


class CountingCollator:
    """A collator that records the positions each batch makes the model compute (padding included)."""

    def __init__(self, collator):
        self.collator, self.sizes = collator, []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.sizes.append(batch["input_ids"].numel())
        return batch

    def positions(self, first: int, last: int) -> int:
        """Those of steps ``first + 1`` to ``last``: only batches trained on, as the data loader collates
        one more batch ahead than it uses."""
        return sum(self.sizes[first:last])


def child(args) -> None:
    """One arm in this process; prints one JSON line."""
    import logging

    logging.disable(logging.WARNING)
    timer = step_timer(args.warmup_steps)
    with tempfile.TemporaryDirectory() as out:
        runner = run_ours if args.arm in VERSUS else run_baseline  # ours: the arms compared with others
        tokens = runner(args.arm, args, Path(args.model_dir), Path(out), timer)
    seconds = timer.end - timer.start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    positions = timer.positions
    print(json.dumps({"arm": args.arm, "tokens": tokens, "positions": positions, "seconds": seconds,
                      "peak_rss_mb": peak_mb}))


def parent(args) -> None:
    import torch

    arms = args.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"--arms: expected some of {', '.join(ARMS)}, found {', '.join(sorted(unknown))}")
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model")
        for repeat in range(args.repeats):
            for arm in arms:  # alternating: a slower moment of the machine hits every arm alike
                argv = [sys.executable, __file__, "--arm", arm, "--model_dir", str(model_dir), "--data", args.data,
                        "--rows", str(args.rows), "--steps", str(args.steps), "--warmup_steps", str(args.warmup_steps),
                        "--batch_size", str(args.batch_size)]
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
                proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise SystemExit(f"{arm} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[arm].append(result)
                print(f"round {repeat + 1} {arm:>15}: {result['tokens'] / result['seconds']:8.1f} tok/s, "
                      f"peak RSS {result['peak_rss_mb']:7.1f} MB", file=sys.stderr, flush=True)
    report(args, runs, torch.get_num_threads())


def report(args, runs: dict[str, list[dict]], threads: int) -> None:
    median = {arm: {"tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in results),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
                    "tokens": results[0]["tokens"], "positions": results[0]["positions"]}
              for arm, results in runs.items()}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}; "
          f"{args.rows} rows of {train_file(Path(args.data))}, batch {args.batch_size}, {args.steps} steps timed after {args.warmup_steps}, "
          f"{args.repeats} runs per arm (median)")
    print(f"| {'arm':<15} | {'tokens/s':>9} | {'peak RSS MB':>11} | {'real tokens':>11} | {'positions':>9} |")
    print(f"|{'-' * 17}|{'-' * 11}:|{'-' * 13}:|{'-' * 13}:|{'-' * 11}:|")
    for arm, m in median.items():
        print(f"| {arm:<15} | {m['tokens_per_s']:>9.1f} | {m['peak_rss_mb']:>11.1f} | {m['tokens']:>11} | "
              f"{m['positions']:>9} |")
    for ours, others in VERSUS.items():
        for other in others:
            if ours in median and other in median:
                speed = median[ours]["tokens_per_s"] / median[other]["tokens_per_s"]
                memory = median[ours]["peak_rss_mb"] / median[other]["peak_rss_mb"]
                padding = median[other]["positions"] / median[other]["tokens"]
                print(f"{ours} vs {other}: {speed:.2f}x tokens/s, {memory:.2f}x peak memory ({other} computes "
                      f"{padding:.2f} positions per real token: what leaving out padding alone can gain)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path("/work/shared/adgen")
    parser.add_argument("--data", default=str(default_data if default_data.is_dir() else REPO / "data" / "adgen"),
                        help="Directory with train5k.json (or train.json), ADGEN format.")
    parser.add_argument("--rows", type=int, default=800, help="The first N rows.")
    parser.add_argument("--steps", type=int, default=24, help="Timed training steps per run.")
    parser.add_argument("--warmup_steps", type=int, default=4, help="Untimed training steps before them.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per arm, alternating.")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"Comma list of: {', '.join(ARMS)}.")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (child if args.arm else parent)(args)


if __name__ == "__main__":
    main()
