"""P-Tuning v2, LoRA and full fine-tuning side by side: same data, same step budget, one table.

    python bench/compare_methods.py [--model_name_or_path embedded] [--train_file data/adgen/train.json]
        [--validation_file data/adgen/dev.json] [--output_dir output/compare] [--methods ptuning,lora,full]
        [--max_steps 150] [--eval_samples 50] [--max_new_tokens 96] [any further sft.train flag]

(``bash scripts/compare.sh`` assembles these; ``ADGEN_DIR=../shared/adgen`` there runs the real rows.)

Each method trains in its own process (``python -m sft.train``) on the same rows, in the
same order, with the same batch size, sequence limits and number of steps, at its own
learning rate (sft.train's default for the method unless ``--learning_rates`` says
otherwise). Then ``python -m sft.evaluate`` generates greedily for the first
``--eval_samples`` dev rows. The columns:

* trainable parameters, and the total the model has then;
* peak memory: the training process's peak RSS on CPU (model, optimizer, activations and
  the Python runtime alike), ``torch.cuda.max_memory_allocated`` on a GPU;
* training tokens/s: prompt and answer tokens (no padding) trained on per second of training;
* final dev loss: the loss on the whole dev file (or ``--max_eval_samples`` rows) after training;
* ROUGE-1/2/L and BLEU-4 of the generated answers, scored as ChatGLM scores them.

Writes ``comparison.json`` and ``comparison.md`` to ``--output_dir`` beside each method's
checkpoint (``<output_dir>/<method>``) and its logs (``train.log``, ``evaluate.log``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

logger = logging.getLogger("compare_methods")

COLUMNS = (  # (header, key in a result row, format)
    ("method", "method", "{}"),
    ("lr", "learning_rate", "{:g}"),
    ("trainable params", "trainable_parameters", "{:,}"),
    ("% of model", "trainable_percent", "{:.3f}"),
    ("peak memory MB", "train_peak_memory_mb", "{:,.0f}"),
    ("train tokens/s", "train_tokens_per_second", "{:,.0f}"),
    ("train s", "train_runtime", "{:.0f}"),
    ("dev loss", "eval_loss", "{:.4f}"),
    ("ROUGE-1", "rouge-1", "{:.2f}"),
    ("ROUGE-2", "rouge-2", "{:.2f}"),
    ("ROUGE-L", "rouge-l", "{:.2f}"),
    ("BLEU-4", "bleu-4", "{:.2f}"),
    ("attr. recall %", "attribute_recall", "{:.1f}"),
    ("distinct %", "distinct", "{:.0f}"),
)


class CompareError(RuntimeError):
    """A training or evaluation run that failed; its log says why."""


@dataclass
class CompareArguments:
    model_name_or_path: str = field(default="embedded", metadata={"help": "Base model of every run."})
    train_file: str = field(default="data/adgen/train.json", metadata={"help": "Training rows (ADGEN format)."})
    validation_file: str = field(default="data/adgen/dev.json", metadata={"help": "Dev rows: loss and generation."})
    output_dir: str = field(default="output/compare", metadata={"help": "Checkpoints, logs and the tables go here."})
    methods: str = field(default="ptuning,lora,full", metadata={"help": "Comma list of methods, in table order."})
    learning_rates: str = field(
        default="",
        metadata={"help": "Per-method learning rates, e.g. lora=1e-3,full=2e-4 (others: sft.train's default)."},
    )
    max_steps: int = field(default=150, metadata={"help": "Optimizer steps of every run."})
    batch_size: int = field(default=16, metadata={"help": "Training and evaluation batch size of every run."})
    max_source_length: int = field(default=64, metadata={"help": "Most prompt tokens."})
    max_target_length: int = field(default=128, metadata={"help": "Most answer tokens."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Dev rows for the loss (default: all)."})
    eval_samples: int = field(default=50, metadata={"help": "Dev rows to generate for and score."})
    max_new_tokens: int = field(default=96, metadata={"help": "max_new_tokens of that generation."})
    seed: int = field(default=42, metadata={"help": "Seed of every run (data order, initialisation, dropout)."})

    def __post_init__(self) -> None:
        known = ("ptuning", "lora", "full")
        unknown = [m for m in self.method_list() if m not in known]
        if unknown or not self.method_list():
            raise ValueError(f"--methods: expected a comma list of {', '.join(known)}, found {self.methods!r}")
        try:
            rates = self.rate_overrides()
        except ValueError:
            raise ValueError(f"--learning_rates: expected method=rate pairs, found {self.learning_rates!r}") from None
        if set(rates) - set(known):
            raise ValueError(f"--learning_rates: expected methods among {', '.join(known)}, found {', '.join(rates)}")

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def rate_overrides(self) -> dict[str, str]:
        pairs = [p.split("=") for p in self.learning_rates.split(",") if p.strip()]
        return {method.strip(): str(float(rate)) for method, rate in pairs}


def train_argv(args: CompareArguments, method: str, extra: list[str]) -> list[str]:
    """``sft.train`` flags of one run: everything but the method (and its learning rate) is shared."""
    argv = [
        "--finetuning_type", method,
        "--model_name_or_path", args.model_name_or_path,
        "--train_file", args.train_file,
        "--validation_file", args.validation_file,
        "--output_dir", str(Path(args.output_dir) / method),
        "--max_source_length", str(args.max_source_length),
        "--max_target_length", str(args.max_target_length),
        "--per_device_train_batch_size", str(args.batch_size),
        "--per_device_eval_batch_size", str(args.batch_size),
        "--max_steps", str(args.max_steps),
        "--save_steps", str(args.max_steps),
        "--logging_steps", "10",
        "--seed", str(args.seed),
        "--disable_tqdm", "true",
    ]
    if args.max_eval_samples:
        argv += ["--max_eval_samples", str(args.max_eval_samples)]
    if method in args.rate_overrides():
        argv += ["--learning_rate", args.rate_overrides()[method]]
    return argv + extra


def evaluate_argv(args: CompareArguments, method: str) -> list[str]:
    checkpoint = Path(args.output_dir) / method
    return [
        "--checkpoint", str(checkpoint),
        "--validation_file", args.validation_file,
        "--eval_samples", str(args.eval_samples),
        "--max_new_tokens", str(args.max_new_tokens),
        "--batch_size", str(args.batch_size),
        "--output_dir", str(checkpoint / "eval"),
        "--overwrite",
    ]


def run_module(module: str, argv: list[str], log: Path) -> float:
    """``python -m module argv`` with its output in ``log``; returns the wall time in seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run([sys.executable, "-m", module, *argv], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        last = log.read_text(encoding="utf-8").strip().splitlines()[-1:] or ["(no output)"]
        raise CompareError(f"python -m {module} exited {done.returncode} (see {log}): {last[0]}")
    return time.perf_counter() - start


def final_train_metrics(output_dir: Path) -> dict:
    """The metrics ``sft.train`` logs last (parameters, speed, memory, dev loss)."""
    history = json.loads((output_dir / "train_metrics.json").read_text(encoding="utf-8"))
    return next(entry for entry in reversed(history) if "trainable_parameters" in entry)


def compare_one(args: CompareArguments, method: str, extra: list[str]) -> dict:
    """Train and evaluate one method; its row of the table."""
    out = Path(args.output_dir) / method
    logger.info("%s: training %d steps (log: %s)", method, args.max_steps, out / "train.log")
    train_seconds = run_module("sft.train", train_argv(args, method, extra), out / "train.log")
    logger.info("%s: trained in %.0f s; generating for %d dev rows", method, train_seconds, args.eval_samples)
    run_module("sft.evaluate", evaluate_argv(args, method), out / "evaluate.log")
    trained = final_train_metrics(out)
    scores = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    training_args = json.loads((out / "training_args.json").read_text(encoding="utf-8"))
    row = {"method": method, "learning_rate": training_args["learning_rate"]}
    row.update({k: trained[k] for k in ("trainable_parameters", "total_parameters", "train_peak_memory_mb",
                                        "train_tokens_per_second", "train_runtime", "eval_loss")})
    row["trainable_percent"] = 100 * row["trainable_parameters"] / row["total_parameters"]
    row.update({k: scores[k] for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "attribute_recall", "distinct")})
    logger.info("%s: %s", method, json.dumps(row))
    return row


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cores} CPU cores, {gpu} ({platform.machine()}, torch {torch.__version__})"


