"""The audit tools on a log backend that is not the file log: they may use only the LogStore interface.

``OtherBackend`` is a LogStore over a real file log that hides everything file-specific
(it is not a FileLog, has no directory, no record positions). Whatever the audit code
needs beyond the interface would fail here; the answers must equal the file log's, only
without segment names and offsets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest
from mykey.audit.history import subject_history
from mykey.audit.keys import VKEY_FILE
from mykey.audit.proofs import check_proof, prove_inclusion
from mykey.audit.trail import AuditTrail
from mykey.audit.verify import verify_data_dir
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.errors import AuditMismatchError
from mykey.log import framing
from mykey.log.filelog import FileLog, list_segments
from mykey.log.store import LogStore

from .test_audit import (
    ALICE,
    CHECKPOINTS,
    LAST_SEQ,
    build,
    copy_of,
    records,
    rewrite_record,
)


class OtherBackend(LogStore):
    """Only the LogStore interface, over a file log."""

    def __init__(self, inner: LogStore) -> None:
        self._inner = inner

    @property
    def last_seq(self) -> int:
        return self._inner.last_seq

    def append(
        self,
        events: Sequence[ev.Event],
        actor: ev.Actor = ev.SYSTEM,
        *,
        expected_last_seq: int | None = None,
        ts: int | None = None,
    ) -> list[ev.Envelope]:
        return self._inner.append(events, actor, expected_last_seq=expected_last_seq, ts=ts)

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        return self._inner.read_raw(from_seq, to_seq)

    def read_batches(self, from_seq: int = 1) -> Iterator[tuple[int, list[bytes]]]:
        return self._inner.read_batches(from_seq)

    def follow_batches(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, list[bytes]]]:
        return self._inner.follow_batches(from_seq, poll_interval=poll_interval, stop=stop)

    def follow_raw(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        return self._inner.follow_raw(from_seq, poll_interval=poll_interval, stop=stop)

    def refresh(self) -> int:
        return self._inner.refresh()

    def sync(self) -> None:
        self._inner.sync()

    def close(self) -> None:
        self._inner.close()


def reader(data: DataDir) -> OtherBackend:
    return OtherBackend(FileLog.open(data.log, readonly=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> DataDir:
    return build(tmp_path_factory.mktemp("audit-backend") / "data")


def verify(data: DataDir):  # type: ignore[no-untyped-def]
    with reader(data) as log:
        return verify_data_dir(data, log=log)


def test_verify_a_healthy_data_dir(built):
    report = verify(built)
    assert report.ok, report.problems
    assert (report.events, report.last_seq, report.checkpoints, report.merkle_size) == (LAST_SEQ, LAST_SEQ, 3, LAST_SEQ)
    assert report.segments == 0  # nothing file-specific was looked at


def test_verify_finds_a_rewritten_event_by_sequence_number(built, tmp_path):
    copy = copy_of(built, tmp_path)
    rewrite_record(copy, 11, b"card reported lost", b"card reported LOST")
    p = verify(copy).problem
    assert p is not None and p.seq == 11 and "rewritten" in p.what
    assert (p.segment, p.offset) == (None, None)
    assert str(p).startswith("sequence 11: ")
    file_log = verify_data_dir(copy).problem  # the file log adds where the bytes are
    assert file_log is not None and file_log.seq == 11 and file_log.segment is not None


def test_verify_finds_a_damaged_record(built, tmp_path):
    copy = copy_of(built, tmp_path)
    seg, _, pos, payload = records(copy)[13 - 1]
    with open(seg, "r+b") as f:  # flip a byte without fixing the CRC
        f.seek(pos + framing.RECORD_HEAD_SIZE + len(payload) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    report = verify(copy)
    assert report.problem is not None and report.problem.seq == 13 and "log damaged" in report.problem.what
    assert report.last_seq == 12 and not any("truncated" in q.what for q in report.problems)


def test_verify_finds_a_truncated_log(built, tmp_path):
    copy = copy_of(built, tmp_path)
    seg, off, _, _ = records(copy)[16 - 1]
    os.truncate(seg, off)
    for later in list_segments(copy.log):
        if later.path > seg:
            later.path.unlink()
    p = verify(copy).problem
    assert p is not None and p.seq == 16 and "truncated" in p.what and p.segment is None


def test_proofs_and_history_read_through_the_interface(built):
    vkey = (built.keys / VKEY_FILE).read_text().strip()
    with reader(built) as log:
        for seq in (1, 11, CHECKPOINTS[-1]):
            doc = prove_inclusion(built, seq, log=log)
            assert doc == prove_inclusion(built, seq)
            assert check_proof(doc, vkey).startswith("OK inclusion")
        assert subject_history(built, ALICE, log=log) == subject_history(built, ALICE)


def test_the_trail_keeps_up_with_and_guards_another_backend(built, tmp_path):
    copy = copy_of(built, tmp_path)
    log = OtherBackend(FileLog.open(copy.log))
    try:
        with AuditTrail.open(copy, log) as trail:
            log.append([ev.MyKeyResumed(ALICE)])
            assert trail.catch_up() == LAST_SEQ + 1
            assert trail.checkpoint().splitlines()[1] == str(LAST_SEQ + 1)
    finally:
        log.close()
    assert verify(copy).ok
    rewrite_record(copy, LAST_SEQ + 1, b"AAAAAAAA", b"AAAAAAAB")
    log = OtherBackend(FileLog.open(copy.log))
    try:
        with pytest.raises(AuditMismatchError, match=f"log record {LAST_SEQ + 1} differs"):
            AuditTrail.open(copy, log)
    finally:
        log.close()
