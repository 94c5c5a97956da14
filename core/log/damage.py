"""Damage in a log segment: how it is judged and the one place it is put into words.

Where parsing of a segment stops short of its end, the writer's recovery, every
reader and ``mykey log verify`` ask the same two questions: is this a torn tail
(the end of a write a crash interrupted, which the writer cuts on its next open)
or corruption (which is never skipped)? And what do we tell the operator?
``judge_damage`` answers both and returns a ``Damage``; its text names segment,
offset, sequence number and reason, and ``advice()`` says what to do.

The rule for the newest segment's end (the recovery rule): torn means

(a) an incomplete final batch,
(b) an invalid batch header with no valid header after it and either no CRC-valid record
    behind it (garbage or zeros appended) or zeros from the batch start to the next
    512-aligned offset (the write's first sector never reached the disk), or
(c) a complete final batch that holds a run of >= 512 zero bytes, or zeros from a
    512-aligned offset to the end (blocks left unwritten by a power loss).

A power cut may drop any sector of a write that was not yet synced, the first one too:
the disk orders sector writes as it likes. Zeros over whole sectors (or over the part of
the first or last sector that the batch covers) are the mark of such an unwritten sector.

Anything else is corruption: DAMAGED_MIDDLE when valid data follows (never cut),
DAMAGED_FINAL for a complete, damaged final batch (it was written in full, so it
may have been acknowledged: only an operator cuts it). Damage in a segment that is
not the newest is always DAMAGED_MIDDLE: the next segment is valid data after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CorruptLogError
from . import framing

# How damage is treated.
TORN = "torn"  # cut on the writer's next open and reported
DAMAGED_FINAL = "damaged final batch"  # complete and damaged: refused unless the operator cuts it
DAMAGED_MIDDLE = "damaged, valid data follows"  # never cut

GAP = -1  # pseudo parse status: a whole batch that does not start at the expected sequence
SECTOR = 512  # the unit a disk writes atomically (or not at all) in a power cut
ZERO_RUN = b"\0" * SECTOR  # a damaged region holding this is unwritten blocks, i.e. torn

_REPAIR = "`mykey log repair --cut-damaged-tail`"


@dataclass(frozen=True)
class Damage:
    """Where a segment stops being readable, why, and how that is treated."""

    segment: str  # file name of the segment
    offset: int  # file offset of the damaged batch (where the readable data ends)
    seq: int  # the first sequence number the damage hits
    reason: str  # what is wrong there
    kind: str  # TORN, DAMAGED_FINAL or DAMAGED_MIDDLE
    valid_at: int | None = None  # DAMAGED_MIDDLE: file offset of valid data after the damage, if in this segment
    batch: tuple[int, int] | None = None  # (first, last) sequence of the damaged batch when its header is valid

    def __str__(self) -> str:
        return located(self.segment, self.offset, self.seq, self.reason)

    @property
    def lost(self) -> str:
        """The sequences cutting this damage would drop, in words."""
        if self.batch is not None:
            return f"sequences {self.batch[0]}..{self.batch[1]}"
        return f"the batch from sequence {self.seq}"

    def advice(self) -> str:
        """What this damage means and what the operator can do about it."""
        if self.kind == TORN:
            return "a torn tail (a write a crash interrupted): the writer cuts it on its next open"
        if self.kind == DAMAGED_FINAL:
            return (
                "it is the final batch and it was written in full, so it may have been acknowledged: "
                "this is corruption, not a torn write, and it is not cut. Restore the segment "
                f"from a replica or backup; or, accepting the loss of {self.lost}, stop every writer "
                f"and run {_REPAIR} (it saves the batch under log/torn/)"
            )
        where = f" at offset {self.valid_at}" if self.valid_at is not None else " in a later segment"
        return (
            f"valid data follows{where}, so this is corruption, not a torn write, and it is never "
            "cut. Restore the segment from a replica or backup (see `mykey log verify`)"
        )

    def explained(self) -> str:
        """The reason and the advice."""
        return f"{self.reason}; {self.advice()}"

    def error(self) -> CorruptLogError:
        """The exception a reader or the writer raises for this damage."""
        return CorruptLogError(located(self.segment, self.offset, self.seq, self.explained()) + ".")


def located(segment: str, offset: int | None, seq: int | None, what: str) -> str:
    """The wording of any problem found in a segment: segment, offset, sequence number (if known), what."""
    return f"{segment} offset {offset}" + ("" if seq is None else f" (sequence {seq})") + f": {what}"


def judge_damage(
    segment: str,
    data: bytes,
    status: int,
    err_off: int,
    err_rec: int,
    *,
    base: int,
    expected: int,
    newest: bool,
) -> Damage:
    """Judge and word damage at data[0], where parsing of a segment stopped.

    data holds the segment from the damaged batch (file offset base) to its end as far
    as it was read; status, err_off (relative to data) and err_rec come from
    framing.parse_batches, or status is GAP; expected is the batch's expected first
    sequence number; newest says whether the segment is the newest one.
    """
    head = framing.parse_header(data, 0)
    batch = (head[0], head[0] + head[1] - 1) if head is not None else None
    if status == framing.INCOMPLETE:
        reason = "incomplete batch"
    elif status == framing.BAD_HEADER:
        reason = "bad batch header"
    elif status == GAP:
        assert head is not None
        reason = f"sequence gap: the batch starts at {head[0]}, expected {expected}"
    else:
        reason = f"record {err_rec} of the batch (at offset {base + err_off}) fails its CRC or framing"
    kind, later = _classify(data, status, err_off, base) if newest else (DAMAGED_MIDDLE, -1)
    valid_at = base + later if later != -1 else None
    return Damage(segment, base, expected + max(err_rec, 0), reason, kind, valid_at, batch)


def gap_damage(segment: str, offset: int, expected: int, found: int, *, what: str = "batch") -> Damage:
    """A whole batch (or segment) that does not start at the expected sequence number."""
    reason = f"sequence gap: the {what} starts at {found}, expected {expected}"
    return Damage(segment, offset, expected, reason, DAMAGED_MIDDLE)


def incomplete_older_segment(segment: str, offset: int, expected: int, nbytes: int) -> Damage:
    """Bytes of an unfinished batch at the end of a segment the writer has rolled past."""
    reason = f"{nbytes} bytes of an incomplete batch in a segment that is not the newest"
    return Damage(segment, offset, expected, reason, DAMAGED_MIDDLE)


def _classify(data: bytes, status: int, err_off: int, base: int) -> tuple[str, int]:
    """(TORN, DAMAGED_FINAL or DAMAGED_MIDDLE; offset in data of the next valid batch or -1) for the newest segment."""
    if status == framing.INCOMPLETE:
        return TORN, -1
    if status == framing.BAD_HEADER:
        later = framing.find_header(data, 1)
        if later != -1:
            return DAMAGED_MIDDLE, later
        header = data[: framing.HEADER_SIZE]
        if header.strip(b"\0") and _record_follows(data, framing.HEADER_SIZE) and not _unwritten_head(data, base):
            return DAMAGED_FINAL, -1  # a written batch whose header was damaged afterwards
        return TORN, -1  # garbage or unwritten blocks after the last batch
    # BAD_RECORD or GAP: the header is valid and the body wholly present.
    head = framing.parse_header(data, 0)
    assert head is not None
    bend = framing.HEADER_SIZE + head[2]
    later = framing.find_header(data, bend)
    if later != -1:
        return DAMAGED_MIDDLE, later
    if status == framing.BAD_RECORD and _unwritten_tail(data[:bend], base, err_off):
        return TORN, -1
    return DAMAGED_FINAL, -1


def _record_follows(data: bytes, start: int) -> bool:
    """True if a CRC-valid, non-empty record is framed at start (a batch whose header is damaged).

    One real record is enough: garbage does not carry a matching CRC.
    """
    if len(data) - start < framing.RECORD_HEAD_SIZE:
        return False
    n, crc = framing.RECORD_HEAD.unpack_from(data, start)
    body = start + framing.RECORD_HEAD_SIZE
    return 0 < n <= len(data) - body and framing.crc32(data[body : body + n]) == crc


def _unwritten_head(data: bytes, base: int) -> bool:
    """True if data (at file offset base) starts with zeros up to the next 512-aligned offset.

    The first sector a write touched did not reach the disk: the batch's bytes in it read
    as zeros although later sectors of the same write did.
    """
    first = -base % SECTOR or SECTOR
    return len(data) >= first and not data[:first].strip(b"\0")


def _unwritten_tail(data: bytes, base: int, damaged_at: int) -> bool:
    """True if data ends in zeros that look like unwritten blocks.

    After a power loss the blocks of the last write may read as zeros: a zero run of a
    sector or more in the batch, or zeros from a 512-aligned file offset (base is data[0]'s)
    to the end.
    The batch's own bytes just before that offset may be zeros too, so the trailing zeros
    count when they cover a 512-aligned offset that the damaged record (at damaged_at)
    reaches: damage that ends before the zeros is not explained by them.
    """
    if data.find(ZERO_RUN) != -1:
        # A sector of zeros anywhere in the batch: real batches never hold one. Anywhere, not only
        # after damaged_at: record heads that read as zeros parse as empty records (and a header's
        # last bytes are zeros), so the damage can show only after the zeros began.
        return True
    zeros_from = len(data.rstrip(b"\0"))  # where the trailing zeros begin
    aligned = zeros_from + (-(base + zeros_from)) % SECTOR  # the first sector start in them
    return aligned < _record_reach(data, damaged_at)


def _record_reach(data: bytes, at: int) -> int:
    """Where the record framed at `at` ends by its length field (the end of data if its head is zeros or cut)."""
    head = data[at : at + framing.RECORD_HEAD_SIZE]
    if len(head) < framing.RECORD_HEAD_SIZE or not head.strip(b"\0"):
        return len(data)
    return min(len(data), at + framing.RECORD_HEAD_SIZE + framing.RECORD_HEAD.unpack_from(head)[0])
