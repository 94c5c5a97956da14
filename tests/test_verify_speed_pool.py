"""`audit verify` hashes long batches on a worker thread while it decodes them: same answers as inline."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mykey.audit import verify
from mykey.audit.merkle import leaf_hash, root_from_leaf_hashes
from mykey.domain import events as ev
from mykey.log.verify import first_bad_record

TS = 1_764_000_000_000_000


def _record(seq: int, bad: bool = False) -> bytes:
    env = ev.Envelope(seq, TS, ev.SYSTEM, ev.TrustAnchorAdded.VERSION, ev.TrustAnchorAdded(bytes(32), b"a%d" % seq))
    payload = ev.encode_envelope(env)
    return payload[:-1] if bad else payload


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4 leaves, and every batch of 2 or more records hashed on the worker thread."""
    monkeypatch.setattr(verify, "_CHUNK", 4)
    monkeypatch.setattr(verify, "_POOLED", 2)
    with ThreadPoolExecutor(1) as pool:
        yield pool


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 13), min_size=1, max_size=8), bad_at=st.integers(-1, 60))
def test_pooled_batches_give_the_same_problem_leaves_and_roots(small_chunks, sizes, bad_at):
    pool = small_chunks
    roots, seen = verify._Roots(None), []
    check = verify._BatchCheck(lambda hashes, chunk_roots: (seen.append(hashes), roots.add(hashes, chunk_roots)), pool)
    seq, payloads_all = 1, []
    for n in sizes:
        payloads = [_record(s, bad=s - 1 == bad_at) for s in range(seq, seq + n)]
        bad = check(seq, payloads)
        assert bad == first_bad_record(seq, payloads)
        sound = payloads if bad is None else payloads[: bad[0] - seq]
        payloads_all += sound
        assert roots.count == len(payloads_all)
        assert roots.root() == root_from_leaf_hashes([leaf_hash(p) for p in payloads_all])
        if bad is not None:
            break
        seq += n
    assert b"".join(seen) == b"".join(leaf_hash(p) for p in payloads_all)


def test_whole_chunks_inside_a_batch_come_with_their_roots(small_chunks):
    check = verify._BatchCheck(lambda hashes, chunk_roots: None, small_chunks)
    payloads = [_record(s) for s in range(7, 7 + 11)]  # leaves 6..16: chunks 2 (8..11) and 3 (12..15) are whole
    hashes, roots = check.hashed(7, payloads)
    leaves = [leaf_hash(p) for p in payloads]
    assert hashes == b"".join(leaves)
    assert roots == {2: root_from_leaf_hashes(leaves[2:6]), 3: root_from_leaf_hashes(leaves[6:10])}
