"""sft.metrics: ChatGLM-compatible ROUGE/BLEU against a hand-written reference, edge rows, CLI."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import jieba
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # only for the verbatim test
from rouge_chinese import Rouge  # only for the verbatim test

from sft.eval.scores import attribute_recall, prompt_values, score_corpus, score_pair
from tests.conftest import REPO, Ran, run_in_process, run_subprocess



# --- Independent reference (no rouge_chinese, no nltk) -----------------------------------------
# What rouge-chinese 1.0.3 computes, read from its source: words are the jieba words joined by
# spaces and split again (whitespace words vanish; punctuation stays a word); sentences are
# split on 。！？ but their words are flattened back into one list before scoring, so for
# single-line text ROUGE-N uses the *sets* of n-grams of that list (each distinct n-gram once)
# and ROUGE-L one LCS over the whole lists. ChatGLM reports F1 x100 rounded to 4 places.


def _words(text: str) -> list[str]:
    return [word for word in jieba.cut(text) if word.strip()]


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _f1(overlap: int, hyp_total: int, ref_total: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def _rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    hyp_set, ref_set = set(_ngrams(hyp, n)), set(_ngrams(ref, n))
    return _f1(len(hyp_set & ref_set), len(hyp_set), len(ref_set))


def _lcs_length(x: list[str], y: list[str]) -> int:
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, a in enumerate(x, 1):
        for j, b in enumerate(y, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a == b else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def _bleu4_method3(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 on characters, uniform weights, NIST geometric smoothing (Chen & Cherry m3)."""
    hyp, ref = list(prediction), list(reference)
    matched, totals = [], []
    for n in range(1, 5):
        hyp_counts, ref_counts = Counter(_ngrams(hyp, n)), Counter(_ngrams(ref, n))
        matched.append(sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items()))
        totals.append(max(1, sum(hyp_counts.values())))
    if matched[0] == 0:
        return 0.0
    log_sum, k = 0.0, 1
    for m, total in zip(matched, totals):
        if m == 0:  # each zero-match order gets 1 / (2^k * total), k = 1, 2, ...
            log_sum += math.log(1 / (2**k * total))
            k += 1
        else:
            log_sum += math.log(m / total)
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(log_sum / 4)


def reference_scores(prediction: str, reference: str) -> dict[str, float]:
    hyp, ref = _words(prediction), _words(reference)
    return {
        "rouge-1": 100 * _rouge_n(hyp, ref, 1),
        "rouge-2": 100 * _rouge_n(hyp, ref, 2),
        "rouge-l": 100 * _f1(_lcs_length(hyp, ref), len(hyp), len(ref)),
        "bleu-4": 100 * _bleu4_method3(prediction, reference),
    }


# --- Parity --------------------------------------------------------------------------------------

PAIRS = [
    # close paraphrase
    ("今天天气很好，我们去公园散步吧。", "今天天气不错，我们去公园走走吧。"),
    # repeated words (n-gram sets, not counts) and a prediction longer than its reference
    ("这件衣服很好看很好看，颜色也很好看。", "这件衣服的颜色很好看。"),
    # several sentences, shorter prediction (brevity penalty)
    ("我喜欢吃苹果。你呢？", "你喜欢吃苹果吗？我喜欢吃香蕉。"),
    # under four characters: BLEU's 3- and 4-gram precisions are smoothed
    ("好的", "好的，我明白了。"),
    # no trigram or 4-gram match: smoothing with k = 1 then 2
    ("猫在睡觉", "狗睡觉了"),
    ("这款连衣裙采用红色的设计，显得很有气质。", "红色的连衣裙，修身的版型，穿起来很有气质。"),
]


@pytest.mark.parametrize(("prediction", "reference"), PAIRS)
def test_score_pair_matches_hand_written_reference(prediction: str, reference: str) -> None:
    expected = reference_scores(prediction, reference)
    assert score_pair(prediction, reference) == pytest.approx(expected, abs=1e-3)


def test_reference_is_not_trivial() -> None:
    # Guard against a parity test that passes on all-zero or all-100 scores.
    scores = [reference_scores(p, r) for p, r in PAIRS]
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert any(0 < s[key] < 100 for s in scores), key


def test_identical_prediction_scores_100() -> None:
    text = "今天天气很好，我们去公园散步吧。"
    assert score_pair(text, text) == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}


def test_scores_are_rounded_to_4_places() -> None:
    for value in score_pair(*PAIRS[0]).values():
        assert value == round(value, 4)


