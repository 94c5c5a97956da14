"""Index snapshots: a new node starts from a compacted copy of another node's index plus the log's tail.

``write_snapshot`` copies the live index with LMDB's compacting copy (one read
transaction: a consistent state at a batch boundary, even while a projector or engine
writes) into a single checksummed file. ``restore_snapshot`` checks it, checks it
belongs to the log the new node follows, and installs it as the new data directory's
first index generation; the projector (``mykey project --follow``, or ``mykey serve``)
then applies the log from the event after it, so the node replays only the tail.

File layout::

    magic    8 bytes   "MYKEYSNP"
    version  u32       1 (big-endian, as the next field)
    hlen     u32       bytes of the header
    header   JSON      {"last_seq", "schema", "record_sha256", "log", "stream_seq", "created",
                        "data_bytes", "data_sha256"}
    data     the compacted LMDB data file (data_bytes)
    sha256   32 bytes  over everything before it

``last_seq`` is the last event the index applied (read from the copy itself, so it
matches the data exactly); ``record_sha256`` the SHA-256 of that event's stored record,
by which restore recognises the log the snapshot was made from; ``log`` names it
(``{"kind": "nats", "stream": ...}`` or ``{"kind": "file"}``) and ``stream_seq`` is, on a
NATS stream, the stream sequence of the last message of the batch ending at last_seq:
where the tail starts. Keys (DATA/keys) are never part of a snapshot: they are secrets,
copied to a node by the operator.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from ..datadir import DataDir
from ..errors import MykeyError, SnapshotError
from ..fs import FILE_MODE, LMDB_FILES, fsync_dir, private_dir
from ..log.store import LogStore
from . import keys as k
from .store import (
    _next_generation,
    _point_index_at,
    _take_index_lock,
    current_generation,
    open_live_readonly,
    open_readonly,
    read_meta_last_seq,
)

__all__ = ["SnapshotInfo", "read_snapshot", "restore_snapshot", "write_snapshot"]

MAGIC = b"MYKEYSNP"
VERSION = 1
_HEAD = struct.Struct(">8sII")
_CHUNK = 1 << 20
_MAX_HEADER = 64 * 1024


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot holds (its header)."""

    last_seq: int
    schema: int
    record_sha256: str | None
    log: dict[str, Any]
    stream_seq: int | None
    created: str
    data_bytes: int
    data_sha256: str


def _index_state(path: Path, binding: ModuleType | None) -> tuple[int, int]:
    """(last_seq, schema) of the index environment at path."""
    env, dbs = open_readonly(path, binding)
    try:
        with env.begin() as txn:
            raw = txn.get(dbs.meta, b"schema")
            return read_meta_last_seq(txn, dbs), (k.parse_u64(raw) if raw is not None else 0)
    finally:
        env.close()


def _record_sha256(log: LogStore, seq: int) -> str | None:
    if seq < 1:
        return None
    for _seq, record in log.read_raw(seq, seq):
        return hashlib.sha256(record).hexdigest()
    raise SnapshotError(f"event {seq} is not readable in the log")


def _log_identity(log: LogStore, last_seq: int) -> tuple[dict[str, Any], int | None]:
    """(what log this is, the stream sequence of the message ending event last_seq's batch)."""
    location = getattr(log, "location", None)
    stream = getattr(location, "stream", None)
    if stream is None or not hasattr(log, "position"):
        return {"kind": "file"}, None
    stream_seq = log.position(last_seq + 1)[0] - 1 if last_seq > 0 else 0
    return {"kind": "nats", "stream": stream}, stream_seq


