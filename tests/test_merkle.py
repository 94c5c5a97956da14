"""RFC 9162 Merkle hashing/proofs (mykey.merkle) and the on-disk store (mykey.merkle_store)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mykey.audit import merkle
from mykey.audit.merkle_store import MerkleStore
from mykey.errors import (
    LockHeldError,
    MerkleStoreCorruptError,
    MerkleStoreError,
    MerkleStoreLockedError,
    ProofError,
)

# ---------------------------------------------------------------------------------
# Reference implementation written straight from RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1
# (recursive, on lists of leaf data; deliberately naive).


def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = _k(n)
    return _h(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# ---------------------------------------------------------------------------------

MAX_N = 64
DATA = [f"leaf-{i}".encode() * (1 + i % 3) for i in range(MAX_N)]
LEAF_HASHES = [merkle.leaf_hash(d) for d in DATA]
LEVELS = merkle.levels_from_leaf_hashes(LEAF_HASHES)
SUBTREE = merkle.levels_accessor(LEVELS)
ROOTS = [ref_mth(DATA[:n]) for n in range(MAX_N + 1)]


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# RFC 6962 / certificate-transparency reference vectors (8-leaf tree).
CT_DATA = [bytes.fromhex(x) for x in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_ct_reference_roots_and_proofs() -> None:
    for n in range(len(CT_DATA) + 1):
        assert merkle.mth(CT_DATA[:n]).hex() == CT_ROOTS[n]
        assert ref_mth(CT_DATA[:n]).hex() == CT_ROOTS[n]
    sub = merkle.levels_accessor(merkle.levels_from_leaf_hashes([merkle.leaf_hash(d) for d in CT_DATA]))
    assert [h.hex() for h in merkle.inclusion_proof(0, 8, sub)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert [h.hex() for h in merkle.inclusion_proof(5, 8, sub)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    assert [h.hex() for h in merkle.consistency_proof(2, 5, sub)] == [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]


def test_hash_primitives() -> None:
    assert merkle.EMPTY_ROOT == _h(b"")
    assert merkle.leaf_hash(b"x") == _h(b"\x00x")
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == _h(b"\x01" + b"a" * 32 + b"b" * 32)
    assert [merkle.largest_power_of_two_below(n) for n in (2, 3, 4, 5, 8, 9)] == [1, 2, 2, 4, 4, 8]


@pytest.mark.parametrize("n", range(0, MAX_N + 1))
def test_mth_matches_reference(n: int) -> None:
    assert merkle.mth(DATA[:n]) == ROOTS[n]
    assert merkle.root_from_leaf_hashes(LEAF_HASHES[:n]) == ROOTS[n]
    if n:
        assert merkle.range_hash(SUBTREE, 0, n) == ROOTS[n]


def test_range_pieces_rejects_ranges_the_rfc_never_builds() -> None:
    assert merkle.range_pieces(8, 13) == [(2, 2), (0, 12)]
    with pytest.raises(ValueError):
        merkle.range_pieces(6, 11)  # 6 is not aligned to 8
    with pytest.raises(ValueError):
        merkle.range_pieces(3, 3)


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_inclusion_all_leaves_all_sizes(n: int) -> None:
    root = ROOTS[n]
    for m in range(n):
        proof = merkle.inclusion_proof(m, n, SUBTREE)
        assert proof == ref_path(m, DATA[:n])
        merkle.verify_inclusion(LEAF_HASHES[m], m, n, proof, root)
        # Any single tampered proof hash fails.
        for i in range(len(proof)):
            bad = proof[:i] + [_flip(proof[i])] + proof[i + 1 :]
            with pytest.raises(ProofError):
                merkle.verify_inclusion(LEAF_HASHES[m], m, n, bad, root)
        # Wrong leaf, wrong index, wrong size, wrong root, truncated / extended proof fail.
        with pytest.raises(ProofError):
            merkle.verify_inclusion(_flip(LEAF_HASHES[m]), m, n, proof, root)
        for bad_m in {m - 1, m + 1, m ^ 1} - {m}:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(LEAF_HASHES[m], bad_m, n, proof, root)
        for bad_n in {n - 1, n + 1, 2 * n} - {n}:
            if bad_n <= MAX_N:  # the claimed size comes with that size's (signed) root
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(LEAF_HASHES[m], m, bad_n, proof, ROOTS[bad_n])
        with pytest.raises(ProofError):
            merkle.verify_inclusion(LEAF_HASHES[m], m, n, proof, _flip(root))
        if proof:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(LEAF_HASHES[m], m, n, proof[:-1], root)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(LEAF_HASHES[m], m, n, proof + [root], root)


@pytest.mark.parametrize("n", range(1, MAX_N + 1))
def test_consistency_all_pairs(n: int) -> None:
    new_root = ROOTS[n]
    for m in range(1, n + 1):
        proof = merkle.consistency_proof(m, n, SUBTREE)
        assert proof == ref_proof(m, DATA[:n])
        old_root = ROOTS[m]
        merkle.verify_consistency(m, n, proof, old_root, new_root)
        for i in range(len(proof)):
            bad = proof[:i] + [_flip(proof[i], 7)] + proof[i + 1 :]
            with pytest.raises(ProofError):
                merkle.verify_consistency(m, n, bad, old_root, new_root)
        with pytest.raises(ProofError):
            merkle.verify_consistency(m, n, proof, _flip(old_root), new_root)
        with pytest.raises(ProofError):
            merkle.verify_consistency(m, n, proof, old_root, _flip(new_root))
        # A claimed size comes with that size's (signed) root; any other size pair fails.
        for bad_m in {m - 1, m + 1} - {m, 0}:
            if bad_m <= n:
                with pytest.raises(ProofError):
                    merkle.verify_consistency(bad_m, n, proof, ROOTS[bad_m], new_root)
        for bad_n in {n - 1, n + 1} - {n}:
            if m <= bad_n <= MAX_N:
                with pytest.raises(ProofError):
                    merkle.verify_consistency(m, bad_n, proof, old_root, ROOTS[bad_n])
        if proof:
            with pytest.raises(ProofError):
                merkle.verify_consistency(m, n, proof[:-1], old_root, new_root)
        with pytest.raises(ProofError):
            merkle.verify_consistency(m, n, proof + [new_root], old_root, new_root)


def test_rfc_algorithms_do_not_bind_sizes_to_roots() -> None:
    """RFC 9162 verification trusts that the root belongs to the size it is given.

    The same proof and the same root can verify under another size, so a root must only
    ever be used with the size it was signed with (``check_proof`` takes both from the
    signed checkpoint). The leaf index, by contrast, is bound (exhaustively tested above).
    """
    proof = merkle.inclusion_proof(0, 3, SUBTREE)
    merkle.verify_inclusion(LEAF_HASHES[0], 0, 4, proof, ROOTS[3])  # size 4 with the size-3 root
    with pytest.raises(ProofError):
        merkle.verify_inclusion(LEAF_HASHES[0], 0, 4, proof, ROOTS[4])
    cproof = merkle.consistency_proof(1, 2, SUBTREE)
    merkle.verify_consistency(2, 3, cproof, ROOTS[1], ROOTS[2])  # sizes shifted, roots kept
    with pytest.raises(ProofError):
        merkle.verify_consistency(2, 3, cproof, ROOTS[2], ROOTS[3])


def test_consistency_trivial_cases() -> None:
    assert merkle.consistency_proof(0, 5, SUBTREE) == []
    merkle.verify_consistency(0, 5, [], merkle.EMPTY_ROOT, ROOTS[5])
    with pytest.raises(ProofError, match="empty-tree"):
        merkle.verify_consistency(0, 5, [], ROOTS[1], ROOTS[5])
    with pytest.raises(ProofError, match="forked"):
        merkle.verify_consistency(5, 5, [], ROOTS[5], ROOTS[4])
    with pytest.raises(ProofError, match="must be empty"):
        merkle.verify_consistency(5, 5, [ROOTS[1]], ROOTS[5], ROOTS[5])
    with pytest.raises(ProofError, match="between 0"):
        merkle.verify_consistency(6, 5, [ROOTS[1]], ROOTS[6], ROOTS[5])
    with pytest.raises(ProofError):
        merkle.consistency_proof(6, 5, SUBTREE)
    with pytest.raises(ProofError, match="32 bytes"):
        merkle.verify_inclusion(b"short", 0, 1, [], ROOTS[1])
    with pytest.raises(ProofError, match="outside"):
        merkle.inclusion_proof(5, 5, SUBTREE)


def test_proofs_use_log_n_subtree_reads() -> None:
    """Every proof for a 2^20-ish tree is assembled from O(log n) accessor calls."""
    calls = 0

    def fake(level: int, index: int) -> bytes:
        nonlocal calls
        calls += 1
        return level.to_bytes(4, "big") + index.to_bytes(28, "big")

    n = (1 << 20) + 12345
    for index in (0, 1, n // 2, n - 2, n - 1):
        calls = 0
        assert len(merkle.inclusion_proof(index, n, fake)) <= 21
        assert calls <= 2 * 21
    for old in (1, 7, 1 << 19, n - 1):
        calls = 0
        merkle.consistency_proof(old, n, fake)
        assert calls <= 3 * 21


# --------------------------------------------------------------------------- store


def _store_vs_pure(store: MerkleStore, data: list[bytes]) -> None:
    n = len(data)
    assert store.size == n
    hashes = [merkle.leaf_hash(d) for d in data]
    sub = merkle.levels_accessor(merkle.levels_from_leaf_hashes(hashes))
    for size in range(0, n + 1):
        assert store.root(size) == merkle.root_from_leaf_hashes(hashes[:size])
    for size in range(1, n + 1):
        for index in range(size):
            assert store.inclusion_proof(index, size) == merkle.inclusion_proof(index, size, sub)
        for old in range(0, size + 1):
            assert store.consistency_proof(old, size) == merkle.consistency_proof(old, size, sub)
    for i in range(n):
        assert store.leaf_hash(i) == hashes[i]


def test_store_matches_pure_and_reopens(tmp_path: Path) -> None:
    with MerkleStore.open(tmp_path / "t") as s:
        assert s.size == 0 and s.root() == merkle.EMPTY_ROOT and s.recovery is None
        s.append_leaves(DATA[:1])
        s.append_leaves(DATA[1:2])
        s.append_leaves(DATA[2:7])
        s.append_leaf_hashes(LEAF_HASHES[7:40])
        _store_vs_pure(s, DATA[:40])
    with MerkleStore.open(tmp_path / "t") as s:
        assert s.recovery is None
        _store_vs_pure(s, DATA[:40])
        s.append_leaves(DATA[40:])
        _store_vs_pure(s, DATA)
    total = sum(p.stat().st_size for p in (tmp_path / "t").glob("level-*"))
    assert total == 32 * sum(MAX_N >> k for k in range(7))  # ≈ 64 bytes per leaf


def test_store_truncate_then_append(tmp_path: Path) -> None:
    with MerkleStore.open(tmp_path / "t") as s:
        s.append_leaves(DATA[:50])
        s.truncate(21)
        _store_vs_pure(s, DATA[:21])
        s.append_leaves(DATA[21:33])
        _store_vs_pure(s, DATA[:33])
        s.truncate(1)
        s.truncate(0)
        assert s.root() == merkle.EMPTY_ROOT
        assert sum(p.stat().st_size for p in (tmp_path / "t").glob("level-*")) == 0
        s.append_leaves(DATA[:17])
    with MerkleStore.open(tmp_path / "t") as s:
        assert s.recovery is None
        _store_vs_pure(s, DATA[:17])
        with pytest.raises(MerkleStoreError, match="cannot truncate"):
            s.truncate(18)


_CRASHING_WRITER = """
import os, sys
from mykey.audit import merkle
from mykey.audit.merkle_store import MerkleStore
data = [f"leaf-{i}".encode() * (1 + i % 3) for i in range(64)]
s = MerkleStore.open(sys.argv[1])
s.append_leaves(data[:45])
s.flush()                      # durable up to 45
s.append_leaves(data[45:61])   # committed (visible to readers), not fsynced
meta = open(os.path.join(sys.argv[1], "meta"), "rb").read()
s.append_leaves(data[61:])     # written ...
open(os.path.join(sys.argv[1], "meta"), "wb").write(meta)  # ... but the crash beat the commit
os._exit(0)                    # crash: no flush, no close
"""


def _crashed_store(d: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(d)], check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


@pytest.mark.parametrize("damage", ["none", "delete", "shorten", "torn", "zero_tail", "extra"])
def test_store_crash_repair_of_higher_levels(tmp_path: Path, damage: str) -> None:
    d = tmp_path / "t"
    _crashed_store(d)
    lvl2 = d / "level-02"
    lvl3 = d / "level-03"
    if damage == "delete":  # crash between files: a level never got its new nodes
        lvl3.unlink()
    elif damage == "shorten":
        lvl2.write_bytes(lvl2.read_bytes()[:64])
    elif damage == "torn":
        lvl2.write_bytes(lvl2.read_bytes()[:-7])
    elif damage == "zero_tail":  # unsynced tail came back as zeros
        b = lvl2.read_bytes()
        lvl2.write_bytes(b[:-64] + bytes(64))
    elif damage == "extra":
        with lvl3.open("ab") as f:
            f.write(os.urandom(32 * 3 + 5))
    with MerkleStore.open(d) as s:
        rec = s.recovery
        assert rec is not None
        assert (rec.committed_size, rec.size, rec.unsynced_from) == (61, MAX_N, 45)
        assert any("after the last commit" in n for n in rec.notes)
        s.verify()
        _store_vs_pure(s, DATA)
    with MerkleStore.open(d) as s:
        assert s.recovery is None
        _store_vs_pure(s, DATA)


def test_store_torn_leaf_and_lost_tail(tmp_path: Path) -> None:
    d = tmp_path / "t"
    with MerkleStore.open(d) as s:
        s.append_leaves(DATA[:30])
    leaf = d / "level-00"
    leaf.write_bytes(leaf.read_bytes() + b"\x01" * 10)  # torn partial leaf hash
    with MerkleStore.open(d) as s:
        assert s.recovery is not None and s.size == 30
        _store_vs_pure(s, DATA[:30])
    leaf.write_bytes(leaf.read_bytes()[: 32 * 26])  # leaves lost (e.g. restored from an old copy)
    with MerkleStore.open(d) as s:
        assert s.size == 26
        assert any("missing" in n for n in s.recovery.notes)  # type: ignore[union-attr]
        _store_vs_pure(s, DATA[:26])
        s.append_leaves(DATA[26:40])
        _store_vs_pure(s, DATA[:40])


def test_store_meta_lost_is_rebuilt_from_leaves(tmp_path: Path) -> None:
    d = tmp_path / "t"
    with MerkleStore.open(d) as s:
        s.append_leaves(DATA[:37])
    (d / "meta").unlink()
    (d / "level-01").unlink()
    with MerkleStore.open(d) as s:
        assert s.recovery is not None and s.recovery.committed_size is None
        _store_vs_pure(s, DATA[:37])


def test_store_detects_corrupted_flushed_data(tmp_path: Path) -> None:
    d = tmp_path / "t"
    with MerkleStore.open(d) as s:
        s.append_leaves(DATA[:20])
    # A damaged interior node inside the flushed tree: caught by the root check, rebuilt.
    lvl4 = d / "level-04"
    lvl4.write_bytes(bytes(32))
    with MerkleStore.open(d) as s:
        assert s.recovery is not None and s.recovery.nodes_rebuilt > 0
        _store_vs_pure(s, DATA[:20])
    # A damaged leaf under intact interior nodes: open does O(log n) checks and misses it,
    # the O(n) verify() finds it.
    leaf = d / "level-00"
    b = bytearray(leaf.read_bytes())
    b[32 * 19] ^= 1
    leaf.write_bytes(bytes(b))
    with MerkleStore.open(d) as s:
        with pytest.raises(MerkleStoreCorruptError, match="level-01"):
            s.verify()
    # Once the interior levels are gone, the leaves no longer give the flushed root: refuse.
    for p in d.glob("level-0[1-9]"):
        p.unlink()
    with pytest.raises(MerkleStoreCorruptError, match="rebuild it from the event log"):
        MerkleStore.open(d)


def test_store_readers_and_lock(tmp_path: Path) -> None:
    d = tmp_path / "t"
    with pytest.raises(MerkleStoreError, match="open it once read-write"):
        MerkleStore.open(d, readonly=True)
    w = MerkleStore.open(d)
    with pytest.raises(MerkleStoreLockedError, match=f"pid {os.getpid()}") as held:
        MerkleStore.open(d)
    assert isinstance(held.value, LockHeldError)  # the owner's pid is named, as for every lock
    w.append_leaves(DATA[:10])
    r = MerkleStore.open(d, readonly=True)
    assert r.size == 10 and r.root() == ROOTS[10]
    w.append_leaves(DATA[10:30])
    assert r.size == 10 and r.root(10) == ROOTS[10]  # a consistent prefix until refresh
    with pytest.raises(MerkleStoreError, match="refresh"):
        r.root(11)
    assert r.refresh() == 30
    assert r.root() == ROOTS[30]
    assert r.inclusion_proof(3, 30) == w.inclusion_proof(3, 30)
    with pytest.raises(MerkleStoreError, match="readonly"):
        r.append_leaves([b"x"])
    with pytest.raises(MerkleStoreError, match="expected 32"):
        w.append_leaf_hashes([b"short"])
    with pytest.raises(MerkleStoreError, match="must be bytes"):
        w.append_leaves([b"ok", "text"])  # type: ignore[list-item]
    assert w.size == 30
    r.close()
    w.close()
    with pytest.raises(MerkleStoreError, match="closed"):
        w.root()
    MerkleStore.open(d).close()  # lock released


def test_store_reader_in_another_process_sees_committed_prefix(tmp_path: Path) -> None:
    d = tmp_path / "t"
    script = (
        "import sys\n"
        "from mykey.audit.merkle_store import MerkleStore\n"
        "r = MerkleStore.open(sys.argv[1], readonly=True)\n"
        "print(r.size, r.root().hex())\n"
    )
    with MerkleStore.open(d) as w:
        w.append_leaves(DATA[:23])
        out = subprocess.run(
            [sys.executable, "-c", script, str(d)], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        ).stdout.split()
        assert out == ["23", ROOTS[23].hex()]


_APPENDING_WRITER = """
import random, sys
from mykey.audit.merkle_store import MerkleStore
data = [b"concurrent-%d" % i for i in range(3000)]
pauses = {int(p) for p in sys.argv[2].split(",")}
rnd = random.Random(7)
with MerkleStore.open(sys.argv[1]) as s:
    pos = 0
    while pos < len(data):
        step = rnd.randint(1, 97)
        for p in sorted(pauses):  # end steps exactly on the pause points
            if pos < p < pos + step:
                step = p - pos
                break
        s.append_leaves(data[pos : pos + step])
        pos += step
        if pos in pauses:
            print(pos, flush=True)  # committed: wait until the reader has looked
            sys.stdin.readline()
