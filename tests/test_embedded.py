"""The shipped default model (sft/embedded/glm-zh-tiny), its tokenizer, and sft.pretrain.

The model tests load the real shipped files offline. The pretraining tests use a tiny random
GLM (2 layers, 32 wide) and a corpus file written here, so they need no corpus package.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GlmConfig, GlmForCausalLM

from sft.embedded import DEFAULT_MODEL_DIR
from sft.pretrain import (
    CARD_FILE,
    HELDOUT_FILE,
    HELDOUT_PPL_FILE,
    IGNORE_INDEX,
    PretrainArguments,
    heldout_perplexity,
    model_inputs,
    sample_split_points,
    validate_args,
)

REPO = Path(__file__).resolve().parents[1]
GLM_SPECIALS = ["[gMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
CJK = re.compile(r"[\u4e00-\u9fff]")
CJK_PUNCTUATION = set("，。、；：？！“”‘’（）《》【】—…·")


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tokenizer(offline):
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def model(offline):
    return AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR).eval()


# --------------------------------------------------------------------------- the shipped model


def test_config_is_chatglm_style(offline):
    config = AutoConfig.from_pretrained(DEFAULT_MODEL_DIR)
    assert config.model_type == "glm"
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.attention_bias is True
    assert config.rms_norm_eps == 1e-5
    assert config.tie_word_embeddings is True
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (256, 4, 64)


def test_size_and_special_ids(model, tokenizer):
    assert sum(p.numel() for p in model.parameters()) <= 20_000_000
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= 40 * 2**20
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<pad>")
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    stops = tokenizer.convert_tokens_to_ids(["</s>", "<|user|>", "<|observation|>"])
    assert model.generation_config.eos_token_id == stops
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_greedy_generation_is_mostly_chinese(model, tokenizer):
    input_ids = torch.tensor([tokenizer.encode("这款连衣裙采用", add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(input_ids, max_new_tokens=30, do_sample=False)
    text = tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)
    chars = [c for c in text if not c.isspace()]
    chinese = [c for c in chars if CJK.match(c) or c in CJK_PUNCTUATION]
    assert len(chars) >= 10, text
    assert len(chinese) >= 0.8 * len(chars), text


def card_perplexity() -> float:
    match = re.search(r"^heldout_perplexity: ([0-9.]+)$", (DEFAULT_MODEL_DIR / CARD_FILE).read_text("utf-8"), re.M)
    assert match, f"{CARD_FILE} has no 'heldout_perplexity: X' line"
    return float(match.group(1))


def test_heldout_perplexity_matches_card(model, tokenizer):
    recorded = json.loads((DEFAULT_MODEL_DIR / HELDOUT_PPL_FILE).read_text())
    assert recorded["heldout_txt_perplexity"] == card_perplexity()
    text = (DEFAULT_MODEL_DIR / HELDOUT_FILE).read_text("utf-8")
    ppl = heldout_perplexity(model, tokenizer, text, recorded["seq_len"])
    assert ppl < card_perplexity() * 1.05


def test_heldout_sample_is_small_and_not_from_the_sample_data():
    text = (DEFAULT_MODEL_DIR / HELDOUT_FILE).read_text("utf-8")
    assert len(text.encode("utf-8")) <= 30_000
    summaries = {
        json.loads(line)["summary"]
        for name in ("train.json", "dev.json")
        for line in (REPO / "data" / "adgen" / name).read_text("utf-8").splitlines()
        if line.strip()
    }
    assert not summaries & set(text.splitlines())


# --------------------------------------------------------------------------- tokenizer


def bundled_text_files() -> list[Path]:
    files = [*REPO.glob("data/**/*.json"), *DEFAULT_MODEL_DIR.glob("**/*.md"), DEFAULT_MODEL_DIR / HELDOUT_FILE]
    return sorted(p for p in files + [REPO / "README.md"] if p.is_file())


@pytest.mark.parametrize("path", bundled_text_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_round_trip_bundled_files(tokenizer, path):
    text = path.read_text("utf-8")
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


TRICKY = [
    " leading space",
    "   three leading, two  inside,  trailing  ",
    "\n\nnewlines\n\n\n",
    "\ttab\tand\r\nCRLF",
    "emoji 😀👍🏽🇨🇳 end",
    "生僻字𠀀𪚥龘靐",
    "价格￥199.00，满减50%【限时】“好物”——推荐！",
    "English 混排 123456 digits",
    "[gMASK]sop<|user|>\n 你好 <|assistant|>",
    "",
    " ",
]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_special_tokens_are_atomic(tokenizer):
    ids = tokenizer.encode("[gMASK]sop<|user|>\n你好", add_special_tokens=False)
    assert ids[:4] == tokenizer.convert_tokens_to_ids(["[gMASK]", "sop", "<|user|>", "\n"])
    assert [tokenizer.convert_tokens_to_ids(t) for t in ["<unk>", "<s>", "</s>", "<pad>"]] == [0, 1, 2, 3]
    for token in GLM_SPECIALS:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]


def test_add_special_tokens_adds_nothing(tokenizer):
    text = "[gMASK]sop你好"
    assert tokenizer.encode(text, add_special_tokens=True) == tokenizer.encode(text, add_special_tokens=False)


# --------------------------------------------------------------------------- sft.pretrain


def test_model_inputs_mask_labels_before_split():
    input_ids = torch.arange(10, 16)[None].repeat(2, 1)  # (2, 6)
    inputs = model_inputs(input_ids, torch.tensor([0, 3]))
    assert inputs["labels"].tolist() == [[10, 11, 12, 13, 14, 15], [IGNORE_INDEX] * 3 + [13, 14, 15]]
    assert inputs["position_ids"].tolist() == [list(range(6))] * 2
    assert inputs["attention_mask"].shape == (2, 1, 6, 6)


def test_split_points_follow_objective():
    rng = random.Random(0)
    causal = sample_split_points(50, PretrainArguments(objective="causal", seq_len=64), rng)
    prefix = sample_split_points(50, PretrainArguments(objective="prefix_lm", seq_len=64, max_prefix_fraction=0.5), rng)
    mixed = sample_split_points(200, PretrainArguments(objective="mix", seq_len=64), rng)
    assert causal.tolist() == [0] * 50
    assert prefix.max() <= 32 and (prefix > 0).sum() > 40
    assert 50 < (mixed == 0).sum() < 150


def test_validate_args_names_every_bad_flag():
    with pytest.raises(ValueError) as err:
        validate_args(PretrainArguments(objective="mlm", ad_copy_weight=2.0))
    assert "--objective" in str(err.value) and "--ad_copy_weight" in str(err.value)


def test_prefix_lm_prefix_is_bidirectional_and_blind_to_the_rest():
    torch.manual_seed(0)
    config = GlmConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    model = GlmForCausalLM(config).eval()
    input_ids = torch.randint(2, 64, (1, 10))  # (1, T)
    split = torch.tensor([5])

    def hidden(ids: torch.Tensor) -> torch.Tensor:
        inputs = model_inputs(ids, split)
        inputs.pop("labels")
        with torch.no_grad():
            return model.model(**inputs).last_hidden_state[0]  # (T, H)

    base = hidden(input_ids)
    later_in_prefix = input_ids.clone()
    later_in_prefix[0, 3] = 2 + (input_ids[0, 3] - 1) % 62
    assert not torch.allclose(hidden(later_in_prefix)[1], base[1])
    after_split = input_ids.clone()
    after_split[0, 7] = 2 + (input_ids[0, 7] - 1) % 62
    changed = hidden(after_split)
    assert torch.allclose(changed[:7], base[:7])


def test_pretrain_smoke_run(tmp_path):
    lines = (REPO / "data" / "adgen" / "train.json").read_text("utf-8").splitlines()[:60]
    summaries = [json.loads(line)["summary"] for line in lines]
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n\n".join(summaries), encoding="utf-8")
    out = tmp_path / "model"
    tiny = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--num_key_value_heads", "2",
            "--head_dim", "8", "--intermediate_size", "64", "--max_position_embeddings", "128"]
    cmd = [sys.executable, "-m", "sft.pretrain", "--corpus_file", str(corpus_file), "--output_dir", str(out),
           "--tokenizer_dir", str(DEFAULT_MODEL_DIR), "--max_steps", "3", "--batch_size", "2", "--seq_len", "32",
           "--warmup_steps", "1", "--heldout_fraction", "0.1", "--objective", "mix", *tiny]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", HELDOUT_FILE, CARD_FILE):
        assert (out / name).is_file(), name
    metrics = json.loads((out / HELDOUT_PPL_FILE).read_text())
    assert f"heldout_perplexity: {metrics['heldout_txt_perplexity']}" in (out / CARD_FILE).read_text("utf-8")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.vocab_size == 8000
