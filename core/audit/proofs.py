"""Self-contained proof documents an auditor or a person can check offline.

An inclusion document shows one log record is in the tree a signed checkpoint commits
to; a consistency document shows a newer signed checkpoint extends an older tree. A
document holds everything needed except the log's public key: the leaf data, the proof
hashes and the signed checkpoint note. JSON shape (hashes are lowercase hex)::

    {"kind": "mykey.inclusion-proof.v1", "leaf_index": 41, "seq": 41,
     "tree_size": 1000, "leaf_data": "<base64>", "hashes": ["<hex>", ...],
     "checkpoint": "<signed note text>"}

    {"kind": "mykey.consistency-proof.v1", "old_size": 500, "new_size": 1000,
     "old_root": "<hex>", "hashes": ["<hex>", ...], "checkpoint": "<signed note, new size>",
     "old_checkpoint": "<signed note, old size>" | null}

``prove_inclusion`` and ``prove_consistency`` build documents from a data directory (its
log, Merkle trail and stored checkpoints); the rest needs no data directory.

``leaf_index`` is the position in the tree and is what the proof checks; ``seq`` is the
log's sequence number for the record, carried for the reader and not checked here (it is
also inside the signed leaf data if the log records it). ``check_proof`` verifies the
checkpoint signature, that the document's sizes and roots match the checkpoint, and the
RFC 9162 proof; it returns a one-line ``"OK ..."`` or raises ``ProofError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..datadir import DataDir
from ..errors import CheckpointError, NoCheckpointError, ProofError
from ..log.store import LogStore
from .checkpoint import (
    Checkpoint,
    VerifierKey,
    parse_signed_checkpoint,
    parse_vkey,
    peek_checkpoint,
)
from .checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    read_checkpoint,
    verified_checkpoint,
)
from .keys import load_verifier_key
from .merkle import leaf_hash, verify_consistency, verify_inclusion
from .trail import log_reader, open_trail_reader, read_record

__all__ = [
    "MAX_PROOF_DOC",
    "INCLUSION_KIND",
    "CONSISTENCY_KIND",
    "InclusionProofDoc",
    "ConsistencyProofDoc",
    "build_inclusion_doc",
    "build_consistency_doc",
    "prove_inclusion",
    "prove_consistency",
    "load_proof_doc",
    "check_proof",
]

INCLUSION_KIND = "mykey.inclusion-proof.v1"
CONSISTENCY_KIND = "mykey.consistency-proof.v1"
_HEX32 = re.compile(r"[0-9a-f]{64}")
_MAX_HASHES = 128  # 2 × 64 levels is more than any real proof needs
MAX_PROOF_DOC = 4 * 1024 * 1024  # bytes; a real document is a few KB (the leaf record dominates)


class _ProofSource(Protocol):
    """What the builders need from a tree (``MerkleStore`` satisfies it)."""

    def root(self, size: int | None = None) -> bytes: ...
    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]: ...
    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]: ...


# ------------------------------------------------------------------ field checks


def _field(d: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if name not in d:
        raise ProofError(f"{what} document is missing the field {name!r}")
    value = d[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProofError(f"{what} document field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _size_field(d: dict[str, Any], name: str, what: str) -> int:
    value = _field(d, name, int, what)
    if value < 0:
        raise ProofError(f"{what} document field {name!r} is negative")
    return value


def _hashes_field(d: dict[str, Any], what: str) -> tuple[bytes, ...]:
    raw = _field(d, "hashes", list, what)
    if len(raw) > _MAX_HASHES:
        raise ProofError(f"{what} document has {len(raw)} proof hashes; no valid proof has more than {_MAX_HASHES}")
    return tuple(_hex32(h, f"{what} proof hash #{i}") for i, h in enumerate(raw))


def _hex32(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise ProofError(f"{what} must be 64 lowercase hex digits, got {str(value)[:70]!r}")
    return bytes.fromhex(value)


def _check_kind(d: dict[str, Any], kind: str) -> None:
    if not isinstance(d, dict):
        raise ProofError(f"a proof document must be a JSON object, got {type(d).__name__}")
    if d.get("kind") != kind:
        raise ProofError(f"expected a {kind!r} document, got kind {d.get('kind')!r}")


def _loads(text: str | bytes) -> dict[str, Any]:
    if len(text) > MAX_PROOF_DOC:
        raise ProofError(f"proof document is larger than {MAX_PROOF_DOC} bytes; no valid one is")
    try:
        d = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ProofError(f"proof document is not UTF-8 JSON text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise ProofError(f"proof document is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProofError("proof document is nested too deeply; no valid one nests more than two levels") from None
    if not isinstance(d, dict):
        raise ProofError("proof document must be a JSON object")
    return d


# ---------------------------------------------------------------------- documents


@dataclass(frozen=True)
class InclusionProofDoc:
    """Proof that ``leaf_data`` is leaf ``leaf_index`` of the tree in the signed ``checkpoint``."""

    leaf_index: int
    tree_size: int
    leaf_data: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str
    seq: int | None = None

    kind = INCLUSION_KIND

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable dict form."""
        return {
            "kind": INCLUSION_KIND,
            "leaf_index": self.leaf_index,
            "seq": self.seq,
            "tree_size": self.tree_size,
            "leaf_data": base64.b64encode(self.leaf_data).decode("ascii"),
            "hashes": [h.hex() for h in self.hashes],
            "checkpoint": self.checkpoint,
        }

    def to_json(self) -> str:
        """JSON text of ``to_dict()``."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InclusionProofDoc:
        """Validate and load the dict form; raise ProofError on a malformed document."""
        _check_kind(d, INCLUSION_KIND)
        what = "inclusion proof"
        seq = d.get("seq")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise ProofError(f"{what} document field 'seq' must be an integer or null")
        data_b64 = _field(d, "leaf_data", str, what)
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ProofError(f"{what} document field 'leaf_data' is not valid base64") from None
        return cls(
            leaf_index=_size_field(d, "leaf_index", what),
            tree_size=_size_field(d, "tree_size", what),
            leaf_data=data,
            hashes=_hashes_field(d, what),
            checkpoint=_field(d, "checkpoint", str, what),
            seq=seq,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> InclusionProofDoc:
        """Load from JSON text."""
        return cls.from_dict(_loads(text))


@dataclass(frozen=True)
class ConsistencyProofDoc:
    """Proof that the tree in the signed ``checkpoint`` extends the tree ``(old_size, old_root)``."""

    old_size: int
    new_size: int
    old_root: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str
    old_checkpoint: str | None = None

    kind = CONSISTENCY_KIND

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable dict form."""
        return {
            "kind": CONSISTENCY_KIND,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": self.old_root.hex(),
            "hashes": [h.hex() for h in self.hashes],
            "checkpoint": self.checkpoint,
            "old_checkpoint": self.old_checkpoint,
        }

    def to_json(self) -> str:
        """JSON text of ``to_dict()``."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConsistencyProofDoc:
        """Validate and load the dict form; raise ProofError on a malformed document."""
        _check_kind(d, CONSISTENCY_KIND)
        what = "consistency proof"
        old_cp = d.get("old_checkpoint")
        if old_cp is not None and not isinstance(old_cp, str):
            raise ProofError(f"{what} document field 'old_checkpoint' must be a string or null")
        return cls(
            old_size=_size_field(d, "old_size", what),
            new_size=_size_field(d, "new_size", what),
            old_root=_hex32(_field(d, "old_root", str, what), f"{what} old_root"),
            hashes=_hashes_field(d, what),
            checkpoint=_field(d, "checkpoint", str, what),
            old_checkpoint=old_cp,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ConsistencyProofDoc:
        """Load from JSON text."""
        return cls.from_dict(_loads(text))


ProofDoc = InclusionProofDoc | ConsistencyProofDoc


def load_proof_doc(source: str | bytes | dict[str, Any] | ProofDoc) -> ProofDoc:
    """Load either kind of document from JSON text, a dict, or pass a document through."""
    if isinstance(source, (InclusionProofDoc, ConsistencyProofDoc)):
        return source
    d = source if isinstance(source, dict) else _loads(source)
    kind = d.get("kind")
    if kind == INCLUSION_KIND:
        return InclusionProofDoc.from_dict(d)
    if kind == CONSISTENCY_KIND:
        return ConsistencyProofDoc.from_dict(d)
    raise ProofError(f"unknown proof document kind {kind!r}; expected {INCLUSION_KIND!r} or {CONSISTENCY_KIND!r}")


# ----------------------------------------------------------------------- builders


def build_inclusion_doc(
    tree: _ProofSource, leaf_index: int, leaf_data: bytes, signed_checkpoint: str, *, seq: int | None = None
) -> InclusionProofDoc:
    """Inclusion document for ``leaf_data`` at ``leaf_index`` against the tree size the checkpoint signs."""
    cp = _peek(signed_checkpoint)
    if tree.root(cp.size) != cp.root_hash:
        raise ProofError(
            f"the checkpoint's root for size {cp.size} does not match this tree; it was signed for another tree"
        )
    hashes = tree.inclusion_proof(leaf_index, cp.size)
    try:  # catch a wrong leaf_data / leaf_index pairing now rather than at the auditor
        verify_inclusion(leaf_hash(leaf_data), leaf_index, cp.size, hashes, cp.root_hash)
    except ProofError as exc:
        raise ProofError(
            f"leaf_data is not leaf {leaf_index} of this tree (leaf index = log seq - 1?): {exc}"
        ) from None
    return InclusionProofDoc(leaf_index, cp.size, bytes(leaf_data), tuple(hashes), signed_checkpoint, seq)


def build_consistency_doc(
    tree: _ProofSource, old_signed_checkpoint: str | None, new_signed_checkpoint: str, *, old_size: int | None = None
) -> ConsistencyProofDoc:
    """Consistency document from the old checkpoint's size (or ``old_size``) to the new checkpoint's."""
    new = _peek(new_signed_checkpoint)
    if old_signed_checkpoint is not None:
        old_size = _peek(old_signed_checkpoint).size
    if old_size is None:
        raise ProofError("give the old signed checkpoint or old_size to build a consistency proof")
    if tree.root(new.size) != new.root_hash:
        raise ProofError(f"the new checkpoint's root for size {new.size} does not match this tree")
    hashes = tree.consistency_proof(old_size, new.size)
    return ConsistencyProofDoc(
        old_size, new.size, tree.root(old_size), tuple(hashes), new_signed_checkpoint, old_signed_checkpoint
    )


def prove_inclusion(
    data: DataDir, seq: int, checkpoint_size: int | None = None, *, log: LogStore | None = None
) -> InclusionProofDoc:
    """Inclusion proof of event ``seq`` against the latest checkpoint (or the one for ``checkpoint_size``).

    ``log``: the log to read the record from (default: the data directory's, opened read-only).
    """
    note = latest_checkpoint(data) if checkpoint_size is None else read_checkpoint(data, checkpoint_size)
    cp = verified_checkpoint(note, load_verifier_key(data), "stored checkpoint")
    if not 1 <= seq <= cp.size:
        raise NoCheckpointError(
            f"sequence {seq} is not covered by the checkpoint of size {cp.size}; "
            + ("sequence numbers start at 1" if seq < 1 else "run `mykey audit checkpoint` to sign a newer one")
        )
    with log_reader(data, log) as log, open_trail_reader(data) as store:
        return build_inclusion_doc(store, seq - 1, read_record(log, seq), note, seq=seq)


def prove_consistency(data: DataDir, old_size: int, new_size: int) -> ConsistencyProofDoc:
    """Consistency proof from tree size ``old_size`` to the checkpoint signed for ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} must be between 0 and the new size {new_size}")
    vk = load_verifier_key(data)
    new_note = read_checkpoint(data, new_size)
    verified_checkpoint(new_note, vk, f"checkpoint {new_size}")
    old_note = None
    if checkpoint_path(data, old_size).exists():
        old_note = read_checkpoint(data, old_size)
        verified_checkpoint(old_note, vk, f"checkpoint {old_size}")
    with open_trail_reader(data) as store:
        return build_consistency_doc(store, old_note, new_note, old_size=old_size)


