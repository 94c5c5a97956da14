"""Terminal-authentication nonces already accepted, shared by every gateway process on a machine.

The (terminal, nonce) pairs live in a single-use store (mykey.auth.onetime) in
DATA/auth-nonces: accepting a nonce records the pair unless a process recorded it
before and it has not expired, so a message replayed to another gateway process is
refused too. Entries expire after the message's freshness window.
"""

from __future__ import annotations

import errno
from pathlib import Path
from types import ModuleType

from ..errors import NonceReusedError
from . import onetime

PRUNE_SECONDS = onetime.PRUNE_SECONDS
_NAME = b"nonces"


class NonceStore:
    """(terminal, nonce) pairs accepted until their expiry; safe across threads and processes.

    Get one with acquire(); each process has at most one per directory, shared by every
    Resolver and Engine in it.
    """

    def __init__(self, keys: onetime.OneTimeKeys) -> None:
        self._keys = keys
        self.path = keys.path

    def accept(self, terminal_id: str, nonce: bytes, now: float, expiry: float) -> None:
        """Record the pair, or raise NonceReusedError if it is recorded and not expired at `now`."""
        if not self._keys.add(terminal_id.encode("ascii") + b"\0" + nonce, expiry, now):
            raise NonceReusedError(f"terminal {terminal_id} sent a message that was already used (a replay)")


def acquire(path: Path, binding: ModuleType) -> NonceStore:
    """This process's store for path (opened on first use, recreated if damaged); release() it when done."""
    return NonceStore(onetime.acquire(path, binding, _NAME))


def release(store: NonceStore) -> None:
    """Give back a store from acquire(); the last user closes it."""
    onetime.release(store._keys)


def unavailable(exc: BaseException) -> bool:
    """True for errors that mean the store cannot be written here (read-only data directory)."""
    return isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
