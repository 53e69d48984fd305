"""Reading JSON Lines and JSON-array files into rows that remember their source line.

A file whose first non-blank character is ``[`` is one JSON array; anything else is JSON Lines
(one object per line, blank lines ignored), whatever the file's extension (ADGEN's ``.json``
files are JSON Lines).

Problems confined to one JSON Lines row (invalid JSON, bytes that are not UTF-8) come back as
that row's :class:`DataError` so ``--skip_bad_rows`` can leave the row out. Problems that stop
the parser of a JSON array, and unreadable or empty files, are raised: there is no next row to
resume from.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.errors import UserError

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class DataError(UserError):
    """A user's data file is not what we expected; ``str()`` is ``FILE:LINE: expected ..., found ...``.

    Attributes:
        path: the file.
        line: 1-based line of the problem, or ``None`` for the file as a whole.
    """

    def __init__(self, path: str | Path, line: int | None, expected: str, found: str) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: expected {expected}, found {found}")


@dataclass(frozen=True)
class RawRow:
    """One parsed JSON value and the line it starts on, or the error that replaced it."""

    line: int
    value: Any = None
    error: DataError | None = None


def describe(value: Any) -> str:
    """Name a JSON value the way an error message should show it (``number 3``, ``a list``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        if not value.strip():
            return "an empty string" if not value else "a blank string"
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) > 1 else ''}" if value else "an empty list"
    return "an object"


def read_rows(path: str | Path) -> list[RawRow]:
    """Parse ``path`` (JSON Lines or a JSON array) into rows tagged with their line numbers.

    Raises:
        DataError: the file cannot be read, is empty, or is a JSON array that does not parse.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(path, None, "a readable file", error.strerror or type(error).__name__) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    first = data.lstrip()[:1]
    if not first:
        raise DataError(path, None, "JSON Lines or a JSON array", "an empty file")
    if first == b"[":
        return _read_array(path, _decode(path, data))
    return _read_lines(path, data)


def read_objects(path: str | Path, string_fields: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """``(line, object)`` for every row of ``path``, each a JSON object with a string under each of
    ``string_fields``; the first row that is not is a :class:`DataError`.
    """
    objects = []
    for row in read_rows(path):
        if row.error is not None:
            raise row.error
        if not isinstance(row.value, dict):
            raise DataError(path, row.line, "a JSON object", describe(row.value))
        for name in string_fields:
            if not isinstance(row.value.get(name), str):
                found = describe(row.value[name]) if name in row.value else "fields " + (", ".join(row.value) or "none")
                raise DataError(path, row.line, f'a string under "{name}"', found)
        objects.append((row.line, row.value))
    return objects


def _decode(path: str | Path, data: bytes, first_line: int = 1) -> str:
    """Decode UTF-8, naming the line and column of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        found = f"byte 0x{data[error.start]:02x} at column {column}"
        raise DataError(path, line, "UTF-8 text", found) from None


def _read_lines(path: str | Path, data: bytes) -> list[RawRow]:
    rows = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            rows.append(RawRow(number, json.loads(_decode(path, raw, number))))
        except DataError as error:
            rows.append(RawRow(number, error=error))
        except json.JSONDecodeError as error:
            found = f"invalid JSON ({error.msg} at column {error.colno})"
            rows.append(RawRow(number, error=DataError(path, number, "a JSON object", found)))
    return rows


def _read_array(path: str | Path, text: str) -> list[RawRow]:
    """Walk a JSON array element by element so each row knows the line it starts on."""
    decoder = json.JSONDecoder()
    rows: list[RawRow] = []
    pos = _skip_whitespace(text, text.index("[") + 1)
    line, counted_to = 1, 0
    while not text.startswith("]", pos):
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            found = f"invalid JSON ({error.msg} at column {error.colno})"
            raise DataError(path, error.lineno, "a JSON value", found) from None
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        rows.append(RawRow(line, value))
        pos = _skip_whitespace(text, end)
        if text.startswith(",", pos):
            pos = _skip_whitespace(text, pos + 1)
        elif not text.startswith("]", pos):
            raise DataError(path, _line_at(text, pos), "',' or ']' after an array element", _found_at(text, pos))
    end = _skip_whitespace(text, pos + 1)
    if end < len(text):
        raise DataError(path, _line_at(text, end), "the end of the file after the array", _found_at(text, end))
    return rows


def _skip_whitespace(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _found_at(text: str, pos: int) -> str:
    return f"{text[pos:pos + 10]!r}" if pos < len(text) else "the end of the file"
