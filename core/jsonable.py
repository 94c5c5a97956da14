"""Turn plain results into JSON-ready values (bytes as hex): the CLI's ``--json`` output uses it.

A low-level helper with no knowledge of mykey's types; library functions return plain
data (bytes stay bytes) and leave this conversion to the presentation edge.
"""

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
