"""`mykey demo --nats`: the demo on a local 3-server NATS cluster with two gateway nodes and a writer killed.

A LocalCluster (the code behind `mykey nats up`) in a temporary directory; the demo's
platform is built on a stream there (run_demo, smaller sizes). Then NodesTour:
gateway node 1 (`mykey serve --log nats://...` on the demo's data directory) holds the
writer role; node 2 is bootstrapped from a snapshot of node 1's index plus the stream's
tail and serves as a standby. A terminal works through node 2 (its writes are forwarded
to node 1); the NATS server leading the stream is SIGKILLed and a link goes through the
election, then the server comes back with its disk; node 1's whole process group is SIGKILLed (a machine dying); node 2 takes the
writer role once the lease runs out and the terminal goes on. At the end every write is
read back and node 2's index is compared with a fresh rebuild from the stream.
Everything (gateways, servers, files) is stopped and removed whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mykey.errors import MykeyError

from .demo import (
    GATEWAY_READY_DEADLINE,
    DemoConfig,
    DemoResult,
    GatewayTour,
    _free_port,
    _pairs,
    _stop_group,
    run_demo,
)

LEASE_TTL = 3.0  # seconds: the demo's writer lease (a takeover within a few seconds of the kill)
TAKEOVER_DEADLINE = 60.0


def nats_config(config: DemoConfig) -> DemoConfig:
    """The demo's sizes on the replicated log (every command is a round trip to a 3-server cluster)."""
    return DemoConfig(
        businesses=min(config.businesses, 6), users=min(config.users, 40), rsa_users=min(config.rsa_users, 4),
        service_ids=min(config.service_ids, 20_000), lookups=min(config.lookups, 100_000), seed=config.seed,
    )


