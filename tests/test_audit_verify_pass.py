"""`audit verify` reads the log once: the batch check and the chunked Merkle fold agree with the plain ones."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from mykey.audit import verify
from mykey.audit.merkle import leaf_hash, root_from_leaf_hashes
from mykey.domain import events as ev
from mykey.log.verify import first_bad_record

TS = 1_764_000_000_000_000
KINDS = ("ok", "ok", "ok", "garbage", "wrong_seq", "truncated", "old_version", "empty")


def _record(seq: int, kind: str) -> bytes:
    event = ev.TrustAnchorAdded(bytes(32), b"anchor %d" % seq)
    if kind == "garbage":
        return b"\xc1" + bytes(seq % 7)
    if kind == "empty":
        return b""
    version = event.VERSION - 1 if kind == "old_version" else event.VERSION
    payload = ev.encode_envelope(ev.Envelope(seq + (kind == "wrong_seq"), TS, ev.SYSTEM, version, event))
    return payload[:-1] if kind == "truncated" else payload


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1000), st.lists(st.sampled_from(KINDS), min_size=1, max_size=12))
def test_batch_check_finds_what_record_problem_finds(first_seq: int, kinds: list[str]) -> None:
    payloads = [_record(seq, kind) for seq, kind in enumerate(kinds, first_seq)]
    leaves: list[bytes] = []
    bad = verify._BatchCheck(leaves.append)(first_seq, payloads)
    assert bad == first_bad_record(first_seq, payloads)
    sound = len(payloads) if bad is None else bad[0] - first_seq
    assert leaves == [b"".join(leaf_hash(p) for p in payloads[:sound])]


def test_batch_check_of_sound_records_reports_nothing() -> None:
    payloads = [_record(seq, "ok") for seq in range(5, 50)]
    leaves: list[bytes] = []
    assert verify._BatchCheck(leaves.append)(5, payloads) is None
    assert verify._BatchCheck(leaves.append)(6, payloads) == (6, "record says sequence 5")
    assert [len(h) for h in leaves] == [32 * len(payloads), 0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=12))
def test_chunked_fold_gives_the_rfc9162_root(parts: list[int]) -> None:
    chunk, verify._CHUNK = verify._CHUNK, 8  # small chunks: whole and partial ones, and roots inside them
    try:
        roots = verify._Roots(None)
        hashes: list[bytes] = []
        assert roots.root() == root_from_leaf_hashes([])
        for n in parts:
            new = [leaf_hash(b"%d" % (len(hashes) + i)) for i in range(n)]
            hashes += new
            roots.add(b"".join(new))
            assert roots.count == len(hashes)
            assert roots.root() == root_from_leaf_hashes(hashes)
    finally:
        verify._CHUNK = chunk
