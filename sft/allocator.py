"""glibc's malloc, told to keep the memory torch frees on CPU so the next step reuses it.

By default glibc serves a large allocation (from 128 KiB, a threshold that rises with use up to
32 MiB) with a fresh ``mmap`` and unmaps it when it is freed, and hands the free top of its heap
back to the kernel once a few times that threshold piles up. A training step allocates and frees
the same large buffers every step: the output layer's logits, their log-softmax and its gradient,
the activations. So every step the kernel maps those pages again and zeroes each on first touch,
one page fault per 4 KiB. In the full fine-tuning arm of ``bench/train_throughput.py`` (2 cores)
zero-filling an 849 x 8,000 float gradient of the loss took 40 ms: 0.7 GB/s, memory bandwidth
would allow under a tenth of that time. Kept memory is reused without faults, and steps ran 1.17x faster
(for transformers' plain Trainer too, when given the same setting).

:func:`keep_freed_memory` sets what ``mallopt(3)`` documents for this: no ``mmap`` for allocations
(``M_MMAP_MAX`` 0) and no trimming (``M_TRIM_THRESHOLD`` -1). The process then keeps its peak
heap, which is what a training run's peak memory is anyway. It leaves alone a process whose user
chose malloc settings (``MALLOC_*`` or ``GLIBC_TUNABLES`` in the environment) and any C library
other than glibc (where ``gnu_get_libc_version`` is missing); with another allocator preloaded
(jemalloc, tcmalloc) glibc's settings are set but unused.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt(3) parameter numbers, from glibc's malloc.h
M_MMAP_MAX = -4


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Tell glibc's malloc never to ``mmap`` an allocation nor give freed memory back to the kernel;
    whether it applied (not on another C library, nor when ``environ`` sets malloc's variables)."""
    if not sys.platform.startswith("linux") or user_tuned(environ):
        return False
    libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    logger.debug("glibc malloc keeps freed memory: %s", applied)
    return applied


def user_tuned(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` already sets glibc's malloc (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX``,
    ``GLIBC_TUNABLES=glibc.malloc...``)."""
    return any(name.startswith("MALLOC_") for name in environ) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
