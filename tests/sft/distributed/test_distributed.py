"""Several processes give the numbers of one: ``NPROC=2 bash scripts/train.sh`` with 4 rows per process
against one process with 8 rows, and ``torchrun -m sft.evaluate`` against one process. CPU, gloo, the
tiny GLM, a few steps.

SGD, not AdamW, for the weights (as in ``tests/sft/training/test_packing.py``): Adam's first step moves
a weight by about the learning rate whatever its gradient's size, so a gradient that is zero up to
rounding (summed in another order by two processes) could move a weight either way; SGD's step is the
gradient itself, so equal gradients give equal weights. LoRA's dropout is off: each process would draw
its own masks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import load_file

import sft.train
from sft.eval.predictions import PREDICTIONS_FILE
from tests.conftest import REPO, run_in_process, run_subprocess

DATA = REPO / "data" / "adgen"
TOL = 1e-5
WEIGHTS = {"ptuning": "prefix.safetensors", "lora": "adapter_model.safetensors", "full": "model.safetensors"}


def flags(method: str, *extra: str) -> list[str]:
    """What both runs are given besides the batch layout (``scripts/train.sh`` adds its own before these)."""
    return ["--max_train_samples", "48", "--max_eval_samples", "4", "--logging_steps", "1", "--save_steps", "2",
            "--seed", "7", "--use_cpu", "--dtype", "float32", "--optim", "sgd", "--learning_rate", "0.5",
            "--report_to", "none", *(["--lora_dropout", "0"] if method == "lora" else []), *extra]


def train_sh(model_dir: Path, out: Path, method: str, *extra: str, nproc: int = 2, batch: int = 4, steps: int = 4):
    env = {"NPROC": str(nproc), "METHOD": method, "MODEL": str(model_dir), "OUTPUT_DIR": str(out),
           "TRAIN_FILE": str(DATA / "train.json"), "VALIDATION_FILE": str(DATA / "dev.json"), "BATCH_SIZE": str(batch),
           "MAX_STEPS": str(steps), "PRE_SEQ_LEN": "4", "MAX_SOURCE_LENGTH": "64", "MAX_TARGET_LENGTH": "64"}
    done = run_subprocess("bash", "scripts/train.sh", *flags(method, *extra), **env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.skipif(torch.accelerator.is_available(), reason="with an accelerator the processes train on it")
def test_two_processes_on_cpu_train_as_one_without_use_cpu(tiny_model_dir, tmp_path):
    """What demo.sh runs: NPROC=2 on CPU with no --use_cpu is one DDP run of global batch 2 x 4, not two runs."""
    env = {"NPROC": "2", "METHOD": "ptuning", "MODEL": str(tiny_model_dir), "OUTPUT_DIR": str(tmp_path),
           "TRAIN_FILE": str(DATA / "train.json"), "VALIDATION_FILE": str(DATA / "dev.json"), "BATCH_SIZE": "4",
           "MAX_STEPS": "2", "PRE_SEQ_LEN": "4", "MAX_SOURCE_LENGTH": "64", "MAX_TARGET_LENGTH": "64"}
    done = run_subprocess("bash", "scripts/train.sh", *[f for f in flags("ptuning") if f != "--use_cpu"], **env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "world size 2, per-device batch 4" in output and "world size 1" not in output


def test_a_run_leaves_the_process_group_it_trained_in(tiny_model_dir, tmp_path):
    """Left to the interpreter's shutdown, gloo's threads can abort a finished run (SIGABRT, seen in CI)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        one_process(tiny_model_dir, tmp_path / "out", "ptuning", steps=1)
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def one_process(model_dir: Path, out: Path, method: str, *extra: str, batch: int = 8, steps: int = 4) -> None:
    """The same run in this process: ``scripts/train.sh``'s flags with NPROC=1."""
    argv = ["--finetuning_type", method, "--model_name_or_path", str(model_dir),
            "--train_file", str(DATA / "train.json"), "--validation_file", str(DATA / "dev.json"),
            "--prompt_column", "content", "--response_column", "summary", "--output_dir", str(out),
            "--max_source_length", "64", "--max_target_length", "64", "--per_device_train_batch_size", str(batch),
            "--per_device_eval_batch_size", str(batch), "--max_steps", str(steps), "--pre_seq_len", "4",
            "--eval_strategy", "steps", "--eval_steps", "100", "--eval_base_loss", *flags(method, *extra)]
    assert sft.train.main(argv) == 0


def history(out: Path) -> list[dict]:
    return json.loads((out / "train_metrics.json").read_text())


def losses(out: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history(out) if "loss" in h}


def weights(checkpoint: Path, method: str) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / WEIGHTS[method]))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


class Pair(NamedTuple):
    one: Path  # 1 process x 8 rows
    two: Path  # 2 processes x 4 rows
    log: str  # what the two-process run printed


@pytest.fixture(scope="module")
def pairs(tiny_model_dir, tmp_path_factory) -> dict[str, Pair]:
    """Per method, four steps in one process and in two (built on first use)."""
    built: dict[str, Pair] = {}

    def make(method: str) -> Pair:
        if method not in built:
            root = tmp_path_factory.mktemp(method)
            # P-tuning also scores generations and the base model (which once kept the model out of DDP).
            extra = (("--eval_samples", "3", "--eval_max_new_tokens", "6") if method == "ptuning"
                     else ("--eval_base_loss", "false"))
            one_process(tiny_model_dir, root / "one", method, *extra)
            done = train_sh(tiny_model_dir, root / "two", method, *extra)
            built[method] = Pair(root / "one", root / "two", done.stdout + done.stderr)
        return built[method]

    return make


