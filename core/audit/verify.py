"""`mykey audit verify`: recompute everything from the log and compare it with what was signed.

Checks the log itself (sequence continuity, every record decodes and carries its
sequence number; for the file log also segment headers, CRCs and torn tails), every
stored checkpoint's signature, and that the log's records give each signed root. The
Merkle trail, when present, says which event differs when a root does not match.
Reads the log only through the LogStore interface; where the log is the file log,
problems also carry their segment and file offset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..datadir import DataDir
from ..errors import (
    CheckpointError,
    CorruptLogError,
    MerkleStoreError,
    SigningKeyError,
)
from ..log.damage import located
from ..log.filelog import FileLog, list_segments
from ..log.store import LogStore
from ..log.verify import record_problem, verify_log
from .checkpoint import (
    Checkpoint,
    VerifierKey,
    parse_signed_checkpoint,
    peek_checkpoint,
)
from .checkpoints import list_checkpoints
from .keys import load_verifier_key, public_key_arg
from .merkle import EMPTY_ROOT
from .merkle_store import MerkleStore
from .trail import log_reader

__all__ = ["AuditProblem", "AuditReport", "verify_data_dir"]

_sha256 = hashlib.sha256


@dataclass
class AuditProblem:
    """One problem: where (sequence number; segment and offset for the file log) and what."""

    what: str
    seq: int | None = None
    segment: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        if self.segment:
            return located(self.segment, self.offset, self.seq, self.what)
        return self.what if self.seq is None else f"sequence {self.seq}: {self.what}"


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


def verify_data_dir(
    data: DataDir, vkey: VerifierKey | Ed25519PublicKey | str | None = None, *, log: LogStore | None = None
) -> AuditReport:
    """Recompute everything from the log: its integrity, every checkpoint's root and signature.

    ``vkey`` is the published verifier key to trust (default: DATA/keys/checkpoint.vkey);
    ``log`` the log to check (default: the data directory's, opened read-only).
    """
    report = AuditReport()
    with log_reader(data, log) as log:
        last_good = _check_log(log, report)
        cps = _signed_checkpoints(data, _trusted_key(data, vkey, report), report)
        store: MerkleStore | None = None
        if (data.merkle / "meta").exists():
            try:
                store = MerkleStore.open(data.merkle, readonly=True)
                report.merkle_size = store.size
            except MerkleStoreError as exc:
                report.notes.append(f"Merkle trail unreadable ({exc}); positions come from checkpoints only")
        try:
            _check_roots(log, report, cps, store, last_good)
        finally:
            if store is not None:
                store.close()
    return report


# --------------------------------------------------------------------- the log


def _check_log(log: LogStore, report: AuditReport) -> int:
    """Check the log's own integrity into ``report``; return the last sequence number to trust."""
    if isinstance(log, FileLog):  # every byte of every segment, with file positions and torn tails
        lr = verify_log(log.directory)
        report.events, report.last_seq, report.segments = lr.events, lr.last_seq, lr.segments
        report.notes.extend(lr.notes)
        p = lr.problem
        problem = None if p is None else AuditProblem(f"log damaged: {p.what}", p.seq, p.segment, p.offset)
    else:
        problem = _scan_log(log, report)
    if problem is None:
        return report.last_seq
    report.problems.append(problem)
    report.last_seq = (problem.seq or 1) - 1
    return report.last_seq


def _scan_log(log: LogStore, report: AuditReport) -> AuditProblem | None:
    """Any backend: batches follow each other without gaps; every record decodes and has its seq."""
    expected = 1
    try:
        for first_seq, payloads in log.read_batches(1):
            if first_seq != expected:
                return AuditProblem(f"log damaged: sequence gap: batch starts at {first_seq}", expected)
            for seq, payload in enumerate(payloads, first_seq):
                what = record_problem(seq, payload)
                if what is not None:
                    return AuditProblem(f"log damaged: {what}", seq)
            expected += len(payloads)
            report.events += len(payloads)
            report.last_seq = expected - 1
    except CorruptLogError as exc:
        return AuditProblem(f"log damaged: {exc}", expected)
    return None


def _locate(log: LogStore, seq: int, what: str) -> AuditProblem:
    """A problem at ``seq``, with its segment and offset when the log is the file log."""
    span = log.record_at(seq) if isinstance(log, FileLog) else None
    if span is None:
        return AuditProblem(what, seq)
    return AuditProblem(what, seq, span[0], span[1])


def _log_end(log: LogStore) -> tuple[str | None, int | None]:
    """(newest segment, its length) for the file log: where missing events would have been."""
    segs = list_segments(log.directory) if isinstance(log, FileLog) else []
    if not segs:
        return None, None
    return segs[-1].path.name, segs[-1].path.stat().st_size


# -------------------------------------------------------------- checkpoints


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


def _signed_checkpoints(
    data: DataDir, key: VerifierKey | Ed25519PublicKey | None, report: AuditReport
) -> list[tuple[int, str, Checkpoint | None]]:
    """Every stored checkpoint whose signature (without a key: whose form) is sound, as (size, file, cp)."""
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
    return cps


# ------------------------------------------------------------------ the roots

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


def _check_roots(
    log: LogStore,
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
        for first_seq, payloads in log.read_batches(1) if last_good > 0 else ():
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
            p = _locate(
                log,
                diff + 1,
                f"event differs from the one checkpoint {name} signed (root mismatch at tree size {size}): "
                "it was rewritten, removed, or moved",
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
        seg, off = _log_end(log)
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
        seg, off = _log_end(log)
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
        p = _locate(
            log,
            roots.first_diff + 1,
            "event differs from the leaf the Merkle trail hashed when it was appended (no signed checkpoint "
            "covers it yet): it was changed after it was written",
        )
        report.problems.append(p)
    elif roots.interior_damaged:
        report.notes.append("the Merkle trail's interior nodes are damaged; reopen it as the writer to rebuild them")
    if store.size < last_good:
        behind = last_good - store.size
        report.notes.append(f"the Merkle trail is {behind} events behind the log; the engine catches it up")
