"""Terminal authentication (flow ①): a registered terminal proves it holds its enrolled key.

A terminal signs ``terminal_auth_message(terminal_id, unix_time, nonce)`` with its
Ed25519 key. The platform checks the message names the terminal, is fresh (within
MAX_CLOCK_SKEW seconds), carries a nonce no gateway process accepted before, and
verifies the signature against the enrolled public key read from the index. Revoked
terminals and deactivated businesses fail; their state is told only to a caller
whose signature checked out.

Replay protection: accepted nonces live in a NonceStore shared by every gateway
process on the machine (DATA/auth-nonces); where it cannot be written, per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..datadir import DataDir
from ..errors import NonceReusedError, TerminalAuthError, ValidationError
from ..index.keys import BusinessRecord, TerminalRecord
from . import nonces
from .nonces import NonceStore

TERMINAL_AUTH_CONTEXT = b"mykey-terminal-auth/v1"
MAX_CLOCK_SKEW = 60  # seconds a terminal's signed timestamp may differ from ours
_log = logging.getLogger("mykey.auth")


class TerminalRecords(Protocol):
    """Where enrolled terminals and their businesses are read from (a Resolver)."""

    def terminal(self, terminal_id: str) -> TerminalRecord | None: ...

    def business(self, business_id: str) -> BusinessRecord | None: ...


def terminal_auth_message(terminal_id: str, timestamp: int, nonce: bytes) -> bytes:
    """What a terminal signs to authenticate: context, its ID, unix time and a fresh random nonce."""
    if not 16 <= len(nonce) <= 64:
        raise ValidationError("the nonce must be 16-64 random bytes")
    return b"\n".join([TERMINAL_AUTH_CONTEXT, terminal_id.encode("ascii"), b"%d" % timestamp, nonce.hex().encode()])


class TerminalAuthenticator:
    """Verifies terminal authentication messages against the index; safe to share between threads."""

    def __init__(self, records: TerminalRecords, nonce_store: NonceStore | None) -> None:
        self._records = records
        self._nonce_store = nonce_store  # shared by the gateway processes; None: this process only
        # Per-process fallback: (terminal, nonce) -> expiry, and the same in expiry order.
        self._nonces: dict[tuple[str, bytes], float] = {}
        self._nonce_order: deque[tuple[float, tuple[str, bytes]]] = deque()
        self._nonce_lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: str | Path, records: TerminalRecords, binding) -> TerminalAuthenticator:
        """An authenticator reading records, sharing DATA/auth-nonces with the other processes."""
        return cls(records, open_nonce_store(DataDir(Path(data_dir)), binding))

    def authenticate(self, terminal_id: str, message: bytes, signature: bytes, *, now: float | None = None) -> str:
        """Verify a terminal's Ed25519 signature over terminal_auth_message(...); returns its business ID."""
        now = time.time() if now is None else now
        fail = TerminalAuthError(f"authentication of terminal {terminal_id!r} failed; check its ID and key file")
        nonce = _parse_auth_message(terminal_id, message, now, fail)
        term = self._records.terminal(terminal_id) if terminal_id.isascii() else None
        if term is None:
            raise fail
        try:
            Ed25519PublicKey.from_public_bytes(term.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise fail from None
        if not term.active:
            raise TerminalAuthError(f"terminal {terminal_id} was revoked; enrol a new terminal")
        business = self._records.business(term.business_id)
        if business is None or not business.active:
            raise TerminalAuthError(f"business {term.business_id} of terminal {terminal_id} is deactivated")
        self._accept_nonce((terminal_id, nonce), now)
        return term.business_id

    def _accept_nonce(self, key: tuple[str, bytes], now: float) -> None:
        expiry = now + 2 * MAX_CLOCK_SKEW
        store = self._nonce_store
        if store is not None:
            try:
                store.accept(key[0], key[1], now, expiry)
            except NonceReusedError as exc:
                raise TerminalAuthError(str(exc)) from None
            return
        with self._nonce_lock:
            order = self._nonce_order
            while order and order[0][0] < now:  # forget nonces whose messages are too old anyway
                self._nonces.pop(order.popleft()[1], None)
            if key in self._nonces:
                raise TerminalAuthError(f"terminal {key[0]} sent a message that was already used (a replay)")
            self._nonces[key] = expiry
            order.append((expiry, key))

    def close(self) -> None:
        """Give back the shared nonce store. Idempotent."""
        if self._nonce_store is not None:
            nonces.release(self._nonce_store)
            self._nonce_store = None

    def __enter__(self) -> TerminalAuthenticator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_nonce_store(data: DataDir, binding) -> NonceStore | None:
    """This process's share of the machine-wide accepted-nonce record (DATA/auth-nonces).

    None only where it cannot be written (a read-only data directory): replay protection
    is then per process, and a warning says so.
    """
    try:
        return nonces.acquire(data.root / "auth-nonces", binding)
    except OSError as exc:
        if not nonces.unavailable(exc):
            raise
        _log.warning("replay protection is per process: cannot write %s/auth-nonces (%s)", data.root, exc)
        return None


def _parse_auth_message(terminal_id: str, message: bytes, now: float, fail: TerminalAuthError) -> bytes:
    """The nonce of a well-formed, fresh authentication message for terminal_id."""
    parts = message.split(b"\n") if isinstance(message, bytes) else []
    if len(parts) != 4 or parts[0] != TERMINAL_AUTH_CONTEXT or parts[1] != terminal_id.encode("ascii", "replace"):
        raise TerminalAuthError(
            "the message is not a mykey terminal authentication message for this terminal; "
            "sign terminal_auth_message(terminal_id, unix_time, nonce)"
        )
    try:
        ts = int(parts[2])
        nonce = bytes.fromhex(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise fail from None
    if abs(now - ts) > MAX_CLOCK_SKEW:
        raise TerminalAuthError(
            f"terminal {terminal_id}'s message is {int(now - ts)} s old; sign a fresh one (check the terminal's clock)"
        )
    if not 16 <= len(nonce) <= 64:
        raise fail
    return nonce
