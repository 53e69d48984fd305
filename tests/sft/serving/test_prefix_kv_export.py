"""``python -m sft.export --prefix_kv OUT``: the prefix as per-layer keys/values, served without the encoder,
and usable by an engine that knows nothing of P-tuning (plain transformers with the prefix in its KV cache)."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch
from transformers import DynamicCache

from ptuning.checkpoint import load_prefix
from ptuning.encoder import PrefixConfig
from ptuning.prefix_kv import load_prefix_kv
from sft.checkpoint import CheckpointInfo
from sft.errors import CheckpointError
from sft.models import load_base_model, resolve_model_path
from sft.serving.engine import Engine, SamplingParams
from tests.conftest import run_in_process
from tests.sft.serving.conftest import train_embedded

PROMPT = "类型#裙*颜色#黑色*风格#复古"


@pytest.fixture(scope="module")
def causal_checkpoint(tmp_path_factory):
    """A causal-mask P-tuning checkpoint with a projected prefix (the encoder's MLP is what export removes)."""
    return train_embedded(tmp_path_factory.mktemp("kv") / "pt", "ptuning", "--mask", "causal", "--pre_seq_len", "6",
                          "--prefix_projection", "--learning_rate", "0.02")


@pytest.fixture(scope="module")
def exported(causal_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("kv") / "export"
    ran = run_in_process("sft.export", "--checkpoint", causal_checkpoint, "--prefix_kv", out)
    assert ran.returncode == 0, ran.stderr
    return out


def test_export_holds_the_encoders_keys_and_values_and_describes_them(causal_checkpoint, exported):
    keys, values, description = load_prefix_kv(exported)
    info = CheckpointInfo.load(causal_checkpoint)
    encoder = load_prefix(PrefixConfig.from_dict(info.ptuning), causal_checkpoint)
    with torch.no_grad():
        expected_keys, expected_values = encoder()
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    assert keys.shape == (4, 2, 6, 64)  # (layers, kv_heads, P, head_dim) of the embedded model
    on_disk = json.loads((exported / "prefix_kv.json").read_text())
    assert on_disk["layout"] == {"num_layers": 4, "num_kv_heads": 2, "head_dim": 64, "hidden_size": 256}
    assert (on_disk["pre_seq_len"], on_disk["dtype"], on_disk["mask"], on_disk["template"]) == (6, "float32", "causal",
                                                                                                 "chatglm3")
    assert on_disk["base_fingerprint"] == info.base_fingerprint and "positions" in on_disk


def test_plain_transformers_with_the_prefix_in_its_cache_gives_the_checkpoints_logits(causal_checkpoint, exported):
    """Another engine's way: prefix keys/values as a P-token KV cache, real tokens at positions 0.. (no hook)."""
    from sft.eval.arguments import LoadArguments
    from sft.eval.loading import load_model

    model, tokenizer, _ = load_model(LoadArguments(checkpoint=str(causal_checkpoint), dtype="float32"))
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        keys, values, _ = load_prefix_kv(exported)
        plain = load_base_model(resolve_model_path("embedded"), torch.float32).eval()
        cache = DynamicCache(ddp_cache_data=[(k[None], v[None]) for k, v in zip(keys, values)], config=plain.config)
        positions = torch.arange(ids.shape[1])[None]
        mask = torch.ones(1, keys.shape[2] + ids.shape[1], dtype=torch.long)
        found = plain(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
        without = plain(input_ids=ids).logits
    assert (found - expected).abs().max() < 1e-4
    assert (without - expected).abs().max() > 1e-2  # guard: the prefix changes the answer


def test_serving_the_export_equals_serving_the_checkpoint(causal_checkpoint, exported):
    engine = Engine.load("embedded", {"checkpoint": str(causal_checkpoint), "export": str(exported)})
    params = SamplingParams(max_tokens=24, temperature=0)

    async def both():
        async def answer(name):
            ids = engine.completion_prompt(name, PROMPT)
            return "".join([d.text async for d in engine.generate(name, ids, params)])
        return await asyncio.gather(answer("checkpoint"), answer("export"), answer("base"))

    try:
        from_checkpoint, from_export, base = asyncio.run(both())
    finally:
        engine.close()
    assert from_export == from_checkpoint != base


def test_export_refuses_other_methods_and_the_server_another_base(served_checkpoints, exported, tmp_path):
    ran = run_in_process("sft.export", "--checkpoint", served_checkpoints["adgen-lora"], "--prefix_kv", tmp_path / "o")
    assert ran.returncode == 2 and "--prefix_kv: expected a ptuning checkpoint, found method lora" in ran.stderr
    ran = run_in_process("sft.export", "--checkpoint", served_checkpoints["adgen-pt"], "--prefix_kv", exported)
    assert ran.returncode == 2 and "--prefix_kv: expected a new or empty directory" in ran.stderr
    description = json.loads((exported / "prefix_kv.json").read_text())
    description["checkpoint"]["base_fingerprint"] = "0000000000000000"
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "prefix_kv.json").write_text(json.dumps(description))
    (moved / "prefix_kv.safetensors").write_bytes((exported / "prefix_kv.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="fingerprint 0000000000000000"):
        Engine.load("embedded", {"moved": str(moved)})


@pytest.mark.parametrize("setting", [{"use_dora": True}, {"target_parameters": ["mlp.experts.gate_up_proj"]}])
def test_the_server_refuses_a_lora_adapter_peft_cannot_mix_per_row(served_checkpoints, tmp_path, setting):
    shutil.copytree(served_checkpoints["adgen-lora"], tmp_path / "lora")
    config_file = tmp_path / "lora" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **setting}))
    with pytest.raises(CheckpointError, match=r"which peft cannot mix per row; serve it merged instead: "
                                              r"python -m sft.export --checkpoint "):
        Engine.load("embedded", {"dora": str(tmp_path / "lora")})
