"""A verifiable log: the Merkle trail kept beside the event log, signed checkpoints, proofs, verify.

Leaf ``seq - 1`` of the RFC 9162 tree is the log record ``seq`` exactly as stored.
``AuditTrail`` (one writer, used by the engine) keeps DATA/merkle in step with the
log and signs checkpoints into DATA/checkpoints/; everything else here only reads.
Replay lives in ``mykey.replay`` and a person's history in ``mykey.history``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..datadir import DataDir
from ..errors import (
    AuditError,
    AuditMismatchError,
    CorruptLogError,
    LogError,
    NoCheckpointError,
    SigningKeyError,
)
from ..log.filelog import FileLog, list_segments
from ..log.store import LogStore
from ..log.verify import verify_log
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    VerifierKey,
    generate_signing_key,
    load_private_key,
    load_public_key_text,
    parse_signed_checkpoint,
    parse_vkey,
    peek_checkpoint,
    save_private_key,
    sign_checkpoint,
    verifier_key,
)
from .merkle import EMPTY_ROOT, ProofError, leaf_hash
from .merkle_store import MerkleStore, MerkleStoreError
from .proofs import (
    ConsistencyProofDoc,
    InclusionProofDoc,
    build_consistency_doc,
    build_inclusion_doc,
)
from .replay import ReplayError, diff_live_index, parse_as_of, replay, resolve_as_of

__all__ = [
    "AuditError",
    "SigningKeyError",
    "NoCheckpointError",
    "AuditMismatchError",
    "ReplayError",
    "AuditProblem",
    "AuditReport",
    "AuditTrail",
    "ensure_signing_key",
    "load_verifier_key",
    "public_key_arg",
    "list_checkpoints",
    "read_checkpoint",
    "latest_checkpoint",
    "read_record",
    "prove_inclusion",
    "prove_consistency",
    "verify_data_dir",
    "replay",
    "resolve_as_of",
    "diff_live_index",
    "parse_as_of",
    "subject_history",
]

_logger = logging.getLogger("mykey.audit")

KEY_FILE = "checkpoint.key"
VKEY_FILE = "checkpoint.vkey"
CHECKPOINT_SUFFIX = ".ckpt"
_CKPT_NAME = re.compile(r"([0-9]{20})\.ckpt\Z")
_sha256 = hashlib.sha256


# ------------------------------------------------------------------------ keys


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_signing_key(data: DataDir, origin: str | None = None) -> None:
    """Create DATA/keys/checkpoint.key (Ed25519, 0600) and checkpoint.vkey unless present; idempotent.

    The vkey's name is the log origin (default ``mykey/<16 random hex>``).
    """
    data.keys.mkdir(parents=True, exist_ok=True)
    key_path, vkey_path = data.keys / KEY_FILE, data.keys / VKEY_FILE
    if key_path.exists():
        key = load_private_key(key_path)
        if vkey_path.exists():
            vk = load_verifier_key(data)
            if origin is not None and vk.name != origin:
                raise SigningKeyError(
                    f"{data.root} already signs as {vk.name!r}, not {origin!r}; the origin of a log cannot change "
                    "(omit --origin, or use a new data directory)"
                )
            _check_pair(key, vk, key_path)
            return
        # The key survived but its vkey did not: keep the origin earlier checkpoints were signed with.
        names = {peek_checkpoint(p.read_text("utf-8")).origin for _, p in list_checkpoints(data)[-1:]}
        name = names.pop() if names else origin or _default_origin()
        if origin is not None and name != origin:
            raise SigningKeyError(f"checkpoints in {data.checkpoints} were signed as {name!r}, not {origin!r}")
        _write_atomic(vkey_path, (verifier_key(name, key) + "\n").encode("ascii"))
        return
    if vkey_path.exists():
        raise SigningKeyError(
            f"{vkey_path} exists but the private key {key_path} is missing; restore it from a backup "
            "(a new key would not match checkpoints already published)"
        )
    name = origin or _default_origin()
    key = generate_signing_key()
    vkey = verifier_key(name, key)  # validates the name before anything is written
    save_private_key(key, key_path)
    _write_atomic(vkey_path, (vkey + "\n").encode("ascii"))


def _default_origin() -> str:
    return f"mykey/{secrets.token_hex(8)}"


def _check_pair(key: Ed25519PrivateKey, vk: VerifierKey, key_path: Path) -> None:
    if verifier_key(vk.name, key) != str(vk):
        raise SigningKeyError(
            f"{key_path} does not match the verifier key {vk.name}+{vk.key_id.hex()}; restore the matching pair"
        )


def load_verifier_key(data: DataDir) -> VerifierKey:
    """The data directory's own verifier key (DATA/keys/checkpoint.vkey)."""
    path = data.keys / VKEY_FILE
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"cannot read the verifier key {path} ({exc}); run `mykey init` to create it") from None
    try:
        return parse_vkey(text)
    except CheckpointError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None


