"""Terminal-authentication nonces already accepted, shared by every gateway process on a machine.

A small LMDB environment (DATA/auth-nonces) that each process opens once, writable:
accepting a nonce is one write transaction that fails if the (terminal, nonce) pair is
there, so a message replayed to another gateway process is refused too. Entries expire
after the message's freshness window; losing them in a crash only matters for that
window, so the environment is not fsynced, and a damaged one is recreated.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import threading
from pathlib import Path
from types import ModuleType

from ..errors import EnvAlreadyOpenError, MykeyError, NonceReusedError
from ..fs import LMDB_FILES, private_dir

_EXPIRY = struct.Struct(">d")
PRUNE_SECONDS = 60.0  # sweep expired entries at most this often (per process)
_log = logging.getLogger("mykey.nonces")


class NonceStore:
    """(terminal, nonce) pairs accepted until their expiry; safe across threads and processes.

    Get one with acquire(); each process has at most one per directory (LMDB allows one
    open per process), shared by every Resolver and Engine in it.
    """

    def __init__(self, path: Path, binding: ModuleType) -> None:
        self.path = path
        self._env = binding.Env(str(path), map_size=1 << 30, max_dbs=2, sync=False)
        try:
            self._db = self._env.open_db(b"nonces")
        except BaseException:
            self._env.close()
            raise
        self._lock = threading.Lock()  # one write transaction per process at a time
        self._next_prune = 0.0
        self._users = 0
        self._closed = False

    def accept(self, terminal_id: str, nonce: bytes, now: float, expiry: float) -> None:
        """Record the pair, or raise NonceReusedError if it is recorded and not expired at `now`."""
        key = terminal_id.encode("ascii") + b"\0" + nonce
        with self._lock:
            if self._closed:
                raise MykeyError("the nonce store is closed; open a new Resolver")
            with self._env.begin(write=True) as txn:
                old = txn.get(self._db, key)
                if old is not None and _EXPIRY.unpack(old)[0] >= now:
                    raise NonceReusedError(f"terminal {terminal_id} sent a message that was already used (a replay)")
                txn.put(self._db, key, _EXPIRY.pack(expiry))
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_SECONDS
                try:
                    self._prune(now)
                except MykeyError as exc:  # the nonce is recorded; pruning can wait
                    _log.warning("could not prune %s: %s", self.path, exc)

    def _prune(self, now: float) -> None:
        with self._env.begin(write=True) as txn:
            cur = txn.cursor(self._db)
            try:
                stale = [k for k, v in cur.iter_from(b"") if _EXPIRY.unpack(v)[0] < now]
            finally:
                cur.close()
            for k in stale:
                txn.delete(self._db, k)

    def _close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._env.close()


_stores: dict[str, NonceStore] = {}
_stores_lock = threading.Lock()


def acquire(path: Path, binding: ModuleType) -> NonceStore:
    """This process's store for path (opened on first use, recreated if damaged); release() it when done."""
    key = os.path.realpath(path)  # shared whichever binding asks: LMDB allows one open per process
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            private_dir(path, files=LMDB_FILES)
            try:
                store = NonceStore(path, binding)
            except EnvAlreadyOpenError:
                raise  # open here through another handle: not damage
            except MykeyError as exc:
                # Entries only matter for minutes: a damaged store (an OS crash) is started afresh.
                _log.warning("recreating damaged %s: %s", path, exc)
                shutil.rmtree(path, ignore_errors=True)
                private_dir(path, files=LMDB_FILES)
                store = NonceStore(path, binding)
            _stores[key] = store
        store._users += 1
        return store


def release(store: NonceStore) -> None:
    """Give back a store from acquire(); the last user closes it."""
    with _stores_lock:
        store._users -= 1
        if store._users > 0:
            return
        for key, value in list(_stores.items()):
            if value is store:
                del _stores[key]
    store._close()


def unavailable(exc: BaseException) -> bool:
    """True for errors that mean the store cannot be written here (read-only data directory)."""
    return isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
