"""The JetStream log under failures, with real processes on loopback (each test bounded in time).

A 3-node cluster of this module's own (faults do not touch the session's): the stream
leader killed repeatedly and paused under a sustained append load, the whole cluster
killed and restarted with its disks, a node restarted with its disk, the writer
process killed mid-batch, two writers racing, and a hung writer replaced by a standby.
After each: every acknowledged batch present exactly once, no half batch ever visible
(a follower reads along the whole time), clear errors where a writer must stop.
The long ones are marked slow; `bench/nats_failover.py` runs the long drill (>= 20 kills).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from mykey.domain import events as ev

from .nats_fixtures import all_running, module_cluster, unique_stream

KILLS = int(os.environ.get("MYKEY_NATS_KILLS", "2"))  # leader kills in the drill (the bench does >= 20)
STALL_LIMIT = 30.0  # seconds a failover may stall appends here (measured: ~4-8 s)


cluster = module_cluster("faults")


@pytest.fixture
def healthy(cluster):
    return all_running(cluster)


def drill(healthy, js_open, max_msg_bytes: int = 4096):
    """(url, stream, load, follower) on a fresh R3 stream: the load and the follower are running."""
    from mykey_dev.nats import AppendLoad, Follower

    stream = unique_stream("D")
    url = healthy.log_url(stream=stream, max_msg_bytes=max_msg_bytes)
    load = AppendLoad(js_open(url)).start()
    follower = Follower(js_open(url, readonly=True)).start()
    return url, stream, load, follower


def finish(url, load, follower, js_open) -> dict:
    """Stop the load; check the follower saw exactly the stream; return the audit of the stream."""
    from mykey_dev.nats import audit_drill

    load.stop()
    assert load.error is None, f"an append failed: {load.error!r}"
    last = load.log.last_seq
    follower.catch_up(last)
    follower.stop()
    assert follower.error is None
    reader = js_open(url, readonly=True)
    assert reader.last_seq == last
    report = audit_drill(reader, load.acked)
    stored = [(f, len(p)) for f, p in reader.read_batches(1)]
    assert follower.seen == stored  # whole batches, in order, each once, all the time
    assert report["lost"] == 0 and report["extra"] == 0 and report["duplicated"] == 0 and report["content_ok"]
    assert report["events"] == last and report["batches"] == len(load.acked)
    return report


@pytest.mark.slow
def test_the_stream_leader_killed_repeatedly_under_load(healthy, js_open):
    from mykey_dev.nats import fail_leader

    url, stream, load, follower = drill(healthy, js_open)
    stalls = []
    try:
        for _ in range(KILLS):
            stall, _leader = fail_leader(healthy, stream, load, how="kill")
            stalls.append(stall)
    finally:
        report = finish(url, load, follower, js_open)
    assert all(s < STALL_LIMIT for s in stalls), stalls
    print(f"\nleader kills: {len(stalls)}, stalls {[round(s, 2) for s in stalls]} s, {report}")


@pytest.mark.slow
def test_the_stream_leader_paused_and_resumed(healthy, js_open):
    from mykey_dev.nats import fail_leader

    url, stream, load, follower = drill(healthy, js_open)
    try:
        stall, _leader = fail_leader(healthy, stream, load, how="pause", pause=7.0)
    finally:
        finish(url, load, follower, js_open)
    assert stall < STALL_LIMIT


@pytest.mark.slow
def test_the_whole_cluster_killed_and_restarted_with_its_disks(healthy, js_open):
    from mykey_dev.nats import wait_stream_everywhere

    url, stream, load, follower = drill(healthy, js_open)
    try:
        load.wait_for_acks(time.monotonic(), 3)
        t = time.monotonic()
        for node in healthy.nodes:  # a power cut: every node at once, no clean shutdown
            node.kill()
        for node in healthy.nodes:
            node.start()
        load.wait_for_acks(t, 3)  # the load rides through (the append in flight resolved by reading)
        wait_stream_everywhere(healthy, stream)
    finally:
        finish(url, load, follower, js_open)


def test_a_node_restarted_with_its_disk_catches_up(healthy, js_open):
    from mykey_dev.nats import wait_stream_everywhere

    url, stream, load, follower = drill(healthy, js_open)
    try:
        healthy.wait_until(lambda: healthy.stream_leader(stream) is not None, 30, "no stream leader")
        leader = healthy.stream_leader(stream)
        node = next(n for n in healthy.nodes if n is not leader)
        node.stop()  # a clean shutdown of a follower node; two of three keep the quorum
        t = time.monotonic()
        load.wait_for_acks(t, 5)
        written_meanwhile = load.log.stream_last
        node.start()
        wait_stream_everywhere(healthy, stream)  # it caught up from its disk and the leader
        assert healthy.stream_last_seqs(stream)[node.name] >= written_meanwhile
    finally:
        finish(url, load, follower, js_open)


# --- writer processes ----------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import asyncio, json, sys
    from mykey.domain.events import ServiceIdRegistered
    from mykey.errors import LogFencedError
    from mykey.log import jetstream

    url, name, size, slow = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

    async def slow_publish(nc, subject, msgs, timeout):  # a slow link: time to die mid-batch
        for headers, data in msgs[:-1]:
            await nc.publish(subject, data, headers=headers)
            await nc.flush()
            await asyncio.sleep(slow)
        headers, data = msgs[-1]
        return json.loads((await nc.request(subject, data, headers=headers, timeout=timeout)).data)

    if slow:
        jetstream._publish_batch = slow_publish
    log = jetstream.JetStreamLog.open(url)
    print("ready", log.last_seq, flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(0)
    i = 0
    try:
        while True:
            print("sending", flush=True)
            envs = log.append([ServiceIdRegistered("A0001", f"{name}-{i}-{k}") for k in range(size)])
            print("acked", envs[0].seq, len(envs), flush=True)
            i += 1
    except LogFencedError as exc:
        print("fenced", exc, flush=True)
        sys.exit(3)
    """
)


