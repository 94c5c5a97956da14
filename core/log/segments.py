"""Segment files of the file log, their sparse indexes, and the cursor that reads them.

A log directory holds ``{first_seq:020d}.seg`` segments: a 16-byte header (magic,
first sequence number), then batches as framed by mykey.log.framing. Beside each
is a ``.idx`` of (first_seq, offset) pairs, one every IDX_STRIDE bytes or more, so
a reader finds a sequence number without scanning. The index is a hint written
without fsync: every entry is checked against the batch header it points at.

``SegmentCursor`` reads whole batches from any position on, segment after segment,
while a writer may be appending, rolling to a new segment, or restarting and
cutting a torn tail.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

from ..errors import CorruptLogError, LogError
from ..fs import write_exclusive
from . import framing
from .damage import TORN, gap_damage, incomplete_older_segment, judge_damage

SEGMENT_MAGIC = b"MKLOG\x00\x01\x00"  # format version 1
SEGMENT_HEADER = struct.Struct("<8sQ")  # magic, first_seq
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 16
SEGMENT_MODE = 0o600  # segments, indexes and cut copies: the data directory owner's only
IDX_ENTRY = struct.Struct("<QQ")  # first_seq of a batch, its offset
IDX_STRIDE = 64 * 1024  # write an index entry at most every this many bytes
TMP_SUFFIX = ".tmp"  # a segment being created: "<name>.seg.tmp", never listed
FIRST_CHUNK = 64 * 1024  # a cursor's first read of a segment; later reads grow to READ_CHUNK
READ_CHUNK = 4 * 1024 * 1024
ALL = 1 << 62  # "no limit" for framing.parse_batches' max_records


@dataclass(frozen=True)
class Segment:
    first_seq: int
    path: Path

    @property
    def idx_path(self) -> Path:
        return self.path.with_suffix(".idx")

    @property
    def name(self) -> str:
        return self.path.name


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def list_segments(directory: Path) -> list[Segment]:
    """Segments in the log directory, oldest first (temporary files being created are not listed)."""
    segs = []
    for p in directory.glob("*.seg"):
        if p.suffix == ".seg" and p.stem.isdigit():
            segs.append(Segment(int(p.stem), p))
    segs.sort(key=lambda s: s.first_seq)
    return segs


def segment_holding(segs: list[Segment], seq: int) -> Segment:
    """The segment whose range holds seq (the first one for seq below every segment)."""
    return segs[max(0, bisect.bisect_right([s.first_seq for s in segs], seq) - 1)]


def create_segment_file(seg: Segment) -> None:
    """Put seg in place with its header: written to a temporary name, fsynced, renamed.

    A reader never sees a segment without its header. The caller fsyncs the
    directory once it is ready to make the rename durable.
    """
    tmp = seg.path.with_name(seg.path.name + TMP_SUFFIX)
    write_exclusive(tmp, SEGMENT_HEADER.pack(SEGMENT_MAGIC, seg.first_seq), mode=SEGMENT_MODE)
    try:
        os.rename(tmp, seg.path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_segment_header(seg: Segment, head: bytes) -> None:
    """CorruptLogError unless head is seg's 16-byte header."""
    if len(head) < SEGMENT_HEADER_SIZE:
        raise CorruptLogError(f"{seg.path}: segment header is missing; restore the file from a backup")
    magic, first = SEGMENT_HEADER.unpack_from(head)
    if magic != SEGMENT_MAGIC or first != seg.first_seq:
        raise CorruptLogError(
            f"{seg.path}: bad segment header (magic {magic!r}, first seq {first}); "
            "the file is not a mykey log segment or is damaged"
        )


# --- the sparse index ---------------------------------------------------------


def read_idx(seg: Segment) -> list[tuple[int, int]]:
    """The segment's index entries (first_seq, offset) as stored; a torn last entry is ignored."""
    try:
        data = seg.idx_path.read_bytes()
    except FileNotFoundError:
        return []
    n = len(data) // IDX_ENTRY.size
    return [IDX_ENTRY.unpack_from(data, i * IDX_ENTRY.size) for i in range(n)]


def _points_at_batch(f: BinaryIO, size: int, seg: Segment, first_seq: int, offset: int) -> bool:
    if not SEGMENT_HEADER_SIZE <= offset <= size - framing.HEADER_SIZE or first_seq < seg.first_seq:
        return False
    head = framing.parse_header(os.pread(f.fileno(), framing.HEADER_SIZE, offset), 0)
    return head is not None and head[0] == first_seq


