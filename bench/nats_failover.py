"""The replicated log on NATS JetStream: append speed against the file log, and the leader-kill drill.

    python -m bench.nats_failover                 # >= 20 leader kills (several minutes)
    python -m bench.nats_failover --quick         # 2 kills, small runs (< 60 s): a smoke run
    python -m bench.nats_failover --kills 50 --json out.json

1. Appends per second, all in the same run on this machine: the embedded file log
   (fsync always), a single JetStream server (R1) and a 3-node cluster (R3), both with
   ``sync_interval: always``; batches of 100 and 10,000 events (one conditional atomic
   batch each). Medians of the repeats.
2. The drill: a writer appends batches (1, 20, 100 events) through a JetStreamLog on
   an R3 stream while the stream leader is SIGKILLed again and again (restarted with its
   disk after each kill, once every node is current). Reports the stall of every
   failover (the longest wait between acknowledged appends around the kill: median,
   max) and checks the whole stream
   against what was acknowledged: events lost (must be 0), extra, duplicated.

Every server listens on 127.0.0.1 only and is stopped at the end (and killed with this
process if it dies).
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

from mykey.domain import events as ev
from mykey.log.filelog import FileLog
from mykey.log.jetstream import JetStreamLog
from mykey_dev.nats import AppendLoad, LocalCluster, audit_drill, fail_leader

BATCHES = {100: (200, 40), 10_000: (10, 3)}  # batch size -> batches per run (full, quick)


def events(n: int, start: int) -> list[ev.Event]:
    return [ev.ServiceIdRegistered("A0001", f"{start + i:010d}") for i in range(n)]


def append_rate(log, batch: int, count: int) -> float:
    """Events per second appending count batches of batch events."""
    work = [events(batch, b * batch) for b in range(count)]
    t0 = time.perf_counter()
    for b in work:
        log.append(b)
    return batch * count / (time.perf_counter() - t0)


def rates(root: Path, r1: LocalCluster, r3: LocalCluster, quick: bool, repeat: int) -> list[dict]:
    rows = []
    for batch, (full, small) in BATCHES.items():
        count = small if quick else full
        for name in ("file", "R1", "R3"):
            runs = []
            for i in range(repeat):
                if name == "file":
                    d = root / f"file-{batch}-{i}"
                    with FileLog.open(d, fsync="always") as log:
                        runs.append(append_rate(log, batch, count))
                    shutil.rmtree(d)
                else:
                    cl, replicas = (r1, 1) if name == "R1" else (r3, 3)
                    url = cl.log_url(stream=f"B{batch}_{name}_{i}", replicas=replicas)
                    with JetStreamLog.open(url) as log:
                        runs.append(append_rate(log, batch, count))
            rows.append({"log": name, "batch": batch, "events": batch * count, "events_per_s": statistics.median(runs),
                         "min": min(runs), "max": max(runs)})
            print(f"  {name:<4} batches of {batch:>6,}: {rows[-1]['events_per_s']:>10,.0f} events/s", flush=True)
    return rows


def drill(cluster: LocalCluster, kills: int) -> dict:
    stream = "DRILL"
    load = AppendLoad(JetStreamLog.open(cluster.log_url(stream=stream, max_msg_bytes=4096))).start()
    stalls, leaders = [], []
    try:
        for k in range(kills):
            stall, leader = fail_leader(cluster, stream, load, how="kill")
            stalls.append(stall)
            leaders.append(leader)
            print(f"  kill {k + 1:>3}/{kills}: leader {leader}, stall {stall:5.2f} s", flush=True)
    finally:
        load.stop()
    with JetStreamLog.open(cluster.log_url(stream=stream), readonly=True) as reader:
        report = audit_drill(reader, load.acked)
    load.log.close()
    return {
        "kills": kills,
        "stall_median_s": statistics.median(stalls) if stalls else None,
        "stall_max_s": max(stalls) if stalls else None,
        "stalls_s": [round(s, 3) for s in stalls],
        "leaders": leaders,
        "append_error": repr(load.error) if load.error else None,
        "acknowledged_batches": len(load.acked),
        **report,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 kills and small runs (a smoke run, < 60 s)")
    ap.add_argument("--kills", type=int, default=None, help="leader kills in the drill (default 20; quick: 2)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per append figure (default 3; quick: 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    kills = args.kills if args.kills is not None else (2 if args.quick else 20)
    repeat = args.repeat or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="mykey-nats-bench-"))
    r1 = r3 = None
    try:
        r1 = LocalCluster.start(root / "r1", 1)
        r3 = LocalCluster.start(root / "r3", 3)
        print("appends (sync_interval: always; file log: fsync always)", flush=True)
        rate_rows = rates(root, r1, r3, args.quick, repeat)
        r1.stop()
        print(f"leader-kill drill on R3 ({kills} kills)", flush=True)
        result = {"appends": rate_rows, "drill": drill(r3, kills)}
    finally:
        for cl in (r1, r3):
            if cl is not None:
                cl.stop()
        shutil.rmtree(root, ignore_errors=True)
    d = result["drill"]
    print()
    print("| log | batch | events/s |")
    print("|---|---:|---:|")
    for row in result["appends"]:
        print(f"| {row['log']} | {row['batch']:,} | {row['events_per_s']:,.0f} |")
    print()
    print(f"failover stall over {d['kills']} leader kills: median {d['stall_median_s']:.2f} s, "
          f"max {d['stall_max_s']:.2f} s; {d['events']:,} events in {d['batches']:,} batches; "
          f"lost {d['lost']}, extra {d['extra']}, duplicated {d['duplicated']}, content ok {d['content_ok']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = d["lost"] == 0 and d["extra"] == 0 and d["duplicated"] == 0 and d["content_ok"] and not d["append_error"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