def _load_signer(data: DataDir) -> tuple[str, Ed25519PrivateKey]:
    key_path = data.keys / KEY_FILE
    if not key_path.exists():
        raise SigningKeyError(f"no checkpoint signing key at {key_path}; run `mykey init` to create it")
    key = load_private_key(key_path)
    vk = load_verifier_key(data)
    _check_pair(key, vk, key_path)
    return vk.name, key


def public_key_arg(text: str) -> VerifierKey | Ed25519PublicKey:
    """A vkey string, a PEM public key, or the path of a file holding either."""
    text = text.strip()
    try:
        if "\n" not in text and not text.startswith("-----") and Path(text).is_file():
            text = Path(text).read_text("utf-8").strip()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the key file {text}: {exc.strerror}") from None
    try:
        if text.startswith("-----BEGIN"):
            return load_public_key_text(text)
        return parse_vkey(text)
    except CheckpointError as exc:
        raise SigningKeyError(
            f"not a verifier key: {exc}. Pass the vkey text (name+id+key), a PEM public key, or a file holding one"
        ) from None


# ------------------------------------------------------------------ checkpoints


def checkpoint_path(data: DataDir, size: int) -> Path:
    """Where the checkpoint for tree size ``size`` is stored."""
    return data.checkpoints / f"{size:020d}{CHECKPOINT_SUFFIX}"


def list_checkpoints(data: DataDir) -> list[tuple[int, Path]]:
    """Stored checkpoints as (size from the file name, path), smallest first."""
    if not data.checkpoints.is_dir():
        return []
    out = []
    for p in data.checkpoints.iterdir():
        m = _CKPT_NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    out.sort()
    return out


def signed_size(data: DataDir) -> int:
    """The tree size of the newest stored checkpoint (0 if none): events the platform signed for."""
    cps = list_checkpoints(data)
    return cps[-1][0] if cps else 0


def read_checkpoint(data: DataDir, size: int) -> str:
    """The signed checkpoint note stored for tree size ``size``."""
    path = checkpoint_path(data, size)
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        have = ", ".join(str(s) for s, _ in list_checkpoints(data)[-10:]) or "none"
        raise NoCheckpointError(
            f"no checkpoint for tree size {size} (stored sizes, latest 10: {have}); run `mykey audit checkpoint`"
        ) from None


def latest_checkpoint(data: DataDir) -> str:
    """The signed checkpoint note with the largest tree size."""
    cps = list_checkpoints(data)
    if not cps:
        raise NoCheckpointError(f"no signed checkpoints in {data.checkpoints}; run `mykey audit checkpoint` first")
    return cps[-1][1].read_text("utf-8")


# ------------------------------------------------------------------- the trail