def checked_index_entry(seg: Segment, seq: int) -> tuple[int, int]:
    """(offset, first_seq) of the last indexed batch at or before seq that really is there.

    Only entries for sequences at or before seq are considered (a damaged index may be
    out of order), newest first, each checked against the batch header it points at;
    when none checks out, the segment start is used.
    """
    candidates = sorted({e for e in read_idx(seg) if e[0] <= seq}, reverse=True)
    if candidates:
        with open(seg.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for first_seq, offset in candidates:
                if _points_at_batch(f, size, seg, first_seq, offset):
                    return offset, first_seq
    return SEGMENT_HEADER_SIZE, seg.first_seq


def checked_idx_entries(seg: Segment, end: int) -> list[tuple[int, int]]:
    """The index entries that point at a real batch before end, in order (the writer's rewrite on open)."""
    kept: list[tuple[int, int]] = []
    with open(seg.path, "rb") as f:
        size = min(end, os.fstat(f.fileno()).st_size)
        for first_seq, offset in sorted(set(read_idx(seg)), key=lambda e: e[1]):
            if kept and first_seq <= kept[-1][0]:
                continue
            if _points_at_batch(f, size, seg, first_seq, offset):
                kept.append((first_seq, offset))
    return kept


def pack_idx(entries: list[tuple[int, int]]) -> bytes:
    return b"".join(IDX_ENTRY.pack(s, o) for s, o in entries)


# --- reading ------------------------------------------------------------------


def record_in_segment(seg: Segment, offset: int, first_seq: int, seq: int) -> tuple[str, int, bytes] | None:
    """(segment name, file offset, stored bytes) of record seq, hopping from batch header to header.

    offset is the start of a batch with first sequence number first_seq at or before
    seq. None if seq is not there or its batch is damaged; only this record's CRC is checked.
    """
    rh = framing.RECORD_HEAD_SIZE
    with open(seg.path, "rb") as f:
        fd = f.fileno()
        while True:
            head = framing.parse_header(os.pread(fd, framing.HEADER_SIZE, offset), 0)
            if head is None or head[0] != first_seq:
                return None
            count, body_len = head[1], head[2]
            if seq >= first_seq + count:
                first_seq += count
                offset += framing.HEADER_SIZE + body_len
                continue
            body = os.pread(fd, body_len, offset + framing.HEADER_SIZE)
            rpos = 0
            for _ in range(seq - first_seq):
                if len(body) - rpos < rh:
                    return None
                rpos += rh + framing.RECORD_HEAD.unpack_from(body, rpos)[0]
            if len(body) - rpos < rh:
                return None
            n, crc = framing.RECORD_HEAD.unpack_from(body, rpos)
            payload = body[rpos + rh : rpos + rh + n]
            if len(payload) != n or framing.crc32(payload) != crc:
                return None
            return seg.name, offset + framing.HEADER_SIZE + rpos, payload


class SegmentCursor:
    """Reads whole batches of a log directory from one batch on, segment after segment.

    ``batches()`` yields every batch that is readable now, in order, and returns at
    the current end of the log; call it again (after waiting) to go on from there.
    It checks that sequence numbers run on without a gap. While a writer works, the
    cursor meets these cases, each handled by a method of its own:

    - the segment grew: reading resumes at the first byte not yet parsed (``_resume``);
    - the writer cut a failed append: bytes carried from before the cut are read again;
    - a newer segment appeared: the writer never appends to a segment once a newer one
      exists, but may have appended just before rolling, so this segment is read to its
      end once more, then the cursor moves on (``_roll``);
    - damage: it is read again from its batch start (it may be a failed append the
      writer has since cut), and once more if a newer segment appeared meanwhile (a
      restarted writer cuts a torn tail before appending); then it is judged
      (``_judge``): a torn tail of the newest segment ends the readable log for now,
      anything else raises CorruptLogError.
    """

    def __init__(self, directory: Path, frames: ModuleType, segment: Segment, offset: int, first_seq: int) -> None:
        """Start at the batch at file offset `offset` of segment, whose first sequence number is first_seq."""
        self.directory = directory
        self.expected = first_seq  # the first sequence number of the next batch
        self._frames = frames
        self._segment = segment
        self._file: BinaryIO | None = None
        self._open(segment, offset)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def position(self) -> tuple[int, Path, int]:
        """(first sequence number of the next batch, its segment, its file offset): where a new
        cursor starts to read what this one has not read yet."""
        return self.expected, self._segment.path, self._base

    def __enter__(self) -> SegmentCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _f(self) -> BinaryIO:
        if self._file is None:
            raise LogError("the log cursor is closed")
        return self._file

    def _open(self, segment: Segment, offset: int) -> None:
        self.close()
        self._segment = segment
        self._file = open(segment.path, "rb")  # closed by close()
        try:
            if offset == SEGMENT_HEADER_SIZE:
                check_segment_header(segment, self._file.read(SEGMENT_HEADER_SIZE))
            self._file.seek(offset)
        except BaseException:
            self.close()
            raise
        self._base = offset  # file offset of the next batch not yet parsed (buf[0])
        self._buf = b""  # bytes of an incomplete batch carried to the next read
        self._chunk = FIRST_CHUNK
        self._successor: Segment | None = None  # set once a newer segment exists: the final pass
        self._retried_at = -1  # damage is read again once from its batch start before it counts...
        self._rechecked_at = -1  # ...and once more if a newer segment appeared meanwhile

    def batches(self) -> Iterator[tuple[int, list[bytes]]]:
        """Every batch readable now, as (first_seq, payloads); returns at the current end of the log."""
        self._resume()
        while True:
            yield from self._read_to_end()
            if self._successor is not None:  # the final pass over this segment is done
                self._roll()
                continue
            newer = self._newer_segment()
            if newer is None:
                return
            self._successor = newer
            self._reread()  # the writer may have appended here before rolling: read to the end once more

    def _read_to_end(self) -> Iterator[tuple[int, list[bytes]]]:
        """Parse this segment from the cursor to its current end (or a torn tail)."""
        f = self._f
        while True:
            chunk = f.read(self._chunk)
            self._chunk = min(self._chunk * 4, READ_CHUNK)
            if not chunk:
                return
            buf = self._buf = self._buf + chunk if self._buf else chunk
            batches, pos, status, err_off, err_rec = self._frames.parse_batches(buf, 0, ALL)
            for off, first_seq, payloads in batches:
                if first_seq != self.expected:
                    raise gap_damage(self._segment.name, self._base + off, self.expected, first_seq).error()
                self.expected += len(payloads)
                yield first_seq, payloads
            self._base += pos
            self._buf = buf[pos:]
            if status != framing.OK and status != framing.INCOMPLETE:
                if not self._judge(status, err_off - pos, err_rec):
                    return

    def _judge(self, status: int, err_off: int, err_rec: int) -> bool:
        """Damage at the cursor: True to read it again, False for a torn tail; raises for corruption."""
        base = self._base
        if self._retried_at != base:
            # Bytes carried from an earlier read may predate a truncation by the writer
            # (a failed append): judge damage only on a fresh read.
            self._retried_at = base
            self._reread()
            return True
        rest = self._buf + self._f.read()
        newest = self._newer_segment() is None
        if not newest and self._rechecked_at != base:
            # A newer segment appeared since the fresh read: a restarted writer may have
            # cut this tail before rolling. Judge on one more read.
            self._rechecked_at = base
            self._reread()
            return True
        damage = judge_damage(
            self._segment.name, rest, status, err_off, err_rec, base=base, expected=self.expected, newest=newest
        )
        if damage.kind != TORN:
            raise damage.error()
        self._buf = b""  # a torn tail the writer will cut: the readable log ends here for now
        return False

    def _resume(self) -> None:
        """Continue after the end reached last time: the segment may have grown, or been cut."""
        f = self._f
        if self._buf and os.fstat(f.fileno()).st_size < self._base + len(self._buf):
            self._buf = b""  # the writer cut a failed append: read it again
        f.seek(self._base + len(self._buf))

    def _reread(self) -> None:
        self._buf = b""
        self._f.seek(self._base)

    def _roll(self) -> None:
        """Move on to the next segment, once this one was read to its end after the next appeared."""
        nxt = self._successor
        assert nxt is not None
        if self._buf:
            raise incomplete_older_segment(self._segment.name, self._base, self.expected, len(self._buf)).error()
        if nxt.first_seq != self.expected:
            raise gap_damage(nxt.name, 0, self.expected, nxt.first_seq, what="segment").error()
        self._open(nxt, SEGMENT_HEADER_SIZE)

    def _newer_segment(self) -> Segment | None:
        """The oldest segment after this one, if the writer has rolled past it."""
        for seg in list_segments(self.directory):
            if seg.first_seq > self._segment.first_seq:
                return seg
        return None
