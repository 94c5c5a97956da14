"""Choose the Cython framing module or its pure-Python twin.

MYKEY_PURE=1 forces the pure twins everywhere (the test suite runs both).
"""

from __future__ import annotations

import os
from types import ModuleType


def pure_requested() -> bool:
    """True when MYKEY_PURE=1 asks for the pure-Python twins."""
    return os.environ.get("MYKEY_PURE", "") not in ("", "0")


def framing_module(name: str | None = None) -> ModuleType:
    """The framing implementation: "native" (Cython), "pure", or the default choice."""
    from mykey.log import framing

    if name == "pure" or (name is None and pure_requested()):
        return framing
    try:
        from mykey.log import _framing  # type: ignore[attr-defined]
    except ImportError:
        if name == "native":
            raise
        return framing
    return _framing
