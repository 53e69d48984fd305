"""``python -m sft.convert``: tiny THUDM checkpoints become ``GlmForCausalLM`` directories that compute what
THUDM's model computes (a float64 forward from the THUDM-named weights, ``tiny_thudm.thudm_logits``),
P-tuning checkpoints come along, and every refusal is one line with exit status 2."""

from __future__ import annotations

import importlib.util
import io
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, GlmForCausalLM

from sft.checkpoint import load_checkpoint
from sft.conversion.thudm import detect_family
from sft.convert import main
from sft.embedded import DEFAULT_MODEL_DIR
from sft.infer import main as infer_main

from .tiny_thudm import (INV_FREQ, PREFIX, TINY_CONFIG, thudm_inv_freq, thudm_logits, thudm_prefix, thudm_state,
                         write_thudm_checkpoint)

TOL = 1e-5  # max abs logit difference, fp32 model against the float64 reference
PROMPT, SHORT_ANSWER = "类型#上衣*颜色#红色", ["--max_new_tokens", "4", "--device", "cpu"]
L0 = "transformer.encoder.layers.0."
STOPS = {"chatglm2": [2], "chatglm3": [2, 64795, 64797], "glm4": [151329, 151336, 151338]}


def convert(source, out, *extra: str) -> int:
    return main(["--source", str(source), "--output_dir", str(out), "--skip_tokenizer", *extra])


def token_ids(vocab: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))  # (B, T)


def max_diff(logits: torch.Tensor, expected: torch.Tensor) -> float:
    return (logits.double() - expected).abs().max().item()


# --- 1. The converted model computes THUDM's forward ----------------------------------------------------


@pytest.mark.parametrize(("family", "fmt", "shards", "changes"), [
    pytest.param("chatglm3", "bin", 2, {}, id="chatglm3-bin-2-shards"),
    pytest.param("chatglm3", "safetensors", 1, {"rope_ratio": 50}, id="chatglm3-32k-safetensors-rope50"),
    pytest.param("glm4", "safetensors", 2, {"rope_ratio": 500}, id="glm4-safetensors-2-shards-rope500"),
    pytest.param("chatglm2", "safetensors", 1, {"rope_ratio": 16, "add_qkv_bias": False},
                 id="chatglm2-32k-safetensors-no-qkv-bias"),
    pytest.param("chatglm2", "bin", 1, {}, id="chatglm2-bin"),
])
def test_converted_model_matches_the_thudm_forward(tmp_path, family, fmt, shards, changes):
    config, state = write_thudm_checkpoint(tmp_path / "thudm", family=family, fmt=fmt, shards=shards, **changes)
    assert convert(tmp_path / "thudm", tmp_path / "out") == 0
    model = GlmForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32, use_kernels=False).eval()  # no remote code
    ids = token_ids(config["padded_vocab_size"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert max_diff(logits, thudm_logits(state, config, family, ids)) < TOL
    assert model.generation_config.eos_token_id == STOPS[family]
    assert json.loads((tmp_path / "out" / "sft_defaults.json").read_text()) == {"mask": "causal", "template": family}
    if "rope_ratio" in changes:  # guard: a rotary that drops rope_ratio (as transformers' own script does) differs
        assert max_diff(logits, thudm_logits(state, {**config, "rope_ratio": 1}, family, ids)) > 1e-3


def test_output_is_sharded_like_the_source_and_keeps_the_dtype(tmp_path):
    state = {key: tensor.to(torch.bfloat16) for key, tensor in thudm_state(TINY_CONFIG).items()}  # glm-4's dtype
    write_thudm_checkpoint(tmp_path / "thudm", fmt="bin", shards=2, state=state, torch_dtype="bfloat16")
    assert convert(tmp_path / "thudm", tmp_path / "out") == 0
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                           "model-00002-of-00002.safetensors"]
    layer0 = {key for key in index["weight_map"] if key.startswith("model.layers.0.")}
    assert layer0 == {f"model.layers.0.{name}" for name in (
        "input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight",
        "self_attn.o_proj.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")}
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for k, t in state.items() if k != INV_FREQ)
    with safe_open(str(out / "model-00001-of-00002.safetensors"), "pt") as shard:
        q_proj = shard.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert torch.equal(q_proj, state[f"{L0}self_attention.query_key_value.weight"][:64])  # bf16 in, bf16 out
    glm = json.loads((out / "config.json").read_text())
    assert glm["model_type"] == "glm" and "auto_map" not in glm and glm["dtype"] == "bfloat16"
    assert glm["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    assert (glm["num_key_value_heads"], glm["head_dim"], glm["intermediate_size"]) == (2, 16, 96)


@pytest.mark.parametrize(("files", "config", "expected"), [
    ({"tokenizer_config.json": '{"tokenizer_class": "ChatGLMTokenizer"}'}, {}, "chatglm2"),
    ({"tokenization_chatglm.py": 'role_special_tokens = ["<|system|>", "<|user|>", "<|assistant|>"]'}, {}, "chatglm3"),
    ({"tokenizer_config.json": '{"tokenizer_class": "ChatGLM4Tokenizer"}'}, {}, "glm4"),
    ({}, {"padded_vocab_size": 151552}, "glm4"),
])
def test_family_from_config_and_tokenizer_files(tmp_path, files, config, expected):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, **config}))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert detect_family(tmp_path) == expected
    assert detect_family(tmp_path, "chatglm2") == "chatglm2"  # --family wins


