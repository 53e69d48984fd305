"""Row schemas (``--format``): how a row of a user's file becomes turns, then an :class:`Example`.

* ``alpaca``: ``instruction``, optional ``input``, ``output``.
* ``adgen``: one prompt column and one response column (``--prompt_column``,
  ``--response_column``; ``content``/``summary`` by default).
* ``chat``: ChatGLM2's multi-turn rows: ``prompt``, ``response`` and an optional ``history``
  ``[[query, response], ...]`` (``--history_column``). History is context: only ``response``
  is supervised, as in ChatGLM2's ``ptuning/main.py``.
* ``messages``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (ChatGLM3's
  ``conversations`` key is accepted too): an optional leading ``system`` message, then
  ``user``/``assistant`` alternating, ending with ``assistant``. Every assistant turn is
  supervised (GLM-4 style) unless ``--train_on last``.

Markup is not decided here: :mod:`sft.templates` renders the turns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft.data.reading import DataError, describe, read_rows
from sft.data.templates import Segment, Template, Turn, get_template

if TYPE_CHECKING:
    from sft.data.arguments import DataArguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One training row after template rendering.

    Attributes:
        segments: the rendered conversation, in order; the last segment is the final answer.
        line: 1-based line of the row in its file (0 when not read from a file).
    """

    segments: tuple[Segment, ...]
    line: int = 0

    @property
    def prompt(self) -> str:
        """Everything before the final answer: what generation starts from."""
        return "".join(segment.text for segment in self.segments[:-1])

    @property
    def answer(self) -> str:
        """The final answer: the reference for evaluation."""
        return self.segments[-1].text


class _Row:
    """A row's JSON object with the file and line that error messages name."""

    def __init__(self, value: Any, path: str | Path, line: int) -> None:
        self.path, self.line = path, line
        if not isinstance(value, dict):
            raise self.error("a JSON object", describe(value))
        self.fields: dict[str, Any] = value

    def error(self, expected: str, found: str) -> DataError:
        return DataError(self.path, self.line, expected, found)

    def get(self, key: str, *, optional: bool = False) -> Any:
        """The value under ``key``; ``None`` when ``optional`` and missing."""
        if key in self.fields:
            return self.fields[key]
        if optional:
            return None
        keys = ", ".join(f'"{name}"' for name in self.fields) or "none"
        raise self.error(f'key "{key}"', f"keys {keys}")

    def text(self, key: str, *, optional: bool = False, answer: bool = False) -> str:
        """The string under ``key``; ``""`` for a missing or null optional key."""
        value = self.get(key, optional=optional)
        if value is None and optional:
            return ""
        return self.check_text(value, f'"{key}"', answer=answer)

    def check_text(self, value: Any, name: str, *, answer: bool = False) -> str:
        """``value`` if it is a string (non-blank for an ``answer``)."""
        if not isinstance(value, str):
            raise self.error(f"{name} to be a string", describe(value))
        if answer and not value.strip():
            raise self.error(f"a non-empty answer in {name}", describe(value))
        return value


def _alpaca(row: _Row, args: DataArguments) -> tuple[list[Turn], str]:
    turn = Turn(row.text("instruction"), row.text("output", answer=True), input=row.text("input", optional=True))
    return [turn], ""


def _adgen(row: _Row, args: DataArguments) -> tuple[list[Turn], str]:
    return [Turn(row.text(args.prompt_column), row.text(args.response_column, answer=True))], ""


def _chat(row: _Row, args: DataArguments) -> tuple[list[Turn], str]:
    history = row.get(args.history_column, optional=True)
    history = [] if history is None else history
    name = f'"{args.history_column}"'
    if not isinstance(history, list):
        raise row.error(f"{name} to be a list of [query, response] pairs", describe(history))
    turns = []
    for index, pair in enumerate(history):
        if not isinstance(pair, list) or len(pair) != 2:
            raise row.error(f"{name}[{index}] to be a [query, response] pair", describe(pair))
        query = row.check_text(pair[0], f"{name}[{index}][0]")
        turns.append(Turn(query, row.check_text(pair[1], f"{name}[{index}][1]"), supervised=False))
    turns.append(Turn(row.text(args.prompt_column), row.text(args.response_column, answer=True)))
    return turns, ""