def test_corpus_is_mean_of_rows() -> None:
    result = score_corpus([p for p, _ in PAIRS], [r for _, r in PAIRS])
    rows = [score_pair(p, r) for p, r in PAIRS]
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert result[key] == pytest.approx(sum(row[key] for row in rows) / len(rows), abs=1e-9)
    assert (result["n"], result["empty"]) == (len(PAIRS), 0)


def test_multi_line_rows_match_chatglm_recipe_verbatim() -> None:
    # Blank lines become empty "words" inside rouge-chinese; we keep ChatGLM's numbers, quirk included.
    prediction, reference = "第一段。\n\n第二段", "第一段。第二段"
    rouge = Rouge().get_scores(" ".join(jieba.cut(prediction)), " ".join(jieba.cut(reference)))[0]
    expected = {key: round(value["f"] * 100, 4) for key, value in rouge.items()}
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    expected["bleu-4"] = round(bleu * 100, 4)
    assert score_pair(prediction, reference) == expected


# --- Edge rows -----------------------------------------------------------------------------------

ZEROS = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}


@pytest.mark.parametrize("prediction", ["", " ", "  \n\t", "\u3000"])
def test_blank_prediction_scores_zero(prediction: str) -> None:
    # rouge-chinese itself raises "Hypothesis is empty." here (ChatGLM's crash).
    assert score_pair(prediction, "你好 世界") == ZEROS


def test_blank_reference_scores_zero_rouge() -> None:
    # rouge-chinese raises "Reference is empty."; BLEU has nothing to match either.
    assert score_pair("你好", "   ") == ZEROS


@pytest.mark.parametrize(
    ("prediction", "reference"), [("。。。", "你好。"), ("！？", "你好！"), ("...", "你好")]
)
def test_punctuation_only_prediction_is_scored_like_words(prediction: str, reference: str) -> None:
    # rouge-chinese 1.0.3 does not strip punctuation: it is an ordinary word, so no crash.
    expected = reference_scores(prediction, reference)
    assert score_pair(prediction, reference) == pytest.approx(expected, abs=1e-3)


def test_corpus_counts_empty_predictions() -> None:
    predictions = ["", "   ", "。。。", "你好世界"]
    references = ["你好", "你好", "你好。", "你好世界"]
    result = score_corpus(predictions, references)
    assert (result["n"], result["empty"]) == (4, 2)
    assert result["bleu-4"] == pytest.approx((score_pair("。。。", "你好。")["bleu-4"] + 100.0) / 4)


def test_corpus_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="expected as many references"):
        score_corpus(["a", "b"], ["a"])


def test_progress_bar_only_for_long_lists(capsys: pytest.CaptureFixture[str]) -> None:
    score_corpus(["你好"] * 3, ["你好"] * 3)
    assert "scoring" not in capsys.readouterr().err
    score_corpus(["你好"] * 201, ["你好"] * 201)
    assert "201/201" in capsys.readouterr().err


# --- Attribute recall and distinct share ----------------------------------------------------------


def test_prompt_values_of_raw_and_rendered_prompts() -> None:
    raw = "类型#上衣*版型#宽松*图案#线条*图案#刺绣*图案#线条"
    assert prompt_values(raw) == ["上衣", "宽松", "线条", "刺绣"]  # a repeated key keeps both values, once each
    assert prompt_values(f"[gMASK]sop<|user|>\n{raw}<|assistant|>\n") == ["上衣", "宽松", "线条", "刺绣"]
    assert prompt_values(f"[Round 1]\n\n问：{raw}\n\n答：") == ["上衣", "宽松", "线条", "刺绣"]
    assert prompt_values("写一段关于秋天的文字") == []


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("宽松的上衣，刺绣和线条点缀。", 1.0),  # every value present
        ("一件宽松的衣服。", 0.25),  # one of four
        ("一件毛衣。", 0.0),  # none
        ("", 0.0),  # an empty prediction mentions nothing
    ],
)
def test_attribute_recall_counts_distinct_values_found_verbatim(prediction: str, expected: float) -> None:
    assert attribute_recall(prediction, "类型#上衣*版型#宽松*图案#线条*图案#刺绣*图案#线条") == expected


