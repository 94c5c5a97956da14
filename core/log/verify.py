"""`mykey log verify`: check every byte of a file log without changing it.

Checks segment headers and names, every batch header and record CRC, sequence
continuity across batches and segments, that each record decodes and carries the
sequence number its frame says, and that index entries point at real batches.
Reports the first problem with its exact position; damage at the newest segment's
end counts as a torn tail only by the writer's rule (mykey.filelog.classify_damage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ..domain.events import decode_envelope
from ..errors import RecordDecodeError
from . import framing
from .accel import framing_module
from .filelog import (
    DAMAGED_FINAL,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    TORN,
    classify_damage,
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
        return f"{self.segment} offset {self.offset} (sequence {self.seq}): {self.what}"


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


def verify_log(directory: str | Path, *, decode: bool = True) -> VerifyReport:
    """Verify the log in directory; decode=True also decodes every record."""
    frames = framing_module()
    directory = Path(directory)
    report = VerifyReport()
    segs = list_segments(directory)
    expected = 1
    for n, seg in enumerate(segs):
        newest = n == len(segs) - 1
        report.segments += 1
        data = seg.path.read_bytes()
        report.bytes += len(data)
        if seg.first_seq != expected:
            report.problem = Problem(seg.path.name, 0, expected, f"segment name says it starts at {seg.first_seq}")
            return report
        if len(data) < SEGMENT_HEADER_SIZE or SEGMENT_HEADER.unpack_from(data) != (SEGMENT_MAGIC, seg.first_seq):
            report.problem = Problem(seg.path.name, 0, expected, "bad segment header")
            return report
        batch_starts: dict[int, int] = {}
        pos = SEGMENT_HEADER_SIZE
        batches, pos, status, err_off, err_rec = frames.parse_batches(data, pos, 1 << 62)
        for off, first_seq, payloads in batches:
            if first_seq != expected:
                report.problem = Problem(seg.path.name, off, expected, f"sequence gap: batch starts at {first_seq}")
                return report
            batch_starts[off] = first_seq
            for i, p in enumerate(payloads):
                seq = first_seq + i
                if decode:
                    try:
                        env = decode_envelope(p)
                    except (RecordDecodeError, msgspec.MsgspecError) as exc:
                        report.problem = Problem(seg.path.name, off, seq, f"record does not decode: {exc}")
                        return report
                    if env.seq != seq:
                        report.problem = Problem(seg.path.name, off, seq, f"record says sequence {env.seq}")
                        return report
            expected += len(payloads)
            report.batches += 1
            report.events += len(payloads)
        if status != framing.OK:
            what = {
                framing.INCOMPLETE: "incomplete batch",
                framing.BAD_HEADER: "bad batch header",
                framing.BAD_RECORD: f"record {err_rec} of the batch fails its CRC or framing",
            }[status]
            where = err_off if status == framing.BAD_RECORD else pos
            kind = classify_damage(data, pos, status, err_off)[0] if newest else None
            if kind == TORN:
                prob = Problem(seg.path.name, where, expected + max(err_rec, 0), what)
                report.torn_tail = prob
                report.notes.append(f"torn tail ({what}) that the writer cuts on its next open: {prob}")
            else:
                if kind == DAMAGED_FINAL:
                    what += (
                        " in the final batch, which was written in full: corruption, not a torn tail. Restore "
                        "the segment from a replica or backup, or cut the batch (losing its events) with "
                        "`mykey log repair --cut-damaged-tail`"
                    )
                report.problem = Problem(seg.path.name, where, expected + max(err_rec, 0), what)
                return report
        for first_seq, off in read_idx(seg):
            if batch_starts.get(off) != first_seq and off < pos:
                report.notes.append(f"{seg.idx_path.name}: stale entry ({first_seq} at {off}); readers fall back to a scan")
    report.last_seq = expected - 1
    return report
