"""Filesystem safety: the one home for atomic writes, exclusive writes, directory fsync and owner locks.

Every durable file mykey writes outside the log's own record stream goes through
here, so the rules are written once:

- ``write_atomic``: readers see the old content or the new, never a mix; the new
  content is on disk (file and directory entry) when it returns.
- ``write_exclusive``: create a new file and never replace one (keys, proofs);
  symlinks are not followed; after a power cut the file is whole or absent.
- ``fsync_dir`` / ``fsync_path``: make a rename, create or unlink durable.
- ``OwnerLock``: an exclusive ``flock`` that records the holder's pid, so a second
  writer is told which process to stop. Only "somebody holds it" errors become
  ``LockHeldError``; any other failure (permissions, a full disk) is raised as it is.
- ``private_dir`` / ``check_private_dir`` / ``make_private``: a data directory and
  everything in it is its owner's only (directories 0700, files 0600) whatever the
  umask, and a directory others may write is refused (they could have changed it);
  a directory private_dir creates survives a power cut (fsynced into its parent).
- ``ensure_secret``: a random secret made once in a 0600 file, then read back.

Every file made here is 0600 unless a caller asks otherwise. Pure I/O with no
knowledge of what the files mean.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shlex
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import InsecurePermissionsError, KeyFileError, LockHeldError

StrPath = str | os.PathLike[str]

FILE_MODE = 0o600  # every file in a data directory: its owner's only
DIR_MODE = 0o700  # every directory in a data directory
# The files an LMDB environment directory holds. LMDB creates them with a mode of its own
# (0644, or py-lmdb's 0755) before the umask: private_dir(path, files=LMDB_FILES) makes them
# first, 0600, and LMDB keeps the mode of a file that is already there.
LMDB_FILES = ("data.mdb", "lock.mdb")

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


def write_exclusive(path: StrPath, data: bytes, *, mode: int = FILE_MODE, sync: bool = True) -> None:
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


def write_atomic(path: StrPath, data: bytes, *, mode: int = FILE_MODE, sync: bool = True) -> None:
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


def write_unique(directory: StrPath, stem: str, suffix: str, data: bytes, *, mode: int = FILE_MODE) -> Path:
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
        cls, path: StrPath, *, held_by: Callable[[str], LockHeldError] | None = None, mode: int = FILE_MODE
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


# --- owner-only data directories ---------------------------------------------------------


def private_dir(path: StrPath, *, files: Iterable[str] = ()) -> Path:
    """Make path a directory (and any missing parent) with mode 0700 whatever the umask; returns it.

    files: names of files to create empty in it, mode 0600, where missing, for a library that
    would create them with its own mode (see LMDB_FILES). An existing directory keeps its
    mode: check_private_dir judges it.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made by a concurrent process: it chose its mode
        os.chmod(d, DIR_MODE)  # mkdir's mode loses bits to the umask (even the owner's)
        fsync_dir(d.parent)  # until then a power cut may take d, and every file in it, away
    for name in files:
        try:
            fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
    return path


def check_private_dir(path: StrPath, *, what: str = "data directory", tighten: bool = False) -> Path:
    """Refuse (InsecurePermissionsError) a directory that its group or other users may write.

    Anyone who can write it could have replaced what it holds, so nothing in it can be
    trusted. With tighten, a directory this process owns that others may only read or
    enter becomes 0700 (a writer opening its own data directory). Returns path.
    """
    path = Path(path)
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "every user")) if mode & bit)
        raise InsecurePermissionsError(
            f"the {what} {path} may be written by {who} (mode {mode:04o}), who could have changed it; "
            f"make it its owner's only with `chmod 700 {shlex.quote(str(path))}` after checking its content"
        )
    if tighten and mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, DIR_MODE)
    return path


def make_private(path: StrPath) -> None:
    """Give a file made by a library mode 0600 (a directory 0700)."""
    os.chmod(path, DIR_MODE if os.path.isdir(path) else FILE_MODE)


def ensure_secret(path: StrPath, size: int, *, create: bool = True, what: str = "key") -> bytes:
    """The random secret of `size` bytes in path (mode 0600), made there first if missing and create.

    A concurrent maker wins and its secret is used. KeyFileError if the file has another
    size, or is missing and create is false.
    """
    path = Path(path)
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise KeyFileError(f"{path} ({what}) is missing; restore it from your backup of the data directory") from None
        private_dir(path.parent)
        secret = secrets.token_bytes(size)
        try:
            write_exclusive(path, secret)
        except FileExistsError:  # another process made it first: use theirs
            secret = path.read_bytes()
    if len(secret) != size:
        raise KeyFileError(f"{path} ({what}) is damaged (not {size} bytes); restore it from your backup")
    return secret
