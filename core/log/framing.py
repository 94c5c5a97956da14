"""Batch framing of log records (pure-Python twin of ``mykey.log._framing``).

A batch is a 32-byte header followed by its records; each record is framed with
its length and the CRC-32 of its payload. The header carries its own CRC, the
batch's first sequence number, record count and body length, so a batch is
either wholly present and intact or detectably not: that is what makes a batch
atomic across crashes. Little-endian throughout.

    header: magic "MKB1" | hcrc u32 | first_seq u64 | count u32 | body_len u32 | flags u32 | reserved u32
    record: len u32 | crc u32 | payload[len]

A record holds at most MAX_RECORD bytes: encode_batch refuses a longer payload
(ValueError) and parse_batches reports a longer record as BAD_RECORD, so a reader
never trusts a length beyond what a writer can produce.

This module is the one home of the format: the Cython twin (ext/_framing.pyx)
takes every constant and message from here and checks the layout on import.
Which twin encodes and parses the log is chosen in mykey.log.accel; the single-header
checks of recovery and the index (parse_header, find_header) use this module directly.

The twins also hash whole batches of records the way the Merkle tree over the log
does (RFC 9162: leaf = SHA-256(0x00 || record), interior node = SHA-256(0x01 || left || right)):
leaf_hashes and perfect_root, for `mykey audit verify`, which hashes every record.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

MAGIC = b"MKB1"
HEADER = struct.Struct("<4sIQIIII")
HEADER_SIZE = HEADER.size  # 32
RECORD_HEAD = struct.Struct("<II")
RECORD_HEAD_SIZE = RECORD_HEAD.size  # 8
MAX_RECORD = 16 * 1024 * 1024  # bytes of one record's payload
MAX_BODY = 0xFFFFFFFF  # body_len is a u32
NEGATIVE_POS = "pos must be >= 0 (an offset into the buffer)"
RECORD_TOO_LARGE = "a record of {} bytes exceeds MAX_RECORD ({} bytes)"
BODY_TOO_LARGE = "batch body exceeds 4 GiB; split the batch"

HASH_SIZE = 32  # SHA-256
LEAF_PREFIX = b"\x00"  # RFC 9162 leaf hash: SHA-256(0x00 || record)
NODE_PREFIX = b"\x01"  # RFC 9162 interior node: SHA-256(0x01 || left || right)
NOT_PERFECT = "perfect_root needs a power of two of 32-byte hashes, got {} bytes"

# parse_batches status codes
OK = 0
INCOMPLETE = 1  # the buffer ends inside a batch
BAD_HEADER = 2  # magic or header CRC wrong, or impossible sizes
BAD_RECORD = 3  # a record's framing or CRC is wrong

_crc32 = zlib.crc32
crc32 = zlib.crc32  # the record checksum (CRC-32 of the payload)


def encode_batch(first_seq: int, payloads: list[bytes]) -> bytes:
    """Frame payloads as one batch whose first record has sequence number first_seq."""
    parts = [b""]
    pack = RECORD_HEAD.pack
    body_len = 0
    for p in payloads:
        crc = _crc32(p)
        if len(p) > MAX_RECORD:
            raise ValueError(RECORD_TOO_LARGE.format(len(p), MAX_RECORD))
        parts.append(pack(len(p), crc))
        parts.append(p)
        body_len += RECORD_HEAD_SIZE + len(p)
    if body_len > MAX_BODY:
        raise ValueError(BODY_TOO_LARGE)
    rest = struct.pack("<QIIII", first_seq, len(payloads), body_len, 0, 0)
    parts[0] = MAGIC + struct.pack("<I", _crc32(rest)) + rest
    return b"".join(parts)


def parse_header(buf: bytes | memoryview, pos: int) -> tuple[int, int, int] | None:
    """Return (first_seq, count, body_len) if a valid header starts at pos, else None."""
    if pos < 0:
        raise ValueError(NEGATIVE_POS)
    if len(buf) - pos < HEADER_SIZE:
        return None
    magic, hcrc, first_seq, count, body_len, _flags, _res = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or _crc32(bytes(buf[pos + 8 : pos + HEADER_SIZE])) != hcrc:
        return None
    if body_len < count * RECORD_HEAD_SIZE:
        return None
    return first_seq, count, body_len


def parse_batches(
    buf: bytes | memoryview, pos: int, max_records: int
) -> tuple[list[tuple[int, int, list[bytes]]], int, int, int, int]:
    """Parse consecutive batches from pos to the end of buf.

    Returns (batches, pos, status, err_offset, err_record): batches are
    (offset, first_seq, payloads); pos is where parsing stopped (the start of the
    first batch not returned); status is OK, INCOMPLETE, BAD_HEADER or BAD_RECORD;
    for BAD_RECORD err_offset is the record's offset and err_record its index.
    Stops after a whole batch once max_records records were returned.
    """
    if pos < 0:
        raise ValueError(NEGATIVE_POS)
    mv = memoryview(buf)
    end = len(mv)
    batches: list[tuple[int, int, list[bytes]]] = []
    got = 0
    while pos < end and got < max_records:
        if end - pos < HEADER_SIZE:
            return batches, pos, INCOMPLETE, pos, -1
        head = parse_header(mv, pos)
        if head is None:
            return batches, pos, BAD_HEADER, pos, -1
        first_seq, count, body_len = head
        if end - pos - HEADER_SIZE < body_len:
            return batches, pos, INCOMPLETE, pos, -1
        rpos = pos + HEADER_SIZE
        bend = rpos + body_len
        payloads = []
        for i in range(count):
            if bend - rpos < RECORD_HEAD_SIZE:
                return batches, pos, BAD_RECORD, rpos, i
            n, crc = RECORD_HEAD.unpack_from(mv, rpos)
            rpos += RECORD_HEAD_SIZE
            if n > bend - rpos or n > MAX_RECORD:
                return batches, pos, BAD_RECORD, rpos - RECORD_HEAD_SIZE, i
            p = bytes(mv[rpos : rpos + n])
            if _crc32(p) != crc:
                return batches, pos, BAD_RECORD, rpos - RECORD_HEAD_SIZE, i
            payloads.append(p)
            rpos += n
        if rpos != bend:
            return batches, pos, BAD_RECORD, rpos, count
        batches.append((pos, first_seq, payloads))
        got += count
        pos = bend
    return batches, pos, OK, pos, -1


def parse_records(
    buf: bytes | memoryview, pos: int, max_records: int
) -> tuple[list[tuple[int, int, list[bytes]]], int, int, int, int]:
    """parse_batches for a reader that goes through each batch once (``mykey log verify``).

    Here the same lists; the native twin gives each batch's payloads as a sequence that
    makes each bytes object only when it is read, so a long batch never sits in memory twice.
    """
    return parse_batches(buf, pos, max_records)


def find_header(buf: bytes | memoryview, start: int) -> int:
    """Offset of the next valid batch header at or after start, or -1 (recovery only)."""
    data = bytes(buf)
    i = data.find(MAGIC, start)
    while i != -1:
        if parse_header(data, i) is not None:
            return i
        i = data.find(MAGIC, i + 1)
    return -1


def leaf_hashes(payloads: list[bytes]) -> bytes:
    """The RFC 9162 leaf hash SHA-256(0x00 || p) of every p in payloads, concatenated (32 bytes each)."""
    sha, lead = hashlib.sha256, LEAF_PREFIX
    return b"".join([sha(lead + p).digest() for p in payloads])


def perfect_root(hashes: bytes | bytearray | memoryview) -> bytes:
    """Root of the perfect subtree over hashes (32 bytes each, a power of two of them), folded a level at a time."""
    data = bytes(hashes)
    n = len(data) // HASH_SIZE
    if len(data) % HASH_SIZE or n == 0 or n & (n - 1):
        raise ValueError(NOT_PERFECT.format(len(data)))
    sha, lead = hashlib.sha256, NODE_PREFIX
    while len(data) > HASH_SIZE:
        data = b"".join([sha(lead + data[i : i + 64]).digest() for i in range(0, len(data), 64)])
    return data
