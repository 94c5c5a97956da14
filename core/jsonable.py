"""Turn results into JSON-ready values (bytes as hex), for the CLI and audit reports."""

from __future__ import annotations

from typing import Any


def jsonable(value: Any) -> Any:
    """value with bytes as hex strings, recursively through dicts, lists and tuples."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
