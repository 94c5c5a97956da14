"""One place for how the CLI prints results: a clear line, or JSON with --json.

Nothing printed can drive a terminal: in text, control characters (C0, C1, ESC, DEL),
format characters (bidi overrides, zero-width characters), surrogates, private-use and
unassigned code points and line/paragraph separators are shown escaped as ``\\uXXXX``;
JSON output is pure ASCII (``ensure_ascii``, with DEL escaped too).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable
from typing import Any

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape(ch: str) -> str:
    cp = ord(ch)
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    cp -= 0x10000  # JSON-style surrogate pair, so an escaped JSON document stays the same JSON
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def printable(text: str) -> str:
    """text with every character of ESCAPED_CATEGORIES (newlines and tabs too) escaped as \\uXXXX."""
    if text.isprintable():  # the common case; False for every escaped category (and some spaces)
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in ESCAPED_CATEGORIES else ch for ch in text)


def printable_document(text: str) -> str:
    """A multi-line document made safe line by line (its own line breaks are kept)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _dumps(data: Any) -> str:
    """One JSON line, pure ASCII (json leaves DEL raw: escape it too)."""
    return json.dumps(_jsonable(data), sort_keys=True).replace("\x7f", "\\u007f")


class Output:
    """Prints one-line results or JSON objects."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    def result(self, line: str, **data: Any) -> None:
        """The command's result: `line` for people, `data` (plus ok/message) for programs."""
        if self.json_mode:
            print(_dumps({"ok": True, "message": line, **data}))
        else:
            print(printable(line))

    def refused(self, message: str, **data: Any) -> None:
        """The command was refused: why, and what to do."""
        if self.json_mode:
            print(_dumps({"ok": False, "message": message, **data}))
        else:
            print(f"refused: {printable(message)}", file=sys.stderr)

    def verdict(
        self, notes: Iterable[str], failure: str | None, success: str, /, *, also: Iterable[str] = (), **data: Any
    ) -> int:
        """A check's outcome and exit code: its notes, then `failure` refused (with `also`) or `success`."""
        for note in notes:
            self.line(f"note: {note}")
        if failure is not None:
            for other in also:
                self.line(f"also: {other}")
            self.refused(failure, **data)
            return EXIT_REFUSED
        self.result(success, **data)
        return EXIT_OK

    def line(self, text: str) -> None:
        """A line of a multi-line listing (text mode only)."""
        if not self.json_mode:
            print(printable(text))

    def record(self, data: dict[str, Any]) -> None:
        """One JSON line of a listing (JSON mode only)."""
        if self.json_mode:
            print(_dumps(data), flush=True)

    def document(self, text: str) -> None:
        """A multi-line document (a signed note, a proof) written as it is, made safe line by line."""
        sys.stdout.write(printable_document(text))


def _jsonable(value: Any) -> Any:
    """value with bytes as hex strings, recursively through dicts, lists and tuples."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
