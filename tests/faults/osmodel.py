"""A model of the disk after a power cut, fed by a recorder of the OS calls mykey's storage makes.

Why an in-process shim rather than an LD_PRELOAD library: every file mykey writes
outside LMDB (log segments and their hints, the Merkle store, checkpoints, keys, lock
files, the index's symlink and generation directories) is written through a handful of
``os`` functions (mykey.fs, mykey.log, mykey.audit, mykey.index.store), so wrapping those
functions sees every write, sync, rename and unlink with its Python-level path, costs
nothing to build, and lets the harness put markers (acknowledgements, LMDB commits) into
the same trace in order. LMDB writes its own files from C, which no Python shim sees; its
durability is LMDB's and is modelled at its documented guarantee instead (``External``).

The recorder (``Recorder``) runs the real calls on a real directory and appends what each
call did to a trace. ``DiskModel`` replays a prefix of the trace (the power is cut after
it) and knows, per file, what is on the platter for sure and what was only in the page
cache. ``DiskModel.materialise`` writes one disk state the model allows into a directory:

- data: each 512-byte sector touched since the file's last fsync/fdatasync holds the
  synced version or any later version of that sector (so a write is dropped, kept or torn
  at sector granularity); the file's size is its synced size or the size after any of the
  later operations on it (unwritten parts read as zeros);
- names: a create, mkdir, symlink, rename, link, unlink or rmdir is durable once its directory
  (both directories, for a rename) was fsynced after it; of the ones that are not, a
  prefix in call order survives (journaling file systems commit metadata in order);
- a failed fsync (an injected EIO) makes nothing durable;
- file modes are treated as durable at once (nothing here depends on them);
- external files (LMDB's data.mdb): any version marked by the harness, or lost.
"""

from __future__ import annotations

import builtins
import errno as errno_mod
import hashlib
import io
import itertools
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SECTOR = 512
FOLD_LIMIT = 256  # a file with at most this many (size, sector versions) choices is one dimension of its contents

_REAL = {
    name: getattr(os, name)
    for name in (
        "open", "close", "write", "pwrite", "fsync", "fdatasync", "ftruncate", "truncate", "rename", "replace",
        "unlink", "remove", "mkdir", "rmdir", "symlink", "fchmod", "chmod", "link",
    )
}
_REAL_IO_OPEN = io.open


class UnmodelledWrite(AssertionError):
    """The code under test changed a watched file in a way the model does not follow."""


@dataclass
class Fault:
    """Make the nth matching call fail with errno (kind: "write" or "sync"; match: relative path test)."""

    kind: str
    nth: int = 1
    err: int = errno_mod.EIO
    match: Callable[[str], bool] = lambda rel: True
    seen: int = 0
    fired: bool = False
    repeat: bool = False  # keep failing every later matching call too
    partial: bool = False  # a write: first a short write (half the bytes), the error on the next call


# ----------------------------------------------------------------------------- the recorder


