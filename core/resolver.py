"""The read side a gateway needs: resolve service IDs and authenticate terminals.

Read-only over the LMDB index; any number of processes may open it, sharing the
page cache. The hot path (`resolve_many`) is one call into the Cython binding,
which looks up every key in a nogil C loop inside one read transaction. A
business sees only its own service IDs' statuses: keys are prefixed with the
authenticated business ID, and no answer carries a MyKey ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import keys as k
from .datadir import DataDir
from .errors import MykeyError, ValidationError
from .ids import BUSINESS_ID_RE
from .index import current_generation, open_dbs, read_meta_last_seq
from .lmdbenv import binding as default_binding
from .projection import Dbs
from .status import Status, status_of, statuses


class TerminalAuthError(MykeyError):
    """A terminal failed authentication (unknown, revoked, its business deactivated, or a bad signature)."""


class NoIndexError(MykeyError):
    """There is no index to resolve against yet."""


def _business_prefix(business_id: str) -> bytes:
    # The prefix must be exactly a business ID, or keys of one business could reach another's.
    if type(business_id) is not str or not BUSINESS_ID_RE.match(business_id):
        raise ValidationError(f"business_id {business_id!r} is not a business ID (a letter and 4 digits)")
    return business_id.encode("ascii")


class Resolver:
    """Answers a terminal's lookups from the index. Open with Resolver.open(data_dir)."""

    def __init__(self, env, dbs: Dbs, *, owns_env: bool, generation: Path | None = None) -> None:
        self.env = env
        self.dbs = dbs
        self._owns_env = owns_env
        self.generation = generation
        self._reader = env.reader()

    @classmethod
    def open(cls, data_dir: str | Path, *, binding: ModuleType | None = None, nordahead: bool = False) -> Resolver:
        """Open the live index of data_dir read-only (nordahead helps cold, small batches)."""
        data = DataDir(Path(data_dir))
        gen = current_generation(data)
        if gen is None or not gen.is_dir():
            raise NoIndexError(f"no index in {data.root}; run `mykey init` (or `mykey rebuild`) first")
        binding = binding or default_binding()
        env = binding.Env(str(gen), readonly=True, create=False, max_dbs=len(k.DB_NAMES) + 2, nordahead=nordahead)
        try:
            dbs = open_dbs(env, create=False)
        except BaseException:
            env.close()
            raise
        self = cls(env, dbs, owns_env=True, generation=gen)
        self._data = data
        self._binding = binding
        self._nordahead = nordahead
        return self

    def resolve(self, business_id: str, service_id: str) -> Status:
        """Status of one service ID of this business."""
        prefix = _business_prefix(business_id)
        try:
            key = service_id.encode("ascii")
        except UnicodeEncodeError:
            return Status.UNKNOWN  # service IDs are ASCII: this one cannot be registered
        raw = self._reader.get(self.dbs.svc, prefix + key) if key else None
        return status_of(raw[0]) if raw else Status.UNKNOWN

    def resolve_many(self, business_id: str, service_ids: Sequence[bytes | str], *, method: str = "auto") -> bytes:
        """One status code byte per service ID, in input order (see Status and statuses())."""
        prefix = _business_prefix(business_id)
        try:
            return self._reader.resolve_many(self.dbs.svc, prefix, service_ids, method=method)
        except UnicodeEncodeError:
            # Non-ASCII IDs cannot be registered; b"" (no service ID) is never a key either.
            safe = [s if isinstance(s, bytes) or s.isascii() else b"" for s in service_ids]
            return self._reader.resolve_many(self.dbs.svc, prefix, safe, method=method)

    def resolve_statuses(self, business_id: str, service_ids: Sequence[bytes | str]) -> list[Status]:
        """resolve_many mapped to Status values (convenient, slower for big batches)."""
        return statuses(self.resolve_many(business_id, service_ids))

    def authenticate_terminal(self, terminal_id: str, message: bytes, signature: bytes) -> str:
        """Verify an Ed25519 signature by the terminal over message; returns its business ID.

        Fails for unknown or revoked terminals and deactivated businesses. The
        message format (and its freshness: a nonce or time) is the gateway's protocol.
        """
        raw = self._reader.get(self.dbs.terminal, terminal_id.encode("ascii")) if terminal_id.isascii() else None
        if raw is None:
            raise TerminalAuthError(f"terminal {terminal_id} is not enrolled; enrol it with `mykey terminal enrol`")
        term = k.decode(k.TerminalRecord, raw)
        if not term.active:
            raise TerminalAuthError(f"terminal {terminal_id} was revoked; enrol a new terminal")
        braw = self._reader.get(self.dbs.business, term.business_id.encode("ascii"))
        if braw is None or not k.decode(k.BusinessRecord, braw).active:
            raise TerminalAuthError(f"business {term.business_id} of terminal {terminal_id} is deactivated")
        try:
            Ed25519PublicKey.from_public_bytes(term.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise TerminalAuthError(f"signature by terminal {terminal_id} does not verify; check its key file") from None
        return term.business_id

    @property
    def last_seq(self) -> int:
        """The last log sequence number reflected in the answers."""
        with self.env.begin() as txn:
            return read_meta_last_seq(txn, self.dbs)

    def reopen_if_rebuilt(self) -> bool:
        """After `mykey rebuild`, switch to the new index generation; True if it switched."""
        if not self._owns_env:
            return False
        gen = current_generation(self._data)
        if gen == self.generation:
            return False
        fresh = Resolver.open(self._data.root, binding=self._binding, nordahead=self._nordahead)
        self.close()
        self.__dict__.update(fresh.__dict__)
        return True

    def close(self) -> None:
        """Release the reader (and the environment if this resolver opened it)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._owns_env and self.env is not None:
            self.env.close()
            self.env = None

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
