"""The segmented file log: contract, segments and index, locking, recovery, verify."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mykey import framing
from mykey.errors import CorruptLogError, LogError, LogLockedError, ValidationError
from mykey.filelog import SEGMENT_HEADER_SIZE, FileLog, list_segments, read_idx
from mykey.logcheck import verify_log

from .logstore_contract import LogStoreContract, svc


@pytest.fixture(params=["native-64k", "pure-64k", "native-big"])
def open_store(request, tmp_path):
    impl, size = request.param.split("-")
    segment_bytes = 64 * 1024 if size == "64k" else 64 * 1024 * 1024
    opened: list[FileLog] = []
    state = {"dir": tmp_path / "log0", "n": 0}

    def factory(readonly: bool = False, fresh: bool = False) -> FileLog:
        if fresh:
            state["n"] += 1
            state["dir"] = tmp_path / f"log{state['n']}"
        log = FileLog.open(state["dir"], readonly=readonly, segment_bytes=segment_bytes, framing_impl=impl)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()


class TestFileLogContract(LogStoreContract):
    pass


def fill(path: Path, batches: int = 20, per: int = 50, **kw) -> FileLog:
    log = FileLog.open(path, **kw)
    for b in range(batches):
        log.append([svc(b * per + i) for i in range(per)])
    return log


def test_segments_roll_and_are_named_by_first_seq(tmp_path):
    log = fill(tmp_path, batches=200, per=20, segment_bytes=16 * 1024)
    segs = list_segments(tmp_path)
    assert len(segs) > 3
    assert segs[0].first_seq == 1
    seqs = [e.seq for e in log.read()]
    assert seqs == list(range(1, 4001))
    for seg in segs:
        assert seg.path.name == f"{seg.first_seq:020d}.seg"
        assert seg.path.stat().st_size <= 16 * 1024 + 4096  # rolls at batch boundaries
    # Every segment's first batch starts with the segment's first sequence number.
    for seg in segs:
        data = seg.path.read_bytes()
        assert framing.parse_header(data, SEGMENT_HEADER_SIZE)[0] == seg.first_seq


def test_sparse_index_finds_offsets(tmp_path):
    log = fill(tmp_path, batches=400, per=100)
    seg = list_segments(tmp_path)[0]
    entries = read_idx(seg)
    assert len(entries) > 10
    data = seg.path.read_bytes()
    for first_seq, offset in entries:
        assert framing.parse_header(data, offset)[0] == first_seq
    assert [e.seq for e in log.read(23_456, 23_460)] == list(range(23_456, 23_461))


def test_stale_index_falls_back_to_scan(tmp_path):
    fill(tmp_path, batches=400, per=100).close()
    seg = list_segments(tmp_path)[0]
    raw = bytearray(seg.idx_path.read_bytes())
    raw[-1] ^= 0x7F  # point the last entry at a bogus offset
    seg.idx_path.write_bytes(bytes(raw))
    log = FileLog.open(tmp_path, readonly=True)
    assert [e.seq for e in log.read(39_990)] == list(range(39_990, 40_001))
    w = FileLog.open(tmp_path)
    assert w.last_seq == 40_000 and w.recovery is None


def test_second_writer_is_refused(tmp_path):
    log = FileLog.open(tmp_path)
    with pytest.raises(LogLockedError, match=f"pid {os.getpid()}"):
        FileLog.open(tmp_path)
    code = "from mykey.filelog import FileLog; FileLog.open(%r)" % str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "LogLockedError" in r.stderr
    log.close()
    FileLog.open(tmp_path).close()


def test_reader_cannot_append(tmp_path):
    fill(tmp_path, batches=1).close()
    with pytest.raises(LogError, match="read-only"):
        FileLog.open(tmp_path, readonly=True).append([svc(1)])


def test_bad_fsync_mode(tmp_path):
    with pytest.raises(ValidationError):
        FileLog.open(tmp_path, fsync="sometimes")


@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_fsync_modes_store_everything(tmp_path, mode):
    log = fill(tmp_path, fsync=mode, fsync_interval_ms=5)
    log.close()
    assert FileLog.open(tmp_path).last_seq == 1000


def newest_segment(path: Path) -> Path:
    return list_segments(path)[-1].path


def test_torn_tail_is_truncated_and_reported(tmp_path):
    fill(tmp_path, batches=5, per=10).close()
    seg = newest_segment(tmp_path)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 7)  # cut into the last batch
    log = FileLog.open(tmp_path)
    assert log.last_seq == 40
    assert log.recovery is not None and "incomplete" in log.recovery.reason
    assert Path(log.recovery.saved_to).read_bytes()  # the cut bytes are kept, not silently dropped
    assert [e.seq for e in log.read()] == list(range(1, 41))
    assert log.append([svc(99)])[0].seq == 41


def test_garbage_tail_is_truncated(tmp_path):
    fill(tmp_path, batches=5, per=10).close()
    seg = newest_segment(tmp_path)
    good = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(os.urandom(5000))
    log = FileLog.open(tmp_path)
    assert log.last_seq == 50 and seg.stat().st_size == good
    assert log.recovery is not None and log.recovery.dropped_bytes == 5000


def test_zero_filled_tail_is_truncated(tmp_path):
    fill(tmp_path, batches=3, per=10).close()
    seg = newest_segment(tmp_path)
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    assert FileLog.open(tmp_path).last_seq == 30


@pytest.mark.parametrize("where", ["payload", "record-header", "batch-header"])
def test_flipped_byte_in_the_middle_is_reported_never_skipped(tmp_path, where):
    fill(tmp_path, batches=10, per=10).close()
    seg = newest_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    # Find the 4th batch (sequence 31..40).
    pos = SEGMENT_HEADER_SIZE
    for _ in range(3):
        _, _, body_len = framing.parse_header(data, pos)
        pos += framing.HEADER_SIZE + body_len
    target = {"batch-header": pos + 9, "record-header": pos + 32 + 2, "payload": pos + 32 + 8 + 5}[where]
    data[target] ^= 0x40
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as err:
        FileLog.open(tmp_path)
    msg = str(err.value)
    assert seg.name in msg and "sequence 31" in msg and f"offset {pos}" in msg
    assert seg.read_bytes() == bytes(data)  # nothing truncated
    with pytest.raises(CorruptLogError, match="sequence 31"):
        list(FileLog.open(tmp_path, readonly=True).read())
    report = verify_log(tmp_path)
    assert report.problem is not None and report.problem.seq == 31 and report.problem.segment == seg.name


def test_damage_in_an_older_segment_is_reported(tmp_path):
    fill(tmp_path, batches=60, per=20, segment_bytes=8 * 1024).close()
    first = list_segments(tmp_path)[0].path
    data = bytearray(first.read_bytes())
    data[200] ^= 1
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match=first.name):
        list(FileLog.open(tmp_path, readonly=True).read())
    assert not verify_log(tmp_path).ok


def test_verify_clean_log(tmp_path):
    fill(tmp_path, batches=30, per=7, segment_bytes=4096).close()
    report = verify_log(tmp_path)
    assert report.ok and report.events == 210 and report.last_seq == 210 and report.segments > 1


def test_verify_detects_a_missing_segment(tmp_path):
    fill(tmp_path, batches=30, per=7, segment_bytes=4096).close()
    segs = list_segments(tmp_path)
    segs[1].path.unlink()
    report = verify_log(tmp_path)
    assert not report.ok and "starts at" in report.problem.what
    with pytest.raises(CorruptLogError, match="gap"):
        list(FileLog.open(tmp_path, readonly=True).read())


def test_crash_between_segment_creation_and_header(tmp_path):
    fill(tmp_path, batches=3, per=10).close()
    (tmp_path / f"{31:020d}.seg").write_bytes(b"")
    log = FileLog.open(tmp_path)
    assert log.last_seq == 30
    assert log.append([svc(1)])[0].seq == 31
    log.close()
    assert [e.seq for e in FileLog.open(tmp_path, readonly=True).read()][-1] == 31


def test_reader_in_another_process_follows_the_tail(tmp_path):
    writer = FileLog.open(tmp_path)
    code = textwrap.dedent(
        f"""
        from mykey.filelog import FileLog
        log = FileLog.open({str(tmp_path)!r}, readonly=True)
        for env in log.follow(1, poll_interval=0.005):
            print(env.seq, env.body.service_id, flush=True)
            if env.seq == 300:
                break
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for b in range(30):
        writer.append([svc(b * 10 + i) for i in range(10)])
    out, _ = child.communicate(timeout=60)
    lines = out.split()
    assert child.returncode == 0
    assert [int(x) for x in lines[0::2]] == list(range(1, 301))
    assert lines[1::2] == [f"s{i}" for i in range(300)]
