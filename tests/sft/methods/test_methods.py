"""LoRA and full fine-tuning through the same ``sft.train`` pipeline, on data/'s Alpaca sample and a tiny GLM.

What each method saves, that inference and evaluation need no flags beyond the checkpoint,
that LoRA leaves the base untouched and resumes exactly, and that the merged export computes
the adapter model's logits.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GlmForCausalLM

from sft import export
from sft import train as train_command
from sft.checkpoint import load_checkpoint, load_for_inference
from sft.errors import CheckpointError
from sft.eval.arguments import GenerationArguments
from sft.eval.generation import generate_answers
from sft.methods.lora import LORA_TARGETS
from sft.methods.sparse_dropout import SparseDropout
from sft.training import recipe
from tests.conftest import REPO, run_in_process, run_subprocess

ALPACA = REPO / "data" / "alpaca"
GLM_LINEAR = {*LORA_TARGETS["glm"]["attention"], *LORA_TARGETS["glm"]["mlp"]}


def train_args(model_dir: Path, output_dir: Path, method: str, *extra: str) -> list[str]:
    return [
        "--finetuning_type", method,
        "--model_name_or_path", str(model_dir),
        "--train_file", str(ALPACA / "train.json"),
        "--validation_file", str(ALPACA / "dev.json"),
        "--format", "alpaca",
        "--max_train_samples", "24",
        "--max_eval_samples", "4",
        "--max_source_length", "32",
        "--max_target_length", "32",
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2",
        "--logging_steps", "1",
        "--save_steps", "2",
        "--max_steps", "4",
        "--seed", "7",
        *extra,
    ]


def train_losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "train_metrics.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """``trained(method)``: ``(trainer, results, output_dir)`` of a 4-step run, trained once per method."""
    runs = {}

    def get(method: str):
        if method not in runs:
            out = tmp_path_factory.mktemp(f"{method}-run")
            runs[method] = (*recipe.run(recipe.parse_args(train_args(tiny_model_dir, out, method))), out)
        return runs[method]

    return get


def test_lora_saves_a_peft_adapter_and_leaves_the_base_untouched(trained, tiny_model_dir):
    trainer, results, out = trained("lora")
    info = json.loads((out / "sft_checkpoint.json").read_text())
    assert info["method"] == "lora" and info["mask"] == "prefix_lm" and info["template"] == "chatglm3"
    assert set(info["lora"]["target_modules"]) == GLM_LINEAR and info["lora"]["rank"] == 8
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == GLM_LINEAR and adapter["r"] == 8
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert 0 < results["trainable_parameters"] < results["total_parameters"] / 10
    # peft's input dropout of every adapted layer, drawn as the positions it drops (sft.methods.sparse_dropout)
    dropouts = [m for n, m in trainer.model.named_modules() if n.rsplit(".", 2)[-2:-1] == ["lora_dropout"]]
    adapted = {n for n, _ in trainer.model.named_modules() if n.endswith(".lora_A")}
    assert len(dropouts) == len(adapted) > 0
    assert all(type(m) is SparseDropout and m.p == info["lora"]["dropout"] > 0 for m in dropouts)
    before = GlmForCausalLM.from_pretrained(str(tiny_model_dir), use_kernels=False).state_dict()
    after = {k.replace(".base_layer", ""): v for k, v in trainer.model.get_base_model().state_dict().items()
             if ".lora_" not in k}
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor.to(after[name].dtype)), name  # bit-identical (bf16 on an AMX CPU)


def test_full_saves_a_standalone_model(trained, tiny_model_dir):
    _, results, out = trained("full")
    assert results["trainable_parameters"] == results["total_parameters"]
    assert {"train_tokens_per_second", "train_peak_memory_mb", "eval_loss"} <= results.keys()
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "sft_checkpoint.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "sft_defaults.json").read_text()) == {"mask": "prefix_lm", "template": "chatglm3"}
    assert json.loads((out / "sft_checkpoint.json").read_text())["method"] == "full"
    tuned = GlmForCausalLM.from_pretrained(str(out), use_kernels=False).state_dict()  # plain transformers reads it
    base = GlmForCausalLM.from_pretrained(str(tiny_model_dir), use_kernels=False).state_dict()
    assert not torch.equal(tuned["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])


def assert_infer_and_evaluate_need_only(checkpoint: Path, method: str, validation_file: Path) -> None:
    """``sft.infer --checkpoint DIR`` and ``sft.evaluate --checkpoint DIR`` work without other flags
    (``scripts/evaluate.sh`` only assembles these flags: tests/sft/eval/test_evaluate.py runs it)."""
    infer = run_in_process("sft.infer", "--checkpoint", checkpoint, "--prompt", "类型#裙", "--max_new_tokens", "4")
    assert infer.returncode == 0 and f"method {method}" in infer.stderr, infer.stderr
    done = run_in_process("sft.evaluate", "--checkpoint", checkpoint, "--validation_file", validation_file,
                          "--eval_samples", "2", "--max_new_tokens", "4")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((checkpoint / "eval" / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["n"] == 2


def test_full_checkpoint_needs_no_flags_to_infer_and_evaluate(trained):
    _, _, out = trained("full")
    assert_infer_and_evaluate_need_only(out, "full", ALPACA / "dev.json")


def test_train_script_trains_lora_by_one_variable(tiny_model_dir, tmp_path):
    done = run_subprocess("bash", "scripts/train.sh", "--max_train_samples", "8", "--max_eval_samples", "4",
                          METHOD="lora", MODEL=str(tiny_model_dir), OUTPUT_DIR=str(tmp_path), MAX_STEPS="2",
                          BATCH_SIZE="4", MAX_SOURCE_LENGTH="32", MAX_TARGET_LENGTH="32")
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "sft_checkpoint.json").read_text())
    assert info["method"] == "lora" and info["data"]["prompt_column"] == "content"
    assert_infer_and_evaluate_need_only(tmp_path, "lora", REPO / "data" / "adgen" / "dev.json")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resumed_run_repeats_the_uninterrupted_losses(trained, tiny_model_dir, method, tmp_path):
    _, _, out = trained(method)
    argv = train_args(tiny_model_dir, tmp_path, method, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    recipe.run(recipe.parse_args(argv))
    full, resumed = train_losses(out), train_losses(tmp_path)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6), step


def test_generation_through_peft_goes_through_the_mask_hook(trained):
    _, _, out = trained("lora")
    model, tokenizer, _ = load_checkpoint(out)
    masks = []
    model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs["attention_mask"].dim()), with_kwargs=True
    )
    generate_answers(model, tokenizer, [[5, 6, 7]], GenerationArguments(max_new_tokens=3))
    assert masks and set(masks) == {4}  # the prefix-LM hook built a 4-D mask for every step


def test_merged_export_computes_the_adapter_models_logits(trained, tmp_path, tiny_model_dir):
    _, _, out = trained("lora")
    checkpoint = tmp_path / "lora"
    shutil.copytree(out, checkpoint, ignore=shutil.ignore_patterns("checkpoint-*"))
    # Non-trivial adapters: B starts at zero and 4 steps move it little.
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    torch.manual_seed(0)
    save_file({k: torch.randn_like(v) * 0.5 if "lora_B" in k else v for k, v in weights.items()},
              str(checkpoint / "adapter_model.safetensors"))
    # fp32 throughout: the base trained in bf16 where the CPU computes it (--dtype auto)
    assert export.main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "merged"),
                        "--dtype", "float32"]) == 0
    adapted, tokenizer, _ = load_checkpoint(checkpoint, dtype="float32")
    merged, _, info = load_for_inference(str(tmp_path / "merged"), dtype="float32")
    base, _, _ = load_for_inference(str(tiny_model_dir), dtype="float32")
    assert (info.method, info.mask, info.template) == ("base", "prefix_lm", "chatglm3")
    assert not any(p.name.startswith("adapter") for p in (tmp_path / "merged").iterdir())
    inputs = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, -100, 8, 9, 10], [-100, -100, 13, 14, -100, -100]]),
    }
    with torch.no_grad():
        expected, found, plain = (m(**inputs).logits for m in (adapted, merged, base))
    assert torch.allclose(found, expected, atol=1e-5)
    assert (found - plain).abs().max() > 1e-2  # the adapters change the model: the check above means something


def test_export_of_full_and_ptuning_checkpoints(trained, tiny_ptuning_checkpoint, tmp_path, capsys):
    _, _, out = trained("full")
    assert export.main(["--checkpoint", str(out), "--output_dir", str(tmp_path / "x")]) == 0
    assert "already a standalone model" in capsys.readouterr().out and not (tmp_path / "x").exists()
    assert export.main(["--checkpoint", str(tiny_ptuning_checkpoint()), "--output_dir", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be merged" in errors[0] and "Traceback" not in err


def test_incomplete_or_misused_checkpoints_are_refused(trained, tiny_model_dir, tmp_path):
    _, _, lora = trained("lora")
    for name in ("sft_checkpoint.json", "adapter_config.json"):
        shutil.copy(lora / name, tmp_path / name)
    with pytest.raises(CheckpointError, match="found no adapter_model.safetensors"):
        load_checkpoint(tmp_path)
    _, _, full = trained("full")
    with pytest.raises(CheckpointError, match="a full fine-tuning checkpoint is a whole model"):
        load_checkpoint(full, model_name_or_path=str(tiny_model_dir))


def test_learning_rate_and_output_dir_follow_the_method():
    for method, rate in (("ptuning", 2e-2), ("lora", 3e-4), ("full", 1e-4)):
        args = recipe.parse_args(["--finetuning_type", method]).training
        assert (args.learning_rate, args.output_dir) == (rate, f"output/{method}")
    args = recipe.parse_args(["--finetuning_type", "lora", "--learning_rate", "1e-3", "--output_dir", "x"]).training
    assert (args.learning_rate, args.output_dir) == (1e-3, "x")


def test_ptuning_spares_ddp_the_search_for_unused_parameters():
    """Every layer's prefix enters every forward, so DDP need not look for parameters without a gradient
    (tests/sft/distributed trains P-tuning in two processes with it: DDP fails on an unused parameter)."""
    assert recipe.parse_args(["--finetuning_type", "ptuning"]).training.ddp_find_unused_parameters is False
    assert recipe.parse_args(["--finetuning_type", "lora"]).training.ddp_find_unused_parameters is None
    chosen = recipe.parse_args(["--finetuning_type", "ptuning", "--ddp_find_unused_parameters", "true"]).training
    assert chosen.ddp_find_unused_parameters is True


def test_bad_lora_settings_exit_with_one_line(tiny_model_dir, tmp_path, capsys):
    assert train_command.main(["--finetuning_type", "lora", "--lora_rank", "0", "--output_dir", str(tmp_path)]) == 2
    assert "--lora_rank: expected a positive integer, found 0" in capsys.readouterr().err
    argv = train_args(tiny_model_dir, tmp_path, "lora", "--lora_target", "q_proj,query_key_value")
    assert train_command.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --lora_target:") and "query_key_value" in errors[0]


def test_gradient_checkpointing_gives_the_same_full_fine_tuning(tiny_model_dir, tmp_path):
    for name, extra in (("plain", ()), ("checkpointed", ("--activation_checkpointing",))):
        argv = train_args(tiny_model_dir, tmp_path / name, "full", "--max_steps", "2", *extra)
        recipe.run(recipe.parse_args(argv))
    assert train_losses(tmp_path / "checkpointed") == pytest.approx(train_losses(tmp_path / "plain"), abs=1e-5)
