"""How mykey batches are laid out as JetStream messages, and how a reader puts them back together.

Pure logic, no I/O (the JetStream backend, mykey.log.jetstream, does the talking).

One mykey batch is one JetStream atomic batch of 1..n messages. Each message's data
is a batch frame of mykey.log.framing (``encode_batch(first_seq, payloads)``) holding
the records of consecutive events, so every record is stored exactly as the file log
stores it (the Merkle trail hashes the same bytes), carries its CRC, and the frame
header names the message's first event sequence number. Headers:

    Mykey-Batch   the batch ID (32 hex), the same on every message of the batch
    Mykey-Part    "k/n": this is message k of the batch's n
    Mykey-Digest  (message 1) SHA-256 over the batch's frames, each prefixed by its length
    Mykey-Writer  (message 1) who wrote it: host:pid:token of the writer handle

A reader checks, message by message: stream sequence numbers without gaps, the frame
intact (CRCs), event sequence numbers running on without gaps, the parts of a batch
complete and in order, and the digest. Whatever fails raises CorruptLogError naming the
stream sequence: a server that returns altered, reordered or foreign data is refused,
never believed. (A server that rewrites frames consistently is caught one level up, by
the Merkle trail and the signed checkpoints: `mykey audit verify`.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ..errors import CorruptLogError, ValidationError
from . import framing

__all__ = [
    "H_BATCH",
    "H_DIGEST",
    "H_PART",
    "H_WRITER",
    "BatchAssembler",
    "StreamMessage",
    "batch_digest",
    "decode_message",
    "message_headers",
    "pack_frames",
    "parse_part",
]

H_BATCH = "Mykey-Batch"
H_PART = "Mykey-Part"
H_DIGEST = "Mykey-Digest"
H_WRITER = "Mykey-Writer"

_MAX_RECORDS = 1 << 62  # parse_batches: no record limit inside one frame


@dataclass(frozen=True)
class StreamMessage:
    """One stored JetStream message: its stream sequence number, headers and data."""

    stream_seq: int
    headers: dict[str, str]
    data: bytes


def pack_frames(frames: ModuleType, first_seq: int, payloads: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Frame payloads (events first_seq, first_seq+1, ...) into as few frames of <= max_bytes as they fit.

    ValidationError for a record too large for one message (nothing is sent then).
    """
    out: list[bytes] = []
    start = 0
    size = framing.HEADER_SIZE
    for i, p in enumerate(payloads):
        need = framing.RECORD_HEAD_SIZE + len(p)
        if framing.HEADER_SIZE + need > max_bytes:
            raise ValidationError(
                f"event {i + 1} of the batch encodes to {len(p)} bytes, more than one log message holds "
                f"({max_bytes - framing.HEADER_SIZE - framing.RECORD_HEAD_SIZE} bytes with this server's "
                "max_payload); nothing was appended"
            )
        if i > start and size + need > max_bytes:
            out.append(frames.encode_batch(first_seq + start, list(payloads[start:i])))
            start, size = i, framing.HEADER_SIZE
        size += need
    if start < len(payloads):
        out.append(frames.encode_batch(first_seq + start, list(payloads[start:])))
    return out


def batch_digest(frames: Sequence[bytes]) -> str:
    """The Mykey-Digest of a batch: SHA-256 over its frames, each prefixed by its length."""
    h = hashlib.sha256()
    for f in frames:
        h.update(len(f).to_bytes(8, "little"))
        h.update(f)
    return h.hexdigest()


def message_headers(batch_id: str, k: int, n: int, digest: str, writer: str) -> dict[str, str]:
    """The mykey headers of message k (1-based) of an n-message batch."""
    h = {H_BATCH: batch_id, H_PART: f"{k}/{n}"}
    if k == 1:
        h[H_DIGEST] = digest
        h[H_WRITER] = writer
    return h


def parse_part(headers: dict[str, str] | None) -> tuple[int, int] | None:
    """(k, n) from a Mykey-Part header, or None when it is missing or malformed."""
    value = (headers or {}).get(H_PART, "")
    k, sep, n = value.partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        return None
    ki, ni = int(k), int(n)
    return (ki, ni) if 1 <= ki <= ni else None


def decode_message(frames: ModuleType, msg: StreamMessage, where: str) -> tuple[int, list[bytes]]:
    """(first event seq, record payloads) of a message holding exactly one intact frame; else CorruptLogError."""
    batches, pos, status, _off, _rec = frames.parse_batches(msg.data, 0, _MAX_RECORDS)
    if status != framing.OK or len(batches) != 1 or pos != len(msg.data):
        why = {framing.BAD_HEADER: "a bad frame header", framing.BAD_RECORD: "a record failing its CRC"}.get(
            status, "not exactly one whole frame"
        )
        raise CorruptLogError(f"{where}: message {msg.stream_seq} holds {why}; {_WHAT_TO_DO}")
    _offset, first_seq, payloads = batches[0]
    return first_seq, payloads


