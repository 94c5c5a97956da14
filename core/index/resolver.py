"""The read side a gateway needs: service ID statuses, and the terminal records authentication reads.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from ..datadir import DataDir
from ..domain.ids import BUSINESS_ID_RE
from ..domain.status import Status, statuses
from ..errors import (
    MykeyError,
    ValidationError,
)
from . import keys as k
from .binding import binding as default_binding
from .keys import Dbs
from .readmodel import Snapshot
from .store import current_generation, open_live_readonly, read_meta_last_seq

_PREFIXES: dict[str, bytes] = {}  # business IDs seen, as key prefixes (at most 260,000 of them)
_BY_CODE = tuple(Status)


def _business_prefix(business_id: str) -> bytes:
    # The prefix must be exactly a business ID, or keys of one business could reach another's.
    if type(business_id) is str:
        prefix = _PREFIXES.get(business_id)
        if prefix is not None:
            return prefix
    if type(business_id) is not str or not BUSINESS_ID_RE.match(business_id):
        raise ValidationError(f"business_id {business_id!r} is not a business ID (a letter and 4 digits)")
    prefix = _PREFIXES[business_id] = business_id.encode("ascii")
    return prefix


RECHECK_SECONDS = 0.25  # how often an open resolver looks for a rebuilt index
RETIRE_GRACE = 5.0  # seconds an index replaced by a rebuild stays open for calls still using it
_log = logging.getLogger("mykey.resolver")


_ONES_KEPT = 4096  # businesses whose single lookup a view keeps bound (it starts over when full)


class _View:
    """One index generation as this resolver sees it: env, its database handles and a reader,
    and per business seen, the reader's single lookup with the business's prefix bound."""

    __slots__ = ("env", "dbs", "svc", "reader", "ones", "generation")

    def __init__(self, env, dbs: Dbs, generation: Path | None) -> None:
        self.env, self.dbs, self.generation = env, dbs, generation
        self.svc = dbs.svc
        self.reader = env.reader()
        self.ones: dict[str, Callable[[bytes | str], int]] = {}

    def one(self, business_id: str) -> Callable[[bytes | str], int]:
        """The single lookup of a business's service IDs (checks the business ID)."""
        prefix = _business_prefix(business_id)
        if len(self.ones) >= _ONES_KEPT:
            self.ones = {}
        one = self.ones[business_id] = self.reader.bind_one(self.svc, prefix)
        return one


class Resolver:
    """Answers a terminal's lookups from the index. Open with Resolver.open(data_dir).

    Safe to share between threads. A resolver that opened the index itself watches for
    `mykey rebuild` (every RECHECK_SECONDS, in a background thread) and switches to the
    new index; the old one is closed RETIRE_GRACE seconds later, when no call can still use it.
    """

    def __init__(
        self,
        env,
        dbs: Dbs,
        *,
        owns_env: bool,
        generation: Path | None = None,
        binding: ModuleType | None = None,
        data: DataDir | None = None,
        nordahead: bool = False,
    ) -> None:
        """Answer from an open index env; with data, follow rebuilds of data's index (see open)."""
        self._view = _View(env, dbs, generation)
        self.binding = binding
        self._owns_env = owns_env
        self._data = data
        self._nordahead = nordahead
        self._retired: list[tuple[float, _View]] = []
        self._swap = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def open(cls, data_dir: str | Path, *, binding: ModuleType | None = None, nordahead: bool = False) -> Resolver:
        """Open the live index of data_dir read-only (nordahead helps cold, small batches)."""
        data = DataDir(Path(data_dir))
        binding = binding or default_binding()
        env, dbs, gen = open_live_readonly(data, binding, nordahead=nordahead)
        self = cls(env, dbs, owns_env=True, generation=gen, binding=binding, data=data, nordahead=nordahead)
        self._watcher = threading.Thread(target=self._watch, name="mykey-resolver-watch", daemon=True)
        self._watcher.start()
        return self

    @property
    def generation(self) -> Path | None:
        return self._view.generation

    def resolve(self, business_id: str, service_id: str) -> Status:
        """Status of one service ID of this business."""
        # The common case first, inline: a business this view has seen, its lookup bound (see
        # _View.one). Only a str gets here: a str subclass could pass for another business ID.
        # An empty service ID answers 0 (UNKNOWN) without a lookup.
        if type(business_id) is str:
            try:
                return _BY_CODE[self._view.ones[business_id](service_id)]
            except KeyError:
                pass  # not seen yet: checked and bound below
            except UnicodeEncodeError:
                return Status.UNKNOWN  # service IDs are ASCII: this one cannot be registered
        try:
            return _BY_CODE[self._view.one(business_id)(service_id)]
        except UnicodeEncodeError:
            return Status.UNKNOWN

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

    def terminal(self, terminal_id: str) -> k.TerminalRecord | None:
        """An enrolled terminal's record (public key, business, active), or None."""
        view = self._view
        raw = view.reader.get(view.dbs.terminal, terminal_id.encode("ascii"))
        return None if raw is None else k.decode(k.TerminalRecord, raw)

    def business(self, business_id: str) -> k.BusinessRecord | None:
        """A registered business's record, or None."""
        view = self._view
        raw = view.reader.get(view.dbs.business, business_id.encode("ascii"))
        return None if raw is None else k.decode(k.BusinessRecord, raw)

    def status_idx(self, business_id: str, service_id: str) -> int | None:
        """The service ID's position in its business's status list (None: unknown, or none yet)."""
        view = self._view
        try:
            raw = view.reader.get(view.dbs.svcrec, _business_prefix(business_id) + service_id.encode("ascii"))
        except UnicodeEncodeError:
            return None
        return None if raw is None else k.decode(k.ServiceRecord, raw).idx

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """``with resolver.snapshot() as s:`` one read transaction over the index this resolver answers from.

        For what a worker reads beside its lookups (identify, a person's history): LMDB allows
        one open of an index per process, so a worker never opens a ReadModel beside its Resolver.
        Keep it short: a view replaced by a rebuild is closed RETIRE_GRACE seconds later.
        """
        view = self._view
        with view.env.begin() as txn:
            yield Snapshot(txn, view.dbs)

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
            env, dbs, gen = open_live_readonly(self._data, self.binding, nordahead=self._nordahead)
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