def write_snapshot(
    data: DataDir, log: LogStore, out: str | os.PathLike[str], *, binding: ModuleType | None = None
) -> SnapshotInfo:
    """Write a snapshot of the data directory's live index to out (a new file; never replaces one)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise SnapshotError(f"{out} already exists; name a new file")
    env, _dbs, _gen = open_live_readonly(data, binding)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".mykey-snapshot-") as tmp:
        copy = Path(tmp) / "index"
        copy.mkdir()
        try:
            env.copy(str(copy), compact=True)  # one read transaction: a consistent state
        finally:
            env.close()
        last_seq, schema = _index_state(copy, binding)
        log_last = log.refresh()
        if last_seq > log_last:
            raise SnapshotError(
                f"the index has applied events up to {last_seq} but the log ends at {log_last}: this index does "
                "not belong to this log (check --log)"
            )
        identity, stream_seq = _log_identity(log, last_seq)
        db = copy / "data.mdb"
        info = SnapshotInfo(
            last_seq=last_seq,
            schema=schema,
            record_sha256=_record_sha256(log, last_seq),
            log=identity,
            stream_seq=stream_seq,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            data_bytes=db.stat().st_size,
            data_sha256=_file_sha256(db),
        )
        partial = Path(tmp) / "snapshot"
        with open(partial, "xb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            h = _HashingWriter(f)
            header = json.dumps(asdict(info), sort_keys=True).encode()
            h.write(_HEAD.pack(MAGIC, VERSION, len(header)) + header)
            with open(db, "rb") as src:
                while chunk := src.read(_CHUNK):
                    h.write(chunk)
            f.write(h.digest())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(partial, out)  # appears whole, and never over an existing file
        except FileExistsError:
            raise SnapshotError(f"{out} already exists; name a new file") from None
        fsync_dir(out.parent)
    return info


class _HashingWriter:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def write(self, b: bytes) -> None:
        self.f.write(b)
        self.h.update(b)

    def digest(self) -> bytes:
        return self.h.digest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_snapshot(path: str | os.PathLike[str], *, into: Path | None = None) -> SnapshotInfo:
    """Check a snapshot file whole (checksums, header); with into, also write its index data there."""
    path = Path(path)
    bad = f"{path} is not an intact mykey index snapshot"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEAD.size)
            if len(head) < _HEAD.size:
                raise SnapshotError(f"{bad}: it is too short")
            magic, version, hlen = _HEAD.unpack(head)
            if magic != MAGIC:
                raise SnapshotError(f"{bad}: it does not start with {MAGIC.decode()}")
            if version != VERSION:
                raise SnapshotError(f"{path} is a snapshot of format {version}; this mykey reads format {VERSION}")
            if hlen > _MAX_HEADER:
                raise SnapshotError(f"{bad}: its header is too long")
            raw = f.read(hlen)
            total = hashlib.sha256(head + raw)
            try:
                info = SnapshotInfo(**json.loads(raw))
            except (ValueError, TypeError) as exc:
                raise SnapshotError(f"{bad}: its header is damaged ({exc})") from None
            if size != _HEAD.size + hlen + info.data_bytes + 32:
                raise SnapshotError(f"{bad}: it is {size} bytes, its header says {_HEAD.size + hlen + info.data_bytes + 32}")
            data_hash = hashlib.sha256()
            out = open(into / "data.mdb", "xb") if into is not None else None
            try:
                if out is not None:
                    os.fchmod(out.fileno(), FILE_MODE)
                left = info.data_bytes
                while left:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        raise SnapshotError(f"{bad}: it ends early")
                    left -= len(chunk)
                    total.update(chunk)
                    data_hash.update(chunk)
                    if out is not None:
                        out.write(chunk)
                if out is not None:
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                if out is not None:
                    out.close()
            if f.read(32) != total.digest() or data_hash.hexdigest() != info.data_sha256:
                raise SnapshotError(f"{bad}: its checksum does not match (damaged or altered); make a new one")
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror or exc}") from None
    return info


def restore_snapshot(
    path: str | os.PathLike[str], data: DataDir, log: LogStore | None, *, binding: ModuleType | None = None
) -> SnapshotInfo:
    """Install a snapshot as the first index of a data directory that has none; returns its header.

    With log, the snapshot must be of that log: it holds event last_seq with the same
    stored record (and, on a NATS stream, at the same place). Nothing is installed when
    any check fails.
    """
    if current_generation(data) is not None:
        raise SnapshotError(
            f"{data.root} already has an index; restore into a new data directory (a snapshot is for a new node)"
        )
    private_dir(data.root)
    lock = _take_index_lock(data)
    try:
        gen = _next_generation(data)
        building = gen.with_suffix(".restoring")
        shutil.rmtree(building, ignore_errors=True)
        private_dir(building, files=LMDB_FILES)
        (building / "data.mdb").unlink()
        try:
            info = read_snapshot(path, into=building)
            last_seq, schema = _index_state(building, binding)
            if (last_seq, schema) != (info.last_seq, info.schema):
                raise SnapshotError(f"{path}: the index inside says sequence {last_seq}, its header {info.last_seq}")
            if schema != k.INDEX_SCHEMA:
                raise SnapshotError(
                    f"{path} holds an index of schema {schema}; this mykey uses {k.INDEX_SCHEMA}: make a new snapshot "
                    "with this version (or rebuild the node from the log)"
                )
            if log is not None:
                _check_log(path, info, log)
            fsync_dir(building)
            os.rename(building, gen)
            _point_index_at(data, gen)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    finally:
        lock.release()
    return info


def _check_log(path: str | os.PathLike[str], info: SnapshotInfo, log: LogStore) -> None:
    log_last = log.refresh()
    if info.last_seq > log_last:
        raise SnapshotError(
            f"{path} holds the index at event {info.last_seq} but the log ends at {log_last}: it was made from "
            "another log (check --log)"
        )
    try:
        record = _record_sha256(log, info.last_seq)
    except MykeyError as exc:
        raise SnapshotError(f"cannot read event {info.last_seq} of the log to check the snapshot: {exc}") from None
    if record != info.record_sha256:
        raise SnapshotError(
            f"{path} was made from another log: its event {info.last_seq} differs from this log's (check --log)"
        )
    identity, stream_seq = _log_identity(log, info.last_seq)
    if identity.get("kind") == "nats" and info.stream_seq is not None and stream_seq != info.stream_seq:
        raise SnapshotError(
            f"{path} places event {info.last_seq} at stream message {info.stream_seq}, this stream at {stream_seq}: "
            "it was made from another stream"
        )