def test_corpus_attribute_recall_and_distinct_share() -> None:
    prompts = ["类型#裙*颜色#红色", "类型#裤*材质#牛仔布", "写一首诗"]  # the last row has no attributes
    predictions = ["红色的裙子", "红色的裙子", "一首诗"]
    references = ["红色连衣裙", "牛仔裤", "诗"]
    result = score_corpus(predictions, references, prompts)
    # Row recalls 1.0 and 0.0 (the row without attributes does not count); 2 distinct of 3 predictions.
    assert result["attribute_recall"] == pytest.approx(50.0)
    assert result["distinct"] == pytest.approx(200 / 3)
    without_prompts = score_corpus(predictions, references)
    assert without_prompts["attribute_recall"] is None and without_prompts["distinct"] == result["distinct"]
    assert score_corpus(["a"], ["b"], ["写一首诗"])["attribute_recall"] is None
    with pytest.raises(ValueError, match="expected a prompt per prediction"):
        score_corpus(predictions, references, prompts[:2])


# --- CLI -----------------------------------------------------------------------------------------


def _run_cli(*args: str | Path) -> Ran:
    return run_in_process("sft.metrics", *args)


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_cli_prints_one_json_object(tmp_path: Path) -> None:
    rows = [{"prediction": p, "reference": r} for p, r in PAIRS] + [{"prediction": "", "reference": "你好"}]
    rows[0]["at_limit"] = True  # as sft.evaluate marks an answer max_new_tokens ended before an eos
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    predictions = _write_jsonl(tmp_path / "generated.jsonl", lines)
    output = tmp_path / "out" / "metrics.json"

    # A real process: jieba's start-up chatter only shows in one where jieba is not yet loaded.
    proc = run_subprocess(sys.executable, "-m", "sft.metrics", "--predictions", predictions, "--output", output)

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert list(result) == ["rouge-1", "rouge-2", "rouge-l", "bleu-4", "attribute_recall", "distinct", "n", "empty",
                            "at_limit"]
    assert (result["n"], result["empty"], result["at_limit"]) == (len(rows), 1, 1)
    assert json.loads(output.read_text(encoding="utf-8")) == result
    for chatter in ("Building prefix dict", "Loading model cost", "Dumping model"):
        assert chatter not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        ('{"prediction": "你好", ', "invalid JSON"),
        ('{"prediction": "你好"}', 'expected a string under "reference", found fields prediction'),
        ('{"prediction": 3, "reference": "你好"}', 'expected a string under "prediction", found number 3'),
    ],
)
def test_cli_bad_line_exits_2_with_location(tmp_path: Path, second_line: str, message: str) -> None:
    first_line = '{"prediction": "你好", "reference": "你好"}'
    bad = _write_jsonl(tmp_path / "bad.jsonl", [first_line, second_line])

    proc = _run_cli("--predictions", bad)

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"{bad}:2: expected" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    proc = _run_cli("--predictions", tmp_path / "nope.jsonl")
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope.jsonl'}: expected a readable file" in proc.stderr
    assert "Traceback" not in proc.stderr



def test_cli_scores_attribute_recall_when_rows_carry_their_prompt(tmp_path: Path) -> None:
    rows = [{"prompt": "类型#裙*颜色#红色", "prediction": "红色的裙子", "reference": "红裙"},
            {"prompt": "类型#裤*颜色#蓝色", "prediction": "一条裤子", "reference": "蓝裤"}]
    path = _write_jsonl(tmp_path / "p.jsonl", [json.dumps(row, ensure_ascii=False) for row in rows])
    with_prompts = json.loads(_run_cli("--predictions", path).stdout)
    assert with_prompts["attribute_recall"] == pytest.approx(75.0) and with_prompts["distinct"] == 100.0
    for row in rows:
        del row["prompt"]
    path = _write_jsonl(tmp_path / "q.jsonl", [json.dumps(row, ensure_ascii=False) for row in rows])
    assert json.loads(_run_cli("--predictions", path).stdout)["attribute_recall"] is None


def test_cli_compares_evaluations_side_by_side(tmp_path: Path) -> None:
    runs = {"base": {"rouge-l": 4.7, "attribute_recall": None, "n": 100},
            "tuned": {"rouge-l": 27.5, "attribute_recall": 62.5, "n": 100}}
    argv = []
    for name, metrics in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(metrics), encoding="utf-8")
        argv.append(f"{name}={tmp_path / f'{name}.json'}")
    done = _run_cli("--compare", *argv)
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[0].strip(): [cell.strip() for cell in line.split("|")[1:]]
            for line in done.stdout.splitlines()}
    assert rows["metric"] == ["base", "tuned"]
    assert rows["rouge-l"] == ["4.7000", "27.5000"] and rows["attribute_recall"] == ["-", "62.5000"]
    assert _run_cli("--compare", "base").returncode == 2  # NAME=file expected
    assert _run_cli("--compare", f"x={tmp_path / 'missing.json'}").returncode == 2
    assert _run_cli().returncode == 2  # neither --predictions nor --compare
