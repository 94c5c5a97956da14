"""Choose the Cython framing module or its pure-Python twin.

MYKEY_PURE (read by mykey.native) forces the pure twins everywhere (the test suite runs both).
"""

from __future__ import annotations

from types import ModuleType

from ..native import pure_requested


def framing_module(name: str | None = None) -> ModuleType:
    """The framing implementation: "native" (Cython), "pure", or the default choice."""
    from . import framing

    if name == "pure" or (name is None and pure_requested()):
        return framing
    try:
        from . import _framing  # type: ignore[attr-defined]
    except ImportError:
        if name == "native":
            raise
        return framing
    return _framing