# --- 2. P-tuning checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["flag", "inside_base"])
def test_ptuning_checkpoint_converts_onto_the_converted_base(tmp_path, capsys, where):
    """THUDM's prefix layout (layers * 2 * groups * kv_channels per row) meets the split q/k/v: same logits."""
    config = {**TINY_CONFIG, "padded_vocab_size": 8000}  # the embedded tokenizer's vocabulary, for sft.infer
    state, prefix = thudm_state(config), thudm_prefix(config)
    extra = []
    if where == "flag":
        (tmp_path / "pt").mkdir()
        torch.save(prefix, tmp_path / "pt" / "pytorch_model.bin")  # what ChatGLM2's ptuning/main.py saves
        extra = ["--ptuning_checkpoint", str(tmp_path / "pt")]
    write_thudm_checkpoint(tmp_path / "thudm", state=state if where == "flag" else {**state, **prefix},
                           padded_vocab_size=8000)
    out = tmp_path / "out"
    assert convert(tmp_path / "thudm", out, *extra) == 0
    AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR)).save_pretrained(str(out))  # --skip_tokenizer: bring one

    model, _, info = load_checkpoint(out / "ptuning")
    assert (info.method, info.mask, info.template, info.ptuning["pre_seq_len"]) == ("ptuning", "causal", "chatglm3", 3)
    ids = token_ids(8000)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    rows = prefix[PREFIX + "embedding.weight"]
    assert max_diff(logits, thudm_logits(state, config, "chatglm3", ids, prefix=rows)) < TOL
    assert max_diff(logits, thudm_logits(state, config, "chatglm3", ids)) > 1e-3  # guard: the prefix matters

    if where == "flag":  # and it answers through the real entry point
        capsys.readouterr()
        assert infer_main(["--checkpoint", str(out / "ptuning"), "--prompt", PROMPT, *SHORT_ANSWER]) == 0
        assert capsys.readouterr().out.strip()


# --- 3. Refusals: one line, exit status 2, nothing written ----------------------------------------------


class NotATensor:  # a pickled object: torch.load(weights_only=True) must refuse it
    pass


def _edited_state(edit) -> dict:
    state = thudm_state(TINY_CONFIG)
    edit(state)
    return state


