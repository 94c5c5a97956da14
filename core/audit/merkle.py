"""RFC 9162 Merkle tree hashing, proof generation and proof verification (pure: no I/O).

Hashing (RFC 9162 §2.1.1): leaf hash = SHA-256(0x00 ‖ data), interior node =
SHA-256(0x01 ‖ left ‖ right), MTH({}) = SHA-256(""), and for n > 1 with k the
largest power of two < n, MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])).

Proof generation works against a *subtree accessor* ``subtree(level, index) -> bytes``
that returns the hash of the perfect, aligned subtree covering leaves
``[index * 2**level, (index + 1) * 2**level)`` (level 0 = leaf hashes). Every
MTH(D[a:b]) that RFC 9162's PATH (§2.1.3.1) and PROOF (§2.1.4.1) need is assembled
from O(log n) such subtrees, so a proof costs O(log n) accessor calls whatever backs
the accessor (``MerkleStore`` on disk, or ``levels_accessor`` in memory).

Verification (``verify_inclusion``, ``verify_consistency``) follows RFC 9162
§2.1.3.2 and §2.1.4.2 step by step and raises ``ProofError`` naming what failed.
Two trivial consistency cases the RFC algorithm leaves out are accepted with an
empty proof: old_size == new_size with equal roots, and old_size == 0 with the
empty-tree root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from ..errors import ProofError

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "SubtreeAccessor",
    "leaf_hash",
    "node_hash",
    "parent_level",
    "mth",
    "root_from_leaf_hashes",
    "largest_power_of_two_below",
    "range_pieces",
    "range_hash",
    "inclusion_proof",
    "consistency_proof",
    "verify_inclusion",
    "verify_consistency",
    "levels_from_leaf_hashes",
    "levels_accessor",
]

HASH_SIZE = 32
_sha256 = hashlib.sha256
EMPTY_ROOT: bytes = _sha256(b"").digest()
"""MTH of the empty tree, SHA-256 of the empty string."""

SubtreeAccessor = Callable[[int, int], bytes]
"""``subtree(level, index)``: hash of the perfect subtree over leaves [index·2^level, (index+1)·2^level)."""


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 ‖ data)."""
    return _sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(b"\x01" + left + right).digest()


def parent_level(nodes: Sequence[bytes]) -> list[bytes]:
    """The node hashes over each consecutive pair of ``nodes``; an odd last node gets no parent here."""
    it = iter(nodes)
    return [_sha256(b"\x01" + left + right).digest() for left, right in zip(it, it, strict=False)]


def largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly less than ``n`` (n must be > 1): the RFC's split point k."""
    if n < 2:
        raise ValueError(f"split point needs n > 1, got {n}")
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a tree given its leaf hashes (iterative, O(n) hashes, no recursion)."""
    if not hashes:
        return EMPTY_ROOT
    # Reduce pairwise level by level; an odd tail node is carried up unchanged, which
    # reproduces the RFC's left-heavy split (left part = largest power of two < n).
    level = list(hashes)
    while len(level) > 1:
        nxt = parent_level(level)
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def mth(data: Sequence[bytes]) -> bytes:
    """RFC 9162 Merkle Tree Hash over a list of leaf *data* (each leaf is hashed first)."""
    return root_from_leaf_hashes([leaf_hash(d) for d in data])


# -------------------------------------------------------------- subtree decomposition


def range_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """Split leaves [start, end) into aligned perfect subtrees ``(level, index)``, left to right.

    The range must be one the RFC recursion produces: ``start`` aligned to a power of two
    at least ``end - start`` (or ``start == 0``); then the pieces are the binary digits of
    ``end - start`` from the largest down, exactly the RFC's left-heavy splits.
    """
    if not 0 <= start < end:
        raise ValueError(f"empty or negative leaf range [{start}, {end})")
    size = end - start
    if start and (start & -start) < (1 << (size - 1).bit_length()):
        raise ValueError(f"leaf range [{start}, {end}) is not aligned the way RFC 9162 splits trees")
    pieces: list[tuple[int, int]] = []
    pos = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            pieces.append((level, pos >> level))
            pos += 1 << level
    return pieces


def range_hash(subtree: SubtreeAccessor, start: int, end: int) -> bytes:
    """MTH(D[start:end]) from O(log n) perfect subtrees, folded right to left per the RFC."""
    pieces = range_pieces(start, end)
    level, index = pieces[-1]
    acc = subtree(level, index)
    for level, index in reversed(pieces[:-1]):
        acc = _sha256(b"\x01" + subtree(level, index) + acc).digest()
    return acc


# ------------------------------------------------------------------ proof generation


def inclusion_proof(index: int, size: int, subtree: SubtreeAccessor) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[size]): sibling hashes from the leaf up to the root."""
    if not 0 <= index < size:
        raise ProofError(
            f"leaf index {index} is outside a tree of size {size}; ask for an index below the tree size"
        )
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = largest_power_of_two_below(hi - lo)
        if index < lo + k:
            path.append(range_hash(subtree, lo + k, hi))  # PATH(m, D[0:k]) : MTH(D[k:n])
            hi = lo + k
        else:
            path.append(range_hash(subtree, lo, lo + k))  # PATH(m-k, D[k:n]) : MTH(D[0:k])
            lo += k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, subtree: SubtreeAccessor) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old_size, D[new_size]); empty when old_size is 0 or equals new_size."""
    if not 0 <= old_size <= new_size:
        raise ProofError(
            f"cannot prove consistency from size {old_size} to size {new_size}; "
            "the old size must be between 0 and the new size"
        )
    if old_size == 0 or old_size == new_size:
        return []
    proof: list[bytes] = []
    lo, hi = 0, new_size
    complete = True  # the RFC's boolean b: is D[lo:old_size] still the whole old tree?
    while old_size != hi:
        k = largest_power_of_two_below(hi - lo)
        if old_size - lo <= k:
            proof.append(range_hash(subtree, lo + k, hi))  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            hi = lo + k
        else:
            proof.append(range_hash(subtree, lo, lo + k))  # SUBPROOF(m-k, D[k:n], false) : MTH(D[0:k])
            lo += k
            complete = False
    if not complete:
        proof.append(range_hash(subtree, lo, hi))  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
    proof.reverse()
    return proof


# -------------------------------------------------------------------- verification


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, got {len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__}")


def verify_inclusion(
    leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: check ``leaf_hash_`` sits at ``index`` of the tree ``(size, root)``.

    Returns None on success, raises ProofError saying which check failed. Like the RFC
    algorithm, this trusts that ``root`` is the root *for* ``size``: a proof can also pass
    for another size with the same root, so take both from one signed checkpoint.
    """
    _check_hash("leaf hash", leaf_hash_)
    _check_hash("root hash", root)
    for i, p in enumerate(proof):
        _check_hash(f"inclusion proof hash #{i}", p)
    # 1. leaf_index must be below tree_size.
    if not 0 <= index < size:
        raise ProofError(f"inclusion proof rejected: leaf index {index} is not below tree size {size}")
    # 2. fn = leaf_index, sn = tree_size - 1.   3. r = hash.
    fn, sn = index, size - 1
    r = bytes(leaf_hash_)
    # 4. for each p in inclusion_path:
    for p in proof:
        if sn == 0:  # a.
            raise ProofError(
                f"inclusion proof rejected: {len(proof)} hashes is too many for leaf {index} "
                f"in a tree of size {size}"
            )
        if fn & 1 or fn == sn:  # b.
            r = _sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1  # c.
        sn >>= 1
    # 5. sn must be 0 and r must equal the root.
    if sn != 0:
        raise ProofError(
            f"inclusion proof rejected: {len(proof)} hashes is too few for leaf {index} "
            f"in a tree of size {size}"
        )
    if r != root:
        raise ProofError(
            f"inclusion proof rejected: leaf {index} with this proof gives root {r.hex()}, "
            f"but the tree of size {size} has root {bytes(root).hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 §2.1.4.2: check tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    Returns None on success, raises ProofError saying which check failed. Each root must be
    authenticated for its size (signed checkpoints): the algorithm does not bind them.
    """
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    for i, p in enumerate(proof):
        _check_hash(f"consistency proof hash #{i}", p)
    if not 0 <= old_size <= new_size:
        raise ProofError(
            f"consistency proof rejected: old size {old_size} must be between 0 and new size {new_size}"
        )
    # Trivial cases outside the RFC algorithm (which requires 0 < first < second).
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError(
                f"consistency proof rejected: from size {old_size} to {new_size} the proof must be empty, "
                f"got {len(proof)} hashes"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("consistency proof rejected: old size is 0 but old root is not the empty-tree hash")
        if old_size == new_size and old_root != new_root:
            raise ProofError(
                f"consistency proof rejected: both sizes are {old_size} but the roots differ "
                f"({bytes(old_root).hex()} vs {bytes(new_root).hex()}): the log forked"
            )
        return
    # 1. An empty consistency_path fails.
    if not proof:
        raise ProofError(f"consistency proof rejected: empty proof from size {old_size} to {new_size}")
    path = list(proof)
    # 2. If first is an exact power of 2, prepend first_hash.
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. While LSB(fn) is set, right-shift both.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = first value.
    fr = sr = path[0]
    # 6. For each subsequent value c:
    for c in path[1:]:
        if sn == 0:  # a.
            raise ProofError(
                f"consistency proof rejected: {len(proof)} hashes is too many from size {old_size} to {new_size}"
            )
        if fn & 1 or fn == sn:  # b.
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1  # c.
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash, sn == 0.
    if sn != 0:
        raise ProofError(
            f"consistency proof rejected: {len(proof)} hashes is too few from size {old_size} to {new_size}"
        )
    if fr != old_root:
        raise ProofError(
            f"consistency proof rejected: it rebuilds old root {fr.hex()} for size {old_size}, "
            f"expected {bytes(old_root).hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof rejected: it rebuilds new root {sr.hex()} for size {new_size}, "
            f"expected {bytes(new_root).hex()}"
        )


# ----------------------------------------------------------- in-memory tree helpers


def levels_from_leaf_hashes(hashes: Iterable[bytes]) -> list[list[bytes]]:
    """All complete aligned subtree hashes: ``levels[k][i]`` covers leaves [i·2^k, (i+1)·2^k)."""
    levels = [list(hashes)]
    while len(levels[-1]) > 1:
        levels.append(parent_level(levels[-1]))
    return levels


def levels_accessor(levels: Sequence[Sequence[bytes]]) -> SubtreeAccessor:
    """A SubtreeAccessor over ``levels_from_leaf_hashes`` output (for tests and small trees)."""

    def subtree(level: int, index: int) -> bytes:
        return levels[level][index]

    return subtree