def run_nats_demo(config: DemoConfig | None = None, *, on_phase=None, say=print) -> DemoResult:
    """The whole --nats demo in a temporary directory (removed at the end); returns the demo's result."""
    from mykey.log.backend import ENV_VAR

    from .nodes import start_local_cluster

    config = nats_config(config or DemoConfig())
    root = Path(tempfile.mkdtemp(prefix="mykey-demo-nats-"))
    before = os.environ.get(ENV_VAR)
    cluster = None
    try:
        t0 = time.monotonic()
        cluster = start_local_cluster(root / "nats", 3)
        say(f"NATS cluster: 3 servers (sync_interval: always) on {', '.join(cluster.urls)}, "
            f"ready in {time.monotonic() - t0:.1f} s")
        url = cluster.log_url(stream="DEMO")
        _wait_for_stream(url, root / "warmup")
        os.environ[ENV_VAR] = url  # every open_log here and in the gateways' processes: the R3 stream
        tour = type("NodesTourOnCluster", (NodesTour,), {"cluster": cluster, "stream": "DEMO"})
        return run_demo(root / "node1", config, on_phase=on_phase, tour_class=tour)
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before
        if cluster is not None:
            cluster.stop()
            say(f"NATS cluster stopped: {'no server left' if not any(n.running for n in cluster.nodes) else 'servers left!'}")
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_stream(url: str, scratch: Path, timeout: float = 60.0) -> None:
    """Create the demo's stream, retried while a cluster that just started cannot serve it yet."""
    from mykey.errors import LogUnavailableError
    from mykey.log.backend import open_log

    scratch.mkdir(mode=0o700, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open_log(scratch, url=url):
                return
        except LogUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class _Gateway:
    name: str
    data: Path
    url: str
    proc: subprocess.Popen
    log_path: Path

    def writer_role(self) -> str | None:
        from mykey.gateway.writer import WriterClient

        try:
            with WriterClient(str(self.data.resolve() / "run" / "writer.sock"), timeout=5.0) as client:
                return client.call("ping")["role"]
        except (MykeyError, OSError):
            return None


@dataclass
class NodesTour(GatewayTour):
    """Two gateway nodes on the stream of MYKEY_LOG; the writer node is killed half-way (see the module)."""

    gateways: list[_Gateway] = field(default_factory=list)
    cluster = None  # the LocalCluster the stream lives on (set by run_nats_demo)
    stream = "DEMO"
    written: list[str] = field(default_factory=list)  # service IDs linked during faults

    def run(self) -> list[str]:
        from mykey.log.backend import ENV_VAR

        url = os.environ[ENV_VAR]
        tmp = Path(tempfile.mkdtemp(prefix="mykey-demo-nodes-"))
        try:
            t0 = time.monotonic()
            g1 = self._serve("node1", self.data_dir, tmp)
            self._wait_ready(g1)
            self._wait_role(g1, "active")
            self.say(f"gateway node 1 on {g1.url}: the writer (holds the lease), ready in {time.monotonic() - t0:.1f} s")
            node2 = tmp / "node2"
            self._bootstrap(node2, url, tmp)
            t0 = time.monotonic()
            g2 = self._serve("node2", node2, tmp)
            self._wait_ready(g2)
            self.say(f"gateway node 2 on {g2.url}: a standby (writes forwarded to node 1), ready in "
                     f"{time.monotonic() - t0:.1f} s")
            self._drive_nodes(g1, g2, url)
        except MykeyError:  # what the tour did and what the gateways logged, before their files go
            print("\n".join(self.lines), file=sys.stderr)
            for g in self.gateways:
                tail = g.log_path.read_text("utf-8", "replace").splitlines()[-40:] if g.log_path.exists() else []
                print(f"gateway {g.name}'s log, last lines:\n    " + "\n    ".join(tail), file=sys.stderr)
            raise
        finally:
            for g in self.gateways:
                code, gone = _stop_group(g.proc)
                self.say(f"gateway {g.name} stopped: exit code {code}, "
                         + ("no process left" if gone else "processes left behind!"))
            shutil.rmtree(tmp, ignore_errors=True)
        return self.lines

    def _serve(self, name: str, data: Path, tmp: Path) -> _Gateway:
        port = _free_port()
        log_path = tmp / f"{name}.log"
        work = tmp / f"tmp-{name}"
        work.mkdir()
        cmd = [sys.executable, "-m", "mykey", "--data", str(data), "serve", "--port", str(port), "--workers", "1",
               "--node", name, "--lease-ttl", str(LEASE_TTL)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, "TMPDIR": str(work)})
        g = _Gateway(name, data, f"http://127.0.0.1:{port}", proc, log_path)
        self.gateways.append(g)
        return g

    def _wait_ready(self, g: _Gateway) -> None:
        import httpx

        deadline = time.monotonic() + GATEWAY_READY_DEADLINE
        while True:
            if g.proc.poll() is not None:
                raise MykeyError(f"gateway {g.name} exited with {g.proc.returncode}:\n{g.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(g.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise MykeyError(f"gateway {g.name} was not ready in {GATEWAY_READY_DEADLINE:g} s")
            time.sleep(0.05)

    def _wait_role(self, g: _Gateway, role: str) -> float:
        t0 = time.monotonic()
        while g.writer_role() != role:
            if time.monotonic() - t0 > TAKEOVER_DEADLINE:
                raise MykeyError(f"gateway {g.name} did not become {role} in {TAKEOVER_DEADLINE:g} s:\n"
                                 f"{g.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def _bootstrap(self, node2: Path, url: str, tmp: Path) -> None:
        """Node 2 from a snapshot of node 1's index (taken while node 1 runs) and node 1's keys."""
        snap = tmp / "index.snap"
        for args in (["snapshot", "--out", str(snap), "--data", str(self.data_dir)],
                     ["restore", str(snap), "--data", str(node2)]):
            out = subprocess.run([sys.executable, "-m", "mykey", *args, "--log", url], capture_output=True, text=True,
                                 timeout=120)
            if out.returncode != 0:
                raise MykeyError(f"mykey {args[0]} failed: {out.stderr.strip()}")
        shutil.copytree(self.data_dir / "keys", node2 / "keys", dirs_exist_ok=True)
        os.chmod(node2 / "keys", 0o700)
        self.say(f"node 2 bootstrapped: `mykey snapshot` of node 1's index ({snap.stat().st_size / 1e6:.1f} MB), "
                 "`mykey restore`, node 1's keys; it follows the stream's tail from there")

    def _link(self, gw, service_id: str) -> str:
        """gw.link, retried while the gateway answers 503 (no writer yet), as a terminal would."""
        from mykey.errors import GatewayRefusedError

        deadline = time.monotonic() + TAKEOVER_DEADLINE
        while True:
            try:
                return gw.link(service_id, self.card)
            except GatewayRefusedError as exc:
                if exc.status == 409 and gw.status(service_id) == "valid":
                    return "valid (an earlier attempt, answered as unknown, had landed)"
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _kill_stream_leader(self, gw, service_id: str) -> None:
        """SIGKILL the NATS server leading the stream, link through it, restart it with its disk."""
        from mykey_dev.nats import wait_stream_everywhere

        leader = self.cluster.stream_leader(self.stream) if self.cluster is not None else None
        if leader is None:
            self.say("no stream leader to kill (the cluster is not the demo's own)")
            return
        t = time.monotonic()
        leader.kill()
        self.say(f"NATS server {leader.name}, the stream's leader, killed (SIGKILL)")
        self.say(f"first-use link of {service_id} during the election: {self._link(gw, service_id)} "
                 f"({time.monotonic() - t:.1f} s after the kill)")
        leader.start()
        wait_stream_everywhere(self.cluster, self.stream, TAKEOVER_DEADLINE)
        self.say(f"{leader.name} restarted with its disk and caught up: every server holds the whole stream")
        self.written.append(service_id)

    def _drive_nodes(self, g1: _Gateway, g2: _Gateway, url: str) -> None:
        from mykey.audit.replay import diff_live_index
        from mykey.client.gateway import GatewayClient
        from mykey.datadir import DataDir
        from mykey.log.backend import open_log, set_log_location

        terminal_id, key = self.terminal
        with GatewayClient(g2.url, terminal_id, key) as gw:
            session = gw.sign_in()
            self.say(f"terminal {terminal_id} signed in at node 2 (business {session.business_id})")
            self.say(f"identify at node 2: {_pairs(gw.identify(self.card)) or 'no service ID here yet'}")
            first = f"NEW{session.business_id}1"
            self.say(f"first-use link of {first} through node 2 (forwarded to the writer, node 1): "
                     f"{gw.link(first, self.card)}")
            self._kill_stream_leader(gw, f"NEW{session.business_id}L")
            t = time.monotonic()
            g1.proc.kill()  # SIGKILL of node 1's server; then its whole group (workers and node process)
            _stop_group(g1.proc)
            self.say("node 1 killed (SIGKILL of its process group): its writer lease is not released")
            self._wait_role(g2, "active")
            self.say(f"node 2 took the writer role {time.monotonic() - t:.1f} s after the kill (lease TTL "
                     f"{LEASE_TTL:g} s; it fenced the stream first: a late append of node 1 would be refused)")
            second = f"NEW{session.business_id}2"
            self.say(f"first-use link of {second} through node 2, now the writer: {self._link(gw, second)}")
            written = [first, *self.written, second]
            statuses = gw.statuses([*written, *self.unlinked])
            self.say(f"status lookups at node 2: {_pairs(statuses)}")
            if any(s in ("unknown", "unlinked") for _, s in statuses[: len(written)]):
                raise MykeyError(f"a write acknowledged before or after the kill is missing: {statuses}")
        set_log_location(url)
        try:
            with open_log(DataDir(g2.data), readonly=True) as log:
                last = log.last_seq
            differences = diff_live_index(DataDir(g2.data))
        finally:
            set_log_location(None)
        self.say(f"the stream holds {last:,} events; node 2's index "
                 + ("equals a fresh rebuild from the stream: nothing lost, nothing twice" if not differences
                    else f"DIFFERS from a rebuild: {differences[:3]}"))
