"""Benchmark the audit tools: `mykey audit verify` over N events, inclusion proofs, trail upkeep.

Usage: python bench/audit_speed.py [--events 1e6] [--batch 10000] [--proofs 1000] [--dir DIR] [--as-of] [--json]

Builds a data directory (log appended in big batches with fsync="never", the Merkle
trail caught up after every batch as the engine does, a signed checkpoint every
100,000 events), then times verify_data_dir, prove_inclusion (each call opens the
log and trail read-only, as `mykey audit prove` does) and check_proof, and prints a
table (or JSON; `run()` returns the figures for the suite runner). Targets (issue 6): verify of 1,000,000 events < 10 s, one inclusion proof < 10 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from mykey.audit.checkpoints import list_checkpoints
from mykey.audit.keys import VKEY_FILE, ensure_signing_key
from mykey.audit.proofs import check_proof, prove_inclusion
from mykey.audit.replay import resolve_as_of
from mykey.audit.trail import AuditTrail
from mykey.audit.verify import verify_data_dir
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.log.filelog import FileLog

ISSUER = "CN=JPKI User CA,O=JPKI,C=JP"
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def mykey_id(n: int) -> str:
    out = []
    for _ in range(8):
        n, r = divmod(n, len(ALPHABET))
        out.append(ALPHABET[r])
    return "".join(out)


def batch_events(start: int, count: int) -> list[ev._Event]:
    """A realistic mix: 1 MyKey creation, 1 registration and 1 link per 3 events, some suspensions."""
    out: list[ev._Event] = []
    for i in range(start, start + count):
        person, kind = divmod(i, 3)
        mk = mykey_id(person)
        biz = f"A{person % 1000:04d}"
        if kind == 0:
            fp = hashlib.sha256(i.to_bytes(8, "big")).digest()
            out.append(ev.MyKeyCreated(mk, ISSUER, format(person + 1, "x"), fp))
        elif kind == 1:
            out.append(ev.ServiceIdRegistered(biz, f"svc-{person}"))
        elif person % 50 == 0:
            out.append(ev.MyKeySuspended(mk, "card reported lost"))
        else:
            out.append(ev.ServiceIdLinked(biz, f"svc-{person}", mk))
    return out


def build(data: DataDir, n: int, batch: int, every: int) -> dict[str, float]:
    ensure_signing_key(data, "mykey.bench/log")
    log = FileLog.open(data.log, fsync="never")
    t_append = t_trail = 0.0
    trail = AuditTrail.open(data, log)
    try:
        done = 0
        while done < n:
            k = min(batch, n - done)
            events = batch_events(done, k)
            t = time.perf_counter()
            log.append(events, ev.Actor("operator", "bench"))
            t_append += time.perf_counter() - t
            t = time.perf_counter()
            trail.catch_up()
            t_trail += time.perf_counter() - t
            done += k
            if done % every == 0 or done == n:
                trail.checkpoint()
        # The engine's pattern: one small append, then catch_up.
        t = time.perf_counter()
        for i in range(1000):
            log.append([ev.MyKeyResumed(mykey_id(i * 50))], ev.Actor("operator", "bench"))
        t_small_append = (time.perf_counter() - t) / 1000
        t = time.perf_counter()
        for _ in range(1000):
            log.append([ev.MyKeyResumed(mykey_id(7))], ev.Actor("operator", "bench"))
            trail.catch_up()
        t_small_both = (time.perf_counter() - t) / 1000
        trail.catch_up()
        t = time.perf_counter()
        trail.checkpoint()
        t_ckpt = time.perf_counter() - t
    finally:
        trail.close()
        log.close()
    return {
        "append": t_append,
        "trail": t_trail,
        "catch_up_1": t_small_both - t_small_append,
        "checkpoint": t_ckpt,
    }


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(
    n: int, *, batch: int = 10_000, every: int = 100_000, proofs: int = 1000, root: Path | None = None,
    as_of: bool = False,
) -> dict[str, float]:
    """Build a data dir of ``n`` events under ``root`` (default: a temp dir) and return the figures (seconds, bytes)."""
    with tempfile.TemporaryDirectory(prefix="mykey-audit-bench-") as tmp:
        data = DataDir(root or Path(tmp) / "data")
        t = time.perf_counter()
        b = build(data, n, batch, every)
        fig: dict[str, float] = {"events": n + 2000, "build_s": time.perf_counter() - t}
        fig.update({f"{k}_s": v for k, v in b.items()})
        fig["log_bytes"] = du(data.log)
        fig["merkle_bytes"] = du(data.merkle)
        fig["checkpoints"] = len(list_checkpoints(data))
        t = time.perf_counter()
        report = verify_data_dir(data)
        fig["verify_s"] = time.perf_counter() - t
        assert report.ok, report.problems
        rnd = random.Random(1)
        size = list_checkpoints(data)[-1][0]
        times, docs = [], []
        for s in (rnd.randint(1, size) for _ in range(proofs)):
            t = time.perf_counter()
            docs.append(prove_inclusion(data, s))
            times.append(time.perf_counter() - t)
        times.sort()
        fig.update(
            prove_mean_s=statistics.mean(times),
            prove_p50_s=times[len(times) // 2],
            prove_p99_s=times[int(len(times) * 0.99)],
            prove_max_s=times[-1],
        )
        vkey = (data.keys / VKEY_FILE).read_text().strip()
        t = time.perf_counter()
        for d in docs:
            check_proof(d, vkey)
        fig["check_proof_s"] = (time.perf_counter() - t) / len(docs)
        if as_of:
            t = time.perf_counter()
            resolve_as_of(data, size // 2, "A0001", ["svc-1001", "svc-2001"])
            fig["resolve_as_of_s"] = time.perf_counter() - t
    return fig


def main() -> None:
    """Run the benchmark and print the table (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=float, default=1e6, help="events in the log (default 1e6)")
    ap.add_argument("--batch", type=int, default=10_000, help="events per append while building")
    ap.add_argument("--checkpoint-every", type=int, default=100_000, help="sign a checkpoint every this many events")
    ap.add_argument("--proofs", type=int, default=1000, help="inclusion proofs to time")
    ap.add_argument("--dir", type=Path, default=None, help="build here (default: a temporary directory)")
    ap.add_argument("--as-of", action="store_true", help="also time resolve_as_of (a scan of half the log)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()
    n = int(args.events)
    if not args.json:
        print(f"building {n:,} events ...", flush=True)
    f = run(n, batch=args.batch, every=args.checkpoint_every, proofs=args.proofs, root=args.dir, as_of=args.as_of)
    if args.json:
        print(json.dumps(f, sort_keys=True))
        return
    ms = 1000.0
    rows = [
        ("build: append (fsync=never)", f"{f['append_s']:.2f} s"),
        ("build: trail catch_up after each batch", f"{f['trail_s']:.2f} s = {f['trail_s'] / n * 1e6:.2f} µs/event"),
        ("trail catch_up after a 1-event append", f"{f['catch_up_1_s'] * 1e6:.0f} µs"),
        ("checkpoint (catch up, sync, flush, sign)", f"{f['checkpoint_s'] * ms:.1f} ms"),
        ("log size", f"{f['log_bytes'] / 1e6:.1f} MB"),
        ("Merkle trail size", f"{f['merkle_bytes'] / 1e6:.1f} MB = {f['merkle_bytes'] / f['events']:.1f} B/event"),
        ("checkpoints", f"{f['checkpoints']:.0f}"),
        (f"audit verify ({f['events']:,.0f} events)", f"{f['verify_s']:.2f} s"),
        (
            "prove_inclusion (open log + trail, read record, proof)",
            f"mean {f['prove_mean_s'] * ms:.2f} ms, p50 {f['prove_p50_s'] * ms:.2f}, "
            f"p99 {f['prove_p99_s'] * ms:.2f}, max {f['prove_max_s'] * ms:.2f} ms",
        ),
        ("check_proof (offline)", f"{f['check_proof_s'] * ms:.2f} ms"),
    ]
    if "resolve_as_of_s" in f:
        rows.append(("resolve_as_of (2 keys, half the log)", f"{f['resolve_as_of_s']:.2f} s"))
    print(f"\nmykey audit benchmark: {n:,} events in batches of {args.batch:,}, {os.cpu_count()} CPUs, "
          f"built in {f['build_s']:.1f} s\n")
    w = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{w}}  {value}")


if __name__ == "__main__":
    main()
