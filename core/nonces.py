"""Terminal-authentication nonces already accepted, shared by every gateway process on a machine.

A small LMDB environment (DATA/auth-nonces) that each Resolver opens writable: accepting
a nonce is one write transaction that fails if the (terminal, nonce) pair is there, so a
message replayed to another gateway process is refused too. Entries expire after the
message's freshness window; losing them in a crash only matters for that window, so the
environment is not fsynced.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from types import ModuleType

from .errors import MykeyError

_EXPIRY = struct.Struct(">d")
PRUNE_EVERY = 4096  # accepted nonces between two sweeps of expired entries


class ReplayError(MykeyError):
    """The authentication message was already accepted once (a replay)."""


class NonceStore:
    """(terminal, nonce) pairs accepted until their expiry; safe across threads and processes."""

    def __init__(self, path: Path, binding: ModuleType) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._env = binding.Env(str(path), map_size=1 << 30, max_dbs=2, sync=False)
        self._db = self._env.open_db(b"nonces")
        self._lock = threading.Lock()  # one write transaction per process at a time
        self._accepted = 0

    def accept(self, terminal_id: str, nonce: bytes, expiry: float) -> None:
        """Record the pair, or raise ReplayError if it is already recorded (and not expired)."""
        key = terminal_id.encode("ascii") + b"\0" + nonce
        with self._lock:
            with self._env.begin(write=True) as txn:
                old = txn.get(self._db, key)
                if old is not None and _EXPIRY.unpack(old)[0] >= time.time():
                    raise ReplayError(f"terminal {terminal_id} sent a message that was already used (a replay)")
                txn.put(self._db, key, _EXPIRY.pack(expiry))
            self._accepted += 1
            if self._accepted % PRUNE_EVERY == 0:
                self._prune()

    def _prune(self) -> None:
        now = time.time()
        with self._env.begin(write=True) as txn:
            cur = txn.cursor(self._db)
            try:
                stale = [k for k, v in cur.iter_from(b"") if _EXPIRY.unpack(v)[0] < now]
            finally:
                cur.close()
            for k in stale:
                txn.delete(self._db, k)

    def close(self) -> None:
        self._env.close()
