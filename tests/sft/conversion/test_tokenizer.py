"""sft.conversion.tokenizer: converted THUDM tokenizers give THUDM's ids, checked against independent references.

References: the ``sentencepiece`` library itself on tiny models trained here (ChatGLM2/3 call
``sp.encode``), a tiktoken-style encoder written in ``tests/fake_tokenizer.py`` (GLM-4), and the
special-token ids and prompt layouts of THUDM's ``tokenization_chatglm.py`` typed out as numbers.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sft.conversion.thudm import ConversionError
from sft.conversion.tokenizer import convert_tokenizer
from tests.fake_tokenizer import corpus_lines, save_thudm_tokenizer, sentencepiece_model
from tests.fake_tokenizer import tiktoken_encode, tiktoken_ranks

# Each model: (dummy prefix, SentencePiece model type, normalisation rule, user-defined pieces). ChatGLM's is first.
SP_MODELS = {
    "bpe": (True, "bpe", "identity"),
    "bpe-no-prefix": (False, "bpe", "identity"),
    "unigram": (True, "unigram", "identity"),
    "bpe-nfkc": (True, "bpe", "nmt_nfkc"),
    "bpe-user-defined": (True, "bpe", "identity", ("\n", "<br>")),
    "unigram-user-defined": (True, "unigram", "identity", ("\n", "<br>")),
}
GLM_TOKENS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(family, model)``: the directory of a converted tokenizer, built once per module."""
    made = {}

    def build(family: str, model: str = "bpe") -> Path:
        if (family, model) not in made:
            directory = tmp_path_factory.mktemp(f"{family}-{model}")
            made[family, model] = save_thudm_tokenizer(directory, family, *SP_MODELS[model])
        return made[family, model]

    return build


def load(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def processor(model: str = "bpe"):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=sentencepiece_model(*SP_MODELS[model]))


def sample_texts(count: int = 300) -> list[str]:
    """Edge cases, then random strings over the corpus characters, whitespace, ASCII marks and rare characters."""
    fixed = [
        "", " ", "  ", "\n", "\n\n", "\t", " a", "a ", "  two  spaces  ", "\n 你好", "你好", "line\nbreak\r\nend",
        "[Round 1]\n\n问：你好\n\n答：", "12345678", "3.14", "Hello World!", "emoji 😀🎉 and é ñ", "全角　空格",
        "①②③ ｱＡ", "a<br>b\n<br> c", "▁", "▁▁x", "it's I'M", "tab\tand\u00a0nbsp", "龘", "people Aesop sopwith",
    ]
    rng = random.Random(1)
    alphabet = "".join(sorted(set("".join(corpus_lines()))))
    alphabet += " \n\t  \r，。,.!?'\"<>|[]{}()@#$%^&*~`=+/\\_-😀🎉é龘①ｱ\u3000\u00a0"
    lines = corpus_lines(60, seed=7)
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(count - len(lines))]
    return fixed + lines + randoms


# --- ChatGLM2/3: SentencePiece -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(SP_MODELS))
def test_text_ids_and_decoding_match_sentencepiece(converted, model):
    tokenizer, sp = load(converted("chatglm3", model)), processor(model)
    texts = sample_texts()
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text), (text, [sp.id_to_piece(i) for i in sp.encode(text)])
        assert tokenizer.decode(ids) == sp.decode(ids), text
    # the samples reach byte fallback; the model adds a dummy prefix or not, as trained
    assert any(sp.is_byte(i) for text in texts for i in sp.encode(text))
    assert sp.id_to_piece(sp.encode("你好")[0]).startswith("▁") == SP_MODELS[model][0]


@pytest.mark.parametrize("family, extra", [("chatglm2", []), ("chatglm3", ROLES)])
def test_glm_tokens_follow_the_sentencepiece_pieces(converted, family, extra):
    tokenizer, sp = load(converted(family)), processor()
    n = sp.get_piece_size()  # 64789 in ChatGLM2/3: [MASK] 64789, [gMASK] 64790, sop 64792, <|user|> 64795
    assert tokenizer.convert_tokens_to_ids(GLM_TOKENS + extra) == list(range(n, n + 5 + len(extra)))
    assert len(tokenizer) == n + 5 + len(extra)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (0, 0)
    assert tokenizer.bos_token is None
    gmask, sop = n + 1, n + 3
    assert tokenizer("你好")["input_ids"] == [gmask, sop] + sp.encode("你好")  # get_prefix_tokens
    assert tokenizer("ab", "cd")["input_ids"] == [gmask, sop] + sp.encode("ab") + sp.encode("cd") + [2]
    assert tokenizer.decode([gmask, sop, *sp.encode("你好")], skip_special_tokens=True) == "你好"


def test_special_tokens_in_text_split_it_and_each_piece_gets_its_own_prefix(converted):
    tokenizer, sp = load(converted("chatglm3")), processor()
    n = sp.get_piece_size()
    user, assistant = n + 6, n + 7
    text = "<|user|>\n你好<|assistant|> fine"
    # ChatGLM3 with encode_special_tokens=True: sp.encode on each piece between special tokens
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == (
        [user] + sp.encode("\n你好") + [assistant] + sp.encode(" fine")
    )
    # THUDM's default (and ChatGLM2's): no control tokens from text at all
    assert tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == sp.encode(text)
    # sop/eop are English words too: tokens only where they stand alone
    assert tokenizer("people Aesop", add_special_tokens=False)["input_ids"] == sp.encode("people Aesop")
    assert tokenizer("[gMASK]sop", add_special_tokens=False)["input_ids"] == [n + 1, n + 3]


