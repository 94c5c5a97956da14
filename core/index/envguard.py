"""One binding per LMDB environment per process: a registry both bindings consult.

LMDB forbids opening one environment twice in a process, and opening it through
py-lmdb and the C library at once silently corrupts reads (see docs/DESIGN.md). Every
`Env` of `mykey.index._lmdb` and `mykey.index._lmdb_pure` calls `acquire` before it opens an
environment and `release` when it closes, so a second open fails loudly here.

The LMDB error types both bindings raise are defined here too, so that callers
catch the same classes whichever binding is in use.
"""
from __future__ import annotations

import itertools
import os
import threading

from ..errors import (
    DbNotFoundError,
    EnvAlreadyOpenError,
    EnvNotFoundError,
    LmdbError,
    MapFullError,
    MapResizedError,
)

__all__ = [
    "EnvAlreadyOpenError",
    "LmdbError",
    "DbNotFoundError",
    "MapFullError",
    "MapResizedError",
    "EnvNotFoundError",
    "acquire",
    "release",
    "holder",
    "lmdb_error",
    "key_size_error",
    "fork_generation",
    "FORKED_MESSAGE",
    "MAX_KEY_SIZE",
]

#: LMDB 0.9's default maximum key size; both bindings report keys longer than this as absent.
MAX_KEY_SIZE = 511


# LMDB error codes (lmdb.h, identical in 0.9 and py-lmdb's bundled engines).
MDB_NOTFOUND = -30798
MDB_MAP_FULL = -30792
MDB_DBS_FULL = -30791
MDB_READERS_FULL = -30790
MDB_MAP_RESIZED = -30785
MDB_INVALID = -30793
MDB_VERSION_MISMATCH = -30794
MDB_BAD_VALSIZE = -30781
MDB_TXN_FULL = -30788
MDB_BAD_TXN = -30782
MDB_BAD_DBI = -30780

_ADVICE = {
    MDB_MAP_FULL: (MapFullError, "raise map_size: reopen with a larger Env(map_size=...) or call env.set_map_size(n) with no transaction open"),
    MDB_DBS_FULL: (LmdbError, "raise max_dbs: reopen the environment with a larger Env(max_dbs=...)"),
    MDB_READERS_FULL: (LmdbError, "all reader slots are taken: close unused readers and transactions, or stop some reader processes"),
    MDB_MAP_RESIZED: (MapResizedError, "another process grew the map: finish this process's open transactions so it can adopt the new size, then retry"),
    MDB_INVALID: (LmdbError, "the files are not an LMDB 0.9 environment: check the path (1.0-format environments are unreadable by LMDB 0.9)"),
    MDB_VERSION_MISMATCH: (LmdbError, "the environment was created by an incompatible LMDB version: rebuild the index from the log"),
    MDB_TXN_FULL: (LmdbError, "the transaction has too many dirty pages: commit in smaller batches"),
    MDB_BAD_VALSIZE: (LmdbError, "keys must be 1..511 bytes"),
    MDB_BAD_TXN: (LmdbError, "an earlier operation in this transaction failed: abort it and redo the work in a new transaction"),
    MDB_BAD_DBI: (LmdbError, "the database handle is not valid in this transaction: open databases before beginning the transaction"),
}


def lmdb_error(what: str, code: int, reason: str) -> LmdbError:
    """Build the LmdbError (or subclass) for an LMDB return code, with advice on what to do."""
    cls, advice = _ADVICE.get(code, (LmdbError, ""))
    msg = f"{what}: {reason}"
    if advice:
        msg += f" ({advice})"
    return cls(msg, code)


def key_size_error(what: str, size: int) -> LmdbError:
    """The error for a key LMDB cannot store (empty or longer than MAX_KEY_SIZE)."""
    return LmdbError(
        f"{what}: key is {size} bytes but LMDB keys must be 1..{MAX_KEY_SIZE} bytes; "
        f"shorten the key (for example hash long identifiers)",
        MDB_BAD_VALSIZE,
    )


FORKED_MESSAGE = (
    "this LMDB handle was opened in the parent process before fork(); LMDB handles "
    "do not survive fork, so open the environment again in this process"
)


# ---------------------------------------------------------------------------
# The registry.

_lock = threading.Lock()
# (st_dev, st_ino) of the directory -> (serial, binding name, path as opened)
_open: dict[tuple[int, int], tuple[int, str, str]] = {}
_serial = itertools.count(1)


def _dir_key(path: str, create: bool) -> tuple[int, int]:
    real = os.path.realpath(path)
    if create:
        os.makedirs(real, exist_ok=True)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise EnvNotFoundError(
            f"no LMDB environment directory at {path!r}; check the path, or open it "
            f"writable with create=True to make a new environment",
            2,
        ) from None
    if not os.path.isdir(real):
        raise LmdbError(
            f"{path!r} is not a directory; an environment is a directory holding "
            f"data.mdb and lock.mdb, so pass the directory's path",
            20,
        )
    return (st.st_dev, st.st_ino)


def acquire(path: str, binding: str, *, create: bool = False) -> tuple[int, int, int]:
    """Register `path` as open through `binding`; raise EnvAlreadyOpenError if it is open already.

    The environment is identified by the (st_dev, st_ino) of its directory, so two
    spellings of one path (symlinks, relative paths) are caught. With create=True the
    directory is made first. Returns the key to pass to `release`.
    """
    path = os.fspath(path)
    dev_ino = _dir_key(path, create)
    with _lock:
        held = _open.get(dev_ino)
        if held is not None:
            _, held_binding, held_path = held
            where = repr(held_path) if held_path == path else f"{held_path!r} (the same directory as {path!r})"
            raise EnvAlreadyOpenError(
                f"LMDB environment {where} is already open in this process through the "
                f"{held_binding!r} binding, so it cannot be opened again through the "
                f"{binding!r} binding: one process may open an environment once, through "
                f"one binding (see docs/DESIGN.md); reuse the open handle or close it first"
            )
        serial = next(_serial)
        _open[dev_ino] = (serial, binding, path)
    return (*dev_ino, serial)


def release(key: tuple[int, int, int] | None) -> None:
    """Forget an environment registered by `acquire`; stale, unknown or None keys are ignored."""
    if key is None:
        return
    dev_ino = (key[0], key[1])
    with _lock:
        held = _open.get(dev_ino)
        if held is not None and held[0] == key[2]:
            del _open[dev_ino]


def holder(path: str) -> str | None:
    """Name of the binding that has `path` open in this process, or None."""
    try:
        dev_ino = _dir_key(os.fspath(path), False)
    except LmdbError:
        return None
    with _lock:
        held = _open.get(dev_ino)
    return held[1] if held else None


# After fork() the child holds copies of the parent's handles, which LMDB forbids it to
# use; both bindings refuse them (and never close them) in the child. The child may open
# the environment afresh, so it starts with an empty registry; a parent handle released
# in the child carries a stale serial and so cannot drop the child's own registration.
_fork_generation = 0


def fork_generation() -> int:
    """How many times this process's ancestors forked since import; handles from an older generation are dead."""
    return _fork_generation


def _after_fork_in_child() -> None:
    global _lock, _fork_generation
    _lock = threading.Lock()
    _open.clear()
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
