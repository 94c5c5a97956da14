"""Filesystem safety: the one home for atomic writes, exclusive writes, directory fsync and owner locks.

Every durable file mykey writes outside the log's own record stream goes through
here, so the rules are written once:

- ``write_atomic``: readers see the old content or the new, never a mix; the new
  content is on disk (file and directory entry) when it returns.
- ``write_exclusive``: create a new file and never replace one (keys, proofs);
  symlinks are not followed.
- ``fsync_dir`` / ``fsync_path``: make a rename, create or unlink durable.
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_exclusive(path: StrPath, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Create path with data; FileExistsError if anything (a file, a symlink) is there already.

    The file gets exactly ``mode`` whatever the umask; on any failure the partly written
    file is removed. With sync (the default) file and directory are fsynced.
    """
    path = Path(path)
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
    if sync:
        fsync_dir(path.parent)


def write_atomic(path: StrPath, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Replace path's content atomically: a temporary file beside it, fsynced, renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    write_exclusive(tmp, data, mode=mode, sync=sync)
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
