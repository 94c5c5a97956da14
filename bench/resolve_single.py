"""Two of the index's targets on an existing data directory, quickly and side by side.

    python -m bench.resolve_single DATA_DIR --ids N            # quick mode (< 60 s)
    python -m bench.resolve_single DATA_DIR --ids N --rounds 9 --singles 20000

DATA_DIR holds an index built by `mykey service import` of bench.perf_targets' first N
service IDs of business A0001 (python -m bench.perf_targets --keep keeps one). Prints:

- single: Resolver.resolve one ID at a time ÷ the C mdb_get loop with batches of one
  (each CPU time of the measuring thread, per call; runs take turns, medians);
- threads: resolve_many of batches of 100,000, eight calls in each of two threads ÷ all sixteen in one thread
  (wall time), with each thread's share of CPU and its waits per call;
- c_threads (--c-threads): two C mdb_get loops in two processes ÷ the same two runs one
  after the other (wall time): what this machine gives two busy lookers at the most.

It reuses bench.perf_targets' dataset, peers and two_threads(), so its figures are those
perf_targets reports, with fewer rounds and no other peers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import perf_targets as pt


def singles(resolver, child: pt.Child, ids_blob: bytes, want: bytes, rounds: int) -> dict:
    one = resolver.resolve
    business = pt.BUSINESS
    py, c = [], []
    for r in range(rounds + 1):  # round 0 warms up
        ids = ids_blob.split(b"\n")
        c0 = time.thread_time_ns()
        out = [one(business, k) for k in ids]
        c1 = time.thread_time_ns()
        if bytes(out) != want:
            raise RuntimeError("resolve() answered differently from the truth")
        got = child.ask("all")
        if r:
            py.append((c1 - c0) / len(ids))
            c.append(got["cpu_ns"] / got["keys"])
    return {"resolve_ns": statistics.median(py), "c_ns": statistics.median(c),
            "ratios": [p / q for p, q in zip(py, c, strict=True)],
            "single": statistics.median(py) / statistics.median(c)}


def c_threads(exe: Path, gen: str, qfile: Path, workdir: Path, rounds: int) -> dict:
    """Two C loops over one batch each: in turn (one process), then side by side (two)."""
    a = pt.Child([str(exe), gen, str(qfile), str(workdir / "ct-a.bin"), "-"])
    b = pt.Child([str(exe), gen, str(qfile), str(workdir / "ct-b.bin"), "-"])
    one, two = [], []
    try:
        for r in range(rounds + 1):
            t0 = time.perf_counter_ns()
            a.ask("0")
            a.ask("1")
            t1 = time.perf_counter_ns()
            for ch, i in ((a, 0), (b, 1)):
                assert ch.proc.stdin is not None
                ch.proc.stdin.write(f"{i}\n")
                ch.proc.stdin.flush()
            a._read()
            b._read()
            t2 = time.perf_counter_ns()
            if r:
                one.append(t1 - t0)
                two.append(t2 - t1)
    finally:
        a.close()
        b.close()
    return {"one_ns": statistics.median(one), "two_ns": statistics.median(two),
            "speedup": statistics.median(one) / statistics.median(two)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.resolve_single", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a data directory built by perf_targets' import")
    ap.add_argument("--ids", type=pt.count, required=True, help="service IDs the data directory holds")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--singles", type=pt.count, default=10_000, help="single lookups per round")
    ap.add_argument("--batch", type=pt.count, default=100_000, help="keys per resolve_many batch")
    ap.add_argument("--only", choices=["single", "threads"], help="one of the two figures")
    ap.add_argument("--c-threads", action="store_true", help="also two C loops side by side")
    args = ap.parse_args(argv)

    from mykey.index.resolver import Resolver

    from bench.macro_dataset import write_queries

    n = args.ids
    res: dict = {"ids": n}
    with tempfile.TemporaryDirectory(prefix="mykey-single-") as tmp:
        workdir = Path(tmp)
        gen = str(pt.index_dir(args.data))
        exe = pt.build_c(workdir)
        resolver = Resolver.open(args.data)
        try:
            if args.only != "threads":
                blob = pt.batch_blob(n, args.singles, 99)
                want = pt.expected_answers(n, args.singles, 99)
                sfile = workdir / "singles.bin"
                write_queries(sfile, [(pt.BUSINESS, [k]) for k in blob.split(b"\n")])
                child = pt.Child([str(exe), gen, str(sfile), str(workdir / "s.bin"), "-"])
                try:
                    res["single"] = singles(resolver, child, blob, want, args.rounds)
                finally:
                    child.close()
            if args.only != "single":
                blobs = [pt.batch_blob(n, args.batch, seed) for seed in range(2)]
                expected = [pt.expected_answers(n, args.batch, seed) for seed in range(2)]
                problems: list[str] = []
                res["threads"] = pt.two_threads(resolver, blobs, expected, args.rounds, problems, "threads")
                if problems:
                    raise RuntimeError("; ".join(problems))
                if args.c_threads:
                    qfile = workdir / "batches.bin"
                    write_queries(qfile, [(pt.BUSINESS, b.split(b"\n")) for b in blobs])
                    res["c_threads"] = c_threads(exe, gen, qfile, workdir, args.rounds)
        finally:
            resolver.close()
    s, t = res.get("single"), res.get("threads")
    if s:
        print(f"single: {s['resolve_ns']:.0f} ns / {s['c_ns']:.0f} ns = {s['single']:.2f} "
              f"(runs {', '.join(f'{x:.2f}' for x in s['ratios'])})")
    if t:
        print(f"threads: x{t['speedup']:.2f} (one {t['one_thread_ns'] / 1e6:.1f} ms, two "
              f"{t['two_threads_ns'] / 1e6:.1f} ms), cpu_share {t['cpu_share']:.2f}, "
              f"waits_per_call {t['waits_per_call']:.1f}")
    if "c_threads" in res:
        c = res["c_threads"]
        print(f"C threads (two processes): x{c['speedup']:.2f} (one {c['one_ns'] / 1e6:.1f} ms, "
              f"two {c['two_ns'] / 1e6:.1f} ms)")
    print(json.dumps(res, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
