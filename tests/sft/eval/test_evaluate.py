"""sft.evaluate and sft.infer end to end on a tiny P-tuning checkpoint and a six-row dev file.

The entry points run as a user runs them (subprocess) where exit status, stdout and the
absence of a traceback matter; the other cases call ``main(argv)`` in-process to stay fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import sft.eval.evaluation
import sft.evaluate
from sft.checkpoint import load_for_inference
from sft.data import DataArguments, load_examples
from sft.eval.evaluation import TABLE_KEYS, evaluate_examples
from sft.eval.predictions import PREDICTIONS_FILE
from sft.eval.arguments import GenerationArguments
from sft.eval.generation import Answer
from sft.infer import main as infer_main
from tests.conftest import run_in_process, run_subprocess

FAST = ["--max_new_tokens", "6", "--batch_size", "4"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last


@pytest.fixture(scope="module")
def evaluated(tiny_ptuning_checkpoint, tmp_path_factory, adgen_rows):
    """One full ``python -m sft.evaluate`` run: ``(completed process, dev file, output dir)``."""
    dev = tmp_path_factory.mktemp("dev") / "dev.json"
    dev.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in adgen_rows), encoding="utf-8")
    out = tmp_path_factory.mktemp("eval")
    checkpoint = tiny_ptuning_checkpoint("prefix_lm")
    done = run_in_process("sft.evaluate", "--checkpoint", checkpoint, "--validation_file", dev, "--output_dir", out, *FAST)
    return done, dev, out


def test_evaluate_writes_predictions_metrics_and_prints_a_table(evaluated, adgen_rows):
    done, _, out = evaluated
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(out / PREDICTIONS_FILE)
    assert [row["index"] for row in rows] == list(range(6))
    assert [(row["prompt"], row["reference"]) for row in rows] == [(r["content"], r["summary"]) for r in adgen_rows]
    assert all(isinstance(row["prediction"], str) for row in rows)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(TABLE_KEYS) <= set(metrics) and metrics["n"] == 6
    # 6 new tokens end the random model's texts before an eos: counted, marked, and said.
    assert metrics["at_limit"] == sum(row.get("at_limit", False) for row in rows) > 0
    assert f"--max_new_tokens 6 ended {metrics['at_limit']} of 6 answers before an eos" in done.stderr
    assert metrics["generation"]["max_new_tokens"] == 6 and metrics["method"] == "ptuning"
    table = done.stdout.strip().splitlines()
    assert table[0].split() == ["metric", "|", "score"]
    assert [line.split()[0] for line in table[2:]] == list(TABLE_KEYS)
    assert len({len(line) for line in table}) == 1, "columns are aligned"


def test_rerun_generates_only_missing_rows(evaluated, tiny_ptuning_checkpoint, tmp_path, monkeypatch):
    """Simulate a run killed after three rows (and halfway through writing a fourth)."""
    _, dev, first = evaluated
    full = read_jsonl(first / PREDICTIONS_FILE)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "generation_settings.json").write_text((first / "generation_settings.json").read_text())
    kept = [{**full[i], "prediction": f"kept {i}"} for i in (4, 1, 2)]
    partial = json.dumps(full[0], ensure_ascii=False)[:25]
    (out / PREDICTIONS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept) + partial)
    skipped = []
    real_generate_all = sft.eval.evaluation.generate_all

    def recording_generate_all(*args, skip, **kwargs):
        skipped.append(set(skip))
        return real_generate_all(*args, skip=skip, **kwargs)

    monkeypatch.setattr(sft.eval.evaluation, "generate_all", recording_generate_all)
    argv = ["--checkpoint", str(tiny_ptuning_checkpoint("prefix_lm")), "--validation_file", str(dev), "--output_dir", str(out)]
    assert sft.evaluate.main(argv + FAST) == 0
    assert skipped == [{1, 2, 4}]
    rows = read_jsonl(out / PREDICTIONS_FILE)
    assert [row["index"] for row in rows] == list(range(6))
    assert [row["prediction"] for row in rows] == [
        f"kept {i}" if i in (1, 2, 4) else full[i]["prediction"] for i in range(6)
    ]


def test_rerun_with_other_settings_is_refused_unless_overwrite(evaluated, tiny_ptuning_checkpoint, tmp_path, capsys):
    _, dev, first = evaluated
    out = tmp_path / "eval"
    out.mkdir()
    for name in (PREDICTIONS_FILE, "generation_settings.json"):
        (out / name).write_text((first / name).read_text())
    argv = ["--checkpoint", str(tiny_ptuning_checkpoint("prefix_lm")), "--validation_file", str(dev),
            "--output_dir", str(out), "--batch_size", "4", "--max_new_tokens", "3", "--eval_samples", "2"]
    assert sft.evaluate.main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "max_new_tokens 6 -> 3", "--overwrite")
    assert sft.evaluate.main(argv + ["--overwrite"]) == 0
    assert [row["index"] for row in read_jsonl(out / PREDICTIONS_FILE)] == [0, 1]


def test_bad_validation_file_is_one_line_and_exit_2(tiny_ptuning_checkpoint, tmp_path):
    dev = tmp_path / "dev.json"
    dev.write_text('{"content": "类型#上衣", "summary": "好"}\n{"content": "类型#裙"}\n', encoding="utf-8")
    done = run_in_process("sft.evaluate", "--checkpoint", tiny_ptuning_checkpoint("prefix_lm"),
                          "--validation_file", dev, "--output_dir", tmp_path / "eval")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, f'{dev}:2: expected key "summary"')


def test_missing_checkpoint_says_how_to_make_one(capsys, tmp_path):
    assert sft.evaluate.main(["--checkpoint", str(tmp_path / "nothing"), "--validation_file", "x.json"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--checkpoint: expected a checkpoint or model directory")


def test_evaluate_examples_scores_and_keeps_training_mode(tiny_ptuning_checkpoint, adgen_file):
    model, tokenizer, info = load_for_inference(str(tiny_ptuning_checkpoint("causal")))
    examples = load_examples(adgen_file, DataArguments(template=info.template))
    model.train()
    predictions, metrics = evaluate_examples(
        model, tokenizer, examples, 64, GenerationArguments(max_new_tokens=4), done={0: Answer("这是第0件好看的衣服。")}
    )
    assert model.training
    assert len(predictions) == 6 and predictions[0] == Answer("这是第0件好看的衣服。")
    assert metrics["n"] == 6 and metrics["rouge-1"] > 0
    assert metrics["at_limit"] == sum(p.at_limit for p in predictions[1:]) > 0, "4 new tokens end a random model's text"
    assert metrics["prompts_cut"] == 0
    _, cut = evaluate_examples(model, tokenizer, examples, 12, GenerationArguments(max_new_tokens=1))
    lengths = [len(tokenizer(e.prompt)["input_ids"]) for e in examples]  # the raw prompt alone: a lower bound
    assert cut["prompts_cut"] >= sum(length > 12 for length in lengths) > 0


def test_infer_prompt_prints_text(tiny_ptuning_checkpoint):
    done = run_in_process("sft.infer", "--checkpoint", tiny_ptuning_checkpoint("prefix_lm"),
                          "--prompt", "类型#上衣*颜色#红色", "--max_new_tokens", "8")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1 and done.stdout.strip()


def test_infer_says_what_the_limits_cut(tiny_ptuning_checkpoint):
    done = run_in_process("sft.infer", "--checkpoint", tiny_ptuning_checkpoint("prefix_lm"),
                          "--prompt", "类型#上衣*颜色#红色*" * 40, "--max_new_tokens", "3")
    assert done.returncode == 0, done.stderr
    assert "max_source_length 64 keeps the last 64" in done.stderr
    assert "--max_new_tokens 3 ended the answer before an eos" in done.stderr
    assert len(done.stdout.strip().splitlines()) == 1, "the warnings go to stderr, the answer alone to stdout"


def test_infer_file_adds_predictions_in_input_order(tiny_ptuning_checkpoint, adgen_file, tmp_path, capsys):
    checkpoint = ["--checkpoint", str(tiny_ptuning_checkpoint("causal")), "--max_new_tokens", "6"]
    output = tmp_path / "out" / "pred.jsonl"
    assert infer_main(checkpoint + ["--input_file", str(adgen_file), "--output_file", str(output), "--batch_size", "4"]) == 0
    rows = read_jsonl(output)
    assert [row["content"] for row in rows] == [r["content"] for r in read_jsonl(adgen_file)]
    assert infer_main(checkpoint + ["--prompt", rows[3]["content"]]) == 0
    assert capsys.readouterr().out.strip() == rows[3]["prediction"]


def test_infer_base_model_and_interactive_loop(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("类型#裤\n\n类型#鞋\nexit\nnever read\n"))
    assert infer_main(["--model_name_or_path", str(tiny_model_dir), "--max_new_tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("> ") == 4, out  # two prompts, a blank line, exit
    answers = [line.removeprefix("> ") for line in out.splitlines()[1:] if line.removeprefix("> ")]
    assert len(answers) == 2


def test_infer_wrong_pre_seq_len_is_one_line(tiny_ptuning_checkpoint, capsys):
    assert infer_main(["--checkpoint", str(tiny_ptuning_checkpoint("causal")), "--pre_seq_len", "99", "--prompt", "x"]) == 2
    assert_one_line_error(capsys.readouterr().err, "checkpoint has pre_seq_len 4, --pre_seq_len says 99")


def test_infer_input_file_without_the_prompt_column(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "in.json"
    bad.write_text('{"content": "类型#裤"}\n{"text": "类型#鞋"}\n', encoding="utf-8")
    argv = ["--model_name_or_path", str(tiny_model_dir), "--input_file", str(bad), "--output_file", str(tmp_path / "o")]
    assert infer_main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, f'{bad}:2: expected a string under "content", found fields text')


def test_evaluate_script_assembles_flags(tiny_ptuning_checkpoint, adgen_file, tmp_path):
    done = run_subprocess("bash", "scripts/evaluate.sh", "--output_dir", tmp_path / "eval",
                          CHECKPOINT=str(tiny_ptuning_checkpoint("causal")), VALIDATION_FILE=str(adgen_file),
                          EVAL_SAMPLES="2", BATCH_SIZE="2", MAX_NEW_TOKENS="3")
    assert done.returncode == 0, done.stderr
    assert "rouge-l" in done.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["generation"]["max_new_tokens"] == 3
    assert len(read_jsonl(tmp_path / "eval" / PREDICTIONS_FILE)) == 2