@pytest.mark.parametrize("method", ["ptuning", "lora", "full"])
def test_two_processes_of_four_rows_train_as_one_process_of_eight(pairs, method):
    one, two, _ = pairs(method)
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert max(abs(a[s] - b[s]) for s in a) < TOL, (a, b)
    assert max_difference(weights(one, method), weights(two, method)) < TOL
    # Steps 3-4 moved the weights far more than that, so equal weights say the steps were equal.
    assert max_difference(weights(one / "checkpoint-2", method), weights(one, method)) > 10 * TOL
    # The same tokens seen, counted over both processes.
    seen = [{h["step"]: h["num_input_tokens_seen"] for h in history(d) if "loss" in h} for d in (one, two)]
    assert seen[0] == seen[1]


def test_copy_weighted_training_in_two_processes_is_that_of_one(tiny_model_dir, tmp_path):
    """--copy_loss_weight scales the weighted sum as the Trainer scales the plain one, over the global batch."""
    extra = ("--copy_loss_weight", "4", "--eval_base_loss", "false")
    one_process(tiny_model_dir, tmp_path / "one", "ptuning", *extra)
    train_sh(tiny_model_dir, tmp_path / "two", "ptuning", *extra)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert max(abs(a[s] - b[s]) for s in a) < TOL, (a, b)
    assert max_difference(weights(tmp_path / "one", "ptuning"), weights(tmp_path / "two", "ptuning")) < TOL


def test_checkpoints_and_reports_are_written_once(pairs):
    _, two, log = pairs("ptuning")
    assert "world size 2, per-device batch 4, gradient accumulation 1: global batch 8 rows" in log
    assert log.count("saved ptuning checkpoint to") == 3  # checkpoint-2, checkpoint-4, the final one
    assert sorted(p.name for p in two.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    final = history(two)[-1]
    assert final["world_size"] == 2 and final["global_batch_size"] == 8
    assert (two / "loss_curve.png").is_file()


def test_generation_scores_during_training_are_those_of_one_process(pairs):
    one, two, _ = pairs("ptuning")
    scored = [next(h for h in reversed(history(d)) if "eval_rouge-l" in h) for d in (one, two)]
    keys = ("eval_rouge-1", "eval_rouge-2", "eval_rouge-l", "eval_bleu-4")
    assert [scored[0][k] for k in keys] == [scored[1][k] for k in keys]


def test_resume_from_two_processes_in_one_and_back(pairs, tiny_model_dir, tmp_path):
    one, two, _ = pairs("ptuning")
    uninterrupted = losses(one)
    one_process(tiny_model_dir, tmp_path / "in-one", "ptuning", "--resume_from_checkpoint", str(two / "checkpoint-2"))
    train_sh(tiny_model_dir, tmp_path / "in-two", "ptuning", "--resume_from_checkpoint", str(one / "checkpoint-2"))
    for resumed in (tmp_path / "in-one", tmp_path / "in-two"):
        again = losses(resumed)
        assert max(abs(again[s] - uninterrupted[s]) for s in (3, 4)) < TOL, (resumed.name, again, uninterrupted)
        assert max_difference(weights(resumed, "ptuning"), weights(one, "ptuning")) < TOL


def test_fsdp_is_refused_where_it_would_not_shard(tiny_model_dir, tmp_path, capsys):
    # accelerate enables FSDP only on accelerators: on CPU it would train as DDP without a word.
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(DATA / "train.json"),
            "--output_dir", str(tmp_path), "--use_cpu", "--fsdp", "full_shard"]
    assert sft.train.main([*argv, "--finetuning_type", "full"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --fsdp: expected several processes on GPUs (torchrun, NPROC>1), found 1 process(es) on cpu; "
        "drop --fsdp (on CPU, several processes train as DDP)")
    assert sft.train.main([*argv, "--finetuning_type", "ptuning"]) == 2
    assert "error: --fsdp: expected --finetuning_type full or lora" in capsys.readouterr().err


@pytest.mark.parametrize("variable, value", [("NPROC", "two"), ("NPROC", "0"), ("NODE_RANK", "2")])
def test_train_sh_refuses_a_bad_count_in_one_line(variable, value):
    done = run_subprocess("bash", "scripts/train.sh", **{"NNODES": "2", "MASTER_ADDR": "127.0.0.1", variable: value})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(f"error: {variable}:")


def test_sharded_evaluation_writes_the_predictions_of_one_process(tiny_ptuning_checkpoint, adgen_file, tmp_path):
    # 6 rows in batches of 2: 3 batches, so the two processes get 2 and 1 (an uneven last round).
    common = ["--checkpoint", tiny_ptuning_checkpoint(), "--validation_file", adgen_file, "--batch_size", "2",
              "--max_new_tokens", "8"]
    alone = run_in_process("sft.evaluate", *common, "--output_dir", tmp_path / "one")
    assert alone.returncode == 0, alone.stderr
    done = run_subprocess(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "sft.evaluate", *common, "--output_dir", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = ((tmp_path / d / PREDICTIONS_FILE).read_text() for d in ("one", "two"))
    assert len(one.splitlines()) == 6 and len({json.loads(line)["prediction"] for line in one.splitlines()}) > 1
    assert two == one
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two")]
    assert metrics[0] == metrics[1]
    assert done.stdout.count("rouge-l") == 1  # one table, process 0's