def _peek(note: str) -> Checkpoint:
    try:
        return peek_checkpoint(note)
    except CheckpointError as exc:
        raise ProofError(f"the signed checkpoint is malformed: {exc}") from None


# ---------------------------------------------------------------------- checking


def _verify_cp(note: str, key: str | VerifierKey | Ed25519PublicKey, which: str) -> tuple[Checkpoint, str]:
    """Verify a checkpoint note with a vkey, VerifierKey or bare public key; return it and the key name."""
    try:
        if isinstance(key, str):
            key = parse_vkey(key)
        if isinstance(key, VerifierKey):
            name, pub = key.name, key.public_key
        elif isinstance(key, Ed25519PublicKey):
            name, pub = peek_checkpoint(note).origin, key  # a bare key is named after the log origin
        else:
            raise ProofError(
                f"check_proof needs a vkey string, VerifierKey or Ed25519PublicKey, got {type(key).__name__}"
            )
        return parse_signed_checkpoint(note, name, pub), name
    except CheckpointError as exc:
        raise ProofError(f"{which} checkpoint rejected: {exc}") from None


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_proof(
    doc: str | bytes | dict[str, Any] | ProofDoc, vkey_or_public_key: str | VerifierKey | Ed25519PublicKey
) -> str:
    """Check a proof document offline with only the log's public key; return ``"OK ..."`` or raise ProofError.

    A bare ``Ed25519PublicKey`` is assumed to sign under the checkpoint's origin as key name.
    """
    doc = load_proof_doc(doc)
    cp, name = _verify_cp(doc.checkpoint, vkey_or_public_key, "the")
    if isinstance(doc, InclusionProofDoc):
        if doc.tree_size != cp.size:
            raise ProofError(
                f"the document claims tree size {doc.tree_size} but its signed checkpoint is for size {cp.size}"
            )
        try:
            verify_inclusion(leaf_hash(doc.leaf_data), doc.leaf_index, cp.size, doc.hashes, cp.root_hash)
        except ProofError as exc:
            raise ProofError(f"the leaf is not proven to be in the signed tree: {exc}") from None
        seq = "" if doc.seq is None else f" (seq {doc.seq})"
        return (
            f"OK inclusion: leaf {doc.leaf_index}{seq} is in {cp.origin} at tree size {cp.size}, "
            f"root {cp.root_hash.hex()}, signed by {name} at {_when(cp.timestamp)}"
        )
    if doc.new_size != cp.size:
        raise ProofError(
            f"the document claims new size {doc.new_size} but its signed checkpoint is for size {cp.size}"
        )
    old_note = ""
    if doc.old_checkpoint is not None:
        old_cp, _ = _verify_cp(doc.old_checkpoint, vkey_or_public_key, "the old")
        if old_cp.origin != cp.origin:
            raise ProofError(f"the old checkpoint is for log {old_cp.origin!r}, the new one for {cp.origin!r}")
        if (old_cp.size, old_cp.root_hash) != (doc.old_size, doc.old_root):
            raise ProofError(
                f"the old checkpoint signs size {old_cp.size} root {old_cp.root_hash.hex()}, but the document "
                f"proves from size {doc.old_size} root {doc.old_root.hex()}"
            )
        old_note = f" (old root signed at {_when(old_cp.timestamp)})"
    else:
        old_note = " (old root not signed in this document: compare it with the one you hold)"
    try:
        verify_consistency(doc.old_size, cp.size, doc.hashes, doc.old_root, cp.root_hash)
    except ProofError as exc:
        raise ProofError(f"the signed tree is not proven to extend the old tree: {exc}") from None
    return (
        f"OK consistency: {cp.origin} at size {cp.size} root {cp.root_hash.hex()} (signed by {name} at "
        f"{_when(cp.timestamp)}) extends size {doc.old_size} root {doc.old_root.hex()}{old_note}"
    )
