"""The writer's recovery on open: read the newest segment's tail, cut a torn tail, refuse damage.

A torn tail (see mykey.log.damage for the rule) is cut off, saved under
``log/torn/`` and reported. Any other damage is never skipped: opening fails with
CorruptLogError naming segment, offset and sequence number. A complete final batch
that is damaged was written in full (with fsync="always", acknowledged), so it is
corruption; only an operator cuts it (``cut_damaged_tail=True``). Sequences known
to be acknowledged elsewhere (``keep_through``) are never cut.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import CorruptLogError
from ..fs import fsync_dir, private_dir, write_unique
from . import framing
from .damage import DAMAGED_FINAL, GAP, TORN, Damage, judge_damage
from .segments import (
    ALL,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MODE,
    Segment,
    check_segment_header,
    checked_index_entry,
    create_segment_file,
)

log = logging.getLogger("mykey.log")


@dataclass(frozen=True)
class RecoveryReport:
    """What recovery cut from the tail of the newest segment, and why."""

    segment: str
    offset: int
    dropped_bytes: int
    reason: str
    saved_to: str | None
    first_seq: int = 0  # the first sequence number that was cut (if the cut bytes held any)
    operator_cut: bool = False  # True when cut_damaged_tail cut a complete damaged batch

    def __str__(self) -> str:
        what = "cut damaged final batch" if self.operator_cut else "truncated torn tail"
        return (
            f"{what} of {self.segment} at offset {self.offset} (from sequence {self.first_seq}): "
            f"{self.dropped_bytes} bytes ({self.reason}); saved to {self.saved_to}"
        )


def recover_tail(
    directory: Path, seg: Segment, frames: ModuleType, *, cut_damaged_tail: bool, keep_through: int
) -> tuple[int, int, RecoveryReport | None]:
    """Read the newest segment's tail and cut a torn tail: (last_seq, end offset, what was cut)."""
    with open(seg.path, "rb") as f:
        head = f.read(SEGMENT_HEADER_SIZE)
        if len(head) < SEGMENT_HEADER_SIZE and len(head) == f.seek(0, 2):
            # A crash while creating the segment (older versions wrote the header in place).
            create_segment_file(seg)
            fsync_dir(directory)
            return seg.first_seq - 1, SEGMENT_HEADER_SIZE, None
        check_segment_header(seg, head)
        start, expected = checked_index_entry(seg, ALL)
        f.seek(start)
        data = f.read()
    last_seq, pos, status, err_off, err_rec = scan(frames, data, expected)
    end = start + pos
    if status == framing.OK:
        return last_seq, end, None
    tail = data[pos:]
    damage = judge_damage(
        seg.name, tail, status, err_off - pos, err_rec, base=end, expected=last_seq + 1, newest=True
    )
    operator_cut = damage.kind == DAMAGED_FINAL and cut_damaged_tail
    if damage.kind != TORN and not operator_cut:
        raise damage.error()
    if last_seq < keep_through:
        raise CorruptLogError(
            f"{damage}. Cutting it would drop sequences {last_seq + 1}..{keep_through}, which the "
            "index applied or a signed checkpoint covers, so they were acknowledged: nothing was "
            "truncated. Restore the segment from a replica or backup."
        )
    return last_seq, end, _cut(directory, seg, tail, damage, last_seq + 1, operator_cut)


def scan(frames: ModuleType, data: bytes, expected: int) -> tuple[int, int, int, int, int]:
    """Walk the batches in data: (last_seq, stop pos, status, err_offset, err_record).

    status is a framing status, or GAP for a whole batch that does not start at the
    expected sequence number (err_offset is then its offset).
    """
    batches, pos, status, err_off, err_rec = frames.parse_batches(data, 0, ALL)
    for off, first_seq, payloads in batches:
        if first_seq != expected:
            return expected - 1, off, GAP, off, -1
        expected += len(payloads)
    return expected - 1, pos, status, err_off, err_rec


def _cut(
    directory: Path, seg: Segment, dropped: bytes, damage: Damage, first_seq: int, operator_cut: bool
) -> RecoveryReport:
    """Save the bytes from damage.offset on under log/torn/ (durably), then truncate the segment there."""
    torn = directory / "torn"
    private_dir(torn)
    saved = write_unique(torn, f"{seg.path.stem}-{damage.offset}", ".bin", dropped, mode=SEGMENT_MODE)
    fsync_dir(directory)  # torn/ itself; the copy is durable before the original bytes go
    fd = os.open(seg.path, os.O_WRONLY)
    try:
        os.ftruncate(fd, damage.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    report = RecoveryReport(
        seg.name, damage.offset, len(dropped), damage.reason, str(saved), first_seq, operator_cut
    )
    log.warning("log recovery: %s", report)
    return report
