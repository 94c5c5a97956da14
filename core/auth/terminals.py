"""Terminal authentication (flow ①): a registered terminal proves it holds its enrolled key.

A terminal makes its own key pair (``mykey.client.keys``) and signs
``terminal_auth_message(terminal_id, unix_time, nonce)`` with it. The platform checks
the signature against the enrolled public key read from the index, then that the
message is fresh (within MAX_CLOCK_SKEW seconds of our clock) and carries a nonce no
gateway process accepted before. Revoked terminals and deactivated businesses fail.

What a caller learns. Whether a terminal ID is enrolled is told to nobody: an unknown
ID is checked against a dummy key, so it costs the same signature verification as an
enrolled one with a bad signature, and both get the same error. A terminal's state
(revoked, business deactivated) and a stale timestamp are told only to a caller whose
signature checked out, and the stale-message error does not give our clock.

Replay protection: accepted nonces live in a NonceStore shared by every gateway
process on the machine (DATA/auth-nonces). Where it cannot be written, authentication
is refused (fail closed) unless the caller chose per-process replay protection
explicitly (``per_process_replay=True``), which lets a message be replayed once to
each other gateway process within its freshness window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..datadir import DataDir
from ..domain.ids import TERMINAL_ID_RE
from ..errors import (
    MykeyError,
    NonceReusedError,
    ReplayProtectionError,
    TerminalAuthError,
    ValidationError,
)
from ..index.keys import BusinessRecord, TerminalRecord
from . import nonces
from .nonces import NonceStore

TERMINAL_AUTH_CONTEXT = b"mykey-terminal-auth/v1"
MAX_CLOCK_SKEW = 60  # seconds a terminal's signed timestamp may differ from ours
# What an unknown terminal ID is verified against (a key whose private half is dropped at
# once): the same work as an enrolled terminal with a bad signature.
_DUMMY_PUBLIC_KEY = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
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
    """Verifies terminal authentication messages against the index; safe to share between threads.

    nonce_store: the machine-wide record of accepted nonces. Without one, every
    authentication is refused (ReplayProtectionError, saying why: nonce_error) unless
    per_process_replay asks for this process's own record only.
    """

    def __init__(
        self,
        records: TerminalRecords,
        nonce_store: NonceStore | None,
        *,
        per_process_replay: bool = False,
        nonce_error: str | None = None,
    ) -> None:
        self._records = records
        self._nonce_store = nonce_store
        self._per_process = nonce_store is None and per_process_replay
        self._nonce_error = nonce_error or "no shared nonce record was given"
        # Per-process record (opt-in): (terminal, nonce) -> expiry, and the same in expiry order.
        self._nonces: dict[tuple[str, bytes], float] = {}
        self._nonce_order: deque[tuple[float, tuple[str, bytes]]] = deque()
        self._nonce_lock = threading.Lock()

    @classmethod
    def open(
        cls, data_dir: str | Path, records: TerminalRecords, binding, *, per_process_replay: bool = False
    ) -> TerminalAuthenticator:
        """An authenticator reading records, sharing DATA/auth-nonces with the other processes.

        If DATA/auth-nonces cannot be written, it refuses every authentication (saying why),
        or with per_process_replay keeps this process's own record (and logs a warning).
        """
        data = DataDir(Path(data_dir))
        try:
            return cls(records, open_nonce_store(data, binding))
        except ReplayProtectionError as exc:
            if per_process_replay:
                _log.warning("replay protection is per process only, as asked: %s", exc)
            else:
                _log.error("%s", exc)
            return cls(records, None, per_process_replay=per_process_replay, nonce_error=str(exc))

    def authenticate(self, terminal_id: str, message: bytes, signature: bytes, *, now: float | None = None) -> str:
        """Verify a terminal's Ed25519 signature over terminal_auth_message(...); returns its business ID."""
        now = time.time() if now is None else now
        fail = TerminalAuthError(f"authentication of terminal {terminal_id!r} failed; check its ID and key file")
        known = isinstance(terminal_id, str) and TERMINAL_ID_RE.match(terminal_id) is not None
        term = self._records.terminal(terminal_id) if known else None
        # One signature verification whatever happens: unknown IDs against the dummy key.
        signed = _verifies(_DUMMY_PUBLIC_KEY if term is None else term.public_key, signature, message)
        parsed = _parse_auth_message(terminal_id if known else "", message)
        if parsed is None:
            raise TerminalAuthError(
                "the message is not a mykey terminal authentication message for this terminal; "
                "sign terminal_auth_message(terminal_id, unix_time, nonce)"
            )
        if term is None or not signed:
            raise fail
        timestamp, nonce = parsed
        if nonce is None:
            raise fail
        if abs(now - timestamp) > MAX_CLOCK_SKEW:
            raise TerminalAuthError(
                f"terminal {terminal_id}'s message is outside the accepted time window (±{MAX_CLOCK_SKEW} s); "
                "sign a fresh one, and check the terminal's clock"
            )
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
            except (OSError, MykeyError) as exc:  # fail closed: an unrecorded nonce could be replayed
                raise ReplayProtectionError(
                    f"authentication refused: the accepted nonce could not be recorded in {store.path} ({exc}); "
                    "check that the disk has room and the directory is writable by this user"
                ) from None
            return
        if not self._per_process:
            raise ReplayProtectionError(
                f"authentication refused: replay protection is unavailable ({self._nonce_error}). Make "
                "DATA/auth-nonces writable by this user, or accept per-process replay protection only "
                "(per_process_replay=True)"
            )
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
            self._nonce_error = "this authenticator was closed"

    def __enter__(self) -> TerminalAuthenticator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_nonce_store(data: DataDir, binding) -> NonceStore:
    """This process's share of the machine-wide accepted-nonce record (DATA/auth-nonces).

    ReplayProtectionError where it cannot be written (a read-only data directory, or one
    owned by another user): authentication must then fail closed, or be opted out of explicitly.
    """
    try:
        return nonces.acquire(data.root / "auth-nonces", binding)
    except OSError as exc:
        if not nonces.unavailable(exc):
            raise
        raise ReplayProtectionError(f"cannot write {data.root / 'auth-nonces'} ({exc.strerror or exc})") from None


def _verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if signature is public_key's Ed25519 signature over message (never raises for bad input)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature if isinstance(signature, bytes) else b"", message if isinstance(message, bytes) else b""
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _parse_auth_message(terminal_id: str, message: bytes) -> tuple[int, bytes | None] | None:
    """(timestamp, nonce) of a message for terminal_id; None if it is not one; nonce None if malformed."""
    parts = message.split(b"\n") if isinstance(message, bytes) else []
    if len(parts) != 4 or parts[0] != TERMINAL_AUTH_CONTEXT or parts[1] != terminal_id.encode("ascii", "replace"):
        return None
    try:
        timestamp = int(parts[2])
        nonce = bytes.fromhex(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return 0, None
    return timestamp, nonce if 16 <= len(nonce) <= 64 else None