_WHAT_TO_DO = "the stream returned data mykey did not write there; run `mykey audit verify`"


@dataclass
class _Pending:
    batch_id: str
    n: int
    k: int
    first_seq: int
    digest: str
    payloads: list[bytes] = field(default_factory=list)
    hasher: Any = field(default_factory=hashlib.sha256)


class BatchAssembler:
    """Turns consecutive stream messages into whole mykey batches, checking everything on the way.

    Start it at the first message of a batch (stream sequence next_stream_seq); with
    next_event_seq None the first frame sets the event numbering, else it must match.
    mid_batch=True also accepts a first message inside a batch (for readers of records,
    not of whole batches: feed_records; the digest of that one batch cannot be checked,
    its frames' CRCs are).
    """

    def __init__(
        self,
        frames: ModuleType,
        where: str,
        next_stream_seq: int,
        next_event_seq: int | None,
        *,
        mid_batch: bool = False,
    ) -> None:
        self.frames = frames
        self.where = where
        self.next_stream_seq = next_stream_seq
        self.next_event_seq = next_event_seq
        self._pending: _Pending | None = None
        self._done: _Pending | None = None
        self._mid_batch = mid_batch

    @property
    def in_batch(self) -> bool:
        """Whether some parts of a batch were fed but not yet its last one."""
        return self._pending is not None

    def _corrupt(self, seq: int, what: str) -> CorruptLogError:
        return CorruptLogError(f"{self.where}: message {seq}: {what}; {_WHAT_TO_DO}")

    def feed(self, msg: StreamMessage) -> tuple[int, list[bytes]] | None:
        """Take the next message; returns (first_seq, payloads) when it completes a batch, else None."""
        first_seq, payloads, done = self._take(msg, keep=True)
        if not done:
            return None
        p = self._done
        return p.first_seq, p.payloads

    def feed_records(self, msg: StreamMessage) -> tuple[int, list[bytes]]:
        """Take the next message with the same checks as feed; returns its own records (first_seq, payloads)."""
        first_seq, payloads, _done = self._take(msg, keep=False)
        return first_seq, payloads

    def _take(self, msg: StreamMessage, keep: bool) -> tuple[int, list[bytes], bool]:
        seq = msg.stream_seq
        if seq != self.next_stream_seq:
            raise self._corrupt(seq, f"came where message {self.next_stream_seq} was expected (skipped or reordered)")
        part = parse_part(msg.headers)
        batch_id = (msg.headers or {}).get(H_BATCH)
        if part is None or not batch_id:
            raise self._corrupt(seq, "is not a mykey log message (no Mykey-Batch / Mykey-Part header)")
        first_seq, payloads = decode_message(self.frames, msg, self.where)
        if self.next_event_seq is not None and first_seq != self.next_event_seq:
            raise self._corrupt(seq, f"starts at event {first_seq} where event {self.next_event_seq} was expected")
        k, n = part
        p = self._pending
        if k == 1:
            if p is not None:
                raise self._corrupt(seq, f"starts a new batch but batch {p.batch_id} ended after part {p.k} of {p.n}")
            digest = (msg.headers or {}).get(H_DIGEST)
            if not digest:
                raise self._corrupt(seq, f"starts batch {batch_id} without its Mykey-Digest")
            p = self._pending = _Pending(batch_id, n, 0, first_seq, digest)
        elif p is None and self._mid_batch:
            p = self._pending = _Pending(batch_id, n, k - 1, first_seq, "")  # the rest of a batch: no digest
        elif p is None or p.batch_id != batch_id or p.k + 1 != k or p.n != n:
            raise self._corrupt(seq, f"is part {k}/{n} of batch {batch_id}, out of place")
        self._mid_batch = False
        p.k = k
        if keep:
            p.payloads.extend(payloads)
        p.hasher.update(len(msg.data).to_bytes(8, "little"))
        p.hasher.update(msg.data)
        self.next_stream_seq = seq + 1
        self.next_event_seq = first_seq + len(payloads)
        if k < n:
            return first_seq, payloads, False
        self._pending = None
        if p.digest and p.hasher.hexdigest() != p.digest:
            raise self._corrupt(seq, f"batch {batch_id} does not match its digest")
        self._done = p
        return first_seq, payloads, True