class AuditTrail:
    """Keeps DATA/merkle in step with the log and signs checkpoints. One per data dir (a lock)."""

    def __init__(self, data: DataDir, log: LogStore, store: MerkleStore) -> None:
        self.data = data
        self.log = log
        self.store = store
        self.repairs: list[str] = []
        self._mutex = threading.Lock()

    @classmethod
    def open(cls, data: DataDir, log: LogStore) -> AuditTrail:
        """Take the Merkle store's writer lock, repair it against the log and catch it up."""
        store = MerkleStore.open(data.merkle)
        self = cls(data, log, store)
        try:
            self._reconcile()
            self.catch_up()
            self._check_latest_checkpoint()
        except BaseException:
            store.close()
            raise
        return self

    def _reconcile(self) -> None:
        store, data = self.store, self.data
        log_last = self.log.refresh()
        cps = list_checkpoints(data)
        signed = cps[-1][0] if cps else 0
        if log_last < signed:
            raise AuditMismatchError(
                f"the log ends at sequence {log_last} but checkpoint {cps[-1][1].name} signed {signed} events: "
                f"events {log_last + 1}..{signed} are missing from the log. Restore the log from a replica or "
                "backup before writing anything (see `mykey audit verify`)"
            )
        size = store.size
        check_from = store.recovery.unsynced_from if store.recovery is not None else size
        common = min(size, log_last)
        check_from = min(check_from, common)
        # One flushed leaf is compared even on a clean open: a swapped or rewritten log shows at once.
        if check_from > 0:
            rec = self._read_one(check_from)
            if leaf_hash(rec) != store.leaf_hash(check_from - 1):
                raise AuditMismatchError(
                    f"log record {check_from} differs from the Merkle leaf hashed when it was appended "
                    f"(DATA/merkle/level-00 leaf {check_from - 1}): the log was changed afterwards, or the store "
                    "belongs to another log. Run `mykey audit verify` to find the first altered event"
                )
        cut = common
        if check_from < common:
            for seq, rec in self.log.read_raw(check_from + 1, common):
                if leaf_hash(rec) != store.leaf_hash(seq - 1):
                    cut = seq - 1
                    break
        if cut < size:
            if cut < signed:
                raise AuditMismatchError(
                    f"log record {cut + 1} disagrees with the Merkle trail below signed checkpoint size {signed}; "
                    "the log was altered. Run `mykey audit verify`"
                )
            why = "is ahead of the log" if cut == log_last else f"disagrees with log record {cut + 1}"
            note = f"Merkle trail {why}: cut it from {size} to {cut} leaves (they were never signed)"
            _logger.warning("%s", note)
            self.repairs.append(note)
            store.truncate(cut)
        if store.recovery is not None:
            self.repairs.extend(store.recovery.notes)

    def _read_one(self, seq: int) -> bytes:
        if isinstance(self.log, FileLog):
            span = _record_span(Path(self.log.directory), seq)
            if span is not None:
                return span[2]
        got = next(iter(self.log.read_raw(seq, seq)), None)
        if got is None:
            raise AuditError(f"sequence {seq} is not in the log; run `mykey log verify`")
        return got[1]

    def _check_latest_checkpoint(self) -> None:
        """The trail must still give the root of the newest signed checkpoint (cheap: popcount reads)."""
        cps = list_checkpoints(self.data)
        if not cps:
            return
        size, path = cps[-1]
        try:
            cp = peek_checkpoint(path.read_text("utf-8"))
        except (OSError, CheckpointError) as exc:
            raise AuditMismatchError(f"checkpoint {path} is unreadable ({exc}); run `mykey audit verify`") from None
        if cp.size != size or self.store.root(size) != cp.root_hash:
            raise AuditMismatchError(
                f"the log's first {size} events no longer give the root signed in {path.name}: the log or the "
                "Merkle trail was altered. Nothing was signed; run `mykey audit verify` to find the first altered event"
            )

    @property
    def size(self) -> int:
        """Leaves in the trail (= events hashed)."""
        return self.store.size

    def catch_up(self) -> int:
        """Hash every log record after the trail's size into it; returns the new size."""
        with self._mutex:
            self.store.append_leaves(rec for _, rec in self.log.read_raw(self.store.size + 1))
            return self.store.size

    def checkpoint(self, now: int | None = None) -> str:
        """Sign (size, root, time) — ``now`` in unix seconds — store it under DATA/checkpoints/; return the note."""
        origin, key = _load_signer(self.data)
        self.catch_up()
        with self._mutex:
            self.log.sync()  # never sign what the log could still lose
            self.store.flush()
            size = self.store.size
            cp = Checkpoint(origin, size, self.store.root(size), int(time.time()) if now is None else int(now))
            note = sign_checkpoint(cp, origin, key)
            self.data.checkpoints.mkdir(parents=True, exist_ok=True)
            _write_atomic(checkpoint_path(self.data, size), note.encode("utf-8"))
            return note

    def close(self) -> None:
        """Flush the trail and release its writer lock; idempotent."""
        self.store.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- reading