def format_table(rows: list[dict]) -> str:
    """A Markdown table whose columns are also aligned as plain text."""
    cells = [[header for header, _, _ in COLUMNS]]
    cells += [[fmt.format(row[key]) for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    def render(line: list[str]) -> str:  # the method column left-aligned, numbers right-aligned
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "| " + " | ".join(padded) + " |"

    lines = [render(line) for line in cells]
    rule = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"
    return "\n".join([lines[0], rule, *lines[1:]])


def write_outputs(args: CompareArguments, rows: list[dict], table: str, extra: list[str]) -> None:
    out = Path(args.output_dir)
    settings = {**asdict(args), "sft_train_flags": extra, "machine": machine()}
    (out / "comparison.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n",
                                         encoding="utf-8")
    command = " ".join(sys.argv)
    (out / "comparison.md").write_text(f"{table}\n\n`{command}` on {settings['machine']}\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    try:
        args, extra = HfArgumentParser(CompareArguments).parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True
        )
        rows = [compare_one(args, method, extra) for method in args.method_list()]
    except (ValueError, CompareError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = format_table(rows)
    write_outputs(args, rows, table, extra)
    print(table)
    print(f"\n{args.max_steps} steps of batch {args.batch_size} on {args.train_file}; "
          f"dev loss on {args.validation_file}, scores on its first {args.eval_samples} rows; {machine()}")
    print(f"written: {Path(args.output_dir) / 'comparison.md'}, {Path(args.output_dir) / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