class Recorder:
    """Runs the real OS calls under ``root`` and records what they did (see the module docstring).

    Trace entries are tuples; paths are relative to root ("" is root itself):
    ("create", rel, ino, mode) ("mkdir", rel) ("symlink", rel, target) ("rename", src, dst) ("link", src, dst)
    ("unlink", rel) ("rmdir", rel) ("write", ino, offset, data) ("trunc", ino, length)
    ("sync", ino) ("syncfail", ino) ("dirsync", rel) ("chmod", ino, mode) ("mark", kind, payload)
    """

    def __init__(self, root: str | os.PathLike[str], *, external: Callable[[str], bool] = lambda rel: False) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        if os.listdir(self.root):
            raise ValueError(f"the recorder starts from an empty directory, {self.root} is not")
        self.external = external  # paths (inside LMDB environments) written by C code: not modelled
        self.trace: list[tuple] = []
        self.faults: list[Fault] = []
        self._fds: dict[int, tuple[str, int | None]] = {}  # fd -> (rel, inode or None for a directory)
        self._names: dict[str, int | None] = {"": None}  # rel -> inode (None: a directory)
        self._next_ino = 0
        self.calls = 0

    # --- paths

    def _rel(self, path, dir_fd: int | None = None) -> str | None:
        if isinstance(path, int):
            return None
        p = os.fsdecode(os.fspath(path))
        if dir_fd is not None:
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        p = os.path.abspath(p)
        head, tail = os.path.split(p)
        p = os.path.join(os.path.realpath(head), tail) if tail else os.path.realpath(head)
        if p == self.root:
            return ""
        if p.startswith(self.root + os.sep):
            rel = p[len(self.root) + 1 :]
            return None if self.external(rel) else rel
        return None

    def mark(self, kind: str, payload: object = None) -> None:
        """Put a harness marker into the trace (an acknowledgement, an LMDB version, ...)."""
        self.trace.append(("mark", kind, payload))

    def _fault(self, kind: str, rel: str) -> Fault | None:
        """Raise the error of a fault due now; returns a partial-write fault due now instead of raising."""
        for f in self.faults:
            if f.kind == kind and f.match(rel) and (not f.fired or f.repeat):
                f.seen += 1
                if f.seen >= f.nth:
                    if f.partial and f.seen == f.nth:
                        return f  # the short write now; the error on the next matching call
                    f.fired = True
                    raise OSError(f.err, os.strerror(f.err), rel)
        return None

    # --- the wrappers

    def _open(self, path, flags, mode=0o777, *, dir_fd=None):
        rel = self._rel(path, dir_fd)
        if rel is None:
            return _REAL["open"](path, flags, mode, dir_fd=dir_fd)
        existed = rel in self._names
        if not existed and os.path.lexists(os.path.join(self.root, rel)):
            raise UnmodelledWrite(f"{rel} exists but was not made through the recorded calls")
        fd = _REAL["open"](path, flags, mode, dir_fd=dir_fd)
        if os.path.isdir(os.path.join(self.root, rel)):
            self._fds[fd] = (rel, None)
            return fd
        if not existed:
            ino = self._next_ino
            self._next_ino += 1
            self._names[rel] = ino
            umask = os.umask(0)
            os.umask(umask)
            self.trace.append(("create", rel, ino, mode & ~umask & 0o7777))
        ino = self._names[rel]
        if ino is None:
            raise UnmodelledWrite(f"{rel} is a directory in the model but a file on disk")
        if existed and flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
            self.trace.append(("trunc", ino, 0))
        self._fds[fd] = (rel, ino)
        return fd

    def _close(self, fd):
        self._fds.pop(fd, None)
        return _REAL["close"](fd)

    def _file(self, fd: int, what: str) -> int | None:
        entry = self._fds.get(fd)
        if entry is None:
            return None
        if entry[1] is None:
            raise UnmodelledWrite(f"{what} on the directory {entry[0]!r}")
        return entry[1]

    def _write(self, fd, data):
        ino = self._file(fd, "write")
        if ino is None:
            return _REAL["write"](fd, data)
        if self._fault("write", self._fds[fd][0]) is not None and len(data) > 1:
            data = memoryview(data)[: len(data) // 2]
        n = _REAL["write"](fd, data)
        end = os.lseek(fd, 0, os.SEEK_CUR)
        self.trace.append(("write", ino, end - n, bytes(memoryview(data)[:n])))
        return n

    def _pwrite(self, fd, data, offset):
        ino = self._file(fd, "pwrite")
        if ino is None:
            return _REAL["pwrite"](fd, data, offset)
        if self._fault("write", self._fds[fd][0]) is not None and len(data) > 1:
            data = memoryview(data)[: len(data) // 2]
        n = _REAL["pwrite"](fd, data, offset)
        self.trace.append(("write", ino, offset, bytes(memoryview(data)[:n])))
        return n

    def _ftruncate(self, fd, length):
        ino = self._file(fd, "ftruncate")
        if ino is not None:
            self._fault("write", self._fds[fd][0])
        r = _REAL["ftruncate"](fd, length)
        if ino is not None:
            self.trace.append(("trunc", ino, length))
        return r

    def _sync(self, real: str):
        def sync(fd):
            entry = self._fds.get(fd)
            if entry is None:
                return _REAL[real](fd)
            rel, ino = entry
            try:
                self._fault("sync", rel)
            except OSError:
                _REAL[real](fd)  # the kernel may or may not have written it: the model keeps it pending
                if ino is not None:
                    self.trace.append(("syncfail", ino))
                raise
            r = _REAL[real](fd)
            self.trace.append(("dirsync", rel) if ino is None else ("sync", ino))
            return r

        return sync

    def _fchmod(self, fd, mode):
        ino = self._fds.get(fd, (None, None))[1]
        r = _REAL["fchmod"](fd, mode)
        if ino is not None:
            self.trace.append(("chmod", ino, mode & 0o7777))
        return r

    def _chmod(self, path, mode, *, dir_fd=None, follow_symlinks=True):
        rel = self._rel(path, dir_fd)
        r = _REAL["chmod"](path, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        ino = self._names.get(rel) if rel is not None else None
        if ino is not None:
            self.trace.append(("chmod", ino, mode & 0o7777))
        return r

    def _path_op(self, name: str, kind: str):
        def op(path, *args, dir_fd=None, **kw):
            rel = self._rel(path, dir_fd)
            if dir_fd is not None:
                kw["dir_fd"] = dir_fd
            r = _REAL[name](path, *args, **kw)
            if rel is not None:
                if kind == "mkdir":
                    self._names[rel] = None
                    self.trace.append(("mkdir", rel))
                else:
                    self._forget(rel)
                    self.trace.append((kind, rel))
            return r

        return op

    def _symlink(self, target, path, target_is_directory=False, *, dir_fd=None):
        rel = self._rel(path, dir_fd)
        r = _REAL["symlink"](target, path, target_is_directory, dir_fd=dir_fd)
        if rel is not None:
            self._names[rel] = None
            self.trace.append(("symlink", rel, os.fsdecode(target)))
        return r

    def _rename(self, name: str):
        def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            a, b = self._rel(src, src_dir_fd), self._rel(dst, dst_dir_fd)
            r = _REAL[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if a is None and b is None:
                return r
            if a is None or b is None:
                raise UnmodelledWrite(f"a rename into or out of the watched tree: {src} -> {dst}")
            self._forget(b)
            for rel in [r_ for r_ in self._names if r_ == a or r_.startswith(a + "/")]:
                self._names[b + rel[len(a) :]] = self._names.pop(rel)
            self.trace.append(("rename", a, b))
            return r

        return rename

    def _link(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
        a, b = self._rel(src, src_dir_fd), self._rel(dst, dst_dir_fd)
        r = _REAL["link"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks)
        if a is None and b is None:
            return r
        if a is None or b is None or self._names.get(a) is None:
            raise UnmodelledWrite(f"a hard link the model does not follow: {src} -> {dst}")
        self._names[b] = self._names[a]
        self.trace.append(("link", a, b))
        return r

    def _forget(self, rel: str) -> None:
        for r in [r_ for r_ in self._names if r_ == rel or r_.startswith(rel + "/")]:
            del self._names[r]

    def _guard(self, name: str):
        def refuse(path, *args, **kw):
            if self._rel(path, kw.get("dir_fd")) is not None:
                raise UnmodelledWrite(f"os.{name} on a watched path ({path}) is not modelled")
            return _REAL[name](path, *args, **kw)

        return refuse

    def _io_open(self, file, mode="r", *args, **kw):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+"):
            if self._rel(file) is not None:
                raise UnmodelledWrite(f"open({file!r}, {mode!r}) writes a watched file around the model")
        return _REAL_IO_OPEN(file, mode, *args, **kw)

    @contextmanager
    def installed(self) -> Iterator[Recorder]:
        """Route the os calls through the recorder for the duration of the block."""
        patches = {
            "open": self._open,
            "close": self._close,
            "write": self._write,
            "pwrite": self._pwrite,
            "ftruncate": self._ftruncate,
            "fsync": self._sync("fsync"),
            "fdatasync": self._sync("fdatasync"),
            "rename": self._rename("rename"),
            "replace": self._rename("replace"),
            "unlink": self._path_op("unlink", "unlink"),
            "remove": self._path_op("remove", "unlink"),
            "rmdir": self._path_op("rmdir", "rmdir"),
            "mkdir": self._path_op("mkdir", "mkdir"),
            "symlink": self._symlink,
            "fchmod": self._fchmod,
            "truncate": self._guard("truncate"),
            "chmod": self._chmod,
            "link": self._link,
        }
        saved = {name: getattr(os, name) for name in patches}
        for name, fn in patches.items():
            setattr(os, name, fn)
        io.open = builtins.open = self._io_open
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(os, name, fn)
            io.open = builtins.open = _REAL_IO_OPEN


# ----------------------------------------------------------------------------- the model


@dataclass
class _Inode:
    durable: bytes = b""
    cur: bytearray = field(default_factory=bytearray)
    pending: list[tuple] = field(default_factory=list)  # ("w", off, data) | ("t", length) since the last sync
    mode: int = 0o644


@dataclass
class _NsOp:
    op: tuple
    needs: set[str]  # directories still to be fsynced before this op is durable

    @property
    def durable(self) -> bool:
        return not self.needs


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


@dataclass(frozen=True)
class Dimension:
    """One independent choice of the post-cut state, with ``options`` possibilities."""

    what: str
    options: int


class DiskModel:
    """Replay a trace; at any point, the disk states a power cut then allows (see module docstring)."""

    def __init__(self, *, dont_care: Callable[[str], bool] = lambda rel: False) -> None:
        """dont_care: files whose content nothing depends on (lock files holding a pid): kept as last written."""
        self.dont_care = dont_care
        self._fixed: set[int] = set()
        self.inodes: dict[int, _Inode] = {}
        self.ns_ops: list[_NsOp] = []
        self.external: dict[str, list[object]] = {}  # rel -> versions (content ids), oldest first
        self.marks: list[tuple[str, object]] = []
        self.ops = 0

    def apply(self, entry: tuple) -> None:
        """Feed one trace entry."""
        self.ops += 1
        kind = entry[0]
        if kind == "create":
            _, rel, ino, mode = entry
            self.inodes[ino] = _Inode(mode=mode)
            if self.dont_care(rel):
                self._fixed.add(ino)
            self.ns_ops.append(_NsOp(entry, {_parent(rel)}))
        elif kind in ("mkdir", "symlink", "unlink", "rmdir"):
            self.ns_ops.append(_NsOp(entry, {_parent(entry[1])}))
        elif kind == "rename":
            self.ns_ops.append(_NsOp(entry, {_parent(entry[1]), _parent(entry[2])}))
        elif kind == "link":
            self.ns_ops.append(_NsOp(entry, {_parent(entry[2])}))
        elif kind == "dirsync":
            for op in self.ns_ops:
                op.needs.discard(entry[1])
        elif kind == "write":
            _, ino, off, data = entry
            node = self.inodes[ino]
            if len(node.cur) < off:
                node.cur.extend(bytes(off - len(node.cur)))
            node.cur[off : off + len(data)] = data
            node.pending.append(("w", off, data))
        elif kind == "trunc":
            _, ino, length = entry
            node = self.inodes[ino]
            del node.cur[length:]
            node.cur.extend(bytes(length - len(node.cur)))
            node.pending.append(("t", length))
        elif kind == "sync":
            node = self.inodes[entry[1]]
            node.durable = bytes(node.cur)
            node.pending.clear()
        elif kind == "chmod":
            self.inodes[entry[1]].mode = entry[2]
        elif kind == "syncfail":
            pass
        elif kind == "mark":
            self.marks.append((entry[1], entry[2]))
            if entry[1] == "external":
                rel, version = entry[2]
                self.external.setdefault(rel, []).append(version)
        else:
            raise ValueError(f"unknown trace entry {kind}")

    # --- the choices at this point

    def _file_choices(self, node: _Inode) -> tuple[list[int], dict[int, list[bytes]]]:
        """(possible sizes, {sector: possible contents}) of an inode with pending operations."""
        work = bytearray(node.durable)
        sizes = [len(work)]
        versions: dict[int, list[bytes]] = {}

        def sector(s: int) -> bytes:
            chunk = bytes(work[s * SECTOR : (s + 1) * SECTOR])
            return chunk + bytes(SECTOR - len(chunk))

        for op in node.pending:
            if op[0] == "w":
                _, off, data = op
                touched = range(off // SECTOR, (off + max(len(data), 1) - 1) // SECTOR + 1)
            else:
                old, new = len(work), op[1]
                touched = range(min(old, new) // SECTOR, max(old, new) // SECTOR + 1)
            for s in touched:
                versions.setdefault(s, [sector(s)])
            if op[0] == "w":
                if len(work) < off:
                    work.extend(bytes(off - len(work)))
                work[off : off + len(data)] = data
            else:
                del work[op[1] :]
                work.extend(bytes(op[1] - len(work)))
            for s in touched:
                v = sector(s)
                if v not in versions[s]:
                    versions[s].append(v)
            if len(work) not in sizes:
                sizes.append(len(work))
        return sizes, {s: v for s, v in versions.items() if len(v) > 1}

    def choices(self) -> tuple[list[Dimension], list[tuple]]:
        """The independent dimensions of the post-cut state, and how to read a choice of each.

        A file with few choices is one dimension over its distinct possible contents; a
        larger one gets a dimension for its size and one per sector touched since its last sync.
        """
        dims: list[Dimension] = []
        plan: list[tuple] = []
        loose = [op for op in self.ns_ops if not op.durable]
        if loose:
            dims.append(Dimension(f"{len(loose)} namespace ops not dir-synced: keep a prefix", len(loose) + 1))
            plan.append(("ns", len(loose)))
        for ino, node in sorted(self.inodes.items()):
            if not node.pending or ino in self._fixed:
                continue
            sizes, sectors = self._file_choices(node)
            local = len(sizes)
            for vs in sectors.values():
                local *= len(vs)
            if local <= FOLD_LIMIT:  # few enough to list the distinct contents themselves
                contents: list[bytes] = []
                for size in sizes:
                    for pick in itertools.product(*sectors.values()):
                        data = self._content(ino, size, dict(zip(sectors, pick, strict=True)))
                        if data not in contents:
                            contents.append(data)
                if len(contents) > 1:
                    dims.append(Dimension(f"inode {ino} content", len(contents)))
                    plan.append(("content", ino, contents))
                continue
            if len(sizes) > 1:
                dims.append(Dimension(f"inode {ino} size", len(sizes)))
                plan.append(("size", ino, sizes))
            for s, vs in sorted(sectors.items()):
                dims.append(Dimension(f"inode {ino} sector {s}", len(vs)))
                plan.append(("sector", ino, s, vs))
        for rel, versions in sorted(self.external.items()):
            dims.append(Dimension(f"external {rel}", len(versions) + 1))
            plan.append(("external", rel, versions))
        return dims, plan

    def materialise(self, plan: list[tuple], choice: tuple[int, ...], into: Path, write_external) -> str:
        """Write the disk state of ``choice`` (one index per dimension) under ``into``; returns its digest."""
        keep_loose = 0
        sizes: dict[int, int] = {}
        contents: dict[int, bytes] = {}
        sectors: dict[int, dict[int, bytes]] = {}
        externals: dict[str, object | None] = {}
        for step, c in zip(plan, choice, strict=True):
            if step[0] == "ns":
                keep_loose = c
            elif step[0] == "content":
                contents[step[1]] = step[2][c]
            elif step[0] == "size":
                sizes[step[1]] = step[2][c]
            elif step[0] == "sector":
                sectors.setdefault(step[1], {})[step[2]] = step[3][c]
            else:
                externals[step[1]] = None if c == 0 else step[2][c - 1]
        names = self._names_after(keep_loose)
        digest = hashlib.sha256()
        for rel in sorted(names):
            kind, val = names[rel]
            path = into / rel if rel else into
            digest.update(f"{rel}\0{kind}\0".encode())
            if kind == "dir":
                path.mkdir(exist_ok=True)
            elif kind == "symlink":
                os.symlink(val, path)
                digest.update(str(val).encode())
            else:
                data = contents[val] if val in contents else self._content(val, sizes.get(val), sectors.get(val, {}))
                with open(path, "wb") as f:
                    f.write(data)
                os.chmod(path, self.inodes[val].mode)
                digest.update(hashlib.sha256(data).digest())
        for rel, version in sorted(externals.items()):
            parent = _parent(rel)
            digest.update(f"ext\0{rel}\0{version}".encode())
            if version is not None and names.get(parent, ("",))[0] == "dir":
                write_external(into / rel, version)
        return digest.hexdigest()

    def _content(self, ino: int, size: int | None, sectors: dict[int, bytes]) -> bytes:
        node = self.inodes[ino]
        if ino in self._fixed:
            return bytes(node.cur)
        if not node.pending:
            return node.durable
        data = bytearray(node.durable)
        size = len(data) if size is None else size
        del data[size:]
        data.extend(bytes(size - len(data)))
        for s, content in sectors.items():
            start = s * SECTOR
            if start < size:
                end = min(start + SECTOR, size)
                data[start:end] = content[: end - start]
        return bytes(data)

    def _names_after(self, keep_loose: int) -> dict[str, tuple[str, object]]:
        """The namespace from the durable ops and the first keep_loose ones that are not."""
        names: dict[str, tuple[str, object]] = {"": ("dir", None)}
        loose = 0
        for op in self.ns_ops:
            if not op.durable:
                loose += 1
                if loose > keep_loose:
                    continue
            e = op.op
            kind = e[0]
            if kind in ("create", "mkdir", "symlink"):
                if names.get(_parent(e[1]), ("",))[0] != "dir" or e[1] in names:
                    continue
                names[e[1]] = ("file", e[2]) if kind == "create" else ("dir", None) if kind == "mkdir" else (
                    "symlink", e[2])
            elif kind in ("unlink", "rmdir"):
                if e[1] in names and (kind == "unlink" or not any(r.startswith(e[1] + "/") for r in names)):
                    del names[e[1]]
            elif kind == "link":
                if names.get(e[1], ("",))[0] == "file" and e[2] not in names and names.get(
                        _parent(e[2]), ("",))[0] == "dir":
                    names[e[2]] = names[e[1]]
            elif kind == "rename":
                src, dst = e[1], e[2]
                if src not in names or names.get(_parent(dst), ("",))[0] != "dir":
                    continue
                for r in [r for r in names if r == dst or r.startswith(dst + "/")]:
                    del names[r]
                for r in [r for r in names if r == src or r.startswith(src + "/")]:
                    names[dst + r[len(src) :]] = names.pop(r)
        return names


def combinations(dims: list[Dimension], *, limit: int, samples: int, rng: random.Random) -> Iterator[tuple[int, ...]]:
    """Every choice when there are at most ``limit``; else the two extremes and ``samples`` random ones."""
    total = 1
    for d in dims:
        total *= d.options
    if total <= limit:
        yield from itertools.product(*(range(d.options) for d in dims))
        return
    yield tuple(0 for _ in dims)  # only what was synced
    yield tuple(d.options - 1 for d in dims)  # everything that was written
    for _ in range(samples):
        yield tuple(rng.randrange(d.options) for d in dims)


def space_size(dims: list[Dimension]) -> int:
    total = 1
    for d in dims:
        total *= d.options
    return total


@dataclass
class CutState:
    """One disk state after a power cut, materialised in ``path`` (removed when the consumer moves on)."""

    pos: int  # the cut is after trace entry pos
    entry: tuple
    path: Path
    marks: list[tuple[str, object]]  # the harness markers before the cut
    choice: tuple[int, ...]
    dims: list[Dimension]
    exhaustive: bool  # every state allowed at this cut is (or was) produced

    def where(self) -> str:
        return (f"power cut after trace entry {self.pos} {self.entry[:2]}, choice {self.choice} of "
                f"{[d.what for d in self.dims]}; the state is kept in {self.path}")


def cut_states(trace: list[tuple], workdir: Path, *, cuts, rng: random.Random, limit: int = 64, samples: int = 6,
               write_external=None, dont_care: Callable[[str], bool] = lambda rel: False) -> Iterator[CutState]:
    """Each distinct disk state at each cut (after trace positions in cuts), materialised under workdir.

    A state already produced with the same markers is skipped. A failing consumer leaves the
    state on disk for inspection.
    """
    wanted = set(cuts)
    model = DiskModel(dont_care=dont_care)
    seen: set[tuple[str, int]] = set()
    for pos, entry in enumerate(trace):
        model.apply(entry)
        if pos not in wanted:
            continue
        dims, plan = model.choices()
        exhaustive = space_size(dims) <= limit
        for choice in combinations(dims, limit=limit, samples=samples, rng=rng):
            target = workdir / f"cut-{pos}"
            if target.exists():
                _rmtree(target)
            target.mkdir(parents=True)
            digest = model.materialise(plan, choice, target, write_external)
            if (digest, len(model.marks)) in seen:
                _rmtree(target)
                continue
            seen.add((digest, len(model.marks)))
            yield CutState(pos, entry, target, list(model.marks), choice, dims, exhaustive)
            _rmtree(target)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