"""


def test_store_concurrent_reader_sees_consistent_prefixes(tmp_path: Path) -> None:
    # The writer appends in random steps while this process reads. At a few pause points the
    # writer waits for the reader, which must then see exactly that size; in between, every
    # size the reader happens to see must give the right root and proofs (a consistent prefix).
    d = tmp_path / "t"
    data = [b"concurrent-%d" % i for i in range(3000)]
    pauses = [1, 400, 1234, 2000, 2999, 3000]
    sub = merkle.levels_accessor(merkle.levels_from_leaf_hashes([merkle.leaf_hash(x) for x in data]))
    writer = subprocess.Popen(
        [sys.executable, "-c", _APPENDING_WRITER, str(d), ",".join(map(str, pauses))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert writer.stdin is not None and writer.stdout is not None
    r = None
    try:
        seen = set()

        def check(size: int) -> None:
            seen.add(size)
            assert r.root(size) == merkle.range_hash(sub, 0, size)
            index = size // 2
            assert r.inclusion_proof(index, size) == merkle.inclusion_proof(index, size, sub)

        for pause in pauses:
            assert int(writer.stdout.readline()) == pause
            if r is None:
                r = MerkleStore.open(d, readonly=True)
            assert r.refresh() == pause  # the writer is paused: its last commit is visible
            check(pause)
            writer.stdin.write("go\n")
            writer.stdin.flush()
            for _ in range(20):  # reads racing the writer's next appends
                size = r.refresh()
                assert pause <= size <= len(data)
                check(size)
        assert set(pauses) <= seen
    finally:
        if r is not None:
            r.close()
        writer.stdin.close()
        writer.wait(timeout=60)
    assert writer.returncode == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6),
    cut=st.integers(min_value=0, max_value=1000),
)
def test_store_property_random_batches(tmp_path_factory: pytest.TempPathFactory, batches: list[int], cut: int) -> None:
    d = tmp_path_factory.mktemp("prop")
    data = [os.urandom(1 + i % 50) for i in range(sum(batches))]
    with MerkleStore.open(d) as s:
        pos = 0
        for b in batches:
            s.append_leaves(data[pos : pos + b])
            pos += b
            hashes = [merkle.leaf_hash(x) for x in data[:pos]]
            assert s.root() == merkle.root_from_leaf_hashes(hashes)
        n = len(data)
        if n:
            sub = merkle.levels_accessor(merkle.levels_from_leaf_hashes([merkle.leaf_hash(x) for x in data]))
            size = 1 + cut % n
            index = cut % size
            assert s.inclusion_proof(index, size) == ref_path(index, data[:size])
            merkle.verify_inclusion(merkle.leaf_hash(data[index]), index, size, s.inclusion_proof(index, size), ref_mth(data[:size]))
            old = cut % (size + 1)
            assert s.consistency_proof(old, size) == merkle.consistency_proof(old, size, sub)
            t = cut % (n + 1)
            s.truncate(t)
            assert s.root() == ref_mth(data[:t])
            s.append_leaves(data[t:])
            assert s.root() == ref_mth(data)
    with MerkleStore.open(d) as s:
        assert s.recovery is None and s.root() == ref_mth(data)
