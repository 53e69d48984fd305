"""Tiny random GLM models and P-tuning checkpoints shared by the tests.

The models use the embedded model's tokenizer (8,000 pieces, GLM special tokens) so prompts
render with the real templates, and a random 2-layer, 32-wide ``GlmForCausalLM`` whose
vocabulary matches it. Like GLM-4, the generation config declares three eos ids.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import GlmForCausalLM

from ptuning.encoder import PrefixConfig
from ptuning.layout import kv_layout
from sft.checkpoint import CheckpointInfo, save_checkpoint
from sft.methods.ptuning import attach_encoder
from sft.models import fingerprint
from tests.tiny_models import build_tiny_model_dir

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Ran:
    """What a command left: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(module: str, *args: str | Path) -> Ran:
    """``python -m <module> args`` as ``main(argv)`` in this process (no interpreter start-up), output captured."""
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return Ran(code, out.getvalue(), err.getvalue())


def run_subprocess(*argv: str | Path, **env: str) -> subprocess.CompletedProcess:
    """A real process in the repository root (for what a subprocess shows: entry points, scripts)."""
    return subprocess.run(
        [str(arg) for arg in argv], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable, **env},
    )

TINY_PRE_SEQ_LEN = 4
TINY_DATA = {
    "format": "adgen",
    "prompt_column": "content",
    "response_column": "summary",
    "history_column": "history",
    "max_source_length": 64,
    "max_target_length": 64,
    "train_on": "all",
}


def build_tiny_ptuning_checkpoint(base_dir: Path, directory: Path, mask: str, seed: int = 1) -> Path:
    """A P-tuning checkpoint on ``base_dir`` as ``sft.train`` writes it, prefix drawn with std 1 so it matters."""
    model = GlmForCausalLM.from_pretrained(str(base_dir), use_kernels=False)
    base_fp = fingerprint(model)  # before the prefix encoder becomes a submodule
    config = PrefixConfig(pre_seq_len=TINY_PRE_SEQ_LEN, layout=kv_layout(model.config), mask=mask)
    encoder = attach_encoder(model, config)
    torch.manual_seed(seed)
    torch.nn.init.normal_(encoder.embedding.weight, std=1.0)
    info = CheckpointInfo.describe("ptuning", config.to_dict(), base=base_dir, base_fingerprint=base_fp,
                                   template="chatglm3", mask=mask, dtype="float32", data=TINY_DATA)
    save_checkpoint(model, info, directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A plain tiny GLM model directory whose defaults are prefix-LM masking and the chatglm3 template."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-glm"))


@pytest.fixture(scope="session")
def tiny_ptuning_checkpoint(tiny_model_dir, tmp_path_factory) -> Callable[[str], Path]:
    """``tiny_ptuning_checkpoint(mask)``: a P-tuning checkpoint directory on ``tiny_model_dir`` (built once per mask)."""
    built: dict[str, Path] = {}

    def make(mask: str = "prefix_lm") -> Path:
        if mask not in built:
            built[mask] = build_tiny_ptuning_checkpoint(tiny_model_dir, tmp_path_factory.mktemp(f"ptuning-{mask}"), mask)
        return built[mask]

    return make


@pytest.fixture(scope="session")
def adgen_rows() -> list[dict]:
    """Six ADGEN-style rows of mixed prompt lengths."""
    contents = [
        "类型#上衣*颜色#红色",
        "类型#裙*版型#显瘦*风格#文艺*图案#碎花*裙长#连衣裙",
        "类型#裤*材质#牛仔布",
        "类型#上衣*材质#棉*颜色#白色*风格#休闲*图案#条纹*衣样式#衬衫*衣领型#翻领*衣袖长#长袖",
        "类型#鞋",
        "类型#裙*颜色#黑色*风格#复古",
    ]
    return [{"content": content, "summary": f"这是第{i}件好看的衣服。"} for i, content in enumerate(contents)]


@pytest.fixture
def adgen_file(tmp_path, adgen_rows) -> Path:
    """``adgen_rows`` as a JSON Lines file."""
    path = tmp_path / "dev.json"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in adgen_rows), encoding="utf-8")
    return path
