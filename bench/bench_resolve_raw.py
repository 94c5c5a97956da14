"""Raw LMDB lookup speed, a LOWER BOUND: native resolve_many ("sorted" and "get") against a py-lmdb loop.

Builds its own index of --keys random keys (5-byte prefix + 11-byte id, 8-byte values)
with the native binding (put_many, sync=False): not an index mykey's write path built, so
its figures are a lower bound on lookup cost, not what a deployment gets. The targets are
measured on indexes built by `mykey service import` and `mykey rebuild`:
python -m bench.perf_targets. This draws one batch of --batch ids with 10% absent, and
reports ns per key (median of --repeat runs, warm cache).

The py-lmdb loop runs in a child process (one process may open an environment through
one binding only). The child stays up and the methods take turns, one run of each per
round, so that drift in the machine's speed (it is shared and noisy) hits all alike
and the ratios hold even when absolute times wander.

    .venv/bin/python bench/bench_resolve_raw.py --keys 1000000 --batch 100000 --repeat 5
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib

PREFIX = b"svc01"
ID_LEN = 11
CHUNK = 100_000
SORTED = "native resolve_many method='sorted'"
GET = "native resolve_many method='get'"
PYLMDB = "py-lmdb txn.get loop"
PURE = "pure binding resolve_many"

# The child: for every line "run" on stdin, one timed run of the py-lmdb loop and one
# of the pure binding's resolve_many; prints {name: [ns_per_key, crc32 of answers]}.
CHILD = textwrap.dedent(
    """
    import json, sys, time, zlib
    from mykey.index import _lmdb_pure
    path, batch_file = sys.argv[1], sys.argv[2]
    prefix = %r
    raw = open(batch_file, "rb").read()
    ids = [raw[i:i + %d] for i in range(0, len(raw), %d)]
    n = len(ids)
    penv = _lmdb_pure.Env(path, readonly=True)
    pdb = penv.open_db(b"ids")
    reader = penv.reader()
    env, db = penv._env, penv._dbs[pdb]  # the underlying py-lmdb Environment and handle

    def pylmdb_loop():
        out = bytearray(n)
        with env.begin(buffers=False) as txn:
            get = txn.get
            for i, k in enumerate(ids):
                v = get(prefix + k, None, db)
                if v:
                    out[i] = v[0]
        return bytes(out)

    def pure_resolve():
        return reader.resolve_many(pdb, prefix, ids, method="get")

    def once(fn):
        t0 = time.perf_counter_ns()
        out = fn()
        return [(time.perf_counter_ns() - t0) / n, zlib.crc32(out)]

    for line in sys.stdin:
        print(json.dumps({%r: once(pylmdb_loop), %r: once(pure_resolve)}), flush=True)
    penv.close()
    """
) % (PREFIX, ID_LEN, ID_LEN, PYLMDB, PURE)


def build(native, path: str, n_keys: int, seed: int) -> list[bytes]:
    """Fresh index of n_keys random ids; returns the ids (in insertion order)."""
    if os.path.exists(path):
        shutil.rmtree(path)
    rnd = random.Random(seed)
    ids = list({rnd.randbytes(ID_LEN) for _ in range(n_keys)})
    while len(ids) < n_keys:  # collisions are vanishingly rare with 88-bit ids
        ids.append(rnd.randbytes(ID_LEN))
    t0 = time.perf_counter()
    env = native.Env(path, map_size=8 << 30, sync=False)
    db = env.open_db(b"ids")
    for start in range(0, n_keys, CHUNK):
        # A nonzero first byte, so a found key never reads as absent.
        items = [(PREFIX + k, bytes([rnd.randint(1, 255)]) + rnd.randbytes(7)) for k in ids[start:start + CHUNK]]
        with env.begin(write=True) as txn:
            txn.put_many(db, items)
    env.sync()
    st = env.stat(db)
    env.close()
    took = time.perf_counter() - t0
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    print(f"built {st['entries']:,} keys in {took:.1f} s with put_many (sync=False): depth {st['depth']}, "
          f"{st['leaf_pages']:,} leaf pages, data.mdb {size / 1e6:.0f} MB")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys in the index")
    ap.add_argument("--batch", type=int, default=100_000, help="keys per resolve_many batch")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per method (median reported)")
    ap.add_argument("--dir", default=None, help="directory for the index (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--crossover", action="store_true",
                    help="also time sorted vs get for batch sizes 1k..100k (where sorting pays off)")
    args = ap.parse_args()

    from mykey.index import binding as lmdbenv

    native = lmdbenv.binding_by_name("native")
    tmp = None
    base = args.dir
    if base is None:
        tmp = tempfile.mkdtemp(prefix="bench-resolve-")
        base = tmp
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, "index")
    child = None
    try:
        ids = build(native, path, args.keys, args.seed)
        rnd = random.Random(args.seed + 1)
        n_absent = args.batch // 10
        batch = [rnd.choice(ids) for _ in range(args.batch - n_absent)]
        batch += [rnd.randbytes(ID_LEN) for _ in range(n_absent)]
        rnd.shuffle(batch)
        del ids
        batch_file = os.path.join(base, "batch.bin")
        with open(batch_file, "wb") as f:
            f.write(b"".join(batch))
        # Both processes read the batch back the same way: fresh bytes objects, as a
        # gateway gets them from decoding a request.
        with open(batch_file, "rb") as f:
            raw = f.read()
        batch = [raw[i:i + ID_LEN] for i in range(0, len(raw), ID_LEN)]

        env = native.Env(path, readonly=True)
        db = env.open_db(b"ids")
        reader = env.reader()
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, batch_file],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def child_round() -> dict:
            assert child is not None and child.stdin is not None and child.stdout is not None
            child.stdin.write("run\n")
            child.stdin.flush()
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("the py-lmdb child process died; run it alone to see why")
            return json.loads(line)

        def native_once(method: str) -> tuple[float, bytes]:
            t0 = time.perf_counter_ns()
            out = reader.resolve_many(db, PREFIX, batch, method=method)
            return (time.perf_counter_ns() - t0) / len(batch), out

        results: dict[str, list[float]] = {SORTED: [], GET: [], PYLMDB: [], PURE: []}
        answers = {}
        for rnd_no in range(args.repeat + 1):  # round 0 warms up and is not counted
            for name, method in ((SORTED, "sorted"), (GET, "get")):
                ns, answers[method] = native_once(method)
                if rnd_no:
                    results[name].append(ns)
            for name, (ns, crc) in child_round().items():
                assert crc == zlib.crc32(answers["sorted"]), f"{name} gave different answers"
                if rnd_no:
                    results[name].append(ns)
        assert answers["sorted"] == answers["get"], "sorted and get disagree"
        found = sum(1 for b in answers["sorted"] if b)

        crossover = []
        if args.crossover:
            for size in (1_000, 3_000, 10_000, 30_000, 100_000):
                # Each run gets its own slice of the batch, and the two methods take turns:
                # a run must not find the leaf pages of an earlier run still in CPU cache.
                chunks = [batch[i:i + size] for i in range(0, len(batch) - size + 1, size)]
                per: dict[str, list[float]] = {"sorted": [], "get": []}
                for r in range(max(2 * args.repeat, len(chunks))):
                    method = ("sorted", "get")[r % 2]
                    sub = chunks[r % len(chunks)]
                    t0 = time.perf_counter_ns()
                    reader.resolve_many(db, PREFIX, sub, method=method)
                    per[method].append((time.perf_counter_ns() - t0) / size)
                crossover.append((size, statistics.median(per["sorted"]), statistics.median(per["get"])))
        env.close()
    finally:
        if child is not None:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=60)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    sorted_ns = statistics.median(results[SORTED])
    print("\nLOWER BOUND (an index this script built; python -m bench.perf_targets measures mykey's own):")
    print(f"{args.keys:,} keys, batches of {args.batch:,} ({found:,} found, {args.batch - found:,} absent), "
          f"median of {args.repeat} interleaved warm runs; C library LMDB "
          f"{'.'.join(map(str, native.LMDB_VERSION))}, py-lmdb in a child process\n")
    w = max(len(k) for k in results)
    print(f"{'method':<{w}}  {'ns/key':>7}  {'min':>7}  {'max':>7}  {'÷ sorted':>8}")
    print(f"{'-' * w}  {'-' * 7}  {'-' * 7}  {'-' * 7}  {'-' * 8}")
    for name, runs in results.items():
        med = statistics.median(runs)
        print(f"{name:<{w}}  {med:7.0f}  {min(runs):7.0f}  {max(runs):7.0f}  {med / sorted_ns:8.2f}")
    if crossover:
        print("\nsorted vs get by batch size (ns/key, median; each run on its own slice of the batch):")
        print(f"{'batch':>8}  {'sorted':>7}  {'get':>7}  {'get ÷ sorted':>12}")
        for size, s_ns, g_ns in crossover:
            print(f"{size:>8,}  {s_ns:7.0f}  {g_ns:7.0f}  {g_ns / s_ns:12.2f}")


if __name__ == "__main__":
    main()
