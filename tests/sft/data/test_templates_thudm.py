"""Templates give THUDM's exact ids for chatglm2, chatglm3 and glm4, and labels start exactly at the answer.

Expected ids are built by hand from THUDM's rules (``sp.encode`` of the strings THUDM encodes, or
the reference tiktoken encoder, plus special-token ids as numbers), with tokenizers converted from
tiny THUDM-style models: SentencePiece with and without a dummy prefix (ChatGLM2/3 have one),
tiktoken (GLM-4). ``n`` is the size of the text vocabulary (64789 in ChatGLM2/3, 151329 in GLM-4).

* ChatGLM2 ``ptuning/main.py``: ``[gMASK] sop`` + ``sp.encode(build_prompt(query, history))``,
  then ``sp.encode(answer)``, then eos; labels -100 over the prompt.
* ChatGLM3 ``build_single_message``: ``<|role|>`` + ``sp.encode("\\n")`` + ``sp.encode(content)``;
  ``build_chat_input`` adds ``<|assistant|>``; the finetune demo appends eos after the answer.
  (That demo also supervises the ``"\\n"`` after ``<|assistant|>`` and the role token after an
  answer; here labels are -100 on exactly the prompt.)
* GLM-4's chat template (its finetune demo, per message): ``<|role|>`` + tiktoken of ``"\\n" +
  content``; the final answer is encoded on its own after ``<|assistant|>`` + ``"\\n"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft.data import IGNORE_INDEX, DataArguments, Example, encode_example, encode_prompt, load_examples
from sft.data.templates import Segment, Turn, get_template
from sft.errors import UserError
from tests.fake_tokenizer import EOS, GMASK, SOP, FakeTokenizer, chars, save_thudm_tokenizer, sentencepiece_model
from tests.fake_tokenizer import tiktoken_encode, tiktoken_ranks

X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """``tokenizer(family, dummy_prefix=True)``: a converted tokenizer, built once per module."""
    from transformers import AutoTokenizer

    made = {}

    def build(family: str, dummy_prefix: bool = True):
        if (family, dummy_prefix) not in made:
            directory = save_thudm_tokenizer(tmp_path_factory.mktemp(family), family, dummy_prefix)
            made[family, dummy_prefix] = AutoTokenizer.from_pretrained(str(directory))
        return made[family, dummy_prefix]

    return build


def sp_encoder(dummy_prefix: bool):
    """``(sp.encode, n)`` of the SentencePiece model the ChatGLM tokenizers were converted from."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model(dummy_prefix))
    return sp.encode, sp.get_piece_size()


def encode_rows(tmp_path: Path, tokenizer, rows: list, source: int = 1000, **flags) -> list[dict]:
    path = tmp_path / "rows.json"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    examples = load_examples(path, DataArguments(max_source_length=source, max_target_length=1000, **flags))
    return [encode_example(example, tokenizer, source, 1000) for example in examples]


def assert_prompt_then_answer(row: dict, prompt: list[int], answer: list[int], eos: int) -> None:
    assert row["input_ids"] == prompt + answer + [eos]
    assert row["labels"] == [X] * len(prompt) + answer + [eos]


QUERY, ANSWER = "类型#裙*颜色#白色 the day", "这件 裙子 很好，we like it"


# --- chatglm2 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_chatglm2_is_ptuning_main(tmp_path, tokenizer, dummy_prefix):
    encode, n = sp_encoder(dummy_prefix)
    [row] = encode_rows(tmp_path, tokenizer("chatglm2", dummy_prefix), [{"content": QUERY, "summary": ANSWER}],
                        template="chatglm2")
    prompt = [n + 1, n + 3] + encode(f"[Round 1]\n\n问：{QUERY}\n\n答：")
    assert_prompt_then_answer(row, prompt, encode(ANSWER), 2)
    # guard: encoding the answer cue on its own gives another dummy prefix (ChatGLM2-6B: 37 ids, not 36)
    apart = encode(f"[Round 1]\n\n问：{QUERY}") + encode("\n\n答：")
    assert (len(apart) == len(prompt) - 2 + 1) == dummy_prefix


def test_chatglm2_history_is_one_string(tmp_path, tokenizer):
    encode, n = sp_encoder(True)
    rows = [{"prompt": "设计 简约", "response": ANSWER, "history": [["你好", "你好 how are you"]]}]
    [row] = encode_rows(tmp_path, tokenizer("chatglm2"), rows, format="chat", template="chatglm2")
    text = "[Round 1]\n\n问：你好\n\n答：你好 how are you\n\n[Round 2]\n\n问：设计 简约\n\n答："
    assert_prompt_then_answer(row, [n + 1, n + 3] + encode(text), encode(ANSWER), 2)


def test_chatglm2_truncation_keeps_the_cue_of_the_joint_prompt(tmp_path, tokenizer):
    encode, n = sp_encoder(True)
    [row] = encode_rows(tmp_path, tokenizer("chatglm2"), [{"content": QUERY, "summary": ANSWER}], source=9,
                        template="chatglm2")
    body = encode(f"[Round 1]\n\n问：{QUERY}\n\n答：")
    assert len(body) > 7 and len(encode("\n\n答：")) <= 7
    assert_prompt_then_answer(row, [n + 1, n + 3] + body[-7:], encode(ANSWER), 2)