def _quantized(state: dict) -> None:
    key = "transformer.encoder.layers.0.self_attention.query_key_value.weight"
    state[key] = state[key].to(torch.int8)
    state[key + "_scale"] = torch.ones(state[key].shape[0], dtype=torch.float16)


def _ptuning_only(source) -> None:
    write_thudm_checkpoint(source)
    for path in source.glob("pytorch_model*"):
        path.unlink()
    torch.save(thudm_prefix(TINY_CONFIG), source / "pytorch_model.bin")


def _pickled_object(source) -> None:
    write_thudm_checkpoint(source, shards=1)
    torch.save({"transformer.output_layer.weight": NotATensor()}, source / "pytorch_model.bin")


def _wide_prefix(source) -> list[str]:
    write_thudm_checkpoint(source)
    pt = source.parent / "pt"
    pt.mkdir()
    torch.save(thudm_prefix({**TINY_CONFIG, "num_layers": 4}), pt / "pytorch_model.bin")
    return ["--ptuning_checkpoint", str(pt)]


def _two_prefixes(source) -> list[str]:
    flags = _wide_prefix(source)  # a --ptuning_checkpoint, and now a prefix inside the base as well
    write_thudm_checkpoint(source, state={**thudm_state(TINY_CONFIG), **thudm_prefix(TINY_CONFIG)})
    return flags


def _no_tokenizer_files(source) -> None:
    write_thudm_checkpoint(source)
    (source / "tokenizer_config.json").unlink()


def _output_not_empty(source) -> None:
    write_thudm_checkpoint(source)
    (source.parent / "out").mkdir()
    (source.parent / "out" / "keep.txt").write_text("mine")


def _bad_family(source) -> list[str]:
    write_thudm_checkpoint(source)
    return ["--family", "chatglm4"]


def _config_only(source, config: dict) -> None:
    (source / "config.json").write_text(json.dumps(config))