def _messages(row: _Row, args: DataArguments) -> tuple[list[Turn], str]:
    key = "conversations" if "conversations" in row.fields and "messages" not in row.fields else "messages"
    messages = row.get(key)
    if not isinstance(messages, list) or not messages:
        raise row.error(f'"{key}" to be a non-empty list of messages', describe(messages))
    said = [_message(row, f'"{key}"[{index}]', item) for index, item in enumerate(messages)]
    start = 1 if said[0][0] == "system" else 0
    if start == len(said):
        raise row.error(f'a message from "user" after {said[0][2]}', f'the end of "{key}"')
    turns = []
    for index in range(start, len(said), 2):
        query = _expect_role(row, key, said, index, "user")
        answer = _expect_role(row, key, said, index + 1, "assistant")
        supervised = args.train_on == "all" or index + 2 >= len(said)
        turns.append(Turn(query, answer, supervised=supervised))
    return turns, said[0][1] if start else ""


def _message(row: _Row, name: str, item: Any) -> tuple[str, str, str]:
    """``(role, content, name)`` of one message object."""
    if not isinstance(item, dict) or "role" not in item or "content" not in item:
        raise row.error(f'{name} to be an object with "role" and "content"', describe(item))
    role = item["role"]
    if role not in ("system", "user", "assistant"):
        raise row.error(f'{name}.role to be "system", "user" or "assistant"', describe(role))
    return role, row.check_text(item["content"], f"{name}.content", answer=role == "assistant"), name


def _expect_role(row: _Row, key: str, said: list[tuple[str, str, str]], index: int, role: str) -> str:
    """The content of ``said[index]``, which must be a ``role`` message."""
    if index >= len(said):
        raise row.error(f'a message from "{role}" after {said[-1][2]}', f'the end of "{key}"')
    if said[index][0] != role:
        raise row.error(f'{said[index][2]}.role to be "{role}"', describe(said[index][0]))
    return said[index][1]


FORMATS: dict[str, Callable[[_Row, DataArguments], tuple[list[Turn], str]]] = {
    "alpaca": _alpaca,
    "adgen": _adgen,
    "chat": _chat,
    "messages": _messages,
}


def read_examples(path: str | Path, args: DataArguments) -> tuple[list[Example], list[DataError]]:
    """Every good row of ``path`` as an :class:`Example`, and one :class:`DataError` per bad row.

    Raises:
        DataError: the file as a whole cannot be read (see :func:`sft.data.reading.read_rows`).
    """
    template = get_template(args.template)
    examples, errors = [], []
    for raw in read_rows(path):
        try:
            if raw.error is not None:
                raise raw.error
            examples.append(_example(_Row(raw.value, path, raw.line), args, template))
        except DataError as error:
            errors.append(error)
    return examples, errors


def _example(row: _Row, args: DataArguments, template: Template) -> Example:
    turns, system = FORMATS[args.format](row, args)
    return Example(template.render(turns, system), line=row.line)


def load_examples(path: str | Path, args: DataArguments) -> list[Example]:
    """Read ``path`` in ``args.format`` and render each row with ``args.template``.

    Raises:
        DataError: on the first bad row, unless ``args.skip_bad_rows`` (then bad rows are
            counted in the log and left out); when no usable row remains.
    """
    examples, errors = read_examples(path, args)
    if errors and not args.skip_bad_rows:
        raise errors[0]
    if errors:
        lines = ", ".join(str(error.line) for error in errors[:20]) + (", ..." if len(errors) > 20 else "")
        logger.warning("%s: skipped %d bad rows (lines %s); first: %s", path, len(errors), lines, errors[0])
    if not examples:
        raise DataError(path, None, "at least one usable row", f"none ({len(errors)} bad rows)")
    logger.info("%s: loaded %d rows (format %s, template %s)", path, len(examples), args.format, args.template)
    return examples
