"""One place for how the CLI prints results: a clear line, or JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class Output:
    """Prints one-line results or JSON objects."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    def result(self, line: str, **data: Any) -> None:
        """The command's result: `line` for people, `data` (plus ok/message) for programs."""
        if self.json_mode:
            print(json.dumps(_jsonable({"ok": True, "message": line, **data}), sort_keys=True))
        else:
            print(line)

    def refused(self, message: str, **data: Any) -> None:
        """The command was refused: why, and what to do."""
        if self.json_mode:
            print(json.dumps(_jsonable({"ok": False, "message": message, **data}), sort_keys=True))
        else:
            print(f"refused: {message}", file=sys.stderr)

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
            print(text)

    def record(self, data: dict[str, Any]) -> None:
        """One JSON line of a listing (JSON mode only)."""
        if self.json_mode:
            print(json.dumps(_jsonable(data), sort_keys=True), flush=True)


def _jsonable(value: Any) -> Any:
    """value with bytes as hex strings, recursively through dicts, lists and tuples."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