def test_token_across_prompt_text_and_cue_is_kept_with_the_cue():
    tokenizer = FakeTokenizer(merges=["x\n"])
    merged = tokenizer.convert_tokens_to_ids("x\n")
    example = Example(get_template("chatglm2").render([Turn("abx", "z")]))
    assert encode_prompt(example, tokenizer, 1000) == [GMASK, SOP] + chars("[Round 1]\n\n问：ab") + [merged] + chars("\n答：")
    assert encode_example(example, tokenizer, 6, 10)["input_ids"] == [GMASK, SOP, merged] + chars("\n答：z") + [EOS]


# --- chatglm3 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_chatglm3_training_layout_and_inference_prompt(tmp_path, tokenizer, dummy_prefix):
    encode, n = sp_encoder(dummy_prefix)
    gmask, sop, user, assistant = n + 1, n + 3, n + 6, n + 7
    [row] = encode_rows(tmp_path, tokenizer("chatglm3", dummy_prefix), [{"content": QUERY, "summary": ANSWER}])
    build_chat_input = [gmask, sop, user] + encode("\n") + encode(QUERY) + [assistant]
    prompt = build_chat_input + encode("\n")  # the finetune demo's assistant message: <|assistant|> "\n" answer
    assert_prompt_then_answer(row, prompt, encode(ANSWER), 2)
    example = Example(get_template("chatglm3").render([Turn(QUERY, "")]))
    assert encode_prompt(example, tokenizer("chatglm3", dummy_prefix), 1000) == prompt
    # guard: "\n" and the content are encoded apart, each with its own dummy prefix
    assert (encode("\n" + QUERY) != encode("\n") + encode(QUERY)) == dummy_prefix


def test_chatglm3_messages_with_system_and_supervised_history(tmp_path, tokenizer):
    encode, n = sp_encoder(True)
    system, user, assistant = n + 5, n + 6, n + 7
    messages = [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好 how are you"},
        {"role": "user", "content": QUERY},
        {"role": "assistant", "content": ANSWER},
    ]
    [row] = encode_rows(tmp_path, tokenizer("chatglm3"), [{"messages": messages}], format="messages")
    nl = encode("\n")
    first = [n + 1, n + 3, system] + nl + encode("你是助手。") + [user] + nl + encode("你好") + [assistant] + nl
    reply = encode("你好 how are you")
    second = [user] + nl + encode(QUERY) + [assistant] + nl
    assert row["input_ids"] == first + reply + second + encode(ANSWER) + [2]
    assert row["labels"] == [X] * len(first) + reply + [X] * len(second) + encode(ANSWER) + [2]


# --- glm4 -------------------------------------------------------------------------------------------------------


def test_glm4_is_its_chat_template_per_message(tmp_path, tokenizer):
    ranks = tiktoken_ranks()
    n = len(ranks)
    gmask, sop, user, assistant = n + 2, n + 4, n + 7, n + 8
    rows = [{"prompt": QUERY, "response": ANSWER, "history": [["你好", "你好 how are you"]]}]
    [row] = encode_rows(tmp_path, tokenizer("glm4"), rows, format="chat", template="glm4")
    prompt = [gmask, sop]
    prompt += [user] + tiktoken_encode("\n你好", ranks) + [assistant] + tiktoken_encode("\n你好 how are you", ranks)
    prompt += [user] + tiktoken_encode("\n" + QUERY, ranks) + [assistant] + tiktoken_encode("\n", ranks)
    assert_prompt_then_answer(row, prompt, tiktoken_encode(ANSWER, ranks), n)
    example = Example(get_template("glm4").render([Turn(QUERY, "")]))
    ids = tokenizer("glm4").apply_chat_template([{"role": "user", "content": QUERY}], add_generation_prompt=True,
                                                return_dict=False)
    assert encode_prompt(example, tokenizer("glm4"), 1000) == ids + tiktoken_encode("\n", ranks)


# --- rendering and refusals ---------------------------------------------------------------------------------------


def test_segments_say_how_the_family_encodes():
    chatglm2 = get_template("chatglm2").render([Turn("q", "a")])
    assert chatglm2 == (
        Segment("[gMASK]", keep=True, special=True), Segment("sop", keep=True, special=True),
        Segment("[Round 1]\n\n问：q"), Segment("\n\n答：", keep=True, joined=True), Segment("a", supervised=True),
    )  # fmt: skip
    chatglm3 = get_template("chatglm3").render([Turn("q", "a")])
    assert [(s.text, s.special, s.joined) for s in chatglm3] == [
        ("[gMASK]", True, False), ("sop", True, False), ("<|user|>", True, False), ("\n", False, False),
        ("q", False, False), ("<|assistant|>", True, False), ("\n", False, False), ("a", False, False),
    ]  # fmt: skip


def test_template_special_token_missing_from_tokenizer_is_one_line(tokenizer):
    example = Example(get_template("glm4").render([Turn("q", "a")]))
    with pytest.raises(UserError, match="expected the tokenizer to have the template's special token <sop>"):
        encode_example(example, tokenizer("chatglm3"), 100, 100)
