"""What every generating ``python -m sft.*`` command does around its work.

Logging goes to stderr (stdout carries the command's output), and a user's mistake (a bad
flag, file, checkpoint) ends as one ``error: ...`` line with exit status 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import transformers


def run_command(
    parse: Callable[[], tuple], work: Callable[..., Any], user_errors: tuple[type[Exception], ...]
) -> int:
    """``work(*parse())`` with logging set up; returns the exit status."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    transformers.utils.logging.set_verbosity_warning()
    try:
        parsed = parse()
    except ValueError as err:  # a flag check
        return _fail(err)
    try:
        work(*parsed)
    except user_errors as err:
        return _fail(err)
    return 0


def _fail(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2
