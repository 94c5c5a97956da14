"""Append-only on-disk Merkle tree (RFC 9162 hashing), maintained incrementally.

Layout of the store directory::

    meta          128 bytes: magic, committed size, synced size, their roots, checksum
    level-00      leaf hashes, 32 bytes each, in leaf order (the source of truth)
    level-01      hashes of complete aligned 2-leaf subtrees
    level-KK      hashes of complete aligned 2^KK-leaf subtrees, appended as they complete
    lock          held (flock) by the one writer, holding its pid

Disk cost: 32 bytes per leaf at level 0 plus 32·(n/2 + n/4 + …) < 32·n above it, so
**≈ 64 bytes per leaf** (64 MiB for 1,000,000 leaves; 2 × the raw leaf hashes) plus a
128-byte meta file. Nothing else is stored: the leaf data stays in the event log.

Costs: appending hashes each leaf once and does one interior hash per completed
subtree (≈ 2 SHA-256 per leaf, amortised); ``root(size)`` reads popcount(size) ≤ 64
nodes; an inclusion or consistency proof reads O(log n) nodes (see ``mykey.merkle``).

Commit protocol. ``append_*`` writes every level file, then overwrites the 128-byte
``meta`` record in place (one sector, SHA-256 checksummed) with the new *committed*
size: readers (``open(..., readonly=True)``, any process) only use sizes ≤ the
committed size they read (a torn read fails the checksum and is retried), so they
always see a consistent prefix. Appends are not fsynced; ``flush()`` (and ``close()``)
fsyncs the level files and records the *synced* size and its root in ``meta``.

Crash repair on writer open. The leaf level is the source of truth. Whole leaf hashes
present in ``level-00`` set the size (a torn trailing partial hash is cut off); every
higher level is truncated to its expected length, and its nodes above the last synced
size — plus any missing tail (a crash between files, a deleted or shortened file) —
are recomputed from the level below. The root at the synced size is then checked
against ``meta``; if it differs, all higher levels are rebuilt from the leaves, and if
it still differs the store raises ``MerkleStoreCorruptError``. What was repaired is
reported in ``MerkleStore.recovery``: leaves at index ≥ ``recovery.unsynced_from``
were not fsynced before the crash, so the caller should compare them with the log
(``leaf_hash(i)`` against the record) and ``truncate()``/re-append as needed.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .. import fs
from ..errors import (
    MerkleStoreCorruptError,
    MerkleStoreError,
    MerkleStoreLockedError,
)
from .merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    consistency_proof,
    inclusion_proof,
    parent_level,
    range_hash,
)

__all__ = [
    "MerkleStore",
    "Recovery",
    "BYTES_PER_LEAF",
]

log = logging.getLogger("mykey.merkle_store")

BYTES_PER_LEAF = 2 * HASH_SIZE
"""Approximate on-disk cost per leaf (leaf hash + its share of the interior levels)."""

_MAGIC = b"mykey-merkle-v1\n"
_META = struct.Struct(">16sQQ32s32s")  # magic, size, synced_size, root, synced_root
_META_SIZE = _META.size + HASH_SIZE  # + SHA-256 checksum of the above
_CHUNK = 1 << 16  # leaves hashed and written per commit
_REBUILD_CHUNK = 1 << 18  # child nodes read per step while rebuilding a level
_sha256 = hashlib.sha256


@dataclass(frozen=True)
class Recovery:
    """What a writer ``open`` found and repaired (``MerkleStore.recovery``; None if clean)."""

    committed_size: int | None  # size recorded in meta before repair (None: meta missing/damaged)
    size: int  # size after repair (= whole leaf hashes in level-00)
    unsynced_from: int  # leaves at index >= this were not fsynced: re-check them against the log
    nodes_rebuilt: int  # interior nodes recomputed from the level below
    notes: tuple[str, ...]  # human-readable findings


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite all of data: a short write (a disk filling up) goes on with the rest, or fails with ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no progress writing (disk full?)")
        view, offset = view[n:], offset + n


def _level_name(level: int) -> str:
    return f"level-{level:02d}"


class MerkleStore:
    """Append-only Merkle tree under a directory; one writer, any number of readonly readers."""

    def __init__(self, directory: Path, readonly: bool) -> None:
        """Internal: use ``MerkleStore.open``."""
        self._dir = directory
        self._readonly = readonly
        self._fds: list[int | None] = []
        self._lock: fs.OwnerLock | None = None
        self._meta_fd: int | None = None
        self._size = 0
        self._synced = 0
        self._synced_root = EMPTY_ROOT
        self._closed = False
        self.recovery: Recovery | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, readonly: bool = False) -> MerkleStore:
        """Open (a writer creates it if absent) the store in ``directory``; writers repair crashes."""
        path = Path(directory)
        store = cls(path, readonly)
        try:
            if readonly:
                if not (path / "meta").exists():
                    raise MerkleStoreError(
                        f"no Merkle store at {path} (no meta file); open it once read-write to create it"
                    )
                store.refresh()
            else:
                fs.private_dir(path)
                store._take_lock()
                store._recover()
        except BaseException:
            store._close_fds()
            raise
        return store

    def _take_lock(self) -> None:
        directory = self._dir

        def held_by(pid: str) -> MerkleStoreLockedError:
            return MerkleStoreLockedError(
                f"the Merkle store at {directory} is already open for writing (pid {pid}); close the other "
                "writer first, or open this one with readonly=True"
            )

        self._lock = fs.OwnerLock.acquire(directory / "lock", held_by=held_by)

    def _read_meta(self) -> tuple[int, int, bytes, bytes] | None:
        """(size, synced_size, root, synced_root) from ``meta``; None if it is absent or damaged."""
        if self._meta_fd is None:
            try:
                self._meta_fd = os.open(self._dir / "meta", os.O_RDONLY if self._readonly else os.O_RDWR)
            except FileNotFoundError:
                return None
        raw = os.pread(self._meta_fd, _META_SIZE + 1, 0)
        head = raw[: len(_MAGIC)]
        if len(head) == len(_MAGIC) and head != _MAGIC and head.strip(b"\0"):
            raise MerkleStoreError(
                f"{self._dir / 'meta'} is not a mykey Merkle store meta file; point MerkleStore.open "
                "at the directory the store was created in"
            )
        if len(raw) != _META_SIZE or head != _MAGIC:
            return None  # torn or zero-filled: treat as damaged
        body, check = raw[: _META.size], raw[_META.size :]
        if _sha256(body).digest() != check:
            return None  # torn write (crash) or torn read (concurrent commit): caller decides
        _, size, synced, root, synced_root = _META.unpack(body)
        return size, synced, root, synced_root

    def _write_meta(self, *, durable: bool) -> None:
        """Commit: overwrite the 128-byte meta record in place (one sector; checksummed)."""
        root = self.root(self._size)
        body = _META.pack(_MAGIC, self._size, self._synced, root, self._synced_root)
        if self._meta_fd is None:
            self._meta_fd = os.open(self._dir / "meta", os.O_RDWR | os.O_CREAT, fs.FILE_MODE)
            durable = True  # make the new file's directory entry durable too
            new_file = True
        else:
            new_file = False
        _pwrite_all(self._meta_fd, body + _sha256(body).digest(), 0)
        if durable:
            os.fsync(self._meta_fd)
        if new_file:
            fs.fsync_dir(self._dir)

    def refresh(self) -> int:
        """Re-read the committed size from ``meta`` (readers call this to see new appends)."""
        if not self._readonly:
            return self._size
        for _ in range(5):
            meta = self._read_meta()
            if meta is not None:
                self._size, self._synced, _, self._synced_root = meta
                return self._size
            time.sleep(0.001)  # a torn read of a commit in progress: read again
        raise MerkleStoreError(
            f"the meta file in {self._dir} is damaged; open the store once read-write to repair it"
        )

    # ---------------------------------------------------------------- file access

    def _fd(self, level: int, *, create: bool = False) -> int | None:
        while len(self._fds) <= level:
            self._fds.append(None)
        fd = self._fds[level]
        if fd is None:
            path = self._dir / _level_name(level)
            try:
                if self._readonly:
                    fd = os.open(path, os.O_RDONLY)
                else:
                    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), fs.FILE_MODE)
            except FileNotFoundError:
                return None
            self._fds[level] = fd
        return fd

    def _read_nodes(self, level: int, start: int, count: int) -> bytes:
        fd = self._fd(level)
        want = count * HASH_SIZE
        data = b"" if fd is None else os.pread(fd, want, start * HASH_SIZE)
        if len(data) != want:
            raise MerkleStoreError(
                f"{self._dir / _level_name(level)} is missing nodes {start}..{start + count - 1}; "
                "open the store read-write once to repair it"
            )
        return data

    def subtree(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree over leaves [index·2^level, (index+1)·2^level)."""
        if index < 0 or level < 0 or index >= self._size >> level:
            raise MerkleStoreError(
                f"no complete subtree at level {level} index {index} in a tree of size {self._size}"
            )
        fd = self._fds[level] if level < len(self._fds) else None
        if fd is not None:
            data = os.pread(fd, HASH_SIZE, index * HASH_SIZE)
            if len(data) == HASH_SIZE:
                return data
        return self._read_nodes(level, index, 1)

    # ------------------------------------------------------------------ recovery

    def _rebuild_level(self, level: int, start: int) -> int:
        """Recompute level ``level`` nodes from ``start`` up to what level-1 supports; return count."""
        end = self._size >> level
        if start >= end:
            return 0
        fd = self._fd(level, create=True)
        assert fd is not None
        for first, nodes in self._recomputed(level, start, end):
            _pwrite_all(fd, nodes, first * HASH_SIZE)
        return end - start

    def _recomputed(self, level: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """Nodes [start, end) of ``level`` hashed from the level below, a chunk at a time: (first index, nodes)."""
        step = _REBUILD_CHUNK // 2
        for first in range(start, end, step):
            children = self._read_nodes(level - 1, 2 * first, 2 * min(step, end - first))
            yield first, b"".join(
                _sha256(b"\x01" + children[i : i + 2 * HASH_SIZE]).digest()
                for i in range(0, len(children), 2 * HASH_SIZE)
            )

    def _recover(self) -> None:
        notes: list[str] = []
        meta = self._read_meta()
        meta_path = self._dir / "meta"
        committed = synced = 0
        synced_root = EMPTY_ROOT
        if meta is not None:
            committed, synced, _, synced_root = meta
        leaf_fd = self._fd(0, create=True)
        assert leaf_fd is not None
        leaf_bytes = os.fstat(leaf_fd).st_size
        if leaf_bytes % HASH_SIZE:
            notes.append(f"cut a torn partial leaf hash ({leaf_bytes % HASH_SIZE} bytes) off level-00")
            os.ftruncate(leaf_fd, leaf_bytes - leaf_bytes % HASH_SIZE)
        leaves = leaf_bytes // HASH_SIZE
        fresh = meta is None and not meta_path.exists() and leaves == 0
        if meta is None and meta_path.exists():
            notes.append("meta file damaged; size taken from the leaf level")
        elif meta is None and not fresh:
            notes.append("meta file missing; size taken from the leaf level")
        if leaves > committed and meta is not None:
            notes.append(f"kept {leaves - committed} leaf hashes written after the last commit")
        if leaves < committed:
            notes.append(f"level-00 holds {leaves} leaves but {committed} were committed; re-append from the log")
        if leaves < synced:
            notes.append(f"{synced - leaves} leaves that had been flushed are missing; re-append from the log")
            synced = 0
            synced_root = EMPTY_ROOT
        self._size = leaves
        self._synced = synced
        self._synced_root = synced_root

        rebuilt = self._repair_levels(from_size=synced, notes=notes)
        if synced and self.root(synced) != synced_root:
            notes.append(f"root at flushed size {synced} did not match; rebuilt every level from the leaves")
            rebuilt += self._repair_levels(from_size=0, notes=notes)
            if self.root(synced) != synced_root:
                raise MerkleStoreCorruptError(
                    f"the leaf hashes in {self._dir} no longer give the root recorded at the last flush "
                    f"(size {synced}); the store cannot be trusted: move the directory aside and rebuild "
                    "it from the event log with MerkleStore.open(new_dir).append_leaves(...)"
                )
        clean = fresh or (meta is not None and committed == synced == leaves and not notes)
        if not clean:
            self.recovery = Recovery(
                committed_size=committed if meta is not None else None,
                size=leaves,
                unsynced_from=min(synced, leaves),
                nodes_rebuilt=rebuilt,
                notes=tuple(notes),
            )
            log.warning("Merkle store %s repaired on open: %s", self._dir, self.recovery)
        self._synced = min(self._synced, leaves)
        self._write_meta(durable=True)

    def _level_files(self) -> list[int]:
        """Levels that have a file on disk, ascending."""
        levels = []
        for p in self._dir.glob("level-*"):
            suffix = p.name[len("level-") :]
            if suffix.isdigit():
                levels.append(int(suffix))
        return sorted(levels)

    def _repair_levels(self, *, from_size: int, notes: list[str]) -> int:
        """Fit every higher level to ``self._size`` and recompute its nodes above ``from_size``."""
        top = self._size.bit_length()  # levels 0..top-1 hold at least one node
        for level in self._level_files():
            if level >= max(top, 1):
                self._empty_level_file(level)
        rebuilt = 0
        for level in range(1, top):
            expected = self._size >> level
            fd = self._fd(level, create=True)
            assert fd is not None
            have = os.fstat(fd).st_size // HASH_SIZE
            if have < expected:
                notes.append(f"{_level_name(level)} was short ({have} of {expected} nodes); recomputed its tail")
            elif os.fstat(fd).st_size > expected * HASH_SIZE:
                notes.append(f"{_level_name(level)} ran past the tree; cut it to {expected} nodes")
            if os.fstat(fd).st_size != min(have, expected) * HASH_SIZE:
                os.ftruncate(fd, min(have, expected) * HASH_SIZE)
            rebuilt += self._rebuild_level(level, min(have, from_size >> level))
        return rebuilt

    def _empty_level_file(self, level: int) -> None:
        """Cut a level file to zero nodes (kept, not unlinked: readers' open fds stay valid)."""
        fd = self._fd(level)
        if fd is not None and os.fstat(fd).st_size:
            os.ftruncate(fd, 0)

    # ------------------------------------------------------------------- writing

    def _require_writer(self, what: str) -> None:
        if self._closed:
            raise MerkleStoreError(f"cannot {what}: the Merkle store at {self._dir} is closed")
        if self._readonly:
            raise MerkleStoreError(
                f"cannot {what}: the Merkle store at {self._dir} was opened readonly; open it with readonly=False"
            )

    def append_leaves(self, leaf_data: Iterable[bytes]) -> int:
        """Hash each leaf's data (SHA-256(0x00 ‖ data)) and append it; return the new size."""
        self._require_writer("append leaves")
        it = iter(leaf_data)
        while chunk := list(itertools.islice(it, _CHUNK)):
            try:
                hashes = [_sha256(b"\x00" + d).digest() for d in chunk]
            except TypeError:
                bad = next(d for d in chunk if not isinstance(d, (bytes, bytearray, memoryview)))
                raise MerkleStoreError(
                    f"leaf data must be bytes (the record's stored bytes), got {type(bad).__name__}; "
                    "encode it first"
                ) from None
            self._append_chunk(hashes)
        return self._size

    def append_leaf_hashes(self, hashes: Iterable[bytes]) -> int:
        """Append precomputed 32-byte leaf hashes; return the new size."""
        self._require_writer("append leaf hashes")
        it = iter(hashes)
        while chunk := list(itertools.islice(it, _CHUNK)):
            for i, h in enumerate(chunk):
                if len(h) != HASH_SIZE:
                    raise MerkleStoreError(
                        f"leaf hash #{self._size + i} is {len(h)} bytes, expected {HASH_SIZE}; "
                        "pass hashes from mykey.audit.merkle.leaf_hash, or use append_leaves for raw data"
                    )
            self._append_chunk([bytes(h) for h in chunk])
        return self._size

    def _append_chunk(self, hashes: list[bytes]) -> None:
        with self._writing("append leaves"):
            self._append_chunk_io(hashes)

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Report a failed write or fsync (a full disk, an I/O error) as MerkleStoreError, saying what to do."""
        try:
            yield
        except OSError as exc:
            raise MerkleStoreError(
                f"could not {what} in the Merkle store at {self._dir} ({exc.strerror or exc}); free disk space "
                "or check the disk. The event log is the source of truth: the next open repairs the store from it"
            ) from exc

    def _append_chunk_io(self, hashes: list[bytes]) -> None:
        old = self._size
        nodes = hashes
        level = 0
        while True:
            start = old >> level  # nodes at this level before the append
            fd = self._fd(level, create=True)
            assert fd is not None
            _pwrite_all(fd, b"".join(nodes), start * HASH_SIZE)
            if start & 1:  # pair the old unmatched left sibling with the first new node
                nodes = [os.pread(fd, HASH_SIZE, (start - 1) * HASH_SIZE), *nodes]
            if len(nodes) < 2:
                break
            nodes = parent_level(nodes)
            level += 1
        self._size = old + len(hashes)
        self._write_meta(durable=False)

    def truncate(self, size: int) -> None:
        """Drop leaves at index ≥ ``size`` (only when the event log itself was cut back); flushes.

        This rewrites history: checkpoints already signed for larger sizes can no longer be
        proven until the same leaves are appended again, and readers must ``refresh()``.
        """
        self._require_writer("truncate")
        if not 0 <= size <= self._size:
            raise MerkleStoreError(f"cannot truncate to {size}: the tree has {self._size} leaves")
        self._size = size
        with self._writing("truncate"):
            for level in self._level_files():
                fd = self._fd(level)
                assert fd is not None
                os.ftruncate(fd, (size >> level) * HASH_SIZE)
        if self._synced > size:
            self._synced = size
            self._synced_root = self.root(size)
        self.flush()

    def flush(self) -> None:
        """fsync every level file, then durably record the size as synced in ``meta``."""
        self._require_writer("flush")
        with self._writing("flush"):
            for fd in self._fds:
                if fd is not None:
                    os.fsync(fd)
            synced_root = self.root(self._size)
            self._synced, self._synced_root = self._size, synced_root
            self._write_meta(durable=True)

    def _close_fds(self) -> None:
        for i, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[i] = None
        if self._meta_fd is not None:
            os.close(self._meta_fd)
            self._meta_fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """Flush (writers) and release files and the writer lock; idempotent."""
        if self._closed:
            return
        try:
            if not self._readonly:
                self.flush()
        finally:
            self._closed = True
            self._close_fds()

    def __enter__(self) -> MerkleStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------- reading

    @property
    def size(self) -> int:
        """Number of leaves committed (for readers: as of the last ``refresh()``/open)."""
        return self._size

    @property
    def directory(self) -> Path:
        """The store's directory."""
        return self._dir

    @property
    def readonly(self) -> bool:
        """True if opened with ``readonly=True``."""
        return self._readonly

    def _check_size(self, size: int, what: str) -> None:
        if self._closed:
            raise MerkleStoreError(f"cannot {what}: the Merkle store at {self._dir} is closed")
        if not 0 <= size <= self._size:
            hint = " (readers: call refresh() to see newer appends)" if self._readonly else ""
            raise MerkleStoreError(
                f"cannot {what} for tree size {size}: the store has {self._size} leaves{hint}"
            )

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the first ``size`` leaves (default: all), from popcount(size) reads."""
        size = self._size if size is None else size
        self._check_size(size, "compute a root")
        if size == 0:
            return EMPTY_ROOT
        return range_hash(self.subtree, 0, size)

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash at ``index``."""
        if not 0 <= index < self._size:
            raise MerkleStoreError(f"leaf index {index} is outside the tree of size {self._size}")
        return self.subtree(0, index)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves (default: all)."""
        size = self._size if size is None else size
        self._check_size(size, "build an inclusion proof")
        return inclusion_proof(index, size, self.subtree)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from tree size ``old`` to ``new`` (default: all)."""
        new = self._size if new is None else new
        self._check_size(new, "build a consistency proof")
        return consistency_proof(old, new, self.subtree)

    def verify(self) -> None:
        """Recompute every interior node from the leaves and compare (O(n)); raise on mismatch."""
        self._check_size(self._size, "verify")
        for level in range(1, self._size.bit_length()):
            for first, want in self._recomputed(level, 0, self._size >> level):
                if self._read_nodes(level, first, len(want) // HASH_SIZE) != want:
                    raise MerkleStoreCorruptError(
                        f"{self._dir / _level_name(level)} disagrees with the level below near node {first}; "
                        "open the store read-write to repair, or rebuild it from the event log"
                    )

    def __repr__(self) -> str:
        mode = "readonly" if self._readonly else "writer"
        return f"<MerkleStore {self._dir} size={self._size} {mode}>"
