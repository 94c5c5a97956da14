"""`audit verify` folds and compares a partial chunk by aligned blocks: same roots and first differing leaf."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from mykey.audit import verify
from mykey.audit.merkle import leaf_hash, root_from_leaf_hashes
from mykey.audit.merkle_store import MerkleStore


@given(st.integers(0, 300), st.integers(0, 300))
def test_aligned_blocks_cover_a_range_exactly_with_aligned_powers_of_two(start, length):
    pos = start
    for k, p in verify._aligned_blocks(start, start + length):
        assert p == pos and p % (1 << k) == 0
        pos += 1 << k
    assert pos == max(start, start + length)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), changed=st.integers(0, 45), checkpoints=st.lists(st.integers(1, 40), max_size=3))
def test_a_partial_chunk_finds_the_first_leaf_the_trail_holds_otherwise(tmp_path_factory, n, changed, checkpoints):
    leaves = [leaf_hash(b"record %d" % i) for i in range(n)]
    directory = tmp_path_factory.mktemp("trail")
    with MerkleStore.open(directory) as store:
        store.append_leaf_hashes(leaves)
    log_leaves = list(leaves)
    if changed < n:
        log_leaves[changed] = leaf_hash(b"rewritten")
    with MerkleStore.open(directory, readonly=True) as trail:
        roots = verify._Roots(trail)
        done = 0
        for size in sorted({c for c in checkpoints if c <= n}):  # roots inside the chunk, as checkpoints ask
            roots.add(b"".join(log_leaves[done:size]))
            done = size
            assert roots.root() == root_from_leaf_hashes(log_leaves[:size])
        roots.add(b"".join(log_leaves[done:]))
        roots.finish()
    assert roots.root() == root_from_leaf_hashes(log_leaves)
    assert roots.first_diff == (changed if changed < n else None)
    assert not roots.interior_damaged
