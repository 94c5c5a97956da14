"""Many gateway nodes on one replicated log, under failures: real processes on loopback, each test bounded.

A 3-node NATS cluster of this module's own, and node processes (``python -m
mykey.gateway.node``: the local index following the stream, the writer lease, the
engine) on their own data directories. Writes go through the nodes as the gateway's
workers send them (the writer's Unix socket; a standby forwards them to the writer
over NATS). After every fault: each acknowledged command is in the stream exactly once
and as one whole batch, a deposed writer never appended after its successor's fence,
and every node's index equals a fresh rebuild from the log.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from .nats_fixtures import all_running, module_cluster, unique_stream

KILLS = int(os.environ.get("MYKEY_NATS_KILLS", "2"))  # stream leader kills here (bench/nats_failover.py: >= 20)
TTL = 2.0  # the writer lease (short here: takeovers within seconds)
STALL_LIMIT = 120.0  # a bound, not the figure (bench/nodes_failover.py measures it): this machine is shared


cluster = module_cluster("nodefaults")


@pytest.fixture
def healthy(cluster):
    return all_running(cluster)


@pytest.fixture
def nodes(healthy, tmp_path):
    """make(n, lease_ttl=...) -> (url, [NodeProcess...]): n node processes on a fresh stream, node 1 the writer."""
    from mykey_dev.nodes import NodeProcess, make_node_dir, stop_all

    started: list = []

    def make(n: int = 2, lease_ttl: float = TTL, stream: str | None = None):
        url = healthy.log_url(stream=stream or unique_stream("N"), max_msg_bytes=4096)
        first = make_node_dir(tmp_path / "node1", url)
        procs = []
        for i in range(1, n + 1):
            d = first if i == 1 else make_node_dir(tmp_path / f"node{i}", url, first=first)
            node = NodeProcess(d, url, f"node{i}", lease_ttl=lease_ttl)
            started.append(node)
            procs.append(node.start())
            if i == 1:
                node.wait_role("active")
        return url, procs

    yield make
    stop_all(*started)


def check(url, loads, nodes, js_open) -> dict:
    """Every acknowledged command exactly once and whole; every running node's index equals a rebuild."""
    from mykey.audit.replay import diff_live_index
    from mykey.datadir import DataDir
    from mykey.log.backend import set_log_location
    from mykey_dev.nodes import audit_commands

    for load in loads:
        assert load.error is None, f"a command failed: {load.error!r}"
    reader = js_open(url, readonly=True)
    report = audit_commands(reader, loads)
    assert report["lost"] == 0 and report["duplicated"] == 0 and report["torn"] == 0, report
    set_log_location(url)
    try:
        for node in nodes:
            if node.running:
                node.wait_index(reader.last_seq)
                assert diff_live_index(DataDir(node.data)) == [], node.name
    finally:
        set_log_location(None)
    return report


def test_commands_through_a_standby_reach_the_writer_and_read_back_at_once(nodes, js_open):
    url, (n1, n2) = nodes(2)
    assert (n1.ping()["role"], n2.ping()["role"]) == ("active", "standby")
    for node, sid in ((n2, "via-standby"), (n1, "via-writer")):
        assert node.call("register_service_ids", business_id="A0001", rows=[[sid, None]]) == 1
        # read your writes: the node's own index holds the write when the answer comes
        assert n2.call("service_status", business_id="A0001", service_id=sid)["status"] == "unlinked"
        assert n2.ping()["index_last_seq"] == n1.ping()["index_last_seq"]
    from mykey.errors import AlreadyExistsError

    with pytest.raises(AlreadyExistsError, match="already registered"):  # a refusal comes back as its own type
        n2.call("register_service_ids", business_id="A0001", rows=[["via-writer", None]])
    check(url, [], [n1, n2], js_open)


