"""glibc's malloc keeping freed memory (sft.allocator): measured by the page faults a reused buffer costs."""

import json
import os
import subprocess
import sys

import pytest

from sft.allocator import keep_freed_memory, user_tuned

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")

# Allocates, fills and frees a 64 MiB tensor, then counts the minor page faults of doing it again.
REUSE = """
import json, resource, sys, torch
from sft.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
PAGES = 64 * 2**20 // 4096  # faults that a fresh 64 MiB mapping costs on first touch


def reuse_faults(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", REUSE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


@glibc
def test_freed_memory_is_reused_without_page_faults():
    kept = reuse_faults("keep")
    assert kept["applied"]
    assert kept["faults"] < PAGES // 20
    default = reuse_faults("default")  # guard: glibc's defaults map the buffer again, page by page
    assert default["faults"] >= PAGES * 0.9


@glibc
def test_the_users_malloc_settings_are_left_alone():
    result = reuse_faults("keep", {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert not result["applied"]
    assert result["faults"] >= PAGES * 0.9


@pytest.mark.parametrize("environ, tuned", [
    ({}, False),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
    ({"MALLOC_ARENA_MAX": "2"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, True),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, False),
])
def test_user_tuned(environ, tuned):
    assert user_tuned(environ) is tuned
    if tuned:
        assert keep_freed_memory(environ) is False
