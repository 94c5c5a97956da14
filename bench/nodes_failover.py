"""Failover through the engine and the node processes: stream-leader kills and writer-node kills.

    python -m bench.nodes_failover                 # 20 leader kills + 5 writer-node kills (several minutes)
    python -m bench.nodes_failover --quick         # 1 + 1, shorter lease (< 60 s): a smoke run
    python -m bench.nodes_failover --kills 30 --node-kills 10 --json out.json

A local 3-node NATS cluster (``sync_interval: always``, R3 stream) and two gateway node
processes (``python -m mykey.gateway.node``, each on its own data directory). A command
load registers service IDs through the standby node, which forwards every command to
the writer node over NATS: the engine path of a real gateway (validate, one conditional
atomic batch per command, apply). Then:

1. ``--kills`` times, the stream leader (a nats-server) is SIGKILLed and restarted with
   its disk once every server is current again. The writer node keeps its lease through
   the election (the lease TTL is above it). Reported: the write stall per kill (the
   longest wait between acknowledged commands around the kill).
2. ``--node-kills`` times, the process group of the node holding the writer role is
   SIGKILLed (its lease is not released: it runs out) and restarted with its disk as a
   standby; the load moves to the node that stays up. Reported: the takeover time (until
   the other node reports itself the writer) and the write stall.

At the end the stream is checked against every acknowledged command: lost (must be 0),
duplicated, torn (not exactly one command's rows in one batch), and every node's index
against a fresh rebuild from the log. Everything listens on 127.0.0.1 only and is
stopped at the end (and dies with this process).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mykey.log.jetstream import JetStreamLog, NatsLocation
from mykey.log.lease import DEFAULT_TTL
from mykey_dev.nodes import (
    CommandLoad,
    NodeProcess,
    audit_commands,
    fail_stream_leader,
    make_node_dir,
    start_local_cluster,
    stop_all,
)

QUICK_LEASE_TTL = 4.0  # seconds (quick mode: short takeovers; a leader election may then also move the writer)


def _summary(values: list[float]) -> dict:
    return {
        "median_s": round(statistics.median(values), 3) if values else None,
        "max_s": round(max(values), 3) if values else None,
        "all_s": [round(v, 3) for v in values],
    }


def run(root: Path, kills: int, node_kills: int, lease_ttl: float, echo=print) -> dict:
    from mykey.audit.replay import diff_live_index
    from mykey.datadir import DataDir
    from mykey.log.backend import set_log_location

    cluster = start_local_cluster(root / "nats", 3)
    started: list[NodeProcess] = []
    loads: list[CommandLoad] = []
    try:
        url = cluster.log_url(stream="NODES", max_msg_bytes=4096)
        stream = NatsLocation.parse(url).stream
        first = make_node_dir(root / "node1", url)
        writer = NodeProcess(first, url, "node1", lease_ttl=lease_ttl)
        started.append(writer.start())
        writer.wait_role("active")
        standby = NodeProcess(make_node_dir(root / "node2", url, first=first), url, "node2", lease_ttl=lease_ttl)
        started.append(standby.start())
        load = CommandLoad(standby, prefix="L0-").start()  # forwarded to the writer
        loads.append(load)
        stalls: list[float] = []
        for k in range(kills):
            stall, leader = fail_stream_leader(cluster, stream, load, how="kill")
            stalls.append(stall)
            echo(f"  leader kill {k + 1:>3}/{kills}: nats-server {leader}, write stall {stall:5.2f} s")
        takeovers: list[float] = []
        node_stalls: list[float] = []
        for k in range(node_kills):
            load.wait_for_acks(time.monotonic(), 3)
            t = time.monotonic()
            writer.kill()  # SIGKILL of its process group
            took = standby.wait_role("active", timeout=lease_ttl + 60)
            stall = load.longest_gap(t)
            takeovers.append(took)
            node_stalls.append(stall)
            echo(f"  writer-node kill {k + 1:>3}/{node_kills}: {writer.name} killed, {standby.name} the writer "
                 f"after {took:5.2f} s, write stall {stall:5.2f} s")
            load.stop()
            writer.start()  # back with its disk, a standby now; the load goes through it
            writer, standby = standby, writer
            load = CommandLoad(standby, prefix=f"L{k + 1}-").start()
            loads.append(load)
            load.wait_for_acks(time.monotonic(), 3)
        load.stop()
        with JetStreamLog.open(url, readonly=True) as reader:
            report = audit_commands(reader, loads)
            last = reader.last_seq
        diverged = []
        set_log_location(url)
        try:
            for node in started:
                node.wait_index(last)
                if diff_live_index(DataDir(node.data)):
                    diverged.append(node.name)
        finally:
            set_log_location(None)
        errors = [repr(x.error) for x in loads if x.error is not None]
        return {
            "leader_kills": kills,
            "writer_node_kills": node_kills,
            "lease_ttl_s": lease_ttl,
            "leader_kill_stall": _summary(stalls),
            "takeover": _summary(takeovers),
            "takeover_stall": _summary(node_stalls),
            "acknowledged_commands": sum(len(x.acked) for x in loads),
            "retried": sum(x.retries for x in loads),
            "ambiguous_resolved": sum(x.ambiguous for x in loads),
            "load_errors": errors,
            "indexes_differing_from_a_rebuild": diverged,
            **report,
        }
    finally:
        for x in loads:
            x.stop()
        stop_all(*started)
        cluster.stop()


def ok(result: dict) -> bool:
    return (result["lost"] == 0 and result["duplicated"] == 0 and result["torn"] == 0 and not result["load_errors"]
            and not result["indexes_differing_from_a_rebuild"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 leader kill, 1 writer-node kill, short lease (< 60 s)")
    ap.add_argument("--kills", type=int, default=None, help="stream-leader kills (default 20; quick: 1)")
    ap.add_argument("--node-kills", type=int, default=None, help="writer-node kills (default 5; quick: 1)")
    ap.add_argument("--lease-ttl", type=float, default=None,
                    help=f"the writer lease's TTL in seconds (default {DEFAULT_TTL:g}; quick: {QUICK_LEASE_TTL:g})")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    kills = args.kills if args.kills is not None else (1 if args.quick else 20)
    node_kills = args.node_kills if args.node_kills is not None else (1 if args.quick else 5)
    lease_ttl = args.lease_ttl or (QUICK_LEASE_TTL if args.quick else DEFAULT_TTL)
    root = Path(tempfile.mkdtemp(prefix="mykey-nodes-bench-"))
    t0 = time.monotonic()
    try:
        print(f"failover through the nodes: {kills} stream-leader kills, {node_kills} writer-node kills "
              f"(lease {lease_ttl:g} s)", flush=True)
        result = run(root, kills, node_kills, lease_ttl, echo=lambda s: print(s, flush=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - t0, 1)
    ls, to, ts = result["leader_kill_stall"], result["takeover"], result["takeover_stall"]
    print()
    if kills:
        print(f"stream-leader kills: {kills}; write stall median {ls['median_s']:.2f} s, max {ls['max_s']:.2f} s")
    if node_kills:
        print(f"writer-node kills: {node_kills}; takeover median {to['median_s']:.2f} s, max {to['max_s']:.2f} s; "
              f"write stall median {ts['median_s']:.2f} s, max {ts['max_s']:.2f} s")
    print(f"{result['acknowledged_commands']:,} acknowledged commands ({result['events']:,} events in "
          f"{result['batches']:,} batches): lost {result['lost']}, duplicated {result['duplicated']}, "
          f"torn {result['torn']}, unacknowledged but stored {result['extra']}; indexes differing from a rebuild: "
          f"{len(result['indexes_differing_from_a_rebuild'])}; {result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