def test_the_writer_node_dies_and_a_standby_takes_over(nodes, js_open):
    from mykey_dev.nodes import CommandLoad, writer_runs

    url, (n1, n2) = nodes(2)
    old_pid = n1.pid
    load = CommandLoad(n2, prefix="k").start()  # through the standby: forwarded to the writer
    try:
        load.wait_for_acks(time.monotonic(), 5)
        t = time.monotonic()
        n1.kill()  # the writer's machine dies: its lease is not released, it runs out
        took = n2.wait_role("active", timeout=TTL + 30)
        stall = load.longest_gap(t)
        n1.start()  # the node comes back with its disk: a standby now, following from where it was
        assert n1.ping()["role"] == "standby"
        load.wait_for_acks(time.monotonic(), 5)
    finally:
        load.stop()
    report = check(url, [load], [n1, n2], js_open)
    assert took < TTL + 10 and stall < STALL_LIMIT, (took, stall)
    runs = writer_runs(js_open(url, readonly=True))  # the set-up's writer, then node 1, then node 2
    assert [r.split(":")[1] for r in runs[1:]] == [str(old_pid), str(n2.pid)], runs
    print(f"\ntakeover after the writer died: role in {took:.2f} s, write stall {stall:.2f} s; {report}")


def _big_command(node, rows, outcome: list) -> threading.Thread:
    """Send one large command (one atomic batch of many messages) in a thread; its result or error lands in outcome."""
    from mykey.errors import MykeyError
    from mykey_dev.nodes import BUSINESS

    def send() -> None:
        try:
            outcome.append(node.call("register_service_ids", business_id=BUSINESS, rows=rows))
        except MykeyError as exc:
            outcome.append(exc)

    t = threading.Thread(target=send)
    t.start()
    return t


def _duration(node, prefix: str, n: int) -> float:
    """How long a command of n rows takes on this node now (to strike the next one in its append)."""
    from mykey_dev.nodes import BUSINESS

    t0 = time.monotonic()
    node.call("register_service_ids", business_id=BUSINESS, rows=[[f"{prefix}{i}", None] for i in range(n)])
    return time.monotonic() - t0


def _stored(url, js_open, prefix: str) -> set[str]:
    return {e.body.service_id for e in js_open(url, readonly=True).read(1)
            if getattr(e.body, "service_id", "").startswith(prefix)}


BIG = 50_000  # rows: one batch of ~900 messages of 4 KiB (the limit is 1,000)


def test_a_frozen_writer_is_fenced_when_it_wakes(nodes, js_open):
    """Two writers racing: the writer freezes (SIGSTOP) in the middle of appending a large command, the
    standby takes over and fences the stream, then the old writer wakes and finishes sending: refused,
    nothing of it stored; it steps down, and the command sent again goes to the new writer."""
    from mykey.errors import AlreadyExistsError
    from mykey_dev.nodes import BUSINESS, CommandLoad, writer_runs

    url, (n1, n2) = nodes(2)
    old_pid = n1.pid
    forwarded = CommandLoad(n2, prefix="f").start()
    try:
        forwarded.wait_for_acks(time.monotonic(), 3)
        d = _duration(n1, "warm", BIG)
        rows = [[f"big{i}", None] for i in range(BIG)]
        outcome: list = []
        sender = _big_command(n1, rows, outcome)
        time.sleep(0.5 * d)  # validated, being appended
        n1.signal(signal.SIGSTOP)
        try:
            n2.wait_role("active", timeout=TTL + 30)
            forwarded.wait_for_acks(time.monotonic(), 5)  # the new writer serves
        finally:
            n1.signal(signal.SIGCONT)
        sender.join(60)
        n1.wait_role("standby", timeout=30)  # it found out and stepped down
        forwarded.wait_for_acks(time.monotonic(), 3)
    finally:
        forwarded.stop()
    stored = _stored(url, js_open, "big")
    assert stored in (set(), {r[0] for r in rows})  # never a part
    if isinstance(outcome[0], int):  # it was stored before the freeze struck
        assert stored and outcome[0] == BIG
    else:  # refused when it woke: the fence (or its lease check) stopped it; nothing of it is in the stream
        assert not stored, outcome
        assert "may or may not" in str(outcome[0]) or "no longer" in str(outcome[0]), outcome
        try:  # sent again: to the new writer, through the old one (now a standby)
            assert n1.call("register_service_ids", business_id=BUSINESS, rows=rows) == BIG
        except AlreadyExistsError:
            pytest.fail("the frozen writer's batch landed after all")
    check(url, [forwarded], [n1, n2], js_open)
    runs = writer_runs(js_open(url, readonly=True))  # never the old writer after the new
    assert [r.split(":")[1] for r in runs[1:]] == [str(old_pid), str(n2.pid)], runs
    assert n1.ping()["role"] == "standby" and n2.ping()["role"] == "active"
    print(f"\nfrozen writer: {type(outcome[0]).__name__}: {str(outcome[0])[:120]}")