REFUSALS = {  # name: (set-up writing into the source directory, returning a list of extra flags if any; message)
    "quantization_bit": (lambda d: write_thudm_checkpoint(d, quantization_bit=4),
                         "found a quantized one (quantization_bit 4)"),
    "int8_weights": (lambda d: write_thudm_checkpoint(d, state=_edited_state(_quantized)),
                     f"found a quantized checkpoint ({L0}self_attention.query_key_value.weight: int8)"),
    "chatglm_6b_v1": (lambda d: _config_only(d, {"model_type": "chatglm", "num_layers": 28, "hidden_size": 4096,
                                                 "inner_hidden_size": 16384, "position_encoding_2d": True}),
                      "found ChatGLM-6B v1"),
    "not_thudm": (lambda d: _config_only(d, {"model_type": "llama", "num_hidden_layers": 2}),
                  '(model_type "chatglm"), found model_type "llama"'),
    "transformers_glm": (lambda d: _config_only(d, {"model_type": "glm", "num_hidden_layers": 2}),
                         "found a transformers model directory (model_type glm): nothing to convert"),
    "no_config": (lambda d: None, "expected a THUDM checkpoint directory with config.json, found none"),
    "glm4v": (lambda d: write_thudm_checkpoint(d, vision_config={"hidden_size": 32}), "found GLM-4V (vision_config)"),
    "post_layernorm_residual": (lambda d: write_thudm_checkpoint(d, apply_residual_connection_post_layernorm=True),
                                "expected apply_residual_connection_post_layernorm false"),
    "missing_size_field": (lambda d: write_thudm_checkpoint(d, drop=("kv_channels",), state=thudm_state(TINY_CONFIG)),
                           "found no kv_channels"),
    "bad_family": (_bad_family, "--family: expected auto or one of chatglm2, chatglm3, glm4, found 'chatglm4'"),
    "unmapped_key": (lambda d: write_thudm_checkpoint(d, state=_edited_state(
        lambda s: s.update({L0 + "self_attention.core_attention.scale": torch.ones(1)}))),
        f"found unmapped key {L0}self_attention.core_attention.scale"),
    "layer_beyond_config": (lambda d: write_thudm_checkpoint(d, num_layers=1, state=thudm_state(TINY_CONFIG)),
                            "weight names for 1 layers, found unmapped key transformer.encoder.layers.1."),
    "missing_key": (lambda d: write_thudm_checkpoint(d, state=_edited_state(
        lambda s: s.pop("transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"))),
        "expected weight transformer.encoder.layers.1.mlp.dense_4h_to_h.weight (from config.json), found no such key"),
    "wrong_shape": (lambda d: write_thudm_checkpoint(d, ffn_hidden_size=80, state=thudm_state(TINY_CONFIG)),
                    f"{L0}mlp.dense_h_to_4h.weight: expected shape (160, 64) (from config.json), found (192, 64)"),
    "inv_freq_base": (lambda d: write_thudm_checkpoint(d, state=_edited_state(
        lambda s: s.update({INV_FREQ: thudm_inv_freq(16, base=500000.0)}))),
        f"{INV_FREQ}: expected 4 base-10000 frequencies for rotary on 8 of 16 head dims"),
    "ptuning_only": (_ptuning_only, "found only transformer.prefix_encoder.* in"),
    "pickled_object": (_pickled_object, "pytorch_model.bin: expected a tensors-only weights file, found: "),
    "unknown_family": (_no_tokenizer_files, "to tell chatglm2 from chatglm3, found none: pass --family"),
    "wide_prefix": (_wide_prefix, "expected transformer.prefix_encoder.embedding.weight of shape (pre_seq_len, 128)"),
    "two_prefixes": (_two_prefixes, "--ptuning_checkpoint: expected one prefix, found "),
    "output_not_empty": (_output_not_empty, "--output_dir: expected a new or empty directory"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_is_one_line_with_status_2_and_writes_nothing(tmp_path, capsys, case):
    set_up, message = REFUSALS[case]
    source, out = tmp_path / "thudm", tmp_path / "out"
    source.mkdir()
    extra = set_up(source)
    assert main(["--source", str(source), "--output_dir", str(out), "--skip_tokenizer",
                 *(extra if isinstance(extra, list) else [])]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in stderr, errors
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], ["keep.txt"])


# --- 4. The whole command, tokenizer included -----------------------------------------------------------


def train_sentencepiece(vocab_size: int = 2000) -> bytes:
    """A tiny SentencePiece model in THUDM's ChatGLM2/3 position (ids 0-2: <unk> <s> </s>)."""
    import sentencepiece

    lines = (DEFAULT_MODEL_DIR / "heldout.txt").read_text(encoding="utf-8").splitlines()
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                             model_type="bpe", byte_fallback=True, minloglevel=2)
    return model.getvalue()


@pytest.mark.skipif(importlib.util.find_spec("sft.conversion.tokenizer") is None,
                    reason="sft.conversion.tokenizer (tokenizer conversion) is not in this tree yet")
def test_whole_command_with_tokenizer_then_infer(tmp_path, capsys):
    source, out = tmp_path / "thudm", tmp_path / "out"
    write_thudm_checkpoint(source, family="chatglm2", padded_vocab_size=2048)
    (source / "tokenizer.model").write_bytes(train_sentencepiece())
    assert main(["--source", str(source), "--output_dir", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.convert_tokens_to_ids("</s>") == 2
    capsys.readouterr()
    assert infer_main(["--model_name_or_path", str(out), "--prompt", PROMPT, *SHORT_ANSWER]) == 0
    assert capsys.readouterr().out.strip()
    # A wrong --family shows in the tokenizer: ChatGLM3's <|user|> is not at 64795 in this vocabulary.
    assert main(["--source", str(source), "--output_dir", str(tmp_path / "out3"), "--family", "chatglm3"]) == 2
    assert "expected chatglm3 stop token <|user|> at id 64795, found id" in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()  # refused before the weights, and no half-written directory left
