"""`mykey log verify`: check every byte of a file log without changing it.

Checks segment headers and names, every batch header and record CRC, sequence
continuity across batches and segments, that each record decodes and carries the
sequence number its frame says, and that index entries point at real batches.
Reports the first problem with its exact position; damage at the newest segment's
end counts as a torn tail only by the writer's rule (mykey.log.damage.judge_damage).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..domain.events import decode_envelope
from ..errors import RecordDecodeError
from . import framing
from .accel import framing_module
from .damage import TORN, Damage, gap_damage, judge_damage, located
from .segments import (
    ALL,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    list_segments,
    read_idx,
)


@dataclass
class Problem:
    """One problem: which segment, where, which sequence number, what."""

    segment: str
    offset: int
    seq: int
    what: str

    def __str__(self) -> str:
        return located(self.segment, self.offset, self.seq, self.what)

    @classmethod
    def of(cls, damage: Damage) -> Problem:
        return cls(damage.segment, damage.offset, damage.seq, damage.explained())


@dataclass
class VerifyReport:
    """Result of verify_log: counts, and the first problem (None when the log is sound)."""

    segments: int = 0
    batches: int = 0
    events: int = 0
    bytes: int = 0
    last_seq: int = 0
    problem: Problem | None = None
    torn_tail: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "segments": self.segments,
            "batches": self.batches,
            "events": self.events,
            "bytes": self.bytes,
            "last_seq": self.last_seq,
            "problem": None if self.problem is None else str(self.problem),
            "notes": list(self.notes),
        }


def record_problem(seq: int, payload: bytes) -> str | None:
    """What is wrong with the stored record at ``seq`` (any backend): it must decode and carry ``seq``."""
    try:
        env = decode_envelope(payload)
    except (RecordDecodeError, msgspec.MsgspecError) as exc:
        return f"record does not decode: {exc}"
    if env.seq != seq:
        return f"record says sequence {env.seq}"
    return None


BatchCheck = Callable[[int, Sequence[bytes]], "tuple[int, str] | None"]


def first_bad_record(first_seq: int, payloads: Sequence[bytes]) -> tuple[int, str] | None:
    """The first record of a batch that record_problem finds wrong, as (seq, what); None when all are sound."""
    for seq, p in enumerate(payloads, first_seq):
        what = record_problem(seq, p)
        if what is not None:
            return seq, what
    return None


def merkle_hashing() -> tuple[Callable[[Sequence[bytes]], bytes], Callable[[bytes | bytearray | memoryview], bytes]]:
    """(leaf_hashes, perfect_root) of the framing implementation in use: RFC 9162 hashing a batch at a time."""
    frames = framing_module()
    return frames.leaf_hashes, frames.perfect_root


def _segment_data(path: Path, *, sealed: bool) -> bytes | mmap.mmap:
    """A segment's bytes: mapped when sealed (the writer never changes a segment once a newer one
    exists), else read (the newest may grow, or lose a torn tail, while it is checked). Mapping
    spares a copy of the file and the zeroing of as much fresh memory."""
    if not sealed:
        return path.read_bytes()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def verify_log(directory: str | Path, *, decode: bool = True, check: BatchCheck | None = None) -> VerifyReport:
    """Verify the log in directory; decode=True also decodes every record.

    ``check(first_seq, payloads)`` replaces the record-by-record decode: it is called with
    every sound batch in log order and returns (seq, what) for its first bad record, or None.
    """
    batch_problem = first_bad_record if check is None else check
    frames = framing_module()
    directory = Path(directory)
    report = VerifyReport()
    segs = list_segments(directory)
    expected = 1
    for n, seg in enumerate(segs):
        newest = n == len(segs) - 1
        report.segments += 1
        data = _segment_data(seg.path, sealed=not newest)
        report.bytes += len(data)
        if seg.first_seq != expected:
            report.problem = Problem.of(gap_damage(seg.name, 0, expected, seg.first_seq, what="segment"))
            return report
        if len(data) < SEGMENT_HEADER_SIZE or SEGMENT_HEADER.unpack_from(data) != (SEGMENT_MAGIC, seg.first_seq):
            report.problem = Problem(seg.name, 0, expected, "bad segment header")
            return report
        batch_starts: dict[int, int] = {}
        batches, pos, status, err_off, err_rec = frames.parse_records(data, SEGMENT_HEADER_SIZE, ALL)
        for off, first_seq, payloads in batches:
            if first_seq != expected:
                report.problem = Problem.of(gap_damage(seg.name, off, expected, first_seq))
                return report
            batch_starts[off] = first_seq
            if decode:
                bad = batch_problem(first_seq, payloads)
                if bad is not None:
                    report.problem = Problem(seg.name, off, bad[0], bad[1])
                    return report
            expected += len(payloads)
            report.batches += 1
            report.events += len(payloads)
        if status != framing.OK:
            damage = judge_damage(
                seg.name, data[pos:], status, err_off - pos, err_rec, base=pos, expected=expected, newest=newest
            )
            if damage.kind != TORN:
                report.problem = Problem.of(damage)
                return report
            report.torn_tail = Problem.of(damage)
            report.notes.append(f"torn tail that the writer cuts on its next open: {damage}")
        for first_seq, off in read_idx(seg):
            if batch_starts.get(off) != first_seq and off < pos:
                report.notes.append(f"{seg.idx_path.name}: stale entry ({first_seq} at {off}); readers fall back to a scan")
    report.last_seq = expected - 1
    return report