def test_the_writer_killed_in_the_middle_of_a_large_command(nodes, js_open):
    """The writer node dies while it validates, appends or applies a large command (three strikes at
    different moments; the other node takes over each time and the dead one comes back as a standby):
    each command is in the log whole or not at all, and sent again it is applied exactly once."""
    from mykey.errors import AlreadyExistsError
    from mykey_dev.nodes import BUSINESS

    url, (n1, n2) = nodes(2)
    d = _duration(n1, "warm", BIG)
    writer, standby = n1, n2
    outcomes = []
    for k, strike in enumerate((0.2, 0.45, 0.7)):
        rows = [[f"big{k}-{i}", None] for i in range(BIG)]
        outcome: list = []
        sender = _big_command(writer, rows, outcome)
        time.sleep(strike * d)
        writer.kill()
        sender.join(60)
        standby.wait_role("active", timeout=TTL + 30)
        stored = _stored(url, js_open, f"big{k}-")
        assert stored in (set(), {r[0] for r in rows})  # all of it or none of it, never a part
        try:
            assert standby.call("register_service_ids", business_id=BUSINESS, rows=rows) == len(rows)
            assert not stored
        except AlreadyExistsError:
            assert stored  # it had landed before the writer died: the retry is refused, nothing twice
        outcomes.append("stored" if stored else "not stored")
        writer.start()  # back with its disk, as a standby
        writer, standby = standby, writer
    check(url, [], [n1, n2], js_open)
    print(f"\nwriter killed during a command at {0.2, 0.45, 0.7} of its duration: {outcomes}")


def test_the_stream_leader_killed_and_paused_under_load_through_the_engine(nodes, healthy, js_open):
    from mykey.log.jetstream import NatsLocation
    from mykey_dev.nats import Follower
    from mykey_dev.nodes import CommandLoad, fail_stream_leader

    url, (n1, n2) = nodes(2, lease_ttl=15.0)
    stream = NatsLocation.parse(url).stream
    load = CommandLoad(n2, prefix="L").start()  # node 2 forwards to the writer on node 1
    follower = Follower(js_open(url, readonly=True)).start()  # sees only whole batches, all the time
    stalls = []
    try:
        for how in ["kill"] * KILLS + ["pause"]:
            stall, _leader = fail_stream_leader(healthy, stream, load, how=how)
            stalls.append(stall)
    finally:
        load.stop()
    report = check(url, [load], [n1, n2], js_open)
    last = js_open(url, readonly=True).last_seq
    follower.catch_up(last)
    follower.stop()
    assert follower.error is None
    assert follower.seen == [(f, len(p)) for f, p in js_open(url, readonly=True).read_batches(1)]
    assert all(s < STALL_LIMIT for s in stalls), stalls
    print(f"\nleader faults through the engine: stalls {[round(s, 2) for s in stalls]} s, {report}")
