"""Gateway nodes on a local NATS cluster, for the fault tests, the failover benchmark and `mykey demo --nats`.

``NodeProcess`` runs one node's writer process (``python -m mykey.gateway.node``: the
local index following the stream, the writer lease, the engine when it holds it) on a
data directory, without HTTP workers, and talks to it over its Unix socket the way the
gateway's workers do. ``CommandLoad`` keeps sending commands through one node (the
engine path: validate, append one atomic batch, apply) and records every acknowledged
one; ``audit_commands`` then checks the stream against them: every acknowledged command
exactly once, each as one whole batch, nothing else. ``writer_runs`` says which writer
wrote which run of batches (from each batch's Mykey-Writer header), so a test sees that
a deposed writer never appended after its successor's fence.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mykey.errors import MykeyError, WriterUnavailableError

from .nats import AppendLoad

__all__ = [
    "CommandLoad", "NodeProcess", "audit_commands", "copy_keys", "fail_stream_leader", "make_node_dir",
    "start_local_cluster", "stop_all", "writer_runs",
]

BUSINESS = "A0001"


CLUSTER_START_TRIES = 3  # fresh ports each time: another process may take a free port before a server binds it


def start_local_cluster(directory: Path, nodes: int = 3, **kw):
    """LocalCluster.start, tried again on fresh ports (in a fresh subdirectory) when a server could not bind."""
    from mykey_dev.nats import LocalCluster

    for attempt in range(CLUSTER_START_TRIES):
        try:
            return LocalCluster.start(Path(directory) / f"try{attempt}" if attempt else directory, nodes, **kw)
        except RuntimeError as exc:
            if "exited at start" not in str(exc) or attempt == CLUSTER_START_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def fail_stream_leader(cluster, stream: str, load: CommandLoad, *, how: str = "kill", pause: float = 5.0,
                       timeout: float = 180.0) -> tuple[float, str]:
    """mykey_dev.nats.fail_leader under a command load, then wait until the cluster is whole again.

    Whole: a meta leader with every server current, the log stream and the writer lease's
    bucket current on every server, and the load acknowledged again, so that the next fault
    does not strike a cluster still catching up from this one (two of three servers down).
    Returns (write stall, the failed server's name). Each wait is bounded by timeout (generous:
    on a loaded shared machine whole processes were seen to stall for ~50 s).
    """
    from mykey.log.nats_kv import bucket_name
    from mykey_dev.nats import fail_leader, wait_stream_everywhere

    stall, leader = fail_leader(cluster, stream, load, how=how, pause=pause, timeout=timeout)
    cluster.wait_ready(timeout)
    wait_stream_everywhere(cluster, "KV_" + bucket_name(stream, "writer"), timeout)
    load.wait_for_acks(time.monotonic(), 3, timeout)
    return stall, leader


def make_node_dir(root: Path, url: str, *, first: Path | None = None) -> Path:
    """A node's data directory: the first one initialised on the log (its keys made), others with its keys."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if first is None:
        from mykey.engine import Engine

        with Engine.open(root, log=url) as engine:
            if engine.log.last_seq == 0:
                engine.register_business("Drill Library", "131016", business_id=BUSINESS)
    else:
        copy_keys(first, root)
    return root


def copy_keys(src: Path, dst: Path) -> None:
    """DATA/keys of one node to another (the subject key, the checkpoint key, the gateway's token key)."""
    shutil.copytree(src / "keys", dst / "keys", dirs_exist_ok=True)
    os.chmod(dst / "keys", 0o700)


