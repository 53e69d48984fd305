"""The shipped default model (sft/embedded/glm-zh-tiny) and its tokenizer.

The tests load the real shipped files offline. The tool that built them, tools.pretrain, is
tested in tests/tools/test_pretrain.py; its file names and perplexity are what the card records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from sft.embedded import DEFAULT_MODEL_DIR
from tools.pretrain import CARD_FILE, HELDOUT_FILE, HELDOUT_PPL_FILE, heldout_perplexity
from tests.conftest import REPO
from tests.tools.test_records import parse_header

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
    return AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, use_kernels=False).eval()


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


def test_greedy_texts_from_new_headers_are_chinese_and_name_most_values(model, tokenizer):
    """What the base was pretrained to do (tools/records.py), on 24 records it has not seen (another seed,
    70% of the values random dictionary words): a Chinese text naming at least 60% of the values in all
    (the shipped base: 114 of 122, 93%)."""
    from tools.records import record_corpus

    named = total = 0
    for record in record_corpus(24, seed=424242, open_share=0.7):
        header = record.split("\n", 1)[0]
        input_ids = torch.tensor([tokenizer.encode(header + "\n", add_special_tokens=False)])
        with torch.no_grad():
            out = model.generate(input_ids, max_new_tokens=60, do_sample=False)
        text = tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)
        chars = [c for c in text if not c.isspace()]
        chinese = [c for c in chars if CJK.match(c) or c in CJK_PUNCTUATION]
        assert len(chars) >= 10 and len(chinese) >= 0.9 * len(chars), (header, text)
        values = [value for key, value in parse_header(header) if key != "类别"]
        named += sum(value in text for value in values)
        total += len(values)
    assert named >= 0.6 * total, f"{named} of {total} values named"


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


def test_words_never_yield_control_tokens_and_text_matches_sentencepiece(tokenizer):
    """``sop`` and ``eop`` are control tokens: inside a word (``people``) they are letters. Text without a
    written-out control token tokenizes as the sentencepiece library does with the shipped tokenizer.model."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(DEFAULT_MODEL_DIR / "tokenizer.model"))
    controls = set(tokenizer.convert_tokens_to_ids(GLM_SPECIALS))
    for text in ["people", "Aesop's fables", "jeopardy", "isopropyl", "sopping wet", "<|user", "[gMASK"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert not controls & set(ids), (text, tokenizer.convert_ids_to_tokens(ids))
        assert ids == sp.encode(text) and tokenizer.decode(ids) == text
    lines = [line for path in bundled_text_files() for line in path.read_text("utf-8").splitlines(keepends=True)]
    lines = [line for line in lines + TRICKY if not any(token in line for token in GLM_SPECIALS)]
    assert len(lines) > 1000
    assert [tokenizer.encode(line, add_special_tokens=False) for line in lines] == [sp.encode(line) for line in lines]


def test_special_tokens_are_atomic(tokenizer):
    ids = tokenizer.encode("[gMASK]sop<|user|>\n你好", add_special_tokens=False)
    assert ids[:4] == tokenizer.convert_tokens_to_ids(["[gMASK]", "sop", "<|user|>", "\n"])
    assert [tokenizer.convert_tokens_to_ids(t) for t in ["<unk>", "<s>", "</s>", "<pad>"]] == [0, 1, 2, 3]
    for token in GLM_SPECIALS:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]


def test_add_special_tokens_adds_nothing(tokenizer):
    text = "[gMASK]sop<|user|>\n你好"
    assert tokenizer.encode(text, add_special_tokens=True) == tokenizer.encode(text, add_special_tokens=False)
