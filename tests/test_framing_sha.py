"""Merkle hashing in the framing twins: the native batch SHA-256 against its pure twin and RFC 9162."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mykey.audit.merkle import leaf_hash, node_hash, root_from_leaf_hashes
from mykey.log import framing
from mykey.log.accel import framing_module

records = st.lists(st.binary(max_size=300), max_size=70)  # up to 300 bytes: several SHA-256 blocks


@settings(max_examples=300)
@given(records)
def test_native_leaf_hashes_match_the_pure_twin_byte_for_byte(payloads):
    native, pure = framing_module("native").leaf_hashes(payloads), framing_module("pure").leaf_hashes(payloads)
    assert native == pure
    assert native == b"".join(leaf_hash(p) for p in payloads)


@settings(max_examples=200)
@given(st.integers(0, 9), st.binary(min_size=32, max_size=32))
def test_native_perfect_root_matches_the_pure_twin_and_rfc9162(k, seed):
    hashes = [node_hash(seed, i.to_bytes(4, "big")) for i in range(1 << k)]
    flat = b"".join(hashes)
    native, pure = framing_module("native").perfect_root(flat), framing_module("pure").perfect_root(flat)
    assert native == pure == root_from_leaf_hashes(hashes)
    assert framing_module("native").perfect_root(memoryview(bytearray(flat))) == native


def test_perfect_root_of_one_hash_is_that_hash(framing_impl):
    h = leaf_hash(b"only")
    assert framing_module(framing_impl).perfect_root(h) == h


@pytest.mark.parametrize("size", [0, 31, 33, 96, 32 * 6])
def test_perfect_root_refuses_anything_but_a_power_of_two_of_hashes(framing_impl, size):
    with pytest.raises(ValueError, match="power of two") as exc:
        framing_module(framing_impl).perfect_root(bytes(size))
    assert str(exc.value) == framing.NOT_PERFECT.format(size)


def test_leaf_hashes_take_any_bytes_like_record_and_refuse_the_rest(framing_impl):
    f = framing_module(framing_impl)
    assert f.leaf_hashes([bytearray(b"ab"), memoryview(b"cd"), b"ef"]) == f.leaf_hashes([b"ab", b"cd", b"ef"])
    for wrong in ("not bytes", 5, None):
        with pytest.raises(TypeError):
            f.leaf_hashes([b"ok", wrong])


def test_the_native_twin_takes_its_hash_constants_from_the_format_module():
    native = framing_module("native")
    for name in ("HASH_SIZE", "LEAF_PREFIX", "NODE_PREFIX", "NOT_PERFECT"):
        assert getattr(native, name) is getattr(framing, name), name


@given(st.lists(st.tuples(st.integers(1, 2**40), records), max_size=5), st.data())
def test_parse_records_gives_what_parse_batches_gives(batches, data):
    """The native lazy Records (and the pure twin's lists) hold the same payloads as parse_batches."""
    native = framing_module("native")
    buf = bytearray(b"".join(native.encode_batch(s, p) for s, p in batches))
    if buf and data.draw(st.booleans()):
        buf[data.draw(st.integers(0, len(buf) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    buf = bytes(buf[: data.draw(st.integers(0, len(buf)))])
    limit = data.draw(st.integers(1, 80))
    want = native.parse_batches(buf, 0, limit)
    for name in ("native", "pure"):
        f = framing_module(name)
        got, *rest = f.parse_records(buf, 0, limit)
        assert rest == list(want[1:])
        assert [(off, seq, list(p)) for off, seq, p in got] == want[0]
        for (_off, _seq, lazy), (_o, _s, payloads) in zip(got, want[0], strict=True):
            assert len(lazy) == len(payloads)
            assert f.leaf_hashes(lazy) == framing.leaf_hashes(payloads)
            if payloads:
                i = data.draw(st.integers(-len(payloads), len(payloads) - 1))
                assert lazy[i] == payloads[i]
                j = data.draw(st.integers(0, len(payloads)))
                assert list(lazy[i:j]) == payloads[i:j]


def test_records_refuse_an_index_past_either_end():
    native = framing_module("native")
    (_off, _seq, lazy), = native.parse_records(native.encode_batch(1, [b"a", b"bc"]), 0, 1 << 62)[0]
    assert (lazy[0], lazy[-1], lazy[-2], list(lazy)) == (b"a", b"bc", b"a", [b"a", b"bc"])
    for i in (2, -3):
        with pytest.raises(IndexError):
            lazy[i]


def test_record_crcs_agree_with_zlib_at_short_and_long_lengths():
    """The native twin frames and checks records of every short length and some long ones as the pure one does."""
    native, pure = framing_module("native"), framing_module("pure")
    payloads = [bytes((i * 37 + n) % 256 for i in range(n)) for n in [*range(0, 80), *range(1000, 1050), 4099]]
    frame = native.encode_batch(9, payloads)
    assert frame == pure.encode_batch(9, payloads)
    assert native.parse_batches(frame, 0, 1 << 62) == ([(0, 9, payloads)], len(frame), framing.OK, len(frame), -1)


def test_pairs_of_every_length_hash_as_hashlib_does():
    native = framing_module("native")
    for n in range(0, 260):
        a, b = bytes((i * 7 + n) % 256 for i in range(n)), bytes((i * 11 + 3) % 256 for i in range(n))
        odd = bytes(n % 70)  # a partner of another length: hashed alone
        assert native.leaf_hashes([a, b, odd]) == framing.leaf_hashes([a, b, odd]), n