def _open_log(data: DataDir) -> FileLog:
    return FileLog.open(data.log, readonly=True)


def _open_store(data: DataDir) -> MerkleStore:
    try:
        return MerkleStore.open(data.merkle, readonly=True)
    except MerkleStoreError as exc:
        raise AuditError(f"{exc}. Run `mykey audit checkpoint` once to build the Merkle trail") from None


def _record_span(log_dir: Path, seq: int) -> tuple[str, int, bytes] | None:
    """(segment name, record offset, stored bytes) of seq, reading only its batch; None if absent."""
    return FileLog(log_dir, readonly=True).record_at(seq)


def read_record(data: DataDir, seq: int, *, log: LogStore | None = None) -> bytes:
    """The stored bytes of record ``seq`` (the Merkle leaf data), reading only the batch that holds it."""
    span = _record_span(data.log, seq) if seq >= 1 else None
    if span is None and log is not None and seq >= 1:
        got = next(iter(log.read_raw(seq, seq)), None)
        span = None if got is None else ("", 0, got[1])
    if span is None:
        raise AuditError(
            f"sequence {seq} is not in the log at {data.log} (or the batch holding it is damaged: "
            "run `mykey log verify`)"
        )
    return span[2]


def _verified(note: str, vk: VerifierKey, where: str) -> Checkpoint:
    try:
        return parse_signed_checkpoint(note, vk.name, vk.public_key, expected_origin=vk.name)
    except CheckpointError as exc:
        raise AuditError(f"{where}: {exc}") from None


def prove_inclusion(data: DataDir, seq: int, checkpoint_size: int | None = None) -> InclusionProofDoc:
    """Inclusion proof of event ``seq`` against the latest checkpoint (or the one for ``checkpoint_size``)."""
    note = latest_checkpoint(data) if checkpoint_size is None else read_checkpoint(data, checkpoint_size)
    cp = _verified(note, load_verifier_key(data), "stored checkpoint")
    if not 1 <= seq <= cp.size:
        raise NoCheckpointError(
            f"sequence {seq} is not covered by the checkpoint of size {cp.size}; "
            + ("sequence numbers start at 1" if seq < 1 else "run `mykey audit checkpoint` to sign a newer one")
        )
    store = _open_store(data)
    try:
        return build_inclusion_doc(store, seq - 1, read_record(data, seq), note, seq=seq)
    finally:
        store.close()