@pytest.mark.parametrize("model", ["bpe", "bpe-no-prefix"])
def test_chatglm3_chat_template_is_build_chat_input(converted, model):
    tokenizer, sp = load(converted("chatglm3", model)), processor(model)
    n = sp.get_piece_size()
    role = {"system": n + 5, "user": n + 6, "assistant": n + 7}
    messages = [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "今天天气 很好"},
        {"role": "assistant", "content": "是的，we go out"},
        {"role": "user", "content": "衣服 颜色?"},
    ]
    # build_chat_input: [gMASK] sop, per message <|role|> + sp.encode("\n") + sp.encode(content), <|assistant|>
    expected = [n + 1, n + 3]
    for message in messages:
        expected += [role[message["role"]]] + sp.encode("\n") + sp.encode(message["content"])
    expected += [role["assistant"]]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids == expected
    if model == "bpe":
        assert sp.encode("\n") == [sp.piece_to_id("▁"), sp.piece_to_id("<0x0A>")]  # ChatGLM3: [30910, 13]


def test_chatglm2_chat_template_is_build_prompt(converted):
    tokenizer, sp = load(converted("chatglm2")), processor()
    n = sp.get_piece_size()
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好 how are you"},
        {"role": "user", "content": "设计 简约"},
    ]
    prompt = "[Round 1]\n\n问：你好\n\n答：你好 how are you\n\n[Round 2]\n\n问：设计 简约\n\n答："
    expected = [n + 1, n + 3] + sp.encode(prompt)  # ptuning/main.py: tokenizer.encode(build_prompt(query, history))
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == expected
    assert tokenizer(prompt)["input_ids"] == expected


# --- GLM-4: tiktoken ------------------------------------------------------------------------------------------


def test_glm4_text_ids_match_reference_tiktoken_encoder(converted):
    tokenizer, ranks = load(converted("glm4")), tiktoken_ranks()
    for text in sample_texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == tiktoken_encode(text, ranks), text
        assert tokenizer.decode(ids) == text
    # a token no merge sequence reaches is still taken whole, as tiktoken looks pieces up first
    assert tokenizer(" people", add_special_tokens=False)["input_ids"] == [ranks[b" people"]]


def test_glm4_special_tokens_and_chat_template(converted):
    tokenizer, ranks = load(converted("glm4")), tiktoken_ranks()
    n = len(ranks)  # 151329 in GLM-4
    names = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", *ROLES,
             "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"]  # fmt: skip
    assert tokenizer.convert_tokens_to_ids(names) == list(range(n, n + 14))
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (n, n)
    assert tokenizer("hi")["input_ids"] == [n + 2, n + 4] + tiktoken_encode("hi", ranks)
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": " the day\nis 2024"}]
    # GLM-4's chat template, tokenized: [gMASK] <sop>, <|role|> then "\n" + content as one string
    expected = [n + 2, n + 4]
    for message, role in zip(messages, (n + 6, n + 7)):
        expected += [role] + tiktoken_encode("\n" + message["content"], ranks)
    expected += [n + 8]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == expected


# --- refusals -----------------------------------------------------------------------------------------------------


def test_missing_or_broken_tokenizer_model_is_one_line(tmp_path):
    with pytest.raises(ConversionError, match="expected THUDM's tokenizer.model, found none"):
        convert_tokenizer(tmp_path, tmp_path / "out", "chatglm3")
    (tmp_path / "tokenizer.model").write_text("aGk= 0\nnot-base64 x\n")
    with pytest.raises(ConversionError, match=r"tokenizer.model:2: expected 'base64-token rank'"):
        convert_tokenizer(tmp_path, tmp_path / "out", "glm4")
    (tmp_path / "tokenizer.model").write_text("aGk= 0\n")
    with pytest.raises(ConversionError, match="expected a token for each of the 256 bytes"):
        convert_tokenizer(tmp_path, tmp_path / "out", "glm4")
    with pytest.raises(ConversionError, match="expected a SentencePiece model"):
        convert_tokenizer(tmp_path, tmp_path / "out", "chatglm2")
    with pytest.raises(ConversionError, match="tokenizer family: expected one of chatglm2, chatglm3, glm4"):
        convert_tokenizer(tmp_path, tmp_path / "out", "chatglm")
    assert not (tmp_path / "out").exists()


def test_text_piece_spelled_like_a_special_token_is_refused(tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(sentencepiece_model())
    proto.pieces[300].piece = "eop"  # THUDM's tokenizer would give the text piece 300 and the token eop n + 4
    (tmp_path / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(ConversionError, match="expected no text piece spelled like a chatglm2 special token, found "
                                              "eop \\(piece 300\\)"):
        convert_tokenizer(tmp_path, tmp_path / "out", "chatglm2")
