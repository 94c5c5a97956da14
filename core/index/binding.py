"""Choose the LMDB binding: the Cython module `mykey.index._lmdb`, or its py-lmdb twin.

`binding()` returns `mykey.index._lmdb` unless MYKEY_PURE asks for the pure twins (read
by `mykey.native.pure_requested`, as the framing choice reads it) or the extension does
not import, in which case it returns `mykey.index._lmdb_pure`. Both have the interface
of `_lmdb.pyi` and give byte-identical results. Whichever is chosen, a process opens
each environment through one binding only (enforced by `mykey.index.envguard`).
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from ..native import pure_requested

__all__ = ["binding", "binding_by_name", "native_import_error", "NAMES"]

NAMES = ("native", "pure")
_MODULES = {"native": "mykey.index._lmdb", "pure": "mykey.index._lmdb_pure"}


def binding_by_name(name: str) -> ModuleType:
    """Import and return the binding called `name` ("native" or "pure")."""
    try:
        modname = _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown LMDB binding {name!r}; use 'native' or 'pure'") from None
    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        if name == "native":
            raise ImportError(
                f"the native LMDB binding mykey.index._lmdb is not built ({exc}); build it with "
                f"`make build` (or `MYKEY_ONLY_EXT=_lmdb python setup.py build_ext --inplace`), or set MYKEY_PURE=1 "
                f"to use the py-lmdb binding"
            ) from exc
        raise


def native_import_error() -> BaseException | None:
    """Why the native binding could not be imported, or None if it imports."""
    try:
        importlib.import_module(_MODULES["native"])
    except ImportError as exc:
        return exc
    return None


def binding() -> ModuleType:
    """The binding to use: native unless MYKEY_PURE asks for pure or the extension fails to import."""
    if pure_requested():
        return binding_by_name("pure")
    try:
        return importlib.import_module(_MODULES["native"])
    except ImportError as exc:
        if not (isinstance(exc, ModuleNotFoundError) and exc.name == _MODULES["native"]):
            # Built but broken (e.g. liblmdb missing at run time): say so, then fall back.
            warnings.warn(f"mykey.index._lmdb is built but does not import ({exc}); using the slower "
                          f"py-lmdb binding. Rebuild it, or set MYKEY_PURE=1 to silence this.",
                          RuntimeWarning, stacklevel=2)
        return binding_by_name("pure")
