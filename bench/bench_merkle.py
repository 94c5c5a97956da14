"""Benchmark the on-disk Merkle store: append N leaves, then roots and proofs.

Usage: python bench/bench_merkle.py [--leaves 1000000] [--size 100] [--dir DIR]
Prints a small table; the store is written under a temporary directory unless --dir.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from mykey.audit import merkle
from mykey.audit.merkle_store import MerkleStore


def _avg_ms(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) * 1000 / reps


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100, help="bytes of data per leaf")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    n = args.leaves
    rnd = random.Random(1)

    print(f"generating {n:,} leaves of {args.size} bytes ...", flush=True)
    blob = os.urandom(args.size * n)
    data = [blob[i * args.size : (i + 1) * args.size] for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp:
        d = args.dir or Path(tmp) / "tree"
        rows: list[tuple[str, str]] = []
        with MerkleStore.open(d) as store:
            t = time.perf_counter()
            store.append_leaves(data)
            t_append = time.perf_counter() - t
            t = time.perf_counter()
            store.flush()
            t_flush = time.perf_counter() - t
            rows.append(("append_leaves (hash + write, 1 call)", f"{t_append:.3f} s  = {n / t_append:,.0f} leaves/s"))
            rows.append(("flush (fsync all levels)", f"{t_flush * 1000:.1f} ms"))

            small = MerkleStore.open(Path(tmp) / "small")
            t = time.perf_counter()
            for i in range(10_000):
                small.append_leaves([data[i]])
            t_one = time.perf_counter() - t
            small.close()
            rows.append(("append_leaves, 1 leaf per call (10k calls)", f"{t_one / 10_000 * 1e6:.1f} µs/call"))

            disk = sum(p.stat().st_size for p in d.glob("level-*"))
            rows.append(("disk, level files", f"{disk / 2**20:.1f} MiB = {disk / n:.1f} bytes/leaf"))

            sizes = [rnd.randrange(1, n + 1) for _ in range(1000)]
            it = iter(sizes * 10)
            rows.append(("root(size), random size", f"{_avg_ms(lambda: store.root(next(it)), 1000):.4f} ms"))
            rows.append(("root() full tree", f"{_avg_ms(store.root, 1000):.4f} ms"))

            idx = iter([rnd.randrange(n) for _ in range(2000)])
            ms_inc = _avg_ms(lambda: store.inclusion_proof(next(idx), n), 2000)
            rows.append((f"inclusion_proof(i, {n:,})", f"{ms_inc:.4f} ms"))
            pairs = iter([tuple(sorted((rnd.randrange(1, n + 1), rnd.randrange(1, n + 1)))) for _ in range(2000)])
            ms_con = _avg_ms(lambda: store.consistency_proof(*next(pairs)), 2000)
            rows.append(("consistency_proof(m, n), random m<=n", f"{ms_con:.4f} ms"))

            root = store.root()
            i = n // 3
            proof = store.inclusion_proof(i, n)
            lh = merkle.leaf_hash(data[i])
            rows.append(("verify_inclusion", f"{_avg_ms(lambda: merkle.verify_inclusion(lh, i, n, proof, root), 2000):.4f} ms"))
            m = n // 3 + 7
            cproof = store.consistency_proof(m, n)
            old_root = store.root(m)
            rows.append(
                ("verify_consistency", f"{_avg_ms(lambda: merkle.verify_consistency(m, n, cproof, old_root, root), 2000):.4f} ms")
            )

            t = time.perf_counter()
            reader = MerkleStore.open(d, readonly=True)
            rows.append(("open readonly", f"{(time.perf_counter() - t) * 1000:.2f} ms"))
            idx2 = iter([rnd.randrange(n) for _ in range(2000)])
            rows.append(("inclusion_proof via readonly reader", f"{_avg_ms(lambda: reader.inclusion_proof(next(idx2), n), 2000):.4f} ms"))
            reader.close()
        t = time.perf_counter()
        MerkleStore.open(d).close()
        rows.append(("reopen writer (clean)", f"{(time.perf_counter() - t) * 1000:.2f} ms"))

    width = max(len(k) for k, _ in rows)
    print(f"\nMerkle store benchmark: {n:,} leaves x {args.size} bytes")
    print("-" * (width + 34))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
