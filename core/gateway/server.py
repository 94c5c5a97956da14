"""`mykey serve`: the writer process and the HTTP workers, started and stopped together.

Processes (all in the server's process group)::

    mykey serve            the server: starts the others, supervises, stops them
    ├── writer             python -m mykey.gateway.writer: holds the Engine (writer.py)
    ├── granian worker 1   forked: its own Resolver + TerminalAuthenticator (app.py)
    └── granian worker N

Start: the server checks the data directory, makes the gateway key (DATA/keys/gateway.key)
and a fresh metrics directory, starts the writer and waits until it answers (its Engine
open, the index caught up with the log), then runs granian (RSGI, N forked workers) in
the main thread. Nothing that opens LMDB runs in the server before the fork.

Stop: SIGTERM or SIGINT (Ctrl-C) to the server. granian closes the listener (new
connections are refused), each worker finishes its in-flight requests (at most
``kill_timeout`` seconds), then the server stops the writer (SIGTERM: it finishes the
command in hand and closes the Engine), removes the metrics directory and exits 0.

Failures: a worker that dies is replaced by a new fork (``respawn_failed_workers``) while
the others keep serving; if the same worker dies again within 5.5 s of its replacement
(a crash loop) the server stops everything and exits 1. A writer that dies is started
again. If the server itself is killed with SIGKILL, the kernel sends SIGTERM to the
workers and the writer (PR_SET_PDEATHSIG), so nothing is left serving.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..datadir import DataDir
from ..errors import GatewayError, MykeyError, WriterUnavailableError
from ..log.backend import log_location
from . import metrics
from .procs import writer_socket_path
from .tokens import DEFAULT_TOKEN_TTL, ensure_gateway_key
from .writer import DEFAULT_IDLE, DEFAULT_LOCK_WAIT, WriterClient

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
WRITER_STOP_TIMEOUT = 15.0  # seconds the writer gets to finish its command and close the Engine
_log = logging.getLogger("mykey.gateway")


@dataclass(frozen=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int | None = None  # None: the number of cores
    token_ttl: int = DEFAULT_TOKEN_TTL
    rate: float = 50.0  # per terminal, per worker; 0 turns the limit off
    burst: float = 100.0
    writer_idle: float = DEFAULT_IDLE
    lock_wait: float = DEFAULT_LOCK_WAIT
    kill_timeout: int = 10
    access_log: bool = False
    log_level: str = "info"
    people_rate: float = 1.0  # person endpoints, per client address, per worker; 0 turns the limit off
    people_burst: float = 10.0
    trusted_proxies: frozenset[str] = frozenset()  # proxies whose X-Forwarded-For names the client


class WriterProcess:
    """The writer as a child process: started, waited for, restarted if it dies, stopped."""

    def __init__(self, data: DataDir, options: ServeOptions) -> None:
        self.data = data
        self.options = options
        self.socket_path = writer_socket_path(data)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # start() and stop() never overlap

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "mykey.gateway.writer", "--data", str(self.data.root),
            "--parent", str(os.getpid()), "--idle", str(self.options.writer_idle),
            "--lock-wait", str(self.options.lock_wait),
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True)

    def wait_ready(self) -> None:
        """Return once the writer answers a ping; GatewayError if it exits first."""
        assert self.proc is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                raise GatewayError(f"the gateway's writer stopped with exit code {code} (its message is above)")
            try:
                with WriterClient(self.socket_path, timeout=5.0) as client:
                    client.call("ping")
                return
            except WriterUnavailableError:
                time.sleep(0.05)

    def supervise(self) -> None:
        """Restart the writer whenever it dies, until stop() (runs in a thread of the server)."""
        while not self._stopping.wait(0.2):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            if self._stopping.is_set():
                return
            _log.error("the writer (pid %d) exited with code %s; starting it again", proc.pid, proc.returncode)
            self.restarts += 1
            if self._stopping.wait(min(5.0, 0.5 * self.restarts)):  # no spinning if it cannot start
                return
            with self._lock:
                if not self._stopping.is_set():
                    self.start()

    def stop(self) -> None:
        """SIGTERM the writer and wait for it (SIGKILL after WRITER_STOP_TIMEOUT seconds)."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WRITER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _log.error("the writer did not stop within %g s; killing it", WRITER_STOP_TIMEOUT)
            proc.kill()
            proc.wait()


def _log_config(level: str) -> dict:
    """granian's logging configuration, plus the mykey loggers (to stderr)."""
    from granian.log import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["mykey"] = {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    config["loggers"]["mykey"] = {"handlers": ["mykey"], "level": level.upper(), "propagate": False}
    return config


def serve(data_dir: str | os.PathLike[str], options: ServeOptions | None = None) -> int:
    """Run the gateway until SIGTERM or SIGINT; returns the exit code (0 after a clean stop)."""
    options = options or ServeOptions()
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    from .app import Gateway, GatewayConfig

    data = DataDir(Path(data_dir).absolute())
    if log_location() is None and not data.log.is_dir():
        raise MykeyError(f"no mykey data in {data.root}; run `mykey init` or pass --data DIR")
    workers = options.workers or os.cpu_count() or 1
    config = GatewayConfig(
        data_dir=data.root,
        token_key=ensure_gateway_key(data),
        token_ttl=options.token_ttl,
        rate=options.rate,
        burst=options.burst,
        server_pid=os.getpid(),
        writer_socket=writer_socket_path(data),
        people_rate=options.people_rate,
        people_burst=options.people_burst,
        trusted_proxies=options.trusted_proxies,
    )
    metrics_dir = Path(tempfile.mkdtemp(prefix="mykey-metrics-"))
    metrics.use_directory(metrics_dir)
    writer = WriterProcess(data, options)
    supervisor: threading.Thread | None = None
    try:
        writer.start()
        writer.wait_ready()
        app = Gateway(config)
        server = Granian(
            "mykey.gateway.app:Gateway",  # not imported: the loader below hands each worker `app`
            address=options.host,
            port=options.port,
            interface=Interfaces.RSGI,
            workers=workers,
            http1_settings=HTTP1Settings(keep_alive=True, header_read_timeout=10_000),
            respawn_failed_workers=True,
            workers_kill_timeout=options.kill_timeout,
            log_level=options.log_level,
            log_dictconfig=_log_config(options.log_level),
            log_access=options.access_log,
            working_dir=Path.cwd(),  # must be a Path
        )
        supervisor = threading.Thread(target=writer.supervise, name="mykey-writer-supervisor", daemon=True)
        supervisor.start()
        _log.info("mykey gateway on http://%s:%d (%d workers, data %s)", options.host, options.port, workers, data.root)
        try:
            server.serve(target_loader=lambda target: app)
        except SystemExit as exc:  # granian exits 1 after a worker crash loop
            return int(exc.code or 0)
        return 0
    finally:
        writer.stop()
        if supervisor is not None:
            supervisor.join()
        shutil.rmtree(metrics_dir, ignore_errors=True)
