"""The read side a gateway needs: resolve service IDs and authenticate terminals.

Read-only over the LMDB index; any number of processes may open it, sharing the
page cache. The hot path (`resolve_many`) is one call into the Cython binding,
which looks up every key in a nogil C loop inside one read transaction. A
business sees only its own service IDs' statuses: keys are prefixed with the
authenticated business ID, and no answer carries a MyKey ID.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..auth import nonces
from ..auth.nonces import NonceStore
from ..datadir import DataDir
from ..domain.ids import BUSINESS_ID_RE
from ..domain.status import Status, status_of, statuses
from ..errors import (
    MykeyError,
    NoIndexError,
    NonceReusedError,
    TerminalAuthError,
    ValidationError,
)
from . import keys as k
from .binding import binding as default_binding
from .projection import Dbs
from .store import current_generation, open_dbs, read_meta_last_seq


def _business_prefix(business_id: str) -> bytes:
    # The prefix must be exactly a business ID, or keys of one business could reach another's.
    if type(business_id) is not str or not BUSINESS_ID_RE.match(business_id):
        raise ValidationError(f"business_id {business_id!r} is not a business ID (a letter and 4 digits)")
    return business_id.encode("ascii")


TERMINAL_AUTH_CONTEXT = b"mykey-terminal-auth/v1"
MAX_CLOCK_SKEW = 60  # seconds a terminal's signed timestamp may differ from ours
RECHECK_SECONDS = 0.25  # how often an open resolver looks for a rebuilt index
RETIRE_GRACE = 5.0  # seconds an index replaced by a rebuild stays open for calls still using it
_log = logging.getLogger("mykey.resolver")


def terminal_auth_message(terminal_id: str, timestamp: int, nonce: bytes) -> bytes:
    """What a terminal signs to authenticate: context, its ID, unix time and a fresh random nonce."""
    if not 16 <= len(nonce) <= 64:
        raise ValidationError("the nonce must be 16-64 random bytes")
    return b"\n".join([TERMINAL_AUTH_CONTEXT, terminal_id.encode("ascii"), b"%d" % timestamp, nonce.hex().encode()])


class _View:
    """One index generation as this resolver sees it: env, its database handles and a reader."""

    __slots__ = ("env", "dbs", "reader", "generation")

    def __init__(self, env, dbs: Dbs, generation: Path | None) -> None:
        self.env, self.dbs, self.generation = env, dbs, generation
        self.reader = env.reader()


class Resolver:
    """Answers a terminal's lookups from the index. Open with Resolver.open(data_dir).

    Safe to share between threads. A resolver that opened the index itself watches for
    `mykey rebuild` (every RECHECK_SECONDS, in a background thread) and switches to the
    new index; the old one is closed RETIRE_GRACE seconds later, when no call can still use it.
    """

    def __init__(
        self, env, dbs: Dbs, *, owns_env: bool, generation: Path | None = None, nonces: NonceStore | None = None
    ) -> None:
        self._view = _View(env, dbs, generation)
        self._nonce_store = nonces  # shared by the gateway processes; None: this process only
        self._owns_env = owns_env
        self._retired: list[tuple[float, _View]] = []
        self._swap = threading.Lock()
        self._data: DataDir | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Accepted authentication nonces: (terminal, nonce) -> expiry, and the same in expiry order.
        self._nonces: dict[tuple[str, bytes], float] = {}
        self._nonce_order: deque[tuple[float, tuple[str, bytes]]] = deque()
        self._nonce_lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: str | Path, *, binding: ModuleType | None = None, nordahead: bool = False) -> Resolver:
        """Open the live index of data_dir read-only (nordahead helps cold, small batches)."""
        data = DataDir(Path(data_dir))
        binding = binding or default_binding()
        env, dbs, gen = _open_generation(data, binding, nordahead)
        try:
            nonces = open_nonce_store(data, binding)
        except BaseException:
            env.close()
            raise
        self = cls(env, dbs, owns_env=True, generation=gen, nonces=nonces)
        self._data = data
        self._binding = binding
        self._nordahead = nordahead
        self._watcher = threading.Thread(target=self._watch, name="mykey-resolver-watch", daemon=True)
        self._watcher.start()
        return self

    @property
    def env(self):
        return self._view.env

    @property
    def dbs(self) -> Dbs:
        return self._view.dbs

    @property
    def generation(self) -> Path | None:
        return self._view.generation

    def resolve(self, business_id: str, service_id: str) -> Status:
        """Status of one service ID of this business."""
        prefix = _business_prefix(business_id)
        try:
            key = service_id.encode("ascii")
        except UnicodeEncodeError:
            return Status.UNKNOWN  # service IDs are ASCII: this one cannot be registered
        view = self._view
        raw = view.reader.get(view.dbs.svc, prefix + key) if key else None
        return status_of(raw[0]) if raw else Status.UNKNOWN

    def resolve_many(self, business_id: str, service_ids: Sequence[bytes | str], *, method: str = "auto") -> bytes:
        """One status code byte per service ID, in input order (see Status and statuses())."""
        prefix = _business_prefix(business_id)
        view = self._view
        try:
            return view.reader.resolve_many(view.dbs.svc, prefix, service_ids, method=method)
        except UnicodeEncodeError:
            # Non-ASCII IDs cannot be registered; b"" (no service ID) is never a key either.
            safe = [s if isinstance(s, bytes) or s.isascii() else b"" for s in service_ids]
            return view.reader.resolve_many(view.dbs.svc, prefix, safe, method=method)

    def resolve_statuses(self, business_id: str, service_ids: Sequence[bytes | str]) -> list[Status]:
        """resolve_many mapped to Status values (convenient, slower for big batches)."""
        return statuses(self.resolve_many(business_id, service_ids))

    def authenticate_terminal(
        self, terminal_id: str, message: bytes, signature: bytes, *, now: float | None = None
    ) -> str:
        """Verify a terminal's Ed25519 signature over terminal_auth_message(...); returns its business ID.

        The message must name this terminal, carry a time within MAX_CLOCK_SKEW seconds and
        a nonce no gateway process on this machine accepted before (DATA/auth-nonces).
        Revoked terminals and deactivated businesses fail; their state is told only to a
        caller holding the key.
        """
        now = time.time() if now is None else now
        fail = TerminalAuthError(f"authentication of terminal {terminal_id!r} failed; check its ID and key file")
        nonce = _parse_auth_message(terminal_id, message, now, fail)
        view = self._view
        raw = view.reader.get(view.dbs.terminal, terminal_id.encode("ascii")) if terminal_id.isascii() else None
        if raw is None:
            raise fail
        term = k.decode(k.TerminalRecord, raw)
        try:
            Ed25519PublicKey.from_public_bytes(term.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise fail from None
        if not term.active:
            raise TerminalAuthError(f"terminal {terminal_id} was revoked; enrol a new terminal")
        braw = view.reader.get(view.dbs.business, term.business_id.encode("ascii"))
        if braw is None or not k.decode(k.BusinessRecord, braw).active:
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

    @property
    def last_seq(self) -> int:
        """The last log sequence number reflected in the answers."""
        view = self._view
        with view.env.begin() as txn:
            return read_meta_last_seq(txn, view.dbs)

    def _watch(self) -> None:
        while not self._stop.wait(RECHECK_SECONDS):
            try:
                self.reopen_if_rebuilt()
            except Exception as exc:  # keep answering from the current index; try again later
                _log.warning("could not switch to the rebuilt index (%s); still using %s", exc, self.generation)
            self._close_retired(RETIRE_GRACE)

    def reopen_if_rebuilt(self) -> bool:
        """Switch to the index generation DATA/index points at, if `mykey rebuild` made a new one."""
        if self._data is None:
            return False
        gen = current_generation(self._data)
        if gen is None or gen == self._view.generation or not gen.is_dir():
            return False
        with self._swap:
            if gen == self._view.generation:
                return False
            env, dbs, gen = _open_generation(self._data, self._binding, self._nordahead)
            # The old view may still be in use by another thread: it is closed after a grace period.
            self._retired.append((time.monotonic(), self._view))
            self._view = _View(env, dbs, gen)
        return True

    def _close_retired(self, grace: float) -> None:
        now = time.monotonic()
        with self._swap:
            keep = []
            for since, view in self._retired:
                if now - since < grace or not _close_view(view, self._owns_env):
                    keep.append((since, view))
            self._retired = keep

    def close(self) -> None:
        """Stop watching, release readers (and the environments this resolver opened). Idempotent."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        with self._swap:
            for view in [self._view, *(v for _, v in self._retired)]:
                _close_view(view, self._owns_env)
            self._retired = []
            if self._nonce_store is not None:
                nonces.release(self._nonce_store)
                self._nonce_store = None

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_view(view: _View, owns_env: bool) -> bool:
    """Close a view's reader (and env); False if it is still busy (try again later)."""
    try:
        if view.reader is not None:
            view.reader.close()
            view.reader = None
        if owns_env and view.env is not None:
            view.env.close()
            view.env = None
    except MykeyError:
        return False
    return True


def open_nonce_store(data: DataDir, binding: ModuleType) -> NonceStore | None:
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


def _open_generation(data: DataDir, binding: ModuleType, nordahead: bool):
    gen = current_generation(data)
    if gen is None or not gen.is_dir():
        raise NoIndexError(f"no index in {data.root}; run `mykey init` (or `mykey rebuild`) first")
    env = binding.Env(str(gen), readonly=True, create=False, max_dbs=len(k.DB_NAMES) + 2, nordahead=nordahead)
    try:
        dbs = open_dbs(env, create=False)
    except BaseException:
        env.close()
        raise
    return env, dbs, gen


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
