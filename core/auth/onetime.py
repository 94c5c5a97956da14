"""Keys usable once before they expire, shared by every process on a machine (or every node).

A small LMDB environment per use (terminal-authentication nonces in DATA/auth-nonces,
proof-of-possession challenges in DATA/challenges) that each process opens once,
writable. Each operation is one write transaction, so two processes can never both
win: ``add`` records a key unless it is there and unexpired (first use wins, for
nonces), ``take`` removes a key and says whether it was there (issued once, used
once, for challenges). Entries only matter until they expire: the environment is
not fsynced (a process crash loses nothing; an OS crash may lose the last
seconds), a damaged one is recreated empty, and expired entries are swept through
an index ordered by expiry, so a sweep touches only what expired.

When the log is a NATS stream (``--log nats://...``, MYKEY_LOG, or a JetStreamLog given
to the caller), ``acquire`` returns the same operations over a JetStream key-value
bucket of the log's cluster instead (mykey.auth.onetime_kv), shared by every gateway
node: a nonce or challenge is then single-use across machines.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import EnvAlreadyOpenError, MykeyError
from ..fs import LMDB_FILES, private_dir

_EXPIRY = struct.Struct(">d")  # value: expiry, unix seconds
_WHEN = struct.Struct(">Q")  # expiry index key prefix: expiry in µs, big-endian (sorts by time)
PRUNE_SECONDS = 60.0  # sweep expired entries at most this often (per process)
MAP_SIZE = 1 << 30
_log = logging.getLogger("mykey.onetime")


def _when(expiry: float) -> bytes:
    return _WHEN.pack(max(0, math.ceil(expiry * 1_000_000)))


class OneTimeKeys:
    """Keys with an expiry in one LMDB environment; safe across threads and processes.

    Get one with acquire(); each process has at most one per directory (LMDB allows one
    open per process), shared by everything in it that uses that directory.
    """

    def __init__(self, path: Path, binding: ModuleType, name: bytes) -> None:
        self.path = path
        self.name = name
        self._env = binding.Env(str(path), map_size=MAP_SIZE, max_dbs=2, sync=False)
        try:
            self._keys = self._env.open_db(name)
            self._by_expiry = self._env.open_db(name + b"@expiry")
            self._index_existing()
        except BaseException:
            self._env.close()
            raise
        self._lock = threading.Lock()  # one write transaction per process at a time
        self._next_prune = 0.0
        self._users = 0
        self._closed = False

    def _index_existing(self) -> None:
        """Entries written before the expiry index existed get their index entries (once)."""
        if self._env.stat(self._by_expiry)["entries"] or not self._env.stat(self._keys)["entries"]:
            return
        with self._env.begin(write=True) as txn:
            cur = txn.cursor(self._keys)
            try:
                rows = list(cur.iter_from(b""))
            finally:
                cur.close()
            for key, value in rows:
                txn.put(self._by_expiry, _when(_EXPIRY.unpack(value)[0]) + key, b"")

    def _check_open(self) -> None:
        if self._closed:
            raise MykeyError(f"the single-use store {self.path} is closed; open it again")

    def add(self, key: bytes, expiry: float, now: float) -> bool:
        """Record key until expiry; False (nothing changed) if it is recorded and not expired at now."""
        with self._lock:
            self._check_open()
            with self._env.begin(write=True) as txn:
                old = txn.get(self._keys, key)
                if old is not None:
                    old_expiry = _EXPIRY.unpack(old)[0]
                    if old_expiry >= now:
                        return False
                    txn.delete(self._by_expiry, _when(old_expiry) + key)
                txn.put(self._keys, key, _EXPIRY.pack(expiry))
                txn.put(self._by_expiry, _when(expiry) + key, b"")
            self._prune_now_and_then(now)
        return True

    def take(self, key: bytes, now: float) -> float | None:
        """Remove key; its expiry if it was recorded (expired or not), None if it was not."""
        with self._lock:
            self._check_open()
            with self._env.begin(write=True) as txn:
                old = txn.get(self._keys, key)
                if old is not None:
                    expiry = _EXPIRY.unpack(old)[0]
                    txn.delete(self._keys, key)
                    txn.delete(self._by_expiry, _when(expiry) + key)
            self._prune_now_and_then(now)
        return None if old is None else expiry

    def __len__(self) -> int:
        """How many keys are recorded (expired ones included until a sweep removes them)."""
        self._check_open()
        return self._env.stat(self._keys)["entries"]

    def prune(self, now: float) -> int:
        """Remove every key expired at now; returns how many."""
        with self._lock:
            self._check_open()
            return self._prune(now)

    def _prune_now_and_then(self, now: float) -> None:
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_SECONDS
            try:
                self._prune(now)
            except MykeyError as exc:  # what was asked is done; sweeping can wait
                _log.warning("could not sweep expired entries of %s: %s", self.path, exc)

    def _prune(self, now: float) -> int:
        limit = _when(now)
        with self._env.begin(write=True) as txn:
            cur = txn.cursor(self._by_expiry)
            try:
                stale = []
                for ikey, _ in cur.iter_from(b""):
                    if ikey[: _WHEN.size] >= limit:
                        break
                    stale.append(ikey)
            finally:
                cur.close()
            for ikey in stale:
                txn.delete(self._by_expiry, ikey)
                txn.delete(self._keys, ikey[_WHEN.size :])
        return len(stale)

    def _close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._env.close()


# This process's stores, shared by their users and closed by the last one: LMDB ones by real
# path, key-value ones (onetime_kv) by (cluster URL, name).
_stores: dict[object, Any] = {}
_stores_lock = threading.Lock()


def _forget_after_fork() -> None:
    # A forked child must not use its parent's LMDB handles or NATS connections: it opens its own on first use.
    global _stores_lock
    _stores_lock = threading.Lock()
    _stores.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def shared_location(log: object | None = None):
    """The NATS location whose key-value buckets replace the machine-local stores, or None.

    log: a LogStore the caller writes to (a JetStreamLog has a ``location``); without one,
    the process's log location (--log / MYKEY_LOG) decides.
    """
    from ..log.backend import log_location
    from ..log.jetstream import NatsLocation, is_nats_location

    if log is not None:
        location = getattr(log, "location", None)
        return location if isinstance(location, NatsLocation) else None
    url = log_location()
    return NatsLocation.parse(url) if url is not None and is_nats_location(url) else None


def acquire(path: Path, binding: ModuleType, name: bytes, *, log: object | None = None):
    """This process's store at path (opened on first use, recreated if damaged); release() it when done.

    With a NATS log (see shared_location) the store is the cluster's key-value bucket for
    name (a KvOneTimeKeys, same operations), and path is not used.
    """
    location = shared_location(log)
    if location is not None:
        from . import onetime_kv

        return onetime_kv.acquire(location, name)
    key = os.path.realpath(path)  # shared whichever binding asks: LMDB allows one open per process
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            private_dir(path, files=LMDB_FILES)
            try:
                store = OneTimeKeys(path, binding, name)
            except EnvAlreadyOpenError:
                raise  # open here through another handle: not damage
            except MykeyError as exc:
                # Entries only matter for minutes: a damaged store (an OS crash) is started afresh.
                _log.warning("recreating damaged %s: %s", path, exc)
                shutil.rmtree(path, ignore_errors=True)
                private_dir(path, files=LMDB_FILES)
                store = OneTimeKeys(path, binding, name)
            _stores[key] = store
        elif store.name != name:
            raise MykeyError(f"{path} holds {store.name.decode()!r} entries, not {name.decode()!r}; use another directory")
        store._users += 1
        return store


def share(key: object, make: Callable[[], Any]) -> Any:
    """The store registered under key (made by make() the first time); one more user of it."""
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = make()
        store._users += 1
        return store


def release(store) -> None:
    """Give back a store from acquire() (or share()); the last user closes it."""
    with _stores_lock:
        store._users -= 1
        if store._users > 0:
            return
        for key, value in list(_stores.items()):
            if value is store:
                del _stores[key]
    store._close()
