"""sft.data and sft.templates: literal ids and labels per format and truncation rule, collation, CLI errors.

Expected lists are written with the character-level fake tokenizer: a character's id is its
code point (``chars("ab") == [97, 98]``); special tokens have the named ids of
``tests/fake_tokenizer.py``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from sft.data import (
    IGNORE_INDEX,
    DataArguments,
    DataCollator,
    DataError,
    Example,
    build_dataset,
    encode_example,
    encode_prompt,
    load_examples,
)
from sft.embedded import DEFAULT_MODEL_DIR
from sft.data.templates import TEMPLATES, Turn, get_template
from tests.fake_tokenizer import ASSISTANT, EOS, GMASK, PAD, SOP, SOP4, SYSTEM, USER, FakeTokenizer, chars
from tests.fake_tokenizer import save_char_tokenizer
from tests.conftest import REPO, Ran, run_in_process, run_subprocess

X = IGNORE_INDEX
NL = ord("\n")

# stanford_alpaca train.py PROMPT_DICT, typed out independently of sft.templates.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def encode_rows(tmp_path: Path, rows: list, source: int = 1000, target: int = 1000, **flags) -> list[dict]:
    """Encode ``rows`` written as JSON Lines with the fake tokenizer."""
    args = DataArguments(max_source_length=source, max_target_length=target, **flags)
    examples = load_examples(write_jsonl(tmp_path / "rows.json", rows), args)
    return [encode_example(e, FakeTokenizer(), source, target) for e in examples]


def masked(ids: list[int]) -> list[int]:
    return [X] * len(ids)


# --- templates ----------------------------------------------------------------------------------


def test_get_template_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="--template: expected one of chatglm3, glm4, chatglm2, alpaca, plain"):
        get_template("llama")
    assert set(TEMPLATES) == {"chatglm3", "glm4", "chatglm2", "alpaca", "plain"}


def test_alpaca_template_is_stanford_prompt_dict():
    template = get_template("alpaca")
    with_input = Example(template.render([Turn("Add.", "3", input="1 2")]))
    no_input = Example(template.render([Turn("Say hi.", "hi")]))
    assert with_input.prompt == ALPACA_PROMPT_INPUT.format(instruction="Add.", input="1 2")
    assert no_input.prompt == ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi.")
    assert (with_input.answer, no_input.answer) == ("3", "hi")


def test_example_exposes_prompt_and_answer_for_generation():
    example = Example(get_template("chatglm3").render([Turn("q1", "r1"), Turn("q2", "r2")], system="s"))
    assert example.prompt == "[gMASK]sop<|system|>\ns<|user|>\nq1<|assistant|>\nr1<|user|>\nq2<|assistant|>\n"
    assert example.answer == "r2"
    assert encode_prompt(example, FakeTokenizer(), 1000) == FakeTokenizer().encode(example.prompt, False)


# --- formats: literal ids and labels --------------------------------------------------------------


def test_adgen_plain_prompt_answer_eos(tmp_path):
    [row] = encode_rows(tmp_path, [{"content": "ab", "summary": "c"}], template="plain")
    assert row["input_ids"] == [97, 98, 99, EOS]
    assert row["labels"] == [X, X, 99, EOS]


def test_adgen_chatglm3_custom_columns(tmp_path):
    rows = [{"q": "ab", "a": "c", "other": 1}]
    [row] = encode_rows(tmp_path, rows, prompt_column="q", response_column="a")  # default template chatglm3
    prompt = [GMASK, SOP, USER, NL, 97, 98, ASSISTANT, NL]
    assert row["input_ids"] == prompt + [99, EOS]
    assert row["labels"] == masked(prompt) + [99, EOS]


def test_glm4_template_prefix(tmp_path):
    [row] = encode_rows(tmp_path, [{"content": "a", "summary": "b"}], template="glm4")
    assert row["input_ids"] == [GMASK, SOP4, USER, NL, 97, ASSISTANT, NL, 98, EOS]


@pytest.mark.parametrize("input_field", [{"input": "x y"}, {"input": ""}, {}, {"input": None}])
def test_alpaca_format_with_and_without_input(tmp_path, input_field):
    rows = [{"instruction": "Do.", "output": "ok", **input_field}]
    [row] = encode_rows(tmp_path, rows, format="alpaca", template="alpaca")
    if input_field.get("input"):
        prompt = chars(ALPACA_PROMPT_INPUT.format(instruction="Do.", input="x y"))
    else:
        prompt = chars(ALPACA_PROMPT_NO_INPUT.format(instruction="Do."))
    assert row["input_ids"] == prompt + chars("ok") + [EOS]
    assert row["labels"] == masked(prompt) + chars("ok") + [EOS]


def test_alpaca_format_with_chatglm3_template(tmp_path):
    [row] = encode_rows(tmp_path, [{"instruction": "a", "input": "b", "output": "c"}], format="alpaca")
    prompt = [GMASK, SOP, USER, NL, 97, NL, NL, 98, ASSISTANT, NL]
    assert row["input_ids"] == prompt + [99, EOS]
    assert row["labels"] == masked(prompt) + [99, EOS]


def test_chat_format_chatglm2_rounds_history_is_context(tmp_path):
    rows = [{"prompt": "q2", "response": "r2", "history": [["q1", "r1"]]}]
    [row] = encode_rows(tmp_path, rows, format="chat", template="chatglm2")
    prompt = [GMASK, SOP] + chars("[Round 1]\n\n问：q1\n\n答：r1\n\n[Round 2]\n\n问：q2\n\n答：")
    assert row["input_ids"] == prompt + chars("r2") + [EOS]
    assert row["labels"] == masked(prompt) + chars("r2") + [EOS]


@pytest.mark.parametrize("history", [{}, {"history": None}, {"history": []}])
def test_chat_format_without_history_is_round_one(tmp_path, history):
    [row] = encode_rows(tmp_path, [{"prompt": "q", "response": "r", **history}], format="chat", template="chatglm2")
    assert row["input_ids"] == [GMASK, SOP] + chars("[Round 1]\n\n问：q\n\n答：r") + [EOS]


def test_chat_format_with_chatglm3_template(tmp_path):
    rows = [{"prompt": "c", "response": "d", "history": [["a", "b"]]}]
    [row] = encode_rows(tmp_path, rows, format="chat")
    prompt = [GMASK, SOP, USER, NL, 97, ASSISTANT, NL, 98, USER, NL, 99, ASSISTANT, NL]
    assert row["input_ids"] == prompt + [100, EOS]
    assert row["labels"] == masked(prompt) + [100, EOS]


MESSAGES = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"},
    {"role": "user", "content": "c"},
    {"role": "assistant", "content": "d"},
]


def test_messages_loss_on_every_assistant_turn(tmp_path):
    [row] = encode_rows(tmp_path, [{"messages": MESSAGES}], format="messages")
    assert row["input_ids"] == [
        GMASK, SOP, SYSTEM, NL, 115, USER, NL, 97, ASSISTANT, NL, 98, USER, NL, 99, ASSISTANT, NL, 100, EOS,
    ]  # fmt: skip
    assert row["labels"] == [X] * 10 + [98] + [X] * 5 + [100, EOS]


def test_messages_train_on_last(tmp_path):
    [row] = encode_rows(tmp_path, [{"conversations": MESSAGES[1:]}], format="messages", train_on="last")
    assert row["input_ids"] == [GMASK, SOP, USER, NL, 97, ASSISTANT, NL, 98, USER, NL, 99, ASSISTANT, NL, 100, EOS]
    assert row["labels"] == [X] * 13 + [100, EOS]


# --- encoding rules -----------------------------------------------------------------------------


def test_source_truncation_cuts_left_and_keeps_prefix_and_cue(tmp_path):
    [row] = encode_rows(tmp_path, [{"content": "abcdef", "summary": "z"}], source=7)
    # [gMASK] sop | <|user|> \n a b c d e f | <|assistant|> \n  -> 12 prompt tokens, 5 dropped from the left
    assert row["input_ids"] == [GMASK, SOP, 100, 101, 102, ASSISTANT, NL, 122, EOS]
    assert row["labels"] == [X] * 7 + [122, EOS]


def test_source_truncation_keeps_chatglm2_answer_cue(tmp_path):
    [row] = encode_rows(tmp_path, [{"content": "abcdef", "summary": "z"}], source=8, template="chatglm2")
    assert row["input_ids"] == [GMASK, SOP, 101, 102] + chars("\n\n答：") + [122, EOS]


def test_source_truncation_drops_oldest_history_first(tmp_path):
    rows = [{"prompt": "q2", "response": "r2", "history": [["q1", "r1"]]}]
    [row] = encode_rows(tmp_path, rows, source=8, format="chat")
    # body <|user|>\nq1<|assistant|>\nr1<|user|>\nq2 has 12 tokens; 4 fit: the whole first round goes
    assert row["input_ids"] == [GMASK, SOP, USER, NL, 113, 50, ASSISTANT, NL, 114, 50, EOS]


def test_source_truncation_keeps_labels_of_surviving_supervised_turns(tmp_path):
    [row] = encode_rows(tmp_path, [{"messages": MESSAGES[1:]}], source=9, format="messages")
    # 13 prompt tokens: [gMASK] sop | <|user|> \n a <|assistant|> \n | b | <|user|> \n c | <|assistant|> \n; 4 go
    assert row["input_ids"] == [GMASK, SOP, NL, 98, USER, NL, 99, ASSISTANT, NL, 100, EOS]
    assert row["labels"] == [X, X, X, 98, X, X, X, X, X, 100, EOS]


def test_source_limit_below_template_fixed_tokens_names_flag():
    example = Example(get_template("chatglm3").render([Turn("abc", "d")]))
    with pytest.raises(ValueError, match="--max_source_length: expected at least the template's 4 fixed"):
        encode_example(example, FakeTokenizer(), 3, 10)


def test_target_truncation_keeps_eos(tmp_path):
    [row] = encode_rows(tmp_path, [{"content": "a", "summary": "bcdef"}], target=3, template="plain")
    assert row["input_ids"] == [97, 98, 99, EOS]
    assert row["labels"] == [X, 98, 99, EOS]
    [row] = encode_rows(tmp_path, [{"content": "a", "summary": "bcdef"}], target=1, template="plain")
    assert row["labels"] == [X, EOS]


def test_eos_appended_and_labels_by_position_not_value(tmp_path):
    # The pad id equals the answer's token and the answer holds <unk>/</s> text: all stay supervised.
    args = DataArguments(template="plain")
    [example] = load_examples(write_jsonl(tmp_path / "r.json", [{"content": "cc", "summary": "c<unk></s>"}]), args)
    row = encode_example(example, FakeTokenizer(pad_token_id=99), 10, 10)
    assert row["input_ids"] == [99, 99, 99, FakeTokenizer().convert_tokens_to_ids("<unk>"), EOS, EOS]
    assert row["labels"] == [X, X] + row["input_ids"][2:]


def test_boundary_merge_fake_tokenizer():
    tokenizer = FakeTokenizer(merges=["bc"])
    merged = tokenizer.convert_tokens_to_ids("bc")
    assert tokenizer.encode("abcd", add_special_tokens=False) == [97, merged, 100]  # joined text merges b|c
    example = Example(get_template("plain").render([Turn("ab", "cd")]))
    row = encode_example(example, tokenizer, 10, 10)
    assert row["input_ids"] == [97, 98, 99, 100, EOS]
    assert row["labels"] == [X, X, 99, 100, EOS]


def _boundary_pair(tokenizer) -> tuple[str, str]:
    """A prompt/answer split of a phrase that the tokenizer encodes differently when joined."""
    phrases = ["颜色是白色的衣服", "这件衣服很多人都觉得美丽", "大家在一起读书", "我们的世界很大", "最大的学校"]
    for phrase in phrases:
        for cut in range(1, len(phrase)):
            prompt, answer = phrase[:cut], phrase[cut:]
            apart = [tokenizer.encode(text, add_special_tokens=False) for text in (prompt, answer)]
            if tokenizer.encode(phrase, add_special_tokens=False) != apart[0] + apart[1]:
                return prompt, answer
    pytest.fail("no phrase in the list tokenizes differently across a prompt/answer split")


@pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "tokenizer_config.json").exists(), reason="embedded tokenizer not built yet"
)
def test_boundary_merge_embedded_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    prompt, answer = _boundary_pair(tokenizer)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    for name in ("plain", "chatglm3"):
        example = Example(get_template(name).render([Turn(prompt, answer)]))
        row = encode_example(example, tokenizer, 64, 64)
        supervised = [label for label in row["labels"] if label != X]
        assert supervised == answer_ids + [tokenizer.eos_token_id]
        assert row["labels"][-len(supervised):] == row["input_ids"][-len(supervised):]
        assert row["input_ids"][: -len(supervised)] == encode_prompt(example, tokenizer, 64)


# --- dataset and collation ------------------------------------------------------------------------


def test_build_dataset_caps_rows_per_split_and_groups_by_length(tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    path = write_jsonl(tmp_path / "d.json", [{"content": "a" * n, "summary": "b"} for n in range(1, 9)])
    args = DataArguments(template="plain", max_train_samples=6, max_eval_samples=2)
    train = build_dataset(path, FakeTokenizer(), args, split="train")
    assert len(train) == 6 and len(build_dataset(path, FakeTokenizer(), args, split="eval")) == 2
    assert train[0] == {"input_ids": [97, 98, EOS], "labels": [X, 98, EOS]}
    assert train.lengths == [3, 4, 5, 6, 7, 8] and train.examples[5].prompt == "a" * 6
    assert sorted(LengthGroupedSampler(2, dataset=train)) == list(range(6))


def test_collator_right_padding_for_training():
    rows = [{"input_ids": [1, 2, 3], "labels": [X, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    batch = DataCollator(pad_token_id=PAD)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[X, 2, 3], [4, X, X]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_collator_left_padding_for_generation_and_multiple_of():
    rows = [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]
    batch = DataCollator(pad_token_id=0, padding_side="left", pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert "labels" not in batch


def test_collator_pads_with_eos_when_tokenizer_has_no_pad():
    collator = DataCollator.for_tokenizer(FakeTokenizer(pad_token_id=None))
    batch = collator([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}])
    assert batch["input_ids"].tolist() == [[5, 6], [7, EOS]]
    with pytest.raises(ValueError, match="padding_side"):
        DataCollator(pad_token_id=0, padding_side="middle")


# --- arguments ----------------------------------------------------------------------------------


def test_data_arguments_defaults_and_checks():
    assert (DataArguments().prompt_column, DataArguments().response_column) == ("content", "summary")
    chat = DataArguments(format="chat")
    assert (chat.prompt_column, chat.response_column) == ("prompt", "response")
    with pytest.raises(ValueError, match="--max_target_length: expected at least 1, found 0"):
        DataArguments(max_target_length=0)
    with pytest.raises(ValueError, match="--response_column"):
        DataArguments(prompt_column="x", response_column="x")
    with pytest.raises(ValueError, match="--train_on: expected one of all, last, found 'first'"):
        DataArguments(train_on="first")


def test_data_arguments_parse_with_hf_argument_parser():
    from transformers import HfArgumentParser

    [args] = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        args=["--format", "chat", "--template", "chatglm2", "--max_source_length", "32", "--skip_bad_rows"]
    )
    assert (args.format, args.template, args.max_source_length, args.skip_bad_rows) == ("chat", "chatglm2", 32, True)
    assert args.prompt_column == "prompt"


# --- bad input ----------------------------------------------------------------------------------

BAD_ROWS = {  # name: (file bytes, line of the bad row, words the message must contain)
    "invalid_json": (b'{"content": "a", "summary": "b"}\n{"content": "a", "summary": }\n', 2, "invalid JSON"),
    "missing_key": (b'{"content": "a", "summary": "b"}\n\n{"content": "a", "title": "t"}\n', 3, 'key "summary"'),
    "wrong_type_number": (b'{"content": "a", "summary": 3}\n', 1, "number 3"),
    "wrong_type_list": (b'{"content": ["a"], "summary": "b"}\n', 1, "a list"),
    "empty_answer": (b'{"content": "a", "summary": "b"}\n{"content": "a", "summary": " "}\n', 2, "non-empty"),
    "not_utf8": (b'{"content": "a", "summary": "b"}\n{"content": "\xff\xfe", "summary": "b"}\n', 2, "UTF-8"),
    "not_an_object": (b'{"content": "a", "summary": "b"}\n["a", "b"]\n', 2, "a JSON object"),
    "array_missing_key": (b'[\n  {"content": "a", "summary": "b"},\n  {"content": "a"\n  }\n]\n', 3, 'key "summary"'),
    "array_invalid_json": (b'[\n  {"content": "a", "summary": "b"},\n  {"content": "a" "summary": "b"}\n]', 3, "invalid JSON"),
    "array_trailing_text": (b'[{"content": "a", "summary": "b"}]\n\n]', 3, "the end of the file"),
}


def run_check(*flags: str) -> Ran:
    return run_in_process("sft.data.check", "check", *flags)


@pytest.mark.parametrize("name", BAD_ROWS)
def test_load_examples_names_file_and_line(tmp_path, name):
    content, line, words = BAD_ROWS[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as raised:
        load_examples(path, DataArguments())
    message = str(raised.value)
    assert message.startswith(f"{path}:{line}: expected ") and ", found " in message and words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "row, words",
    [
        ({"messages": [{"role": "user", "content": "a"}]}, 'a message from "assistant" after "messages"[0]'),
        ({"messages": [{"role": "assistant", "content": "a"}]}, '"messages"[0].role to be "user"'),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}, '"system", "user"'),
        ({"messages": [{"role": "system", "content": "s"}]}, 'a message from "user" after'),
        ({"messages": []}, "non-empty list"),
        ({"prompt": "q", "response": "r", "history": [["q1"]]}, '"history"[0] to be a [query, response] pair'),
        ({"prompt": "q", "response": "r", "history": "q1"}, '"history" to be a list'),
        ({"prompt": "q", "response": "r", "history": ""}, "found an empty string"),
    ],
)
def test_conversation_rows_errors(tmp_path, row, words):
    format = "messages" if "messages" in row else "chat"
    with pytest.raises(DataError, match="rows.json:1: expected") as raised:
        encode_rows(tmp_path, [row], format=format)
    assert words in str(raised.value)


def test_skip_bad_rows_logs_count_and_lines(tmp_path, caplog):
    path = tmp_path / "mixed.json"
    path.write_bytes(BAD_ROWS["empty_answer"][0] + BAD_ROWS["not_utf8"][0])
    with caplog.at_level(logging.WARNING, logger="sft.data"):
        examples = load_examples(path, DataArguments(skip_bad_rows=True))
    assert [example.line for example in examples] == [1, 3]
    assert "skipped 2 bad rows (lines 2, 4)" in caplog.text


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: expected a readable file, found No such file"):
        load_examples(tmp_path / "nope.json", DataArguments())
    (tmp_path / "empty.json").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.json: expected JSON Lines or a JSON array, found an empty file"):
        load_examples(tmp_path / "empty.json", DataArguments())


@pytest.mark.parametrize("name", ["invalid_json", "missing_key", "wrong_type_number", "empty_answer", "not_utf8"])
def test_check_cli_bad_input_exit_2_without_traceback(tmp_path, name):
    content, line, words = BAD_ROWS[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    result = run_check("--train_file", str(path))
    assert result.returncode == 2
    assert f"{path}:{line}: expected " in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_cli_skip_bad_rows_and_statistics(tmp_path):
    rows = [{"content": "ab", "summary": "xyz"}, {"content": "abcd", "summary": "x"}, {"content": "a", "summary": 3}]
    path = write_jsonl(tmp_path / "train.json", rows)
    tokenizer = save_char_tokenizer(tmp_path / "tok", "abcdxyz\n")
    flags = ("--train_file", str(path), "--tokenizer", str(tokenizer), "--template", "plain")
    flags += ("--max_source_length", "3")
    assert run_check(*flags).returncode == 2
    result = run_check(*flags, "--skip_bad_rows", "--max_target_length", "3")
    assert result.returncode == 0, result.stderr
    assert f"{path}: 2 rows, 1 bad rows (skipped: lines 3)" in result.stdout
    assert f"{path}:3: expected" in result.stderr
    # prompts 2, 4 tokens; answers+eos 4, 2 tokens (nearest-rank percentiles: p50 = smaller one)
    assert "  prompt            2      4      4      4" in result.stdout
    assert "  answer+eos        2      4      4      4" in result.stdout
    assert "--max_source_length 3 cuts 1 prompts" in result.stdout
    assert "--max_target_length 3 cuts 1 answers" in result.stdout
    assert "rows with no supervised token besides eos: 0" in result.stdout


def test_check_cli_usage_and_flag_errors(tmp_path):
    assert run_check().returncode == 2
    result = run_check("--train_file", "x.json", "--max_source_length", "0")
    assert result.returncode == 2 and "--max_source_length: expected at least 1, found 0" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not (REPO / "data/adgen/train.json").exists(), reason="data/adgen/train.json not written yet")
@pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "tokenizer_config.json").exists(), reason="embedded tokenizer not built yet"
)
def test_check_cli_on_shipped_adgen_data():  # the real `python -m sft.data check`, as the README shows it
    result = run_subprocess(sys.executable, "-m", "sft.data", "check", "--train_file", "data/adgen/train.json",
                            "--format", "adgen")
    assert result.returncode == 0, result.stderr
    assert "data/adgen/train.json: " in result.stdout and " 0 bad rows" in result.stdout
    assert "answer+eos" in result.stdout and "Traceback" not in result.stderr
