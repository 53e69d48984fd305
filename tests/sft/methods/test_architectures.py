"""Every text GLM architecture transformers ships, trained by every method through the real recipe.

Per architecture (``tests/tiny_models.py``) and run -- P-tuning with causal and with prefix-LM
masking, LoRA (``--lora_target all``: on MoE models routed experts included) and full
fine-tuning -- ``sft.training.recipe.run`` trains 2 steps on 8 rows of data/adgen/train.json;
``sft.checkpoint.load_for_inference`` then rebuilds the model from the checkpoint directory
alone, which must compute the trained model's logits and generate; ``sft.infer`` and
``sft.evaluate`` run on it in process. Then what each ``--lora_target`` group adapts per model
type, and what LoRA on MoE models refuses.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from ptuning.layout import kv_layout
from sft.checkpoint import load_for_inference
from sft.errors import UserError
from sft.eval.arguments import GenerationArguments
from sft.eval.generation import generate_token_ids
from sft.methods.lora import Lora, LoraArguments
from sft.training import recipe
from tests.conftest import REPO, run_in_process
from tests.tiny_models import ARCHITECTURES, MOE, build_tiny_model_dir, tiny_model

ADGEN = REPO / "data" / "adgen"
PRE_SEQ_LEN = 4
RUNS = {  # name: (method, flags)
    "ptuning-causal": ("ptuning", ("--mask", "causal", "--pre_seq_len", str(PRE_SEQ_LEN))),
    "ptuning-prefix_lm": ("ptuning", ("--mask", "prefix_lm", "--pre_seq_len", str(PRE_SEQ_LEN))),
    "lora": ("lora", ("--lora_target", "all")),
    "full": ("full", ()),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """``base_dir(arch)``: a tiny model directory of ``arch`` (built once per architecture)."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model_dir(tmp_path_factory.mktemp(arch), arch, mask="causal", template="glm4")
        return built[arch]

    return get


def train(base: Path, out: Path, method: str, flags) -> tuple:
    argv = ["--finetuning_type", method, "--model_name_or_path", str(base), "--train_file", str(ADGEN / "train.json"),
            "--max_train_samples", "8", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--max_source_length", "32", "--max_target_length", "32", "--template", "glm4", "--output_dir", str(out),
            "--logging_steps", "1", "--seed", "3", *flags]
    return recipe.run(recipe.parse_args(argv))


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("类型#裙*颜色#黑色 这是一条好看的裙子")["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trains_then_loads_generates_infers_and_evaluates(arch, run, base_dir, tmp_path):
    method, flags = RUNS[run]
    mask = "prefix_lm" if run.endswith("prefix_lm") else "causal"  # the base's default: causal
    out = tmp_path / run
    trainer, results = train(base_dir(arch), out, method, flags)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    if method == "ptuning":
        assert results["trainable_parameters"] == PRE_SEQ_LEN * kv_layout(trainer.model.config).kv_size
    elif method == "lora":
        assert 0 < results["trainable_parameters"] < results["total_parameters"] / 5
    else:
        assert results["trainable_parameters"] == results["total_parameters"]

    model, tokenizer, info = load_for_inference(str(out))
    assert (info.method, info.mask, info.template) == (method, mask, "glm4")
    trainer.model.eval()
    assert (logits(model, tokenizer) - logits(trainer.model, tokenizer)).abs().max() <= 1e-5  # what trained, loaded
    prompt = tokenizer("类型#上衣*颜色#红色")["input_ids"]
    new = generate_token_ids(model, tokenizer, [prompt, prompt[:3]], GenerationArguments(max_new_tokens=3))
    assert len(new) == 2 and all(len(ids) <= 3 for ids in new)

    infer = run_in_process("sft.infer", "--checkpoint", out, "--prompt", "类型#裙", "--max_new_tokens", "3")
    assert infer.returncode == 0, infer.stderr
    evaluate = run_in_process("sft.evaluate", "--checkpoint", out, "--validation_file", ADGEN / "dev.json",
                              "--eval_samples", "2", "--max_new_tokens", "3", "--output_dir", tmp_path / "eval")
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["method"], metrics["n"]) == (method, 2)


# --- LoRA targets per model type ------------------------------------------------------------------------