class Writer:
    """A writer process on url (see WRITER): waits for "go", then appends batches of size until killed or fenced."""

    def __init__(self, url: str, name: str, size: int = 5, slow: float = 0.0) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, url, name, str(size), str(slow)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.acked: list[tuple[int, int]] = []
        self.fenced = ""
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.next_line(("ready",)).startswith("ready")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def next_line(self, kinds: tuple[str, ...], timeout: float = 60.0) -> str:
        """The next line of one of kinds (recording acks and a fence on the way); "<eof>" when it ended."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"writer {self.name}: no {kinds} line within {timeout:.0f} s") from None
            if line.startswith("acked"):
                _, first, count = line.split()
                self.acked.append((int(first), int(count)))
            elif line.startswith("fenced"):
                self.fenced = line
            if line == "<eof>" or line.split(" ", 1)[0] in kinds:
                return line

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the process to end (after a fence or a kill), draining its output; its exit code."""
        while self.next_line((), timeout) != "<eof>":
            pass
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def writers():
    started: list[Writer] = []

    def start(*args, **kw) -> Writer:
        w = Writer(*args, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def stored_batches(url: str, js_open) -> list[tuple[int, int, str]]:
    """(first_seq, count, writer name) of every batch in the stream (read with every check on)."""
    out = []
    for first, payloads in js_open(url, readonly=True).read_batches(1):
        names = {ev.decode_envelope(p).body.service_id.split("-")[0] for p in payloads}
        assert len(names) == 1  # a batch is one writer's, whole
        out.append((first, len(payloads), names.pop()))
    return out


def runs(batches: list[tuple[int, int, str]]) -> list[str]:
    """The writers in stream order, one entry per run of consecutive batches."""
    out: list[str] = []
    for _f, _c, name in batches:
        if not out or out[-1] != name:
            out.append(name)
    return out


def test_the_writer_process_killed_mid_batch(healthy, js_open, writers):
    url = healthy.log_url(stream=unique_stream("W"), max_msg_bytes=1024)  # 300 events: ~25 messages
    w = writers(url, "w", size=300, slow=0.005)
    w.go()
    for _ in range(3):
        w.next_line(("acked",))
    w.next_line(("sending",))
    time.sleep(0.03)  # a few of the batch's messages are out, not its commit
    w.kill()
    w.finish()  # every line it printed (an ack printed just before the kill is counted too)
    stored = stored_batches(url, js_open)
    assert [(f, c) for f, c, _n in stored] == w.acked  # every acknowledged batch; nothing of the torn one
    after = js_open(url)  # a new writer carries on at once; the torn batch can never commit after it
    assert after.last_seq == sum(w.acked[-1]) - 1
    after.append([ev.ServiceIdRegistered("A0001", "n-0-0")])
    assert [n for _f, _c, n in stored_batches(url, js_open)][-2:] == ["w", "n"]


def test_two_writers_racing_one_is_fenced(healthy, js_open, writers):
    url = healthy.log_url(stream=unique_stream("R"))
    a, b = writers(url, "a"), writers(url, "b")  # both know the same (empty) stream
    a.go()
    b.go()
    codes = {}
    loser = None
    deadline = time.monotonic() + 60
    while loser is None and time.monotonic() < deadline:
        for w in (a, b):
            if w.proc.poll() is not None:
                loser = w
        time.sleep(0.01)
    assert loser is not None, "neither writer was fenced"
    winner = b if loser is a else a
    codes[loser.name] = loser.finish()
    assert codes[loser.name] == 3 and "another writer" in loser.fenced and loser.acked == []
    while len(winner.acked) < 5:
        winner.next_line(("acked",))
    winner.kill()
    stored = stored_batches(url, js_open)
    assert runs(stored) == [winner.name]
    assert [(f, c) for f, c, _n in stored][: len(winner.acked)] == winner.acked


def test_a_hung_writer_is_replaced_by_a_standby_and_never_interleaves(healthy, js_open, writers):
    url = healthy.log_url(stream=unique_stream("H"))
    old = writers(url, "old")
    old.go()
    while len(old.acked) < 5:
        old.next_line(("acked",))
    old.proc.send_signal(signal.SIGSTOP)  # the writer's machine hangs
    try:
        standby = writers(url, "new")  # opens knowing the stream as it is now: the fence moves to it
        standby.go()
        while len(standby.acked) < 5:
            standby.next_line(("acked",))
    finally:
        old.proc.send_signal(signal.SIGCONT)
    assert old.finish() == 3 and "another writer" in old.fenced  # it woke up and stopped at its next append
    while len(standby.acked) < 10:
        standby.next_line(("acked",))
    standby.kill()
    stored = stored_batches(url, js_open)
    assert runs(stored) == ["old", "new"]
    acked = set(old.acked) | set(standby.acked)
    assert acked <= {(f, c) for f, c, _n in stored}
    assert len([b for b in stored if b[2] == "old"]) in (len(old.acked), len(old.acked) + 1)  # + one in flight at the hang