def prove_consistency(data: DataDir, old_size: int, new_size: int) -> ConsistencyProofDoc:
    """Consistency proof from tree size ``old_size`` to the checkpoint signed for ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} must be between 0 and the new size {new_size}")
    vk = load_verifier_key(data)
    new_note = read_checkpoint(data, new_size)
    _verified(new_note, vk, f"checkpoint {new_size}")
    old_note = None
    if checkpoint_path(data, old_size).exists():
        old_note = read_checkpoint(data, old_size)
        _verified(old_note, vk, f"checkpoint {old_size}")
    store = _open_store(data)
    try:
        return build_consistency_doc(store, old_note, new_note, old_size=old_size)
    finally:
        store.close()


# --------------------------------------------------------------------- verify


@dataclass
class AuditProblem:
    """One problem: where (segment, offset, sequence number) and what."""

    what: str
    seq: int | None = None
    segment: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        if self.segment:
            where = f"{self.segment} offset {self.offset}" + ("" if self.seq is None else f" (sequence {self.seq})")
        else:
            where = "" if self.seq is None else f"sequence {self.seq}"
        return f"{where}: {self.what}" if where else self.what


@dataclass
class AuditReport:
    """Result of verify_data_dir: what was checked, and the first problem (None when sound)."""

    events: int = 0
    last_seq: int = 0
    segments: int = 0
    checkpoints: int = 0
    merkle_size: int = 0
    problems: list[AuditProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def problem(self) -> AuditProblem | None:
        """The first problem by position in the log."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq if p.seq is not None else 1 << 62))

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "events": self.events,
            "last_seq": self.last_seq,
            "segments": self.segments,
            "checkpoints": self.checkpoints,
            "merkle_size": self.merkle_size,
            "problem": None if self.problem is None else _problem_dict(self.problem),
            "problems": [_problem_dict(p) for p in self.problems],
            "notes": list(self.notes),
        }


def _problem_dict(p: AuditProblem) -> dict[str, Any]:
    return {"what": p.what, "seq": p.seq, "segment": p.segment, "offset": p.offset, "text": str(p)}


_CHUNK = 1 << 16  # leaves compared with the Merkle trail at once (one aligned subtree)


class _Roots:
    """Folds leaf hashes into a compact range: the root at the current size, and where a trail differs."""

    def __init__(self, store: MerkleStore | None) -> None:
        self.stack: list[bytes] = []  # perfect subtrees of [0, count): one per set bit of count, largest first
        self.count = 0
        self.chunk: list[bytes] = []  # leaf hashes of the current aligned chunk
        self.store = store
        self.store_size = store.size if store is not None else 0
        self.first_diff: int | None = None  # first leaf index where the trail's leaf differs from the log's
        self.interior_damaged = False

    def add(self, hashes: list[bytes]) -> None:
        """Append leaf hashes (callers split them so that sizes they need roots for are reached exactly)."""
        while hashes:
            room = _CHUNK - (self.count & (_CHUNK - 1))
            part, hashes = hashes[:room], hashes[room:]
            self._fold(part)
            self.chunk.extend(part)
            if not self.count & (_CHUNK - 1):
                self._check_chunk()
                self.chunk = []

    def _fold(self, hashes: list[bytes]) -> None:
        stack, n, sha = self.stack, self.count, _sha256
        for h in hashes:
            m = n
            while m & 1:
                h = sha(b"\x01" + stack.pop() + h).digest()
                m >>= 1
            stack.append(h)
            n += 1
        self.count = n

    def _check_chunk(self) -> None:
        """Compare the chunk just completed with the trail (one node read when they agree)."""
        if self.store is None or self.first_diff is not None:
            return
        start = self.count - _CHUNK
        if self.count <= self.store_size:
            level = (self.count & -self.count).bit_length() - 1  # the last stack entry's height
            try:
                if self.store.subtree(level, (self.count >> level) - 1) == self.stack[-1]:
                    return
            except MerkleStoreError:
                pass
        self._check_leaves(start)

    def _check_leaves(self, start: int) -> None:
        end = min(start + len(self.chunk), self.store_size)
        for i in range(start, end):
            try:
                stored = self.store.subtree(0, i) if self.store is not None else None
            except MerkleStoreError:
                stored = None
            if stored != self.chunk[i - start]:
                self.first_diff = i
                return
        if end == start + _CHUNK:
            self.interior_damaged = True

    def finish(self) -> None:
        """Compare the last, partial chunk with the trail leaf by leaf."""
        if self.store is not None and self.first_diff is None and self.chunk:
            self._check_leaves(self.count - len(self.chunk))

    def root(self) -> bytes:
        """RFC 9162 root of the leaves added so far."""
        if not self.stack:
            return EMPTY_ROOT
        acc = self.stack[-1]
        for h in reversed(self.stack[:-1]):
            acc = _sha256(b"\x01" + h + acc).digest()
        return acc