class NodeProcess:
    """One node's writer process (standby or active) on a data directory; stopped by stop() or kill()."""

    def __init__(self, data: Path, url: str, name: str, *, lease_ttl: float = 3.0, max_lag: int = 1000,
                 standby_only: bool = False, log: Path | None = None) -> None:
        self.data, self.url, self.name = Path(data), url, name
        self.lease_ttl, self.max_lag, self.standby_only = lease_ttl, max_lag, standby_only
        self.log_path = log or self.data.parent / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.data.resolve() / "run" / "writer.sock")

    def start(self, timeout: float = 60.0) -> NodeProcess:
        cmd = [sys.executable, "-m", "mykey.gateway.node", "--data", str(self.data), "--log", self.url,
               "--node", self.name, "--lease-ttl", str(self.lease_ttl), "--max-lag", str(self.max_lag),
               "--parent", str(os.getpid())]
        if self.standby_only:
            cmd.append("--standby-only")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # its own process group: signals reach it whole
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.ping()
                return self
            except WriterUnavailableError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {self.name} did not answer within {timeout:.0f} s") from None
                time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, op: str, *, timeout: float = 90.0, **args: Any) -> Any:
        from mykey.gateway.writer import WriterClient

        with WriterClient(self.socket, timeout=timeout) as client:
            return client.call(op, **args)

    def ping(self) -> dict:
        return self.call("ping", timeout=10.0)

    def wait_role(self, role: str, timeout: float = 60.0) -> float:
        """Seconds until the node reports role ("active" or "standby")."""
        t0 = time.monotonic()
        while True:
            try:
                if self.ping()["role"] == role:
                    return time.monotonic() - t0
            except WriterUnavailableError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"node {self.name} was not {role} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def wait_index(self, seq: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ping()["index_last_seq"] < seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.name}'s index did not reach {seq}: {self.ping()}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        """Send sig to the node's process group."""
        if self.running and self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the process group (a machine that dies: the lease is not released, it runs out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean stop: the lease is released at once); SIGKILL after timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class CommandLoad:
    """A thread registering service IDs through a node, one command (one log batch) at a time.

    Each command registers ``size`` new service IDs; ``acked`` holds (first service-ID number,
    count, monotonic time) of every command the writer acknowledged. A refusal saying no
    writer is there right now (a takeover or a failover) is retried with the same IDs; when
    a retry finds them registered, the earlier attempt had been applied (``ambiguous``
    counts those, and they are acknowledged then). Any other error ends the load (``error``).
    """

    node: NodeProcess
    sizes: tuple[int, ...] = (1, 20, 100)
    prefix: str = "c"
    acked: list[tuple[int, int, float]] = field(default_factory=list)
    ambiguous: int = 0
    retries: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def rows(self, first: int, count: int) -> list[list[str | None]]:
        return [[f"{self.prefix}{first + i}", None] for i in range(count)]

    def start(self) -> CommandLoad:
        self._thread = threading.Thread(target=self._run, name="command-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from mykey.errors import AlreadyExistsError

        n, i = 0, 0
        try:
            while not self._stop.is_set():
                size = self.sizes[i % len(self.sizes)]
                i += 1
                retried = False
                while True:
                    try:
                        self.node.call("register_service_ids", business_id=BUSINESS, rows=self.rows(n, size))
                        break
                    except WriterUnavailableError:
                        retried = True
                        self.retries += 1
                        time.sleep(0.1)
                    except AlreadyExistsError:
                        if not retried:
                            raise
                        self.ambiguous += 1  # an earlier attempt had been applied
                        break
                self.acked.append((n, size, time.monotonic()))
                n += size
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the command load did not stop")

    # the same bookkeeping as the log-level drill's load (acked: (first, count, monotonic time))
    wait_for_acks = AppendLoad.wait_for_acks
    longest_gap = AppendLoad.longest_gap


def audit_commands(log, loads: list[CommandLoad]) -> dict:
    """Compare the stream with the loads' acknowledged commands (the log read whole, every check on).

    Returns counts: events, batches, lost (acknowledged service IDs missing), duplicated
    (a service ID registered twice), torn (a load's batch that is not exactly one command's
    rows), extra (load service IDs stored but never acknowledged: an unacknowledged last try).
    """
    from mykey.domain import events as ev

    prefixes = {load.prefix: load for load in loads}
    seen: dict[str, int] = {}
    events = batches = torn = 0
    for first, payloads in log.read_batches(1):
        batches += 1
        events += len(payloads)
        sids = []
        for p in payloads:
            body = ev.decode_envelope(p).body
            if isinstance(body, ev.ServiceIdRegistered):
                seen[body.service_id] = seen.get(body.service_id, 0) + 1
                sids.append(body.service_id)
        ours = [s for s in sids if s.rstrip("0123456789") in prefixes]
        if ours:
            load = prefixes[ours[0].rstrip("0123456789")]
            start = int(ours[0][len(load.prefix):])
            if ours != [r[0] for r in load.rows(start, len(ours))] or len(ours) != len(sids):
                torn += 1
    acked = {s for load in loads for f, c, _t in load.acked for s, _ in load.rows(f, c)}
    ours_stored = {s for s in seen if s.rstrip("0123456789") in prefixes}
    return {
        "events": events,
        "batches": batches,
        "lost": len(acked - ours_stored),
        "duplicated": sum(1 for n in seen.values() if n > 1),
        "torn": torn,
        "extra": len(ours_stored - acked),
    }


def writer_runs(log) -> list[str]:
    """The writers of the stream's batches in order, one entry per run (host:pid of each writer)."""
    from mykey.log.nats_records import H_WRITER, parse_part

    runs: list[str] = []
    for msg in log._messages(1, follow=False):
        part = parse_part(msg.headers)
        if part is None or part[0] != 1:
            continue
        writer = ":".join(msg.headers.get(H_WRITER, "?").split(":")[:2])
        if not runs or runs[-1] != writer:
            runs.append(writer)
    return runs


def stop_all(*nodes: NodeProcess) -> None:
    for node in nodes:
        try:
            node.stop()
        except (OSError, MykeyError):
            node.kill()
