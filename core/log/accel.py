"""Choose the framing implementation: the Cython module `mykey.log._framing` or its pure twin.

This is the one place the choice is made; everything that encodes or parses batches
asks ``framing_module()``. The twins give byte-identical results (the test suite runs
both, and compares them). The format itself (constants, the pure twin, recovery
helpers) lives in mykey.log.framing.

MYKEY_PURE (read by mykey.native) forces the pure twin, as it does for the LMDB binding.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from ..native import pure_requested

__all__ = ["NAMES", "framing_module"]

NAMES = ("native", "pure")
_MODULES = {"native": "mykey.log._framing", "pure": "mykey.log.framing"}


def framing_module(name: str | None = None) -> ModuleType:
    """The framing implementation called `name` ("native" or "pure"), or by default the native
    one unless MYKEY_PURE asks for the pure twin or the extension is not built."""
    if name is not None and name not in _MODULES:
        raise ValueError(f"unknown framing implementation {name!r}; use 'native' or 'pure'")
    if name == "pure" or (name is None and pure_requested()):
        return importlib.import_module(_MODULES["pure"])
    try:
        return importlib.import_module(_MODULES["native"])
    except ImportError as exc:
        if name == "native":
            raise ImportError(
                f"the native framing module mykey.log._framing is not built ({exc}); build it with "
                "`make build`, or use the pure twin (framing_impl='pure' or MYKEY_PURE=1)"
            ) from exc
        if not (isinstance(exc, ModuleNotFoundError) and exc.name == _MODULES["native"]):
            # Built but broken: say so, then fall back.
            warnings.warn(
                f"mykey.log._framing is built but does not import ({exc}); using the slower pure-Python "
                "framing. Rebuild it (make build), or set MYKEY_PURE=1 to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
        return importlib.import_module(_MODULES["pure"])
