"""The one base class of the mistakes a user can fix: a flag, a file, a checkpoint, a model directory.

Every command (:func:`sft.cli.run_command`) prints such an error as one ``error: ...`` line and
exits with status 2 (or the error's own ``exit_status``); anything else is a bug of ours and
keeps its traceback. Messages say what was expected, what was found, and where.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave us cannot be used; ``str()`` is the whole one-line message."""

    exit_status = 2


class CheckpointError(UserError):
    """A checkpoint that is incomplete or does not match what it is loaded with."""
