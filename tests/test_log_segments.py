"""Segments, their sparse indexes, and reading across them while a writer works (SegmentCursor)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mykey.errors import CorruptLogError
from mykey.log import framing, segments
from mykey.log.filelog import SEGMENT_HEADER_SIZE, FileLog, list_segments, read_idx

from .test_filelog import fill, newest_segment, svc

# --- the sparse index: hints checked before use, made exact again by the writer ---


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


def test_writer_open_keeps_only_index_entries_that_point_at_real_batches(tmp_path):
    fill(tmp_path, batches=400, per=100).close()
    seg = list_segments(tmp_path)[0]
    good = read_idx(seg)
    assert len(good) > 10
    (s1, o1), (s2, o2) = good[1], good[-1]
    stale = [
        (s2, o2),  # out of order: a later batch listed first
        (s1, o1 + 1),  # a right sequence number at a wrong offset
        (s1 + 1, o1),  # a wrong sequence number at a real batch
        (0, 0),  # zeros (blocks a crash left unwritten)
        (s2 + 10**6, seg.path.stat().st_size + 4096),  # past the end
    ]
    seg.idx_path.write_bytes(segments.pack_idx(stale + good + stale))
    FileLog.open(tmp_path).close()
    assert read_idx(seg) == good


def test_index_entries_past_a_cut_tail_are_dropped(tmp_path):
    fill(tmp_path, batches=400, per=100).close()
    seg = list_segments(tmp_path)[0]
    good = read_idx(seg)
    cut_at = good[-3][1] + 5  # inside the batch of the third entry from the end
    os.truncate(seg.path, cut_at)
    log = FileLog.open(tmp_path)
    assert log.recovery is not None and log.recovery.offset == good[-3][1]
    assert read_idx(seg) == good[:-3] and log.last_seq == good[-3][0] - 1


def test_a_damaged_index_out_of_order_never_makes_a_reader_skip_records(tmp_path):
    fill(tmp_path, batches=400, per=100).close()
    seg = list_segments(tmp_path)[0]
    good = read_idx(seg)
    (low, _), (high, high_off) = good[0], good[-1]
    # A valid entry for a late batch, then an entry for an early one whose offset is wrong.
    seg.idx_path.write_bytes(segments.pack_idx([(high, high_off), (low, 12345)]))
    start = low + 1
    assert [e.seq for e in FileLog.open(tmp_path, readonly=True).read(start)] == list(range(start, 40_001))
    assert segments.checked_index_entry(seg, start) == (SEGMENT_HEADER_SIZE, 1)
    assert segments.checked_index_entry(seg, high) == (high_off, high)


# --- followers across segment rolls (segments appear whole, via rename) ---

FOLLOWER = textwrap.dedent(
    """
    import sys
    from mykey.log.filelog import FileLog
    path, last = sys.argv[1], int(sys.argv[2])
    log = FileLog.open(path, readonly=True)
    print("ready", flush=True)
    seqs = []
    for seq, _payload in log.follow_raw(1, poll_interval=0.0005):
        seqs.append(seq)
        if seq >= last:
            break
    ok = seqs == list(range(1, last + 1))
    print("ok" if ok else f"bad: got {len(seqs)} records, first {seqs[:5]}", flush=True)
    """
)


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_follower_in_another_process_sees_every_seq_across_segment_rolls(tmp_path, fsync):
    for round_ in range(5):
        path = tmp_path / f"log{round_}"
        writer = FileLog.open(path, segment_bytes=1024, fsync=fsync)
        writer.append([svc(0)])
        batches = 3000
        child = subprocess.Popen(
            [sys.executable, "-c", FOLLOWER, str(path), str(batches)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout.readline().strip() == "ready"
        for b in range(1, batches):
            writer.append([svc(b)])
        out, err = child.communicate(timeout=120)
        writer.close()
        assert child.returncode == 0 and out.strip() == "ok", f"round {round_}: {out} {err[-2000:]}"
        assert len(list_segments(path)) > 200


def test_follower_reads_a_segment_to_its_end_before_moving_to_the_next(tmp_path, monkeypatch):
    big = 60  # a batch of 60 events is ~4 KB: one fits in a 6,000-byte segment, two do not
    writer = FileLog.open(tmp_path, segment_bytes=6000)
    writer.append([svc(i) for i in range(big)])
    reader = FileLog.open(tmp_path, readonly=True)
    real_list = segments.list_segments
    segments_after = []

    def listing(directory):
        # The reader is at the end of its segment: the writer appends one more batch there, then rolls.
        if len(segments_after) < 10:
            n = len(list_segments(tmp_path))
            writer.append([svc(writer.last_seq)])
            writer.append([svc(writer.last_seq + i) for i in range(big)])
            segments_after.append(len(list_segments(tmp_path)) - n)
        return real_list(directory)

    records = reader.follow_raw(1, poll_interval=0.001)
    seen = [next(records)[0]]  # the reader has started on the first segment
    monkeypatch.setattr(segments, "list_segments", listing)
    last = big + 10 * (1 + big)
    for seq, _ in records:
        seen.append(seq)
        if seq == last:
            break
    assert segments_after == [1] * 10  # each time: one batch into the old segment, then a new one
    assert seen == list(range(1, last + 1))


def test_new_segments_appear_with_their_header_and_temp_files_are_ignored(tmp_path, monkeypatch):
    log = FileLog.open(tmp_path, segment_bytes=4096)
    seen: list[tuple[str, bytes]] = []
    real_rename = os.rename

    def rename(src, dst):
        seen.append((str(dst), Path(src).read_bytes()))
        assert [s.path for s in list_segments(tmp_path)] == [tmp_path / f"{1:020d}.seg"]  # tmp not listed
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    while len(list_segments(tmp_path)) < 2:
        log.append([svc(log.last_seq)])
    dst, content = seen[-1]
    assert dst.endswith(f"{log.last_seq:020d}.seg") and len(content) == SEGMENT_HEADER_SIZE
    monkeypatch.undo()
    log.close()
    (tmp_path / f"{99:020d}.seg.tmp").write_bytes(b"half-made")  # a crash while creating a segment
    assert all(s.path.suffix == ".seg" for s in list_segments(tmp_path))
    FileLog.open(tmp_path).close()
    assert not list(tmp_path.glob("*.tmp"))


# --- the segment cursor: the cases a reader meets while a writer works ---


def cursor_from_start(path: Path) -> segments.SegmentCursor:
    return segments.SegmentCursor(path, framing, list_segments(path)[0], SEGMENT_HEADER_SIZE, 1)


def seqs_of(batches) -> list[int]:
    return [first + i for first, payloads in batches for i in range(len(payloads))]


def test_cursor_resumes_when_the_segment_grows(tmp_path):
    log = fill(tmp_path, batches=2, per=3)
    with cursor_from_start(tmp_path) as cursor:
        assert seqs_of(cursor.batches()) == [1, 2, 3, 4, 5, 6]
        assert list(cursor.batches()) == []  # at the end for now
        log.append([svc(7), svc(8)])
        assert list(cursor.batches()) == [(7, [p for _, p in log.read_raw(7)])]
    log.close()


@pytest.mark.parametrize("rewrite", ["shorter", "longer"])
def test_cursor_rereads_after_the_writer_cut_a_failed_append(tmp_path, rewrite):
    fill(tmp_path, batches=1, per=2).close()
    seg = newest_segment(tmp_path)
    end = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(framing.encode_batch(3, [b"a" * 200])[:100])  # half a batch: the append is under way
    with cursor_from_start(tmp_path) as cursor:
        assert seqs_of(cursor.batches()) == [1, 2]  # the half batch is carried, not judged
        # The append failed and the writer cut it; then the next batch was written there.
        os.truncate(seg, end)
        payload = b"b" * (10 if rewrite == "shorter" else 500)
        with open(seg, "ab") as f:
            f.write(framing.encode_batch(3, [payload]))
        assert list(cursor.batches()) == [(3, [payload])]


def test_cursor_moves_on_to_the_next_segment_after_reading_this_one_to_its_end(tmp_path):
    log = fill(tmp_path, batches=1, per=3)
    with cursor_from_start(tmp_path) as cursor:
        assert seqs_of(cursor.batches()) == [1, 2, 3]
        log.append([svc(4)])  # into the first segment
        log.segment_bytes = newest_segment(tmp_path).stat().st_size + 1
        log.append([svc(5), svc(6), svc(7)])  # the log rolls
        assert len(list_segments(tmp_path)) == 2
        assert seqs_of(cursor.batches()) == [4, 5, 6, 7]
    log.close()


def test_cursor_rereads_a_torn_tail_once_a_newer_segment_appears(tmp_path, monkeypatch):
    fill(tmp_path, batches=3, per=5).close()
    seg = newest_segment(tmp_path)
    with open(seg, "ab") as f:
        f.write(b"\x07" * 300)  # a torn tail: garbage after the last batch
    real_list = segments.list_segments
    calls: list[int] = []

    def listing(directory):
        if not calls:
            # Between the reader's fresh read of the damage and its look at the segments, a
            # writer restarts: it cuts the torn tail, appends a batch there and rolls.
            w = FileLog.open(tmp_path, segment_bytes=seg.stat().st_size - 300 + 100)
            assert w.recovery is not None
            w.append([svc(15)])
            w.append([svc(16), svc(17)])
            w.close()
        calls.append(1)
        return real_list(directory)

    with cursor_from_start(tmp_path) as cursor:
        monkeypatch.setattr(segments, "list_segments", listing)
        got = seqs_of(cursor.batches())
    assert got == list(range(1, 19)) and len(real_list(tmp_path)) == 2


def test_cursor_refuses_an_incomplete_batch_in_a_segment_that_is_not_the_newest(tmp_path):
    fill(tmp_path, batches=4, per=20, segment_bytes=2000).close()
    first = list_segments(tmp_path)[0].path
    assert len(list_segments(tmp_path)) > 1
    with open(first, "ab") as f:
        f.write(framing.encode_batch(99, [b"x" * 50])[:40])
    with pytest.raises(CorruptLogError, match="incomplete batch in a segment that is not the newest"):
        list(FileLog.open(tmp_path, readonly=True).read())