MLA_ATTENTION = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
MOE_MLP = ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]
ROUTED = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
GROUPS = {  # arch: group: (target_modules, target_parameters)
    "glm": {"attention": (["q_proj", "k_proj", "v_proj", "o_proj"], []), "mlp": (["gate_up_proj", "down_proj"], [])},
    "glm4_moe": {"attention": (["q_proj", "k_proj", "v_proj", "o_proj"], []), "mlp": ([], MOE_MLP),
                 "experts": ([], ROUTED)},
    "glm_moe_dsa": {"attention": (MLA_ATTENTION, []), "mlp": ([], MOE_MLP), "experts": ([], ROUTED)},
}


@pytest.mark.parametrize("arch", GROUPS)
def test_lora_groups_name_each_model_types_layers(arch):
    model = tiny_model(arch)
    lora = Lora()
    for group, (modules, parameters) in GROUPS[arch].items():
        settings = lora.settings(model, LoraArguments(lora_target=group), "causal")
        assert (settings["target_modules"], settings["target_parameters"]) == (modules, parameters), group
        assert settings["dropout"] == (0.0 if parameters else 0.05), group  # peft: no dropout on parameters
    everything = lora.settings(model, LoraArguments(lora_target="all"), "causal")
    assert everything["target_modules"] == [m for ms, _ in GROUPS[arch].values() for m in ms]
    assert everything["target_parameters"] == [p for _, ps in GROUPS[arch].values() for p in ps]


def adapted_names(peft_model) -> set[str]:
    return {name.split(".lora_A")[0].replace(".base_layer", "") for name, _ in peft_model.named_parameters()
            if ".lora_A." in name}


@pytest.mark.parametrize("arch", MOE)
def test_moe_lora_adapts_shared_experts_and_says_whether_routed_experts_train(arch, caplog):
    lora = Lora()
    with caplog.at_level(logging.INFO, logger="sft.methods.lora"):
        model = tiny_model(arch)
        peft_model = lora.prepare(model, lora.settings(model, LoraArguments(lora_target="all"), "causal"), "causal")
    adapted = adapted_names(peft_model)
    prefix = "base_model.model.model.layers."
    assert {prefix + "0.mlp.gate_proj", prefix + "1.mlp.shared_experts.down_proj", prefix + "1.mlp.experts"} <= adapted
    assert "LoRA adapts routed experts: mlp.experts.gate_up_proj, mlp.experts.down_proj (2 weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sft.methods.lora"):
        model = tiny_model(arch)
        peft_model = lora.prepare(model, lora.settings(model, LoraArguments(lora_target="attention,mlp"), "causal"),
                                  "causal")
    assert prefix + "1.mlp.shared_experts.down_proj" in adapted_names(peft_model)
    assert not any(".mlp.experts" in name for name in adapted_names(peft_model))
    assert "LoRA leaves the routed experts frozen" in caplog.text


@pytest.mark.parametrize("arch", ["glm4_moe", "glm4_moe_lite"])
def test_moe_lora_merges_into_the_weights(arch):
    model = tiny_model(arch)
    lora = Lora()
    peft_model = lora.prepare(model, lora.settings(model, LoraArguments(lora_target="all"), "causal"), "causal")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.5)  # B starts at zero: make every update count
    input_ids = torch.randint(2, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = peft_model(input_ids=input_ids).logits
        base = tiny_model(arch)(input_ids=input_ids).logits
        merged = peft_model.merge_and_unload()(input_ids=input_ids).logits  # what sft.export does
    assert (merged - adapted).abs().max() <= 1e-5
    assert (adapted - base).abs().max() > 1e-2


def test_moe_lora_refusals_name_the_flag():
    model = tiny_model("glm4_moe")
    lora = Lora()
    with pytest.raises(UserError, match=r"--lora_dropout: expected 0 .*mlp.experts.gate_up_proj.* found 0.05"):
        lora.settings(model, LoraArguments(lora_target="experts", lora_dropout=0.05), "causal")
    with pytest.raises(UserError, match="expected one of all, attention, mlp for model type 'glm'"):
        lora.settings(tiny_model("glm"), LoraArguments(lora_target="experts"), "causal")
    # peft renames an MLP layer's name to the routed experts: refused, whatever the dropout
    for dropout in (0.05, 0.0):
        model = tiny_model("glm4_moe")
        settings = lora.settings(model, LoraArguments(lora_target="q_proj,down_proj", lora_dropout=dropout), "causal")
        with pytest.raises(UserError, match=r"--lora_target q_proj,down_proj: .*huggingface/peft#3711"):
            lora.prepare(model, settings, "causal")
