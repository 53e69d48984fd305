"""What every ``python -m sft.*`` command does around its work.

Logging goes to stderr (stdout carries the command's output), a transformers or peft outside
the tested range gets one warning line, and a user's mistake (a bad flag, file, checkpoint:
:class:`sft.errors.UserError`), or an installed transformers that runs the model in a way prefix
injection does not support (:class:`ptuning.injection.InjectionError`), ends as one
``error: ...`` line and a non-zero exit status, never a traceback.

Commands import torch and transformers only inside their work, so ``--help`` is fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

from sft.errors import UserError
from sft.versions import check_supported

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(stream: TextIO | None = None, quiet: bool = False) -> None:
    """Our loggers at INFO (WARNING when ``quiet``, e.g. a non-zero rank), transformers' at WARNING.

    ``stream`` is the current ``sys.stderr`` unless given (looked up now, not at import).
    """
    stream = stream or sys.stderr
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING if quiet else logging.INFO, stream=stream, force=True)
    logging.getLogger("transformers").setLevel(logging.WARNING)


def run_command(parse: Callable[[], Any], work: Callable[[Any], Any], *, log_stream: TextIO | None = None) -> int:
    """``work(parse())`` with logging set up; returns the exit status.

    ``parse`` reads the flags (a ``ValueError`` there is a flag check: one line, status 2);
    ``work`` does the job (what it returns is not an exit status: commands print their results).
    """
    setup_logging(log_stream)
    for warning in check_supported():
        print(warning, file=sys.stderr)
    try:
        parsed = parse()
    except ValueError as err:
        return _fail(err)
    from ptuning.injection import InjectionError  # imports torch: only once there is work to do

    try:
        work(parsed)
    except (UserError, InjectionError) as err:
        return _fail(err)
    return 0


def _fail(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return getattr(err, "exit_status", 2)
