"""Every command goes through :func:`sft.cli.run_command`: a user's mistake is one ``error:`` line and
exit status 2, never a traceback; a bug of ours keeps its traceback.

The commands are called in process (``main(argv)``, fast); one test runs two of them as a user
does (``python -m``) to show the real entry point behaves the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import sft.cli
import sft.evaluate
import sft.convert
import sft.export
import sft.import_chatglm2
import sft.infer
import sft.metrics
import sft.serve
import sft.train
import tools.pretrain
from ptuning.injection import InjectionError
from sft.data import check as data_check
from sft.errors import UserError
from sft.training.trainer import NonFiniteLossError
from tests.conftest import REPO

DTYPE_ERROR = "error: --dtype: expected auto or one of float32, bfloat16, float16, found 'bf16'"

# (main, argv given tmp_path, what the one error line must say); argv names only missing files under tmp_path.
MISTAKES: dict[str, tuple[Callable, Callable[[Path], list[str]], str]] = {
    "train": (sft.train.main, lambda tmp: ["--dtype", "bf16", "--output_dir", str(tmp / "out")], DTYPE_ERROR),
    "evaluate": (sft.evaluate.main, lambda tmp: ["--dtype", "bf16"], DTYPE_ERROR),
    "infer": (sft.infer.main, lambda tmp: ["--dtype", "bf16", "--prompt", "类型#上衣"], DTYPE_ERROR),
    "export": (sft.export.main, lambda tmp: ["--dtype", "bf16"], DTYPE_ERROR),
    "serve": (sft.serve.main, lambda tmp: ["--checkpoint", "broken"], "error: --checkpoint 'broken': expected NAME=DIR"),
    "import_chatglm2 --mask": (
        sft.import_chatglm2.main,
        lambda tmp: ["--mask", "bidirectional", "--source", str(tmp / "src"), "--model_name_or_path", "embedded",
                     "--output_dir", str(tmp / "out")],
        "error: --mask: expected auto or one of causal, prefix_lm, found 'bidirectional'",
    ),
    "import_chatglm2 --source": (
        sft.import_chatglm2.main,
        lambda tmp: ["--source", str(tmp / "missing"), "--model_name_or_path", "embedded", "--output_dir",
                     str(tmp / "out")],
        "missing: expected a ChatGLM2 P-tuning checkpoint file, found none",
    ),
    "convert": (
        sft.convert.main,
        lambda tmp: ["--source", str(tmp / "missing"), "--output_dir", str(tmp / "out")],
        "error: --source: expected a THUDM checkpoint directory with config.json, found none in",
    ),
    "metrics": (
        sft.metrics.main,
        lambda tmp: ["--predictions", str(tmp / "missing.jsonl")],
        "missing.jsonl: expected a readable file, found No such file or directory",
    ),
    "data check --train_file": (
        data_check.main,
        lambda tmp: ["check", "--train_file", str(tmp / "missing.json")],
        "missing.json: expected a readable file, found No such file or directory",
    ),
    "data check": (data_check.main, lambda tmp: ["check"], "error: --train_file: expected a file to check, found none"),
    "pretrain": (
        tools.pretrain.main,
        lambda tmp: ["--objective", "mlm", "--output_dir", str(tmp / "out")],
        "error: --objective: expected one of causal, prefix_lm, mix, found 'mlm'",
    ),
}

# (main, argv, a flag only that command's help lists)
HELP: dict[str, tuple[Callable, list[str], str]] = {
    "train": (sft.train.main, ["--help"], "--pre_seq_len"),
    "evaluate": (sft.evaluate.main, ["--help"], "--validation_file"),
    "infer": (sft.infer.main, ["--help"], "--prompt"),
    "export": (sft.export.main, ["--help"], "--checkpoint"),
    "serve": (sft.serve.main, ["--help"], "--api_key"),
    "import_chatglm2": (sft.import_chatglm2.main, ["--help"], "--source"),
    "convert": (sft.convert.main, ["--help"], "--ptuning_checkpoint"),
    "metrics": (sft.metrics.main, ["--help"], "--predictions"),
    "data": (data_check.main, ["--help"], "--train_file"),
    "data check": (data_check.main, ["check", "--help"], "--skip_bad_rows"),
    "pretrain": (tools.pretrain.main, ["--help"], "--prefix_lm_share"),
}


def exit_status(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """What ``python -m`` would exit with: ``main``'s return value, or argparse's ``SystemExit``."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code or 0


def assert_one_error_line(stderr: str, expected: str) -> None:
    """No traceback; exactly one ``error:`` line, the last one, and it holds ``expected`` whole."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0]
    assert expected in errors[0], stderr


@pytest.mark.parametrize("command", list(MISTAKES))
def test_a_user_mistake_is_one_error_line_and_status_2(command, tmp_path, capsys):
    main, argv, expected = MISTAKES[command]
    assert exit_status(main, argv(tmp_path)) == 2
    assert_one_error_line(capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists()  # refused before any work was written


def test_the_real_entry_points_exit_2_without_a_traceback(tmp_path):
    for argv in (["sft.train", "--dtype", "bf16", "--output_dir", str(tmp_path / "out")],
                 ["sft.infer", "--dtype", "bf16"]):
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 2, (argv, proc.stderr)
        assert_one_error_line(proc.stderr, DTYPE_ERROR)


@pytest.mark.parametrize("command", list(HELP))
def test_help_exits_0(command, capsys):
    main, argv, flag = HELP[command]
    assert exit_status(main, argv) == 0
    assert flag in capsys.readouterr().out


def test_version_warnings_are_printed(monkeypatch, capsys):
    warning = "warning: transformers 99.0 is outside the tested range <6"
    monkeypatch.setattr(sft.cli, "check_supported", lambda: [warning])
    assert sft.cli.run_command(lambda: "flags", lambda flags: None) == 0
    assert warning in capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("error", "status"),
    [(UserError("--x: expected 1, found 2"), 2), (InjectionError("layer 0: no prefix"), 2),
     (NonFiniteLossError("step 3: loss is nan"), 1)],
    ids=["UserError", "InjectionError", "NonFiniteLossError"],
)
def test_errors_of_the_work_are_one_line_with_their_status(error, status, capsys):
    def work(flags):
        raise error

    assert sft.cli.run_command(lambda: "flags", work) == status
    assert_one_error_line(capsys.readouterr().err, f"error: {error}")


@pytest.mark.parametrize("bug", [RuntimeError("a bug of ours"), ValueError("a plain ValueError is a bug in work")],
                         ids=["RuntimeError", "ValueError"])
def test_other_exceptions_of_the_work_keep_their_traceback(bug, capsys):
    def work(flags):
        raise bug

    with pytest.raises(type(bug), match=str(bug)):
        sft.cli.run_command(lambda: "flags", work)
    assert "error:" not in capsys.readouterr().err
