"""Filesystem safety: the one home for atomic writes, exclusive writes, directory fsync and owner locks.

Every durable file mykey writes outside the log's own record stream goes through
here, so the rules are written once:

- ``write_atomic``: readers see the old content or the new, never a mix; the new
  content is on disk (file and directory entry) when it returns.
- ``write_exclusive``: create a new file and never replace one (keys, proofs);
  symlinks are not followed; after a power cut the file is whole or absent.
- ``fsync_dir`` / ``fsync_path``: make a rename, create or unlink durable;
  ``make_dirs``: create directories that stay after a power cut.
- ``OwnerLock``: an exclusive ``flock`` that records the holder's pid, so a second
  writer is told which process to stop. Only "somebody holds it" errors become
  ``LockHeldError``; any other failure (permissions, a full disk) is raised as it is.

Pure I/O with no knowledge of what the files mean.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from .errors import LockHeldError

StrPath = str | os.PathLike[str]

_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def fsync_path(path: StrPath) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: StrPath) -> None:
    """fsync a directory, making the creates, renames and unlinks in it durable."""
    fsync_path(path)


def make_dirs(path: StrPath, mode: int = 0o777) -> None:
    """``mkdir -p`` whose result survives a power cut: each directory it creates is fsynced into its parent.

    A new directory's entry lives in its parent; until the parent is fsynced a power cut
    may take the directory away with every file in it, fsynced or not.
    """
    path = Path(path)
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made by another process meanwhile: it syncs its own
        fsync_dir(d.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _create_synced(path: Path, data: bytes, mode: int, sync: bool) -> None:
    """Create path (O_EXCL, never through a symlink) with exactly mode and data; fsync it with sync.

    On any failure the partly written file is removed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_exclusive(path: StrPath, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Create path with data; FileExistsError if anything (a file, a symlink) is there already.

    The file gets exactly ``mode`` whatever the umask. It appears whole or not at all, even
    across a power cut: the data is written and fsynced under a temporary name first, then
    hard-linked to path (which fails if anything is there); the file system cannot show a
    new name whose data never reached the disk. With sync (the default) file and directory
    are fsynced. Where hard links are not supported, path is created and written in place.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    _create_synced(tmp, data, mode, sync)
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        _create_synced(path, data, mode, sync)  # no hard links here: the best we can do
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
        fsync_dir(path.parent)


def write_atomic(path: StrPath, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Replace path's content atomically: a temporary file beside it, fsynced, renamed over it."""
    path = Path(path)
    tmp = _temp_beside(path)
    _create_synced(tmp, data, mode, sync)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def write_unique(directory: StrPath, stem: str, suffix: str, data: bytes, *, mode: int = 0o600) -> Path:
    """Write data to directory/STEM.SUFFIX, or STEM.2.SUFFIX, ... : the first name not taken."""
    directory = Path(directory)
    n = 1
    while True:
        path = directory / (f"{stem}{suffix}" if n == 1 else f"{stem}.{n}{suffix}")
        try:
            write_exclusive(path, data, mode=mode)
        except FileExistsError:
            n += 1
            continue
        return path


class OwnerLock:
    """An exclusive, non-blocking ``flock`` on a file that records the holder's pid.

    The lock lasts until ``release()`` (or the process ends). ``held_by`` turns the
    holder's pid into the caller's own error, which says what to do.
    """

    __slots__ = ("path", "_fd")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(
        cls, path: StrPath, *, held_by: Callable[[str], LockHeldError] | None = None, mode: int = 0o600
    ) -> OwnerLock:
        """Take the lock or raise held_by(holder pid) (default: LockHeldError)."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _HELD:
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if held_by is not None:
                raise held_by(holder) from None
            raise LockHeldError(f"{path} is locked by another process (pid {holder}); stop it first") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the lock on {self.path} was released")
        return self._fd

    def release(self) -> None:
        """Give the lock up (closing the descriptor drops the flock). Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> OwnerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
