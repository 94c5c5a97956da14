"""Batch framing: round trips, the Cython module against its pure twin, damage detection."""

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mykey.log import framing
from mykey.log.accel import framing_module

payload_lists = st.lists(st.binary(max_size=300), max_size=40)


@given(st.integers(1, 2**63), payload_lists)
def test_round_trip(framing_impl, first_seq, payloads):
    f = framing_module(framing_impl)
    frame = f.encode_batch(first_seq, payloads)
    batches, pos, status, _, _ = f.parse_batches(frame, 0, 1 << 62)
    assert status == framing.OK and pos == len(frame)
    assert batches == [(0, first_seq, payloads)]


@given(st.lists(st.tuples(st.integers(1, 2**40), payload_lists), max_size=6), st.data())
def test_native_matches_pure_byte_for_byte(batches, data):
    native, pure = framing_module("native"), framing_module("pure")
    frames = [native.encode_batch(s, p) for s, p in batches]
    assert frames == [pure.encode_batch(s, p) for s, p in batches]
    buf = bytearray(b"".join(frames))
    if buf and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, len(buf)))
    buf = bytes(buf[:cut])
    limit = data.draw(st.integers(1, 50))
    assert native.parse_batches(buf, 0, limit) == pure.parse_batches(buf, 0, limit)
    assert native.parse_header(buf, 0) == pure.parse_header(buf, 0)


@given(st.binary(max_size=500))
def test_random_bytes_never_crash(framing_impl, data):
    f = framing_module(framing_impl)
    batches, pos, status, _, _ = f.parse_batches(data, 0, 1 << 62)
    assert 0 <= pos <= len(data)
    assert status in (framing.OK, framing.INCOMPLETE, framing.BAD_HEADER, framing.BAD_RECORD)


def test_every_flipped_bit_is_detected(framing_impl):
    f = framing_module(framing_impl)
    frame = f.encode_batch(5, [b"alpha", b"", b"gamma" * 20])
    rng = random.Random(1)
    for i in range(len(frame)):
        bad = bytearray(frame)
        bad[i] ^= 1 << rng.randrange(8)
        batches, pos, status, _, _ = f.parse_batches(bytes(bad), 0, 1 << 62)
        # The reserved/flags words are covered by the header CRC too.
        assert status != framing.OK or batches != [(0, 5, [b"alpha", b"", b"gamma" * 20])], i


def test_incomplete_frames(framing_impl):
    f = framing_module(framing_impl)
    frame = f.encode_batch(1, [b"x" * 10, b"y" * 10])
    for cut in range(1, len(frame)):
        batches, pos, status, _, _ = f.parse_batches(frame[:cut], 0, 1 << 62)
        assert batches == [] and pos == 0
        assert status == framing.INCOMPLETE


def test_bad_record_position(framing_impl):
    f = framing_module(framing_impl)
    frame = bytearray(f.encode_batch(10, [b"a" * 8, b"b" * 8, b"c" * 8]))
    frame[32 + 16 + 8 + 3] ^= 0xFF  # inside the second record's payload
    _, pos, status, err_off, err_rec = f.parse_batches(bytes(frame), 0, 1 << 62)
    assert (pos, status, err_off, err_rec) == (0, framing.BAD_RECORD, 32 + 16, 1)


def test_max_records_stops_at_batch_boundary(framing_impl):
    f = framing_module(framing_impl)
    buf = f.encode_batch(1, [b"a"] * 3) + f.encode_batch(4, [b"b"] * 3)
    batches, pos, status, _, _ = f.parse_batches(buf, 0, 2)
    assert [b[1] for b in batches] == [1] and status == framing.OK and pos == len(buf) // 2


def test_find_header_skips_fake_magic():
    frame = framing.encode_batch(3, [b"x"])
    junk = b"zz" + framing.MAGIC + b"\0" * 40
    assert framing.find_header(junk + frame, 0) == len(junk)
    assert framing.find_header(junk, 0) == -1
    with pytest.raises(TypeError):
        framing_module("native").encode_batch(1, ["not bytes"])


def test_negative_pos_is_refused_by_both_twins():
    buf = framing.encode_batch(1, [b"abc"]) + b"\0" * 40
    errors = []
    for name in ("native", "pure"):
        f = framing_module(name)
        for call, args in ((f.parse_header, (buf, -5)), (f.parse_batches, (buf, -1, 10)), (f.parse_batches, (b"", -1, 1))):
            with pytest.raises(ValueError) as err:
                call(*args)
            errors.append(str(err.value))
    assert len(set(errors)) == 1 and "pos" in errors[0]


def test_records_over_max_record_are_refused_by_both_twins():
    too_big = b"x" * (framing.MAX_RECORD + 1)
    messages = set()
    for name in ("native", "pure"):
        with pytest.raises(ValueError, match="MAX_RECORD") as err:
            framing_module(name).encode_batch(1, [b"ok", too_big])
        messages.add(str(err.value))
    assert len(messages) == 1
    # A frame no writer produces: a record longer than MAX_RECORD, its CRCs all correct.
    body = framing.RECORD_HEAD.pack(len(too_big), framing.crc32(too_big)) + too_big
    rest = struct.pack("<QIIII", 7, 1, len(body), 0, 0)
    frame = framing.MAGIC + struct.pack("<I", framing.crc32(rest)) + rest + body
    results = [framing_module(name).parse_batches(frame, 0, 1 << 62) for name in ("native", "pure")]
    assert results[0] == results[1] == ([], 0, framing.BAD_RECORD, framing.HEADER_SIZE, 0)


def test_a_record_of_exactly_max_record_round_trips_in_both_twins():
    payload = b"y" * framing.MAX_RECORD
    frames = [framing_module(name).encode_batch(3, [payload]) for name in ("native", "pure")]
    assert frames[0] == frames[1]
    for name in ("native", "pure"):
        assert framing_module(name).parse_batches(frames[0], 0, 1 << 62)[:3] == ([(0, 3, [payload])], len(frames[0]), framing.OK)


def test_the_native_twin_takes_its_constants_from_the_format_module():
    native = framing_module("native")
    for name in ("HEADER_SIZE", "RECORD_HEAD_SIZE", "MAGIC", "MAX_RECORD", "OK", "INCOMPLETE", "BAD_HEADER", "BAD_RECORD"):
        assert getattr(native, name) is getattr(framing, name), name
    assert native.encode_batch(1, [])[:4] == framing.MAGIC
    with pytest.raises(ValueError, match="unknown framing"):
        framing_module("fast")
