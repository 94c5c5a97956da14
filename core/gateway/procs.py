"""Process plumbing shared by the gateway's processes: dying with the parent, finding the socket."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

from ..datadir import DataDir
from ..errors import GatewayError

_PR_SET_PDEATHSIG = 1
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
_log = logging.getLogger("mykey.gateway")


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send sig to this process when its parent dies (Linux); exit now if it has.

    The gateway's workers and writer are the server's children: if the server is killed
    (SIGKILL leaves it no chance to stop them) they stop too instead of serving on.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
                _log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:  # no libc prctl here: nothing to arm
            _log.warning("cannot arm PR_SET_PDEATHSIG: %s", exc)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), sig)


def run_dir(data: DataDir) -> Path:
    """DATA/run: the running gateway's socket and lock (owner-only)."""
    path = data.root / "run"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def writer_socket_path(data: DataDir) -> str:
    """Where the writer listens (DATA/run/writer.sock); GatewayError if the path is too long for a socket."""
    path = os.path.join(os.path.abspath(data.root), "run", "writer.sock")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise GatewayError(
            f"the writer's socket path {path} is longer than {MAX_SOCKET_PATH} bytes, the limit of a Unix "
            "socket; use a data directory with a shorter path (or a symlink to it) as --data"
        )
    return path