def _locate(data: DataDir, seq: int) -> AuditProblem:
    span = _record_span(data.log, seq)
    if span is None:
        return AuditProblem("", seq)
    return AuditProblem("", seq, span[0], span[1])


def _log_end(data: DataDir) -> tuple[str | None, int | None]:
    segs = list_segments(data.log)
    if not segs:
        return None, None
    return segs[-1].path.name, segs[-1].path.stat().st_size


def verify_data_dir(data: DataDir, vkey: VerifierKey | Ed25519PublicKey | str | None = None) -> AuditReport:
    """Recompute everything from the log: CRCs, sequence continuity, every checkpoint's root and signature.

    ``vkey`` is the published verifier key to trust (default: DATA/keys/checkpoint.vkey).
    """
    report = AuditReport()
    if not data.log.is_dir():
        raise LogError(f"no log at {data.log}; pass --data DIR or run `mykey init`")
    lr = verify_log(data.log)
    report.events, report.last_seq, report.segments = lr.events, lr.last_seq, lr.segments
    report.notes.extend(lr.notes)
    if lr.problem is not None:
        p = lr.problem
        report.problems.append(AuditProblem(f"log damaged: {p.what}", p.seq, p.segment, p.offset))
        last_good = report.last_seq = p.seq - 1
    else:
        last_good = lr.last_seq

    key = _trusted_key(data, vkey, report)
    cps: list[tuple[int, str, Checkpoint | None]] = []
    for name_size, path in list_checkpoints(data):
        note = path.read_text("utf-8", errors="replace")
        cp: Checkpoint | None = None
        if key is not None:
            try:
                if isinstance(key, VerifierKey):
                    cp = parse_signed_checkpoint(note, key.name, key.public_key, expected_origin=key.name)
                else:
                    cp = parse_signed_checkpoint(note, peek_checkpoint(note).origin, key)
            except CheckpointError as exc:
                report.problems.append(AuditProblem(f"checkpoint {path.name} is not validly signed: {exc}"))
                continue
        else:
            try:
                cp = peek_checkpoint(note)
            except CheckpointError as exc:
                report.problems.append(AuditProblem(f"checkpoint {path.name} is malformed: {exc}"))
                continue
        if cp.size != name_size:
            report.problems.append(AuditProblem(f"checkpoint file {path.name} signs tree size {cp.size}"))
            continue
        cps.append((cp.size, path.name, cp))
    report.checkpoints = len(cps)
    if not cps and not report.problems:
        report.notes.append("no signed checkpoints yet: only the log itself was checked; run `mykey audit checkpoint`")

    store: MerkleStore | None = None
    if (data.merkle / "meta").exists():
        try:
            store = MerkleStore.open(data.merkle, readonly=True)
            report.merkle_size = store.size
        except MerkleStoreError as exc:
            report.notes.append(f"Merkle trail unreadable ({exc}); positions come from checkpoints only")
    try:
        _check_roots(data, report, cps, store, last_good)
    finally:
        if store is not None:
            store.close()
    return report


def _trusted_key(
    data: DataDir, vkey: VerifierKey | Ed25519PublicKey | str | None, report: AuditReport
) -> VerifierKey | Ed25519PublicKey | None:
    if isinstance(vkey, str):
        return public_key_arg(vkey)
    if vkey is not None:
        return vkey
    try:
        return load_verifier_key(data)
    except SigningKeyError as exc:
        if list_checkpoints(data):
            report.problems.append(AuditProblem(f"checkpoints cannot be checked: {exc}"))
        return None


