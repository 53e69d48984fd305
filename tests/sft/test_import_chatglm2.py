"""Importing THUDM ChatGLM2-6B P-tuning checkpoints (``transformer.prefix_encoder.*`` in a .bin)."""

from __future__ import annotations


import pytest
import torch

from ptuning.layout import kv_layout
from sft.checkpoint import load_checkpoint
from sft.import_chatglm2 import main
from tests.conftest import run_in_process
from transformers import AutoConfig


def write_chatglm2_checkpoint(path, pre_seq_len: int, kv_size: int, hidden: int | None) -> dict:
    """What ChatGLM2's ptuning/main.py saves: only the prefix encoder, under the transformer's prefix."""
    torch.manual_seed(0)
    state = {"transformer.prefix_encoder.embedding.weight": torch.randn(pre_seq_len, kv_size)}
    if hidden:
        state.update({
            "transformer.prefix_encoder.trans.0.weight": torch.randn(hidden, kv_size),
            "transformer.prefix_encoder.trans.0.bias": torch.randn(hidden),
            "transformer.prefix_encoder.trans.2.weight": torch.randn(kv_size, hidden),
            "transformer.prefix_encoder.trans.2.bias": torch.randn(kv_size),
        })
    path.mkdir()
    torch.save(state, path / "pytorch_model.bin")
    return state


@pytest.mark.parametrize("hidden", [None, 16])
def test_import_loads_the_same_tensors(tiny_model_dir, tmp_path, hidden):
    kv_size = kv_layout(AutoConfig.from_pretrained(str(tiny_model_dir))).kv_size
    state = write_chatglm2_checkpoint(tmp_path / "chatglm2", 5, kv_size, hidden)
    out = tmp_path / "imported"
    args = ["--source", str(tmp_path / "chatglm2"), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out)]
    assert main(args) == 0
    model, _, info = load_checkpoint(out)
    assert info.ptuning["pre_seq_len"] == 5 and info.ptuning["prefix_projection"] == bool(hidden)
    assert info.mask == "causal" and info.template == "chatglm2"
    for name, tensor in model.prefix_encoder.state_dict().items():
        assert torch.equal(tensor, state["transformer.prefix_encoder." + name]), name


def test_import_refuses_a_prefix_of_another_width(tiny_model_dir, tmp_path):
    kv_size = kv_layout(AutoConfig.from_pretrained(str(tiny_model_dir))).kv_size
    write_chatglm2_checkpoint(tmp_path / "chatglm2", 5, kv_size * 2, None)
    proc = run_in_process("sft.import_chatglm2", "--source", tmp_path / "chatglm2",
                          "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"embedding.weight expected shape (5, {kv_size}), found (5, {kv_size * 2})" in proc.stderr
