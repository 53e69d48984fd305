"""End-to-end P-tuning through ``sft.train`` on a tiny random GLM: what trains, what is saved, resuming."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GlmForCausalLM

from sft.training import recipe
from sft.checkpoint import load_checkpoint
from sft.errors import CheckpointError
from sft.methods import ptuning as ptuning_method
from sft.training.trainer import NONFINITE_BATCH, NonFiniteLossError
from tests.conftest import REPO, build_tiny_model_dir

DATA = REPO / "data" / "adgen"


def train_args(model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir),
        "--train_file", str(DATA / "train.json"),
        "--validation_file", str(DATA / "dev.json"),
        "--max_train_samples", "48",
        "--max_eval_samples", "8",
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8",
        "--pre_seq_len", "4",
        "--learning_rate", "0.05",
        "--logging_steps", "1",
        "--save_steps", "3",
        "--max_steps", "6",
        "--seed", "7",
        *extra,
    ]


def run_training(argv: list[str]):
    return recipe.run(recipe.parse_args(argv))


def train_losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "train_metrics.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptuning-run")
    trainer, results = run_training(train_args(tiny_model_dir, out, "--eval_base_loss"))
    return trainer, results, out


def test_only_the_prefix_trains(trained, tiny_model_dir):
    trainer, _, _ = trained
    before = GlmForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    after = {k: v for k, v in trainer.model.state_dict().items() if not k.startswith("prefix_encoder.")}
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name  # bit-identical
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {"prefix_encoder.embedding.weight"}
    torch.manual_seed(7)  # the run's seed: the prefix it started from
    initial = torch.nn.Embedding(*trainer.model.prefix_encoder.embedding.weight.shape).weight
    assert not torch.equal(trainer.model.prefix_encoder.embedding.weight.detach(), initial.detach())


def test_outputs_describe_the_run(trained):
    _, results, out = trained
    info = json.loads((out / "sft_checkpoint.json").read_text())
    assert info["method"] == "ptuning" and info["mask"] == "prefix_lm" and info["template"] == "chatglm3"
    assert info["ptuning"]["pre_seq_len"] == 4 and info["base_fingerprint"]
    assert {"torch", "transformers"} <= info["versions"].keys()
    assert (out / "prefix.safetensors").stat().st_size < 100_000
    assert not list(out.glob("*.bin")) and not (out / "model.safetensors").exists()
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert sorted(train_losses(out)) == [1, 2, 3, 4, 5, 6]
    assert {"base_dev_loss", "eval_loss"} <= results.keys()
    # The last step is a resumable checkpoint.
    assert (out / "checkpoint-6" / "optimizer.pt").is_file()


def test_final_checkpoint_written_when_max_steps_below_save_steps(tiny_model_dir, tmp_path):
    run_training(train_args(tiny_model_dir, tmp_path, "--max_steps", "2", "--save_steps", "1000"))
    assert (tmp_path / "checkpoint-2" / "prefix.safetensors").is_file()
    assert (tmp_path / "prefix.safetensors").is_file()


def test_resumed_run_repeats_the_uninterrupted_losses(trained, tiny_model_dir, tmp_path):
    _, _, out = trained
    run_training(train_args(tiny_model_dir, tmp_path, "--resume_from_checkpoint", str(out / "checkpoint-3")))
    full, resumed = train_losses(out), train_losses(tmp_path)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come with the restored trainer state
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6), step


def test_gradient_checkpointing_trains_the_prefix(tiny_model_dir, tmp_path):
    plain, _ = run_training(train_args(tiny_model_dir, tmp_path / "a", "--max_steps", "2"))
    ckpt, _ = run_training(train_args(tiny_model_dir, tmp_path / "b", "--max_steps", "2", "--gradient_checkpointing"))
    assert train_losses(tmp_path / "a") == pytest.approx(train_losses(tmp_path / "b"), abs=1e-5)
    assert torch.allclose(
        plain.model.prefix_encoder.embedding.weight, ckpt.model.prefix_encoder.embedding.weight, atol=1e-5
    )


def test_wrong_pre_seq_len_is_refused(trained):
    _, _, out = trained
    with pytest.raises(CheckpointError, match="checkpoint has pre_seq_len 4, --pre_seq_len says 8"):
        load_checkpoint(out, expect={"pre_seq_len": 8})


def test_prefix_file_of_another_length_is_refused(trained, tmp_path):
    _, _, out = trained
    for name in ("sft_checkpoint.json",):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    state = load_file(str(out / "prefix.safetensors"))
    state["embedding.weight"] = torch.cat([state["embedding.weight"]] * 2)
    save_file(state, str(tmp_path / "prefix.safetensors"))
    with pytest.raises(CheckpointError, match="checkpoint has pre_seq_len 8, model built with 4"):
        load_checkpoint(tmp_path)


def test_wrong_base_model_is_refused_on_the_command_line(trained, tmp_path):
    _, _, out = trained
    other = build_tiny_model_dir(tmp_path / "other", seed=123)
    proc = subprocess.run(
        [sys.executable, "-m", "sft.infer", "--checkpoint", str(out), "--model_name_or_path", str(other),
         "--prompt", "类型#上衣"],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fingerprint" in errors[0], proc.stderr


def test_nonfinite_loss_stops_with_the_batch_saved(tiny_model_dir, tmp_path, monkeypatch):
    real_build = ptuning_method.attach_encoder

    def poisoned(model, config):
        encoder = real_build(model, config)
        with torch.no_grad():
            encoder.embedding.weight[0, 0] = float("nan")
        return encoder

    monkeypatch.setattr(ptuning_method, "attach_encoder", poisoned)
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        run_training(train_args(tiny_model_dir, tmp_path, "--max_steps", "2"))
    batch = load_file(str(tmp_path / NONFINITE_BATCH))
    assert batch["input_ids"].shape[0] == 4
    assert (tmp_path / "last-finite" / "prefix.safetensors").is_file()


def test_bad_flags_exit_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sft.train", "--pre_seq_len", "0", "--output_dir", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "--pre_seq_len" in proc.stderr and "Traceback" not in proc.stderr


def test_generation_scores_during_training_pick_the_best_checkpoint(tiny_model_dir, tmp_path):
    trainer, _ = run_training(train_args(
        tiny_model_dir, tmp_path,
        "--eval_strategy", "steps", "--eval_steps", "3", "--eval_samples", "3", "--eval_max_new_tokens", "6",
        "--metric_for_best_model", "rouge-l", "--load_best_model_at_end",
    ))
    history = json.loads((tmp_path / "train_metrics.json").read_text())
    scored = [h for h in history if "eval_rouge-l" in h]
    assert {h["step"] for h in scored} == {3, 6}  # step 6 again: the final evaluation
    assert all({"eval_rouge-1", "eval_rouge-2", "eval_bleu-4"} <= h.keys() for h in scored)
    assert trainer.state.best_model_checkpoint.endswith(("checkpoint-3", "checkpoint-6"))
