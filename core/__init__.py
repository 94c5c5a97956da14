"""mykey: the event-sourced core of a MyKey ID management platform.

The public face, over packages that each hold one layer::

    from . import Engine, Resolver, Status, MyKeyState
    from . import CommandRefused, ValidationError   # every error type is here too

- ``Engine``: the write side (every platform flow as a validated command).
- ``Resolver``: the read side a gateway needs (service ID statuses).
- ``Status`` / ``MyKeyState``: the answers and the MyKey ID states.
- ``LogStore`` / ``FileLog``: the event log interface and its embedded backend.
- every exception type of ``mykey.errors``.

Layers, bottom to top (a package imports only from those below it):
``errors``, ``fs``, ``native``, ``datadir`` → ``domain`` (pure) → ``log`` → ``index``
→ ``audit`` → ``auth`` → ``engine``, ``client`` → ``gateway`` → ``cli``. Names are imported on first use, so
``import mykey`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from .errors import *  # noqa: F403 - the error types are part of the public face

__version__ = "0.1.0"

_LAZY = {
    "Engine": "mykey.engine",
    "Resolver": "mykey.index.resolver",
    "Status": "mykey.domain.status",
    "MyKeyState": "mykey.domain.status",
    "LogStore": "mykey.log.store",
    "FileLog": "mykey.log.filelog",
}

__all__ = sorted([*_LAZY, *_errors.__all__])

if TYPE_CHECKING:
    from .domain.status import MyKeyState, Status  # noqa: F401
    from .engine import Engine  # noqa: F401
    from .index.resolver import Resolver  # noqa: F401
    from .log.filelog import FileLog  # noqa: F401
    from .log.store import LogStore  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mykey' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
