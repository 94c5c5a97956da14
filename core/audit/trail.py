"""The Merkle trail kept beside the event log: DATA/merkle, in step with the log, and its checkpoints.

Leaf ``seq - 1`` of the RFC 9162 tree is log record ``seq`` exactly as stored
(``read_record``). ``AuditTrail`` (one writer, used by the engine) keeps DATA/merkle in
step with the log and signs checkpoints into DATA/checkpoints/; readers open the trail
with ``open_trail_reader``. The log is used only through the LogStore interface.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager, nullcontext

from ..datadir import DataDir
from ..errors import AuditError, AuditMismatchError, CheckpointError, MerkleStoreError
from ..log.backend import open_log
from ..log.store import LogStore
from .checkpoint import Checkpoint, peek_checkpoint, sign_checkpoint
from .checkpoints import list_checkpoints, store_checkpoint
from .keys import load_signer
from .merkle import leaf_hash
from .merkle_store import MerkleStore

__all__ = ["AuditTrail", "open_trail_reader", "read_record", "log_reader"]

_logger = logging.getLogger("mykey.audit")


class AuditTrail:
    """Keeps DATA/merkle in step with the log and signs checkpoints. One per data dir (a lock)."""

    def __init__(self, data: DataDir, log: LogStore, store: MerkleStore) -> None:
        self.data = data
        self.log = log
        self.store = store
        self.repairs: list[str] = []
        self._mutex = threading.Lock()

    @classmethod
    def open(cls, data: DataDir, log: LogStore) -> AuditTrail:
        """Take the Merkle store's writer lock, repair it against the log and catch it up."""
        store = MerkleStore.open(data.merkle)
        self = cls(data, log, store)
        try:
            self._reconcile()
            self.catch_up()
            self._check_latest_checkpoint()
        except BaseException:
            store.close()
            raise
        return self

    def _reconcile(self) -> None:
        store, data = self.store, self.data
        log_last = self.log.refresh()
        cps = list_checkpoints(data)
        signed = cps[-1][0] if cps else 0
        if log_last < signed:
            raise AuditMismatchError(
                f"the log ends at sequence {log_last} but checkpoint {cps[-1][1].name} signed {signed} events: "
                f"events {log_last + 1}..{signed} are missing from the log. Restore the log from a replica or "
                "backup before writing anything (see `mykey audit verify`)"
            )
        size = store.size
        check_from = store.recovery.unsynced_from if store.recovery is not None else size
        common = min(size, log_last)
        check_from = min(check_from, common)
        # One flushed leaf is compared even on a clean open: a swapped or rewritten log shows at once.
        if check_from > 0:
            rec = read_record(self.log, check_from)
            if leaf_hash(rec) != store.leaf_hash(check_from - 1):
                raise AuditMismatchError(
                    f"log record {check_from} differs from the Merkle leaf hashed when it was appended "
                    f"(DATA/merkle/level-00 leaf {check_from - 1}): the log was changed afterwards, or the store "
                    "belongs to another log. Run `mykey audit verify` to find the first altered event"
                )
        cut = common
        if check_from < common:
            for seq, rec in self.log.read_raw(check_from + 1, common):
                if leaf_hash(rec) != store.leaf_hash(seq - 1):
                    cut = seq - 1
                    break
        if cut < size:
            if cut < signed:
                raise AuditMismatchError(
                    f"log record {cut + 1} disagrees with the Merkle trail below signed checkpoint size {signed}; "
                    "the log was altered. Run `mykey audit verify`"
                )
            why = "is ahead of the log" if cut == log_last else f"disagrees with log record {cut + 1}"
            note = f"Merkle trail {why}: cut it from {size} to {cut} leaves (they were never signed)"
            _logger.warning("%s", note)
            self.repairs.append(note)
            store.truncate(cut)
        if store.recovery is not None:
            self.repairs.extend(store.recovery.notes)

    def _check_latest_checkpoint(self) -> None:
        """The trail must still give the root of the newest signed checkpoint (cheap: popcount reads)."""
        cps = list_checkpoints(self.data)
        if not cps:
            return
        size, path = cps[-1]
        try:
            cp = peek_checkpoint(path.read_text("utf-8"))
        except (OSError, CheckpointError) as exc:
            raise AuditMismatchError(f"checkpoint {path} is unreadable ({exc}); run `mykey audit verify`") from None
        if cp.size != size or self.store.root(size) != cp.root_hash:
            raise AuditMismatchError(
                f"the log's first {size} events no longer give the root signed in {path.name}: the log or the "
                "Merkle trail was altered. Nothing was signed; run `mykey audit verify` to find the first altered event"
            )

    @property
    def size(self) -> int:
        """Leaves in the trail (= events hashed)."""
        return self.store.size

    def catch_up(self) -> int:
        """Hash every log record after the trail's size into it; returns the new size."""
        with self._mutex:
            self.store.append_leaves(rec for _, rec in self.log.read_raw(self.store.size + 1))
            return self.store.size

    def checkpoint(self, now: int | None = None) -> str:
        """Sign (size, root, time) — ``now`` in unix seconds — store it under DATA/checkpoints/; return the note."""
        origin, key = load_signer(self.data)
        self.catch_up()
        with self._mutex:
            self.log.sync()  # never sign what the log could still lose
            self.store.flush()
            size = self.store.size
            cp = Checkpoint(origin, size, self.store.root(size), int(time.time()) if now is None else int(now))
            note = sign_checkpoint(cp, origin, key)
            try:
                store_checkpoint(self.data, size, note)
            except OSError as exc:
                raise AuditError(
                    f"could not store the checkpoint of size {size} in {self.data.checkpoints} "
                    f"({exc.strerror or exc}); nothing was published. Free disk space or check the disk, "
                    "then sign one again (`mykey audit checkpoint`)"
                ) from exc
            return note

    def close(self) -> None:
        """Flush the trail and release its writer lock; idempotent."""
        self.store.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- reading


def open_trail_reader(data: DataDir) -> MerkleStore:
    """The data directory's Merkle trail, opened read-only (any number of readers beside the writer)."""
    try:
        return MerkleStore.open(data.merkle, readonly=True)
    except MerkleStoreError as exc:
        raise AuditError(f"{exc}. Run `mykey audit checkpoint` once to build the Merkle trail") from None


def read_record(log: LogStore, seq: int) -> bytes:
    """The stored bytes of log record ``seq``: the data of Merkle leaf ``seq - 1``."""
    if seq >= 1:
        for _seq, rec in log.read_raw(seq, seq):
            return rec
    raise AuditError(
        f"sequence {seq} is not in the log (or the batch holding it is damaged: run `mykey log verify`)"
    )


def log_reader(data: DataDir, log: LogStore | None = None) -> AbstractContextManager[LogStore]:
    """For a ``with`` block: ``log`` itself (left open), or else the data directory's log opened read-only."""
    return nullcontext(log) if log is not None else open_log(data, readonly=True)
