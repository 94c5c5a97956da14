"""Read-side peers of the macro benchmark, one per process.

    python -m bench.peers_read PEER JOB.json

Each peer answers the same query files (see macro_dataset.write_queries) in its
fastest documented way, writes its first (warm-up) answers to a file for the
runner to check, times `repeat` further passes, and prints one JSON line with
the timings and its peak RSS. Peers run in their own processes so that each
process's memory is measured alone, and because one process must never open an
LMDB environment through two bindings (mykey's Cython binding, py-lmdb).

Peers: mykey (Cython resolve_many), mykey-resolve (resolve, one call per ID),
mykey-pure (the py-lmdb twin's resolve_many), pylmdb (a txn.get loop), dict,
sqlite, redis.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.macro_dataset import Spec, read_queries

Batches = list[tuple[str, list[bytes]]]
Answer = Callable[[Batches], bytes]


def proc_status() -> dict[str, int]:
    """Peak and current RSS of this process (kB), split into anonymous and file-backed pages."""
    out = {"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


class Job:
    def __init__(self, path: str) -> None:
        self.raw = json.loads(Path(path).read_text())
        self.spec = Spec.from_json(self.raw["dataset"])
        self.repeat: int = self.raw["repeat"]
        self.workdir = Path(self.raw["workdir"])
        self.sets = [(s["name"], s["batch"], read_queries(s["queries"])) for s in self.raw["sets"]]
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.extra: dict = {}

    def measure(self, label: str, fn: Answer, *, variant: str | None = None, sets=None) -> None:
        """Warm-up pass (answers saved), then `repeat` timed passes over each query set."""
        for name, batch, batches in sets or self.sets:
            n = sum(len(ids) for _b, ids in batches)
            first = truth = fn(batches)
            if os.environ.get("MYKEY_BENCH_FAULT") == label and first:
                first = bytes([(first[0] + 1) % 5]) + first[1:]  # tests: prove the runner catches a wrong answer
            if len(first) != n:
                raise RuntimeError(f"{label} gave {len(first)} answers for {n} keys")
            ans = self.workdir / f"answers-{label}-{name}.bin".replace(" ", "_").replace("/", "_")
            ans.write_bytes(first)
            runs = []
            for _ in range(self.repeat):
                t0 = time.perf_counter_ns()
                again = fn(batches)
                runs.append(time.perf_counter_ns() - t0)
                if again != truth:
                    raise RuntimeError(f"{label} answered set {name} differently from one run to the next")
            self.rows.append({"label": label, "set": name, "batch": batch, "keys": n, "runs_ns": runs,
                              "answers": str(ans), "variant": variant})

    def best_of(self, label: str, variants: dict[str, Answer]) -> None:
        """Time each variant; keep, per query set, the fastest (by median) under `label`."""
        for name, batch, batches in self.sets:
            tried = []
            for vname, fn in variants.items():
                self.measure(f"{label} [{vname}]", fn, variant=vname, sets=[(name, batch, batches)])
                tried.append(self.rows.pop())
            medians = {row["variant"]: sorted(row["runs_ns"])[len(row["runs_ns"]) // 2] for row in tried}
            best = min(tried, key=lambda row: medians[row["variant"]])
            best["label"] = label
            best["all_variants"] = medians
            best["variant_answers"] = {row["variant"]: row["answers"] for row in tried}
            self.rows.append(best)

    def snapshot(self) -> None:
        """Record memory while the store is still open (file-backed pages are unmapped on close)."""
        self.extra["process"] = proc_status()

    def finish(self, peer: str, **extra) -> None:
        process = self.extra.pop("process", None) or proc_status()
        print(json.dumps({"peer": peer, "rows": self.rows, "notes": self.notes, "process": process,
                          **self.extra, **extra}))


# --- mykey --------------------------------------------------------------------------


def peer_mykey(job: Job, binding_name: str, *, one_at_a_time: bool = False) -> None:
    from mykey.index.binding import binding_by_name
    from mykey.index.resolver import Resolver

    binding = binding_by_name(binding_name)
    t0 = time.perf_counter()
    r = Resolver.open(job.raw["data_root"], binding=binding)
    open_s = time.perf_counter() - t0
    if one_at_a_time:
        res = r.resolve
        str_sets = [(n, b, [(bid, [s.decode("ascii") for s in ids]) for bid, ids in bs]) for n, b, bs in job.sets]

        def one(batches) -> bytes:
            return b"".join([bytes([res(bid, s) for s in ids]) for bid, ids in batches])

        job.measure("mykey resolve, one at a time", one, sets=str_sets)
    else:
        rm = r.resolve_many

        def many(batches: Batches) -> bytes:
            return b"".join([rm(bid, ids) for bid, ids in batches])

        tag = "Cython" if binding_name == "native" else "pure twin"
        job.measure(f"mykey resolve_many ({tag})", many)
    job.snapshot()
    r.close()
    job.finish(f"mykey-{binding_name}", load_s=open_s, lmdb_version=".".join(map(str, binding.LMDB_VERSION)))


# --- py-lmdb ------------------------------------------------------------------------


def peer_pylmdb(job: Job) -> None:
    import lmdb

    t0 = time.perf_counter()
    env = lmdb.open(job.raw["index_dir"], subdir=True, readonly=True, max_dbs=32, lock=True, max_readers=126)
    db = env.open_db(b"svc", create=False)
    open_s = time.perf_counter() - t0

    def loop(batches: Batches) -> bytes:
        out = []
        for bid, ids in batches:
            p = bid.encode("ascii")
            with env.begin(db=db, buffers=False) as txn:
                get = txn.get
                out.append(bytes([v[0] if (v := get(p + k)) else 0 for k in ids]))
        return b"".join(out)

    job.measure("py-lmdb txn.get loop", loop)
    job.snapshot()
    env.close()
    job.finish("pylmdb", load_s=open_s, lmdb_version=".".join(map(str, lmdb.version())),
               pylmdb_version=lmdb.__version__)


# --- Python dict ----------------------------------------------------------------------


def peer_dict(job: Job) -> None:
    t0 = time.perf_counter()
    table: dict[bytes, dict[bytes, int]] = {}
    for chunk in job.spec.rows():
        for prefix, sid, code in chunk:
            sub = table.get(prefix)
            if sub is None:
                sub = table[prefix] = {}
            sub[sid] = code
    load_s = time.perf_counter() - t0
    empty: dict[bytes, int] = {}

    def lookup(batches: Batches) -> bytes:
        out = []
        for bid, ids in batches:
            get = table.get(bid.encode("ascii"), empty).get
            out.append(bytes([get(k, 0) for k in ids]))
        return b"".join(out)

    job.measure("Python dict", lookup)
    job.finish("dict", load_s=load_s)


# --- SQLite ---------------------------------------------------------------------------

SQLITE_IN_CHUNK = 1_000  # measured: 500-1,000 beat 100 and 5,000+


def peer_sqlite(job: Job) -> None:
    import sqlite3

    path = job.workdir / "peer.sqlite"
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            p.unlink()
    t0 = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("CREATE TABLE svc (k BLOB PRIMARY KEY, code INTEGER NOT NULL) WITHOUT ROWID")
    con.execute("BEGIN")
    for chunk in job.spec.rows(100_000):
        con.executemany("INSERT INTO svc VALUES (?, ?)", [(p + s, c) for p, s, c in chunk])
    con.execute("COMMIT")
    con.close()
    load_s = time.perf_counter() - t0
    size = path.stat().st_size

    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA query_only=1")
    con.execute(f"PRAGMA mmap_size={size + (64 << 20)}")
    con.execute("PRAGMA cache_size=-1048576")  # 1 GiB page cache
    cur = con.cursor()
    one_sql = "SELECT code FROM svc WHERE k=?"

    def prepared_loop(batches: Batches) -> bytes:
        out = []
        ex = cur.execute
        for bid, ids in batches:
            p = bid.encode("ascii")
            many = len(ids) > 1  # one snapshot per batch; a single SELECT is its own transaction
            if many:
                cur.execute("BEGIN")
            codes = bytearray(len(ids))
            for i, k in enumerate(ids):
                row = ex(one_sql, (p + k,)).fetchone()
                if row:
                    codes[i] = row[0]
            if many:
                cur.execute("COMMIT")
            out.append(bytes(codes))
        return b"".join(out)

    in_sql: dict[int, str] = {}

    def in_chunks(batches: Batches) -> bytes:
        out = []
        for bid, ids in batches:
            p = bid.encode("ascii")
            keys = [p + k for k in ids]
            found: dict[bytes, int] = {}
            many = len(keys) > SQLITE_IN_CHUNK
            if many:
                cur.execute("BEGIN")
            for s in range(0, len(keys), SQLITE_IN_CHUNK):
                part = keys[s:s + SQLITE_IN_CHUNK]
                sql = in_sql.get(len(part))
                if sql is None:
                    sql = in_sql[len(part)] = f"SELECT k, code FROM svc WHERE k IN ({','.join('?' * len(part))})"
                found.update(cur.execute(sql, part).fetchall())
            if many:
                cur.execute("COMMIT")
            get = found.get
            out.append(bytes([get(k, 0) for k in keys]))
        return b"".join(out)

    job.best_of("SQLite", {"IN chunks": in_chunks, "prepared loop": prepared_loop})
    job.snapshot()
    con.close()
    job.finish("sqlite", load_s=load_s, disk_bytes=size, sqlite_version=sqlite3.sqlite_version)


# --- Redis ----------------------------------------------------------------------------

REDIS_MGET_CHUNK = 1_000  # measured: pipelined chunks of 1,000 beat one huge MGET


def peer_redis(job: Job) -> None:
    import redis

    r = redis.Redis(host="127.0.0.1", port=job.raw["redis_port"], socket_timeout=60)
    r.flushall()
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    queued = 0
    for chunk in job.spec.rows(10_000):
        pipe.mset({p + s: bytes((c,)) for p, s, c in chunk})
        queued += 1
        if queued >= 10:
            pipe.execute()
            queued = 0
    pipe.execute()
    load_s = time.perf_counter() - t0
    info = r.info("memory")
    keys = r.dbsize()
    if keys != job.spec.service_ids:
        raise RuntimeError(f"redis holds {keys} keys, expected {job.spec.service_ids}")

    def mget(batches: Batches) -> bytes:
        out = []
        for bid, ids in batches:
            p = bid.encode("ascii")
            keys = [p + k for k in ids]
            if len(keys) <= REDIS_MGET_CHUNK:
                vals = r.mget(keys)
            else:
                pl = r.pipeline(transaction=False)
                for s in range(0, len(keys), REDIS_MGET_CHUNK):
                    pl.mget(keys[s:s + REDIS_MGET_CHUNK])
                vals = [v for part in pl.execute() for v in part]
            out.append(bytes([v[0] if v else 0 for v in vals]))
        return b"".join(out)

    job.measure("Redis pipelined MGET", mget)
    from redis.utils import HIREDIS_AVAILABLE

    job.finish("redis", load_s=load_s, used_memory=info.get("used_memory"), redis_py=redis.__version__,
               hiredis=bool(HIREDIS_AVAILABLE))
    r.close()


PEERS = {
    "mykey": lambda job: peer_mykey(job, "native"),
    "mykey-pure": lambda job: peer_mykey(job, "pure"),
    "mykey-resolve": lambda job: peer_mykey(job, "native", one_at_a_time=True),
    "pylmdb": peer_pylmdb,
    "dict": peer_dict,
    "sqlite": peer_sqlite,
    "redis": peer_redis,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in PEERS:
        print(f"usage: python -m bench.peers_read {{{','.join(PEERS)}}} JOB.json", file=sys.stderr)
        return 2
    os.environ.pop("MYKEY_PURE", None)
    PEERS[argv[0]](Job(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
