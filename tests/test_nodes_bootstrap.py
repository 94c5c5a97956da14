"""A new gateway node bootstrapped from an index snapshot plus the stream's tail, serving HTTP; its lag in
/readyz and /metrics; the failover benchmark's quick mode. Real processes on loopback, each bounded in time."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil

from tests.nats_fixtures import unique_stream
from tests.test_gateway_support import Api, start_server, wait_for


def _commands(node, prefix: str, n: int, size: int = 20) -> None:
    from mykey_dev.nodes import BUSINESS

    for i in range(n):
        node.call("register_service_ids", business_id=BUSINESS, rows=[[f"{prefix}{i}-{j}", None] for j in range(size)])


def _mykey(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "mykey", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def _node_process(server) -> psutil.Process:
    for p in psutil.Process(server.proc.pid).children():
        if "mykey.gateway.node" in " ".join(p.cmdline()):
            return p
    raise AssertionError(f"no node process under mykey serve:\n{server.log()}")


def test_a_new_node_bootstraps_from_a_snapshot_and_reports_its_lag(request, nats_cluster, tmp_path, js_open):
    from mykey.audit.replay import diff_live_index
    from mykey.datadir import DataDir
    from mykey.index.snapshot import read_snapshot
    from mykey.index.store import Index
    from mykey.log.backend import set_log_location
    from mykey_dev.nodes import NodeProcess, copy_keys, make_node_dir, stop_all

    url = nats_cluster.log_url(stream=unique_stream("B"), max_msg_bytes=4096)
    writer = NodeProcess(make_node_dir(tmp_path / "node1", url), url, "node1", lease_ttl=3.0)
    request.addfinalizer(lambda: stop_all(writer))
    writer.start().wait_role("active")
    _commands(writer, "a", 30)
    snap = tmp_path / "index.snap"  # taken from the running writer's node, as an operator would
    info = json.loads(_mykey("snapshot", "--out", str(snap), "--data", str(writer.data), "--log", url,
                             "--json").stdout.splitlines()[-1])
    assert info["last_seq"] == read_snapshot(snap).last_seq > 600
    _commands(writer, "b", 10)  # the tail, after the snapshot

    new = DataDir(tmp_path / "node3")
    new.root.mkdir(mode=0o700)
    copy_keys(writer.data, new.root)
    _mykey("restore", str(snap), "--data", str(new.root), "--log", url)
    with Index.open(new) as index:
        assert index.last_seq == info["last_seq"]  # the snapshot, nothing replayed yet

    server = start_server(request, new.root, tmp_path, "--log", url, "--node", "node3", "--max-lag", "0",
                          "--standby-only", workers=1)
    api = Api(server.url)
    request.addfinalizer(api.close)
    last = js_open(url, readonly=True).last_seq
    ready = wait_for(lambda: (r := api.get("/readyz")).status_code == 200 and r.json()["index_last_seq"] == last
                     and r.json(), 60, "the new node caught up with the tail")
    assert ready == {"ready": True, "index_last_seq": last, "log_last_seq": last}
    assert "mykey_gateway_index_lag_events 0.0" in api.get("/metrics").text
    set_log_location(url)
    try:
        assert diff_live_index(new) == []  # the snapshot plus the tail equals a full rebuild
    finally:
        set_log_location(None)

    follower = _node_process(server)
    follower.send_signal(signal.SIGSTOP)  # the node's follower stands still while the writer goes on
    try:
        _commands(writer, "c", 3)
        behind = js_open(url, readonly=True).last_seq
        resp = api.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["index_last_seq"] == last and resp.json()["log_last_seq"] == behind
        assert f"mykey_gateway_index_lag_events {float(behind - last)}" in api.get("/metrics").text
    finally:
        follower.send_signal(signal.SIGCONT)
    wait_for(lambda: api.get("/readyz").status_code == 200, 60, "the node caught up again")


def test_the_failover_benchmark_quick_mode_loses_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.nodes_failover", "--quick", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["torn"] == 0
    assert result["leader_kills"] == 1 and result["writer_node_kills"] == 1 and result["takeover"]["max_s"] > 0
    assert "writer-node kills: 1; takeover median" in out.stdout


def test_the_nats_demo_kills_the_writer_node_and_loses_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mykey", "demo", "--nats", "--data", str(tmp_path / "unused")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "through node 2 (forwarded to the writer, node 1): valid" in text
    assert "the stream's leader, killed (SIGKILL)" in text and "during the election: valid" in text
    assert "node 2 took the writer role" in text and "through node 2, now the writer: valid" in text
    assert "node 2's index equals a fresh rebuild from the stream" in text
    assert text.count("no process left") == 2 and "NATS cluster stopped: no server left" in text
    assert not (tmp_path / "unused").exists()