def _check_roots(
    data: DataDir,
    report: AuditReport,
    cps: list[tuple[int, str, Checkpoint | None]],
    store: MerkleStore | None,
    last_good: int,
) -> None:
    roots = _Roots(store)
    want = [c for c in sorted(cps, key=lambda c: c[0])]
    wi = 0
    mismatched: list[tuple[int, str]] = []
    good_below = 0  # largest checkpoint size whose root matched, below the first mismatch

    def check_due() -> None:
        nonlocal wi, good_below
        while wi < len(want) and want[wi][0] == roots.count:
            size, name, cp = want[wi]
            if cp is not None and roots.root() != cp.root_hash:
                mismatched.append((size, name))
            elif not mismatched:
                good_below = size
            wi += 1

    check_due()  # a checkpoint of the empty tree
    try:
        for first_seq, payloads in _open_log(data).read_batches(1) if last_good > 0 else ():
            if first_seq > last_good:
                break
            if first_seq + len(payloads) - 1 > last_good:
                payloads = payloads[: last_good - first_seq + 1]
            hashes = [_sha256(b"\x00" + p).digest() for p in payloads]
            while hashes:
                upto = len(hashes)
                if wi < len(want):
                    upto = min(upto, want[wi][0] - roots.count)
                roots.add(hashes[:upto])
                hashes = hashes[upto:]
                check_due()
    except CorruptLogError:
        pass  # the batch holding the damage verify_log reported: nothing after it can be checked
    roots.finish()
    damaged = any(p.what.startswith("log damaged") for p in report.problems)

    if mismatched:
        size, name = mismatched[0]
        diff = roots.first_diff
        if diff is not None and diff < size:
            p = _locate(data, diff + 1)
            p.what = (
                f"event differs from the one checkpoint {name} signed (root mismatch at tree size {size}): "
                "it was rewritten, removed, or moved"
            )
        else:
            p = AuditProblem(
                f"the log's first {size} events do not give the root signed in checkpoint {name}: one of events "
                f"{good_below + 1}..{size} was rewritten, removed or moved (the Merkle trail agrees with the "
                "altered log, so it cannot say which)",
                good_below + 1,
            )
        report.problems.append(p)
    if wi < len(want) and damaged:
        report.notes.append(
            f"checkpoints from size {want[wi][0]} on cannot be checked past the damage at sequence {roots.count + 1}"
        )
    elif wi < len(want):
        size, name, _cp = want[wi]
        seg, off = _log_end(data)
        report.problems.append(
            AuditProblem(
                f"checkpoint {name} signed {size} events but the log ends at sequence {last_good}: "
                f"events {last_good + 1}..{size} are gone (the log was truncated)",
                last_good + 1,
                seg,
                off,
            )
        )
    if store is None:
        return
    if store.size > last_good and report.problem is None:
        seg, off = _log_end(data)
        report.problems.append(
            AuditProblem(
                f"the Merkle trail hashed {store.size} events but the log ends at sequence {last_good}: "
                f"events {last_good + 1}..{store.size} were in the log once",
                last_good + 1,
                seg,
                off,
            )
        )
    elif roots.first_diff is not None and not mismatched:
        p = _locate(data, roots.first_diff + 1)
        p.what = (
            "event differs from the leaf the Merkle trail hashed when it was appended (no signed checkpoint "
            "covers it yet): it was changed after it was written"
        )
        report.problems.append(p)
    elif roots.interior_damaged:
        report.notes.append("the Merkle trail's interior nodes are damaged; reopen it as the writer to rebuild them")
    if store.size < last_good:
        behind = last_good - store.size
        report.notes.append(f"the Merkle trail is {behind} events behind the log; the engine catches it up")


# ------------------------------------------------------------------ history


def subject_history(data: DataDir, mykey_id: str) -> dict[str, Any]:
    """Every event about ``mykey_id`` with inclusion proofs, its state, certificate and linked business IDs."""
    from .history import subject_history as _history

    return _history(data, mykey_id)
