"""keep_freed_memory: a step's freed buffers are reused by the next step without the kernel faulting them in."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
                                reason="mallopt tuning applies to glibc's malloc only")

# Steps of twelve buffers of 4-24 MB (sizes change from step to step, as packed lengths do), written and
# freed; the page faults of steps 4-8, after malloc settled, and the pages those steps wrote.
STEPS = """
import json, resource, sys
import torch
from sft.training.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = written = 0
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    floats = 2**20 + (step * 37 % 5) * 2**17
    buffers = [torch.empty(floats * (1 + i % 3)).fill_(step) for i in range(12)]
    del buffers
    if step >= 3:
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        written += sum(floats * (1 + i % 3) for i in range(12)) * 4 // 4096
print(json.dumps({"applied": applied, "faults": faults, "written": written}))
"""


def run_steps(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout)


def test_freed_buffers_are_reused_without_page_faults():
    kept, plain = run_steps("keep"), run_steps("plain")
    assert kept["applied"] and not plain["applied"]
    assert kept["faults"] < kept["written"] / 20
    # glibc's own: some of the memory went back and is faulted in again (how much depends on where the heap
    # meets other mappings: 10-85% of the pages in runs here)
    assert plain["faults"] > plain["written"] / 20


def test_the_flag_turns_it_off(tmp_path):
    from sft.training.trainer import SFTTrainingArguments

    assert SFTTrainingArguments(output_dir=str(tmp_path)).keep_freed_memory
    assert not SFTTrainingArguments(output_dir=str(tmp_path), keep_freed_memory=False).keep_freed_memory
