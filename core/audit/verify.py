"""`mykey audit verify`: recompute everything from the log and compare it with what was signed.

Checks the log itself (sequence continuity, every record decodes and carries its
sequence number; for the file log also segment headers, CRCs and torn tails), every
stored checkpoint's signature, and that the log's records give each signed root. The
Merkle trail, when present, says which event differs when a root does not match.
Reads the log only through the LogStore interface; where the log is the file log,
problems also carry their segment and file offset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..datadir import DataDir
from ..domain.events import Envelope
from ..errors import (
    CheckpointError,
    CorruptLogError,
    MerkleStoreError,
    SigningKeyError,
    ValidationError,
)
from ..fs import check_private_dir
from ..log.backend import file_log_dir
from ..log.damage import located
from ..log.filelog import FileLog, list_segments
from ..log.store import LogStore
from ..log.verify import first_bad_record, merkle_hashing, verify_log
from .checkpoint import (
    Checkpoint,
    VerifierKey,
    parse_signed_checkpoint,
    peek_checkpoint,
)
from .checkpoints import list_checkpoints
from .keys import load_verifier_key, public_key_arg
from .merkle import EMPTY_ROOT, HASH_SIZE, node_hash
from .merkle_store import MerkleStore
from .trail import log_reader

__all__ = ["AuditProblem", "AuditReport", "verify_data_dir"]

_decode_current = msgspec.msgpack.Decoder(Envelope).decode  # today's schema only; anything else goes by record_problem


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
    signed = AuditReport()  # what the checkpoints and the trail say, merged after the log's own problems
    with _reader(data, log) as log:
        cps = _signed_checkpoints(data, _trusted_key(data, vkey, signed), signed)
        store: MerkleStore | None = None
        if (data.merkle / "meta").exists():
            try:
                store = MerkleStore.open(data.merkle, readonly=True)
                signed.merkle_size = store.size
            except MerkleStoreError as exc:
                signed.notes.append(f"Merkle trail unreadable ({exc}); positions come from checkpoints only")
        try:
            roots = _RootCheck(cps, store)
            last_good = _check_log(log, report, roots.leaves)  # one pass: records checked, leaves folded
            report.problems.extend(signed.problems)
            report.checkpoints, report.merkle_size = signed.checkpoints, signed.merkle_size
            if not cps and not report.problems:
                report.notes.append(
                    "no signed checkpoints yet: only the log itself was checked; run `mykey audit checkpoint`"
                )
            report.notes.extend(signed.notes)
            roots.judge(log, report, last_good)
        finally:
            if store is not None:
                store.close()
    return report


# --------------------------------------------------------------------- the log


class _FileLogDir:
    """The data directory's file log, checked through its files; opened as a reader only to locate a problem.

    (Opening a file log as a reader reads its newest batch to find its end: a second read
    of the log's tail that verify_log makes anyway.)
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._log: FileLog | None = None

    def record_at(self, seq: int) -> tuple[str, int, bytes] | None:
        if self._log is None:
            self._log = FileLog.open(self.directory, readonly=True)
        return self._log.record_at(seq)

    def __enter__(self) -> _FileLogDir:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._log is not None:
            self._log.close()


_Log = LogStore | _FileLogDir


def _reader(data: DataDir, log: LogStore | None) -> AbstractContextManager[_Log]:
    """``log`` itself, the data directory's file log as files, or any other backend opened read-only."""
    if log is None:
        try:
            directory = file_log_dir(data)
        except ValidationError:  # not files (or not understood: opening it says so)
            directory = None
        if directory is not None and directory.is_dir():  # else opening it says what is missing
            check_private_dir(directory, what="log directory")
            return _FileLogDir(directory)
    return log_reader(data, log)


def _check_log(log: _Log, report: AuditReport, leaves: Callable[[bytes], None]) -> int:
    """Check the log's own integrity into ``report``; return the last sequence number to trust.

    ``leaves`` receives the leaf hashes (32 bytes each, concatenated) of every sound record,
    in order, up to the first problem.
    """
    check = _BatchCheck(leaves)
    if isinstance(log, (FileLog, _FileLogDir)):  # every byte of every segment, with file positions and torn tails
        lr = verify_log(log.directory, check=check)
        report.events, report.last_seq, report.segments = lr.events, lr.last_seq, lr.segments
        report.notes.extend(lr.notes)
        p = lr.problem
        problem = None if p is None else AuditProblem(f"log damaged: {p.what}", p.seq, p.segment, p.offset)
    else:
        problem = _scan_log(log, report, check)
    if problem is None:
        return report.last_seq
    report.problems.append(problem)
    report.last_seq = (problem.seq or 1) - 1
    return report.last_seq


class _BatchCheck:
    """Checks a batch's records as log.verify.record_problem does, hands the sound ones' leaf hashes on.

    A batch whose records all decode with today's schema and carry their sequence numbers
    is checked in one loop; any other batch goes record by record (old schema versions are
    upcast there, and the first bad record is worded).
    """

    def __init__(self, leaves: Callable[[bytes], None]) -> None:
        self.leaves = leaves
        self.leaf_hashes = merkle_hashing()[0]

    def __call__(self, first_seq: int, payloads: Sequence[bytes]) -> tuple[int, str] | None:
        bad = _first_bad(first_seq, payloads)
        self.leaves(self.leaf_hashes(payloads if bad is None else payloads[: bad[0] - first_seq]))
        return bad


def _first_bad(first_seq: int, payloads: Sequence[bytes]) -> tuple[int, str] | None:
    try:
        for seq, e in enumerate(map(_decode_current, payloads), first_seq):
            if e.seq != seq or e.v != e.body.VERSION:  # an older schema version: record_problem upcasts it
                break
        else:
            return None
    except Exception:  # noqa: BLE001, S110 - record_problem below says what, or accepts an older schema
        pass
    return first_bad_record(first_seq, payloads)


def _scan_log(log: LogStore, report: AuditReport, check: _BatchCheck) -> AuditProblem | None:
    """Any backend: batches follow each other without gaps; every record decodes and has its seq."""
    expected = 1
    try:
        for first_seq, payloads in log.read_batches(1):
            if first_seq != expected:
                return AuditProblem(f"log damaged: sequence gap: batch starts at {first_seq}", expected)
            bad = check(first_seq, payloads)
            if bad is not None:
                return AuditProblem(f"log damaged: {bad[1]}", bad[0])
            expected += len(payloads)
            report.events += len(payloads)
            report.last_seq = expected - 1
    except CorruptLogError as exc:
        return AuditProblem(f"log damaged: {exc}", expected)
    return None


def _locate(log: _Log, seq: int, what: str) -> AuditProblem:
    """A problem at ``seq``, with its segment and offset when the log is the file log."""
    span = log.record_at(seq) if isinstance(log, (FileLog, _FileLogDir)) else None
    if span is None:
        return AuditProblem(what, seq)
    return AuditProblem(what, seq, span[0], span[1])


def _log_end(log: _Log) -> tuple[str | None, int | None]:
    """(newest segment, its length) for the file log: where missing events would have been."""
    segs = list_segments(log.directory) if isinstance(log, (FileLog, _FileLogDir)) else []
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
    return cps


# ------------------------------------------------------------------ the roots

_CHUNK = 1 << 16  # leaves folded and compared with the Merkle trail at once (one aligned subtree)
_H = HASH_SIZE  # leaf hashes travel as bytes, 32 of them per leaf


def _aligned_blocks(start: int, end: int) -> Iterator[tuple[int, int]]:
    """Leaves [start, end) as perfect aligned blocks (k, first leaf) of 2^k leaves each, left to right, largest first."""
    while start < end:
        k = (end - start).bit_length() - 1
        if start:
            k = min(k, (start & -start).bit_length() - 1)
        yield k, start
        start += 1 << k


class _Roots:
    """Folds leaf hashes into a compact range: the root at the current size, and where a trail differs."""

    def __init__(self, store: MerkleStore | None) -> None:
        self.perfect_root = merkle_hashing()[1]
        self.stack: list[bytes] = []  # perfect subtrees of the whole chunks: one per set bit, largest first
        self.chunks = 0  # whole chunks folded into stack
        self.chunk = bytearray()  # leaf hashes of the current, partial aligned chunk
        self.tail: list[bytes] = []  # perfect subtrees of the chunk's first tail_n leaves, for roots inside a chunk
        self.tail_n = 0
        self.store = store
        self.store_size = store.size if store is not None else 0
        self.first_diff: int | None = None  # first leaf index where the trail's leaf differs from the log's
        self.interior_damaged = False

    @property
    def count(self) -> int:
        return self.chunks * _CHUNK + len(self.chunk) // _H

    def leaf(self, k: int) -> bytes:
        """The hash of the current chunk's k-th leaf."""
        return bytes(self.chunk[k * _H : (k + 1) * _H])

    def add(self, hashes: bytes | memoryview) -> None:
        """Append leaf hashes (callers split them so that sizes they need roots for are reached exactly)."""
        view, at, full = memoryview(hashes), 0, _CHUNK * _H
        while at < len(view):
            room = full - len(self.chunk)
            self.chunk += view[at : at + room]
            at += room
            if len(self.chunk) == full:
                self._fold_chunk()

    def _fold_chunk(self) -> None:
        h, m, stack = self.perfect_root(self.chunk), self.chunks, self.stack
        while m & 1:
            h = node_hash(stack.pop(), h)
            m >>= 1
        stack.append(h)
        self.chunks += 1
        self._check_chunk()
        self.chunk, self.tail, self.tail_n = bytearray(), [], 0

    def _check_chunk(self) -> None:
        """Compare the chunk just completed with the trail (one node read when they agree)."""
        if self.store is None or self.first_diff is not None:
            return
        count = self.chunks * _CHUNK
        if count <= self.store_size:
            level = (count & -count).bit_length() - 1  # the last stack entry's height
            try:
                if self.store.subtree(level, (count >> level) - 1) == self.stack[-1]:
                    return
            except MerkleStoreError:
                pass
        self._check_leaves(count - _CHUNK)

    def _check_leaves(self, start: int) -> None:
        """Find the first leaf of the chunk at ``start`` that the trail holds otherwise (a block, then its leaves)."""
        end = min(start + len(self.chunk) // _H, self.store_size)
        for k, p in _aligned_blocks(0, end - start):
            if self._stored(k, (start + p) >> k) == self.block_root(k, p):
                continue
            for i in range(start + p, start + p + (1 << k)):
                if self._stored(0, i) != self.leaf(i - start):
                    self.first_diff = i
                    return
        if end == start + _CHUNK:
            self.interior_damaged = True

    def _stored(self, level: int, index: int) -> bytes | None:
        try:
            return self.store.subtree(level, index) if self.store is not None else None
        except MerkleStoreError:
            return None

    def block_root(self, k: int, p: int) -> bytes:
        """Root of the current chunk's 2^k leaves from its p-th (p a multiple of 2^k)."""
        return self.perfect_root(memoryview(self.chunk)[p * _H : (p + (1 << k)) * _H])

    def finish(self) -> None:
        """Compare the last, partial chunk with the trail leaf by leaf."""
        if self.store is not None and self.first_diff is None and self.chunk:
            self._check_leaves(self.count - len(self.chunk) // _H)

    def root(self) -> bytes:
        """RFC 9162 root of the leaves added so far."""
        stack, end = self.tail, len(self.chunk) // _H
        for k, p in _aligned_blocks(self.tail_n, end):  # the partial chunk's new leaves, in aligned blocks
            h, m = self.block_root(k, p), p >> k
            while m & 1:
                h = node_hash(stack.pop(), h)
                m >>= 1
            stack.append(h)
        self.tail_n = end
        nodes = self.stack + stack
        if not nodes:
            return EMPTY_ROOT
        acc = nodes[-1]
        for h in reversed(nodes[:-1]):
            acc = node_hash(h, acc)
        return acc


class _RootCheck:
    """Recomputes each signed checkpoint's root from the leaves of the log as they are checked."""

    def __init__(self, cps: list[tuple[int, str, Checkpoint | None]], store: MerkleStore | None) -> None:
        self.roots = _Roots(store)
        self.store = store
        self.want = sorted(cps, key=lambda c: c[0])
        self.wi = 0
        self.mismatched: list[tuple[int, str]] = []
        self.good_below = 0  # largest checkpoint size whose root matched, below the first mismatch
        self._due()  # a checkpoint of the empty tree

    def _due(self) -> None:
        want, roots = self.want, self.roots
        while self.wi < len(want) and want[self.wi][0] == roots.count:
            size, name, cp = want[self.wi]
            if cp is not None and roots.root() != cp.root_hash:
                self.mismatched.append((size, name))
            elif not self.mismatched:
                self.good_below = size
            self.wi += 1

    def leaves(self, hashes: bytes) -> None:
        """The leaf hashes (32 bytes each, concatenated) of the next sound records of the log."""
        want, roots, view = self.want, self.roots, memoryview(hashes)
        while view:
            upto = len(view) // _H
            if self.wi < len(want):
                upto = min(upto, want[self.wi][0] - roots.count)
            roots.add(view[: upto * _H])
            view = view[upto * _H :]
            self._due()

    def judge(self, log: _Log, report: AuditReport, last_good: int) -> None:
        """Add what the roots and the trail say to ``report``, once the log has been read to last_good."""
        roots, want, wi, mismatched, good_below, store = (
            self.roots, self.want, self.wi, self.mismatched, self.good_below, self.store
        )
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
