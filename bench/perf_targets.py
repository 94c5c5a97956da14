"""The index's throughput targets, measured on indexes mykey's own write path built, side by side.

    python -m bench.perf_targets                   # 1M and 10M service IDs (about 25 minutes; quiet machine)
    python -m bench.perf_targets --sizes 1e6       # one size (about 3 minutes)
    python -m bench.perf_targets --quick           # tiny sizes, every answer checked (< 60 s; make test)

Prints each target with the measured figure, its ratio and PASS/FAIL, then the figures
behind them; writes everything to perf-targets.json.

Two datasets per size N (both built through mykey's own commands, never by hand):

- "import": N random 11-character service IDs of one business, registered with
  `mykey service import` (files of at most 1,000,000 rows), later `mykey rebuild`. The
  read side runs on it: resolve_many on batches of 100,000 IDs (10% absent, random
  order) beside the pure twin (a child process), a Python dict (N <= 2M), and the plain
  C mdb_get loop (bench/c/mdb_get_loop.c, a child process over the same index files);
  single lookups (Resolver.resolve) beside the C loop with batches of one; two threads
  beside one. Sizes on disk per service ID before and after the rebuild; `mykey audit
  verify` over its log (and over the macro log, whose events are larger).
- "macro": bench.macro_dataset's N service IDs of 100 businesses, N/3 MyKey IDs, 70%
  linked (about 2N events): projection (catch-up of the whole log) and `mykey rebuild`.

Runs take turns (one run of each peer per round) so that drift in a shared machine's
speed hits every peer alike. Single-threaded figures are CPU time of the measuring
thread (the C loop's too); the two-thread figure is wall time. The cache-missing page
visits per key come from `perf stat` where the machine has hardware counters, else
from a model of the page counts (stated in the output).

bench/bench_resolve_raw.py is a lower bound, not a target: it builds its own index
with put_many in a fresh environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
BUSINESS = "A0001"  # the first business `mykey business add` registers
ID_LEN = 11
ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
IMPORT_FILE_ROWS = 1_000_000
DICT_LIMIT = 2_000_000  # the dict peer's memory grows with N: it runs up to here
UNLINKED = 4  # Status.UNLINKED: what every imported ID resolves to
SINGLES = ("resolve, one at a time", "C mdb_get, batches of one")  # per call, not per batch key
PEER_ORDER = ["resolve_many", "resolve_many, input sorted", "resolve_many, LMDB cursor", "pure twin",
              "Python dict loop", "C mdb_get loop", *SINGLES]

TARGETS = [
    # (key, what, goal, comparison): comparison "min" means the measured value must be >= goal.
    ("vs_pure", "resolve_many ÷ pure twin (speed-up)", 3.0, "min"),
    ("vs_dict", "resolve_many ÷ Python dict loop (speed-up)", 2.0, "min"),
    ("vs_c", "resolve_many ÷ C mdb_get loop (speed-up)", 2.5, "min"),
    ("page_misses", "cache-missing page visits per key", 1.5, "max"),
    ("single", "resolve one at a time ÷ C mdb_get per call (time)", 1.3, "max"),
    ("threads", "two threads ÷ one thread (throughput)", 1.8, "min"),
    ("projection", "projection (catch-up), events/s", None, "min"),
    ("rebuild", "`mykey rebuild` of the macro dataset, seconds", 60.0, "max"),
    ("verify", "`mykey audit verify`, events/s", 1_000_000, "min"),
    ("verify_macro", "`mykey audit verify` of the macro log, events/s", 1_000_000, "min"),
]
PROJECTION_GOAL = {1_000_000: 500_000, 10_000_000: 300_000}
REBUILD_AT = 10_000_000  # the rebuild target's size
VERIFY_RUNS = 3
THREAD_CALLS = 8  # resolve_many calls per thread and round in the two-thread figure


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def count(text: str) -> int:
    value = float(text.replace("_", "").replace(",", ""))
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(value)


# --- the import dataset ------------------------------------------------------------------


def _mix(i: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit integers, so distinct i give distinct ids."""
    z = (i + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def service_id(i: int) -> bytes:
    """Service ID number i: 11 random-looking characters (62**11 > 2**64: distinct for distinct i)."""
    z = _mix(i)
    out = bytearray(ID_LEN)
    for j in range(ID_LEN):
        z, r = divmod(z, 62)
        out[j] = ALPHABET[r]
    return bytes(out)


def batch_blob(n: int, size: int, seed: int) -> bytes:
    """One batch of `size` IDs, newline-separated: 90% registered (of the first n), 10% never
    registered, in random order. Split it afresh for every run, so that each run gets new
    bytes objects (as a gateway does from a request), with no hash cached in them."""
    rnd = random.Random(seed)
    absent = size // 10
    ids = [service_id(rnd.randrange(n)) for _ in range(size - absent)]
    ids += [service_id(n + rnd.randrange(10 * n)) for _ in range(absent)]
    rnd.shuffle(ids)
    return b"\n".join(ids)


def expected_answers(n: int, size: int, seed: int) -> bytes:
    """What resolve_many must answer for batch_blob(n, size, seed)."""
    present = {service_id(i) for i in _numbers_of(n, size, seed)}
    return bytes(UNLINKED if k in present else 0 for k in batch_blob(n, size, seed).split(b"\n"))


def _numbers_of(n: int, size: int, seed: int) -> list[int]:
    """The registered ID numbers batch_blob(n, size, seed) draws (the same draws, in order)."""
    rnd = random.Random(seed)
    return [rnd.randrange(n) for _ in range(size - size // 10)]


def mykey_cmd(*args: str, data: Path, timeout: float = 24 * 3600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("MYKEY_PURE", None)
    proc = subprocess.run([sys.executable, "-m", "mykey", "--data", str(data), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"mykey {' '.join(args)} failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return proc


def build_import(root: Path, n: int) -> dict:
    """`mykey init`, `business add`, then `service import` of n IDs (files of <= 1M rows)."""
    mykey_cmd("init", data=root)
    mykey_cmd("business", "add", "--name", "Bench", "--municipality", "131016", data=root)
    seconds = 0.0
    files = 0
    for start in range(0, n, IMPORT_FILE_ROWS):
        stop = min(n, start + IMPORT_FILE_ROWS)
        csv = root.parent / f"import-{start}.csv"
        with open(csv, "wb") as f:
            f.write(b"service_id,customer_id\n")
            f.writelines(service_id(i) + b",\n" for i in range(start, stop))
        log(f"  mykey service import: rows {start:,}-{stop - 1:,}")
        t0 = time.perf_counter()
        mykey_cmd("service", "import", BUSINESS, str(csv), data=root)
        seconds += time.perf_counter() - t0
        csv.unlink()
        files += 1
    return {"import_s": seconds, "files": files}


def index_dir(root: Path) -> Path:
    from mykey.datadir import DataDir
    from mykey.index.store import current_generation

    gen = current_generation(DataDir(root))
    assert gen is not None, root
    return gen


def sizes(root: Path, n: int) -> dict:
    """Bytes on disk and in use (pages x page size) of the index, in all and per service ID."""
    from mykey.index import keys as k
    from mykey.index.binding import binding_by_name

    gen = index_dir(root)
    env = binding_by_name("native").Env(str(gen), readonly=True, create=False, max_dbs=k.MAX_DBS)
    try:
        used, stats = 0, {}
        for name in k.DB_NAMES:
            st = env.stat(env.open_db(name, create=False))
            stats[name.decode()] = st
            used += (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
    finally:
        env.close()
    svc = stats["svc"]
    file_bytes = (gen / "data.mdb").stat().st_size
    return {"file_bytes": file_bytes, "used_bytes": used, "svc": svc,
            "svc_bytes": (svc["branch_pages"] + svc["leaf_pages"]) * svc["psize"],
            "file_per_id": file_bytes / n, "used_per_id": used / n,
            "svc_per_id": (svc["branch_pages"] + svc["leaf_pages"]) * svc["psize"] / n,
            "svc_keys_per_leaf": svc["entries"] / max(1, svc["leaf_pages"])}


# --- peers in child processes ----------------------------------------------------------------


class Child:
    """A peer in its own process that runs one timed run per request line and answers in JSON."""

    def __init__(self, cmd: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        env.pop("MYKEY_PURE", None)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer {self.proc.args} died; run it alone to see why")
        return json.loads(line)

    def ask(self, request: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def build_c(workdir: Path) -> Path:
    src = BENCH / "c" / "mdb_get_loop.c"
    exe = workdir / "mdb_get_loop"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc) on PATH: the C baseline cannot be built")
    subprocess.run([cc, "-O2", "-o", str(exe), str(src), "-llmdb"], check=True)
    return exe


def serve_pure(root: str, blob_file: str) -> int:
    """Child: the pure twin's resolve_many over the batches in blob_file, one run per request."""
    import zlib

    from mykey.index.binding import binding_by_name
    from mykey.index.resolver import Resolver

    blobs = json.loads(Path(blob_file).read_text())
    r = Resolver.open(root, binding=binding_by_name("pure"))
    print(json.dumps({"ready": len(blobs)}), flush=True)
    for line in sys.stdin:
        ids = blobs[int(line)].encode("latin-1").split(b"\n")
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        out = r.resolve_many(BUSINESS, ids)
        t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        print(json.dumps({"ns": t1 - t0, "cpu_ns": c1 - c0, "keys": len(ids), "crc": zlib.crc32(out)}), flush=True)
    r.close()
    return 0


# --- the read side -------------------------------------------------------------------------


def per_key(runs: list[tuple[int, int]], keys: int) -> dict:
    cpu = [c / keys for _w, c in runs]
    wall = [w / keys for w, _c in runs]
    return {"cpu_ns": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
            "wall_ns": statistics.median(wall), "runs": len(runs)}


def read_suite(root: Path, n: int, args: argparse.Namespace, workdir: Path, label: str) -> dict:
    """Every read peer over the same batches, round after round; answers checked on every run."""
    import zlib

    from mykey.index.resolver import Resolver

    from bench.macro_dataset import write_queries

    batch, rounds = args.batch, args.rounds
    nblobs = min(rounds, 4)
    blobs = [batch_blob(n, batch, seed) for seed in range(nblobs)]
    expected = [expected_answers(n, batch, seed) for seed in range(nblobs)]
    qfile = workdir / f"{label}-batches.bin"
    write_queries(qfile, [(BUSINESS, blob.split(b"\n")) for blob in blobs])
    single_blob = batch_blob(n, args.singles, 99)
    singles = single_blob.split(b"\n")
    single_expected = expected_answers(n, args.singles, 99)
    sfile = workdir / f"{label}-singles.bin"
    write_queries(sfile, [(BUSINESS, [k]) for k in singles])
    pfile = workdir / f"{label}-blobs.json"
    pfile.write_text(json.dumps([b.decode("latin-1") for b in blobs]))

    gen = str(index_dir(root))
    c_exe = build_c(workdir)
    c_batches = Child([str(c_exe), gen, str(qfile), str(workdir / "c-answers.bin"), "-"])
    c_first = (workdir / "c-answers.bin").read_bytes()
    if c_first != b"".join(expected):
        raise RuntimeError("the C mdb_get loop's answers differ from the truth")
    c_singles = Child([str(c_exe), gen, str(sfile), str(workdir / "c-single-answers.bin"), "-"])
    if (workdir / "c-single-answers.bin").read_bytes() != single_expected:
        raise RuntimeError("the C mdb_get loop's single answers differ from the truth")
    pure = Child([sys.executable, "-m", "bench.perf_targets", "--serve-pure", str(root), str(pfile)])
    resolver = Resolver.open(root)
    table = dict.fromkeys((service_id(i) for i in range(n)), UNLINKED) if n <= DICT_LIMIT else None
    runs: dict[str, list[tuple[int, int]]] = {}
    problems: list[str] = []

    def timed(name: str, fn, ids, want: bytes) -> None:
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        out = fn(ids)
        t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        out = bytes(out)  # a list of answers becomes bytes after the clock stops
        if os.environ.get("MYKEY_PERF_FAULT") == name and out:
            out = bytes([out[0] ^ 1]) + out[1:]  # tests: prove that a wrong answer is caught
        if out != want:
            problems.append(f"{label}: {name} answered differently from the truth")
        runs.setdefault(name, []).append((t1 - t0, c1 - c0))

    def rm(method: str):
        return lambda ids: resolver.resolve_many(BUSINESS, ids, method=method)

    def dict_loop(ids: list[bytes]) -> bytes:
        get = table.get  # type: ignore[union-attr]
        return bytes([get(k, 0) for k in ids])

    one = resolver.resolve

    def one_at_a_time(ids: list[bytes]) -> list:
        return [one(BUSINESS, k) for k in ids]  # as the C loop does: one call, the answer kept

    peers = ["resolve_many", "resolve_many, input sorted", "resolve_many, LMDB cursor", "pure twin", "C mdb_get loop"]
    if table is not None:
        peers.append("Python dict loop")
    log(f"  read side ({label}): {rounds} rounds of {len(peers)} peers, batches of {batch:,}")
    for r in range(rounds + 1):  # round 0 warms the caches up and is not kept
        i = r % nblobs
        order = peers[r % len(peers):] + peers[: r % len(peers)]
        for name in order:
            ids = blobs[i].split(b"\n")
            if name == "resolve_many":
                timed(name, rm("auto"), ids, expected[i])
            elif name == "resolve_many, input sorted":
                srt = sorted(range(len(ids)), key=ids.__getitem__)
                sids = [ids[j] for j in srt]
                timed(name, rm("auto"), sids, bytes(expected[i][j] for j in srt))
            elif name == "resolve_many, LMDB cursor":
                timed(name, rm("cursor"), ids, expected[i])
            elif name == "Python dict loop":
                timed(name, dict_loop, ids, expected[i])
            elif name == "pure twin":
                got = pure.ask(str(i))
                if got["crc"] != zlib.crc32(expected[i]):
                    problems.append(f"{label}: the pure twin answered differently from the truth")
                runs.setdefault(name, []).append((got["ns"], got["cpu_ns"]))
            else:
                got = c_batches.ask(str(i))
                runs.setdefault(name, []).append((got["ns"], got["cpu_ns"]))
        # Single lookups: resolve() one ID at a time, and the C loop with batches of one.
        timed("resolve, one at a time", one_at_a_time, single_blob.split(b"\n"), single_expected)
        got = c_singles.ask("all")
        runs.setdefault("C mdb_get, batches of one", []).append((got["ns"], got["cpu_ns"]))
        if r == 0:
            runs.clear()
    threads = two_threads(resolver, blobs, expected, max(2, rounds // 2), problems, label)
    walks = _walks()
    resolver.close()
    for child in (c_batches, c_singles, pure):
        child.close()
    out = {name: per_key(rs, args.singles if name in SINGLES else batch) for name, rs in runs.items()}
    return {"peers": out, "threads": threads, "problems": problems, "walks": walks, "batch": batch}


def _walks() -> tuple[int, int]:
    from mykey.index.binding import binding_by_name

    return binding_by_name("native")._walk_counts()


def two_threads(resolver, blobs: list[bytes], expected: list[bytes], rounds: int, problems: list[str],
                label: str, calls: int = THREAD_CALLS) -> dict:
    """Throughput of resolve_many in two threads against one, in turns: each round, one thread
    resolves two batches `calls` times over, then two threads resolve one of them `calls` times
    each (wall time, from the moment both are up). Sustained calls, as a gateway worker makes
    them: a single call per thread would time the threads' start (who takes the GIL first to
    pack its keys), not their throughput."""
    import resource

    one, two, busy, waits, preempted = [], [], [], 0, 0

    def work(batches: list[tuple[list[bytes], bytes]], bad: list[str], go: threading.Barrier | None = None) -> None:
        nonlocal waits, preempted
        if go is not None:
            go.wait()
        u0, c0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time_ns(), time.perf_counter_ns()
        for ids, want in batches:
            if resolver.resolve_many(BUSINESS, ids) != want:
                bad.append(f"{label}: resolve_many in a thread answered differently from the truth")
        if go is not None:  # how much of its time each thread ran, and how often it waited (the GIL)
            busy.append((time.thread_time_ns() - c0) / max(1, time.perf_counter_ns() - t0))
            u1 = resource.getrusage(resource.RUSAGE_THREAD)
            waits += u1.ru_nvcsw - u0.ru_nvcsw
            preempted += u1.ru_nivcsw - u0.ru_nivcsw

    for r in range(rounds + 1):
        a, b = r % len(blobs), (r + 1) % len(blobs)
        bad: list[str] = []
        mine = [(blobs[a].split(b"\n"), expected[a]), (blobs[b].split(b"\n"), expected[b])]  # before the clock
        t0 = time.perf_counter_ns()
        work(mine * calls, bad)
        t1 = time.perf_counter_ns()
        go = threading.Barrier(3)
        ts = [threading.Thread(target=work, args=([m] * calls, bad, go)) for m in mine]
        for t in ts:
            t.start()
        go.wait()  # both threads are up: the clock starts as they do
        start = time.perf_counter_ns()
        for t in ts:
            t.join()
        t2 = time.perf_counter_ns()
        problems.extend(bad)
        if r:
            one.append(t1 - t0)
            two.append(t2 - start)
    per_call = len(busy) * calls
    return {"one_thread_ns": statistics.median(one), "two_threads_ns": statistics.median(two),
            "speedup": statistics.median(one) / statistics.median(two), "rounds": rounds, "calls": calls,
            "cpu_share": statistics.median(busy), "waits_per_call": waits / per_call,
            "preempted_per_call": preempted / per_call}


def page_model(sz: dict, batch: int) -> dict:
    """Page visits per key of the sorted walk over a batch of uniformly random IDs.

    The walk reads each leaf page a batch touches once; with L leaves, a batch of B keys
    touches L(1 - (1 - 1/L)^B) of them. Every leaf visit is counted as a cache miss; the
    branch pages above them (their size is given) are counted as cached: they are all
    a batch of this size reads again and again.
    """
    svc = sz["svc"]
    leaves = max(1, svc["leaf_pages"])
    touched = leaves * (1 - (1 - 1 / leaves) ** batch)
    return {"model": True, "leaf_visits_per_key": touched / batch, "misses_per_key": touched / batch,
            "branch_bytes": svc["branch_pages"] * svc["psize"], "leaf_pages": leaves, "depth": svc["depth"],
            "c_loop_page_visits_per_key": svc["depth"]}


def hardware_counters() -> bool:
    """Whether `perf stat` can count last-level cache misses here."""
    perf = shutil.which("perf")
    if perf is None:
        return False
    proc = subprocess.run([perf, "stat", "-x,", "-e", "LLC-load-misses", "true"], capture_output=True, text=True)
    return proc.returncode == 0 and "<not supported>" not in proc.stderr and "<not counted>" not in proc.stderr


# --- the write side -----------------------------------------------------------------------------


def write_suite(root: Path, n: int, quick: bool) -> dict:
    """Build the macro dataset (log, then projection by catch-up), then `mykey rebuild` it."""
    from bench import macro_dataset as ds

    spec = ds.Spec(n, max(1, n // 3), min(100, max(1, n // 20)))
    log(f"  macro dataset: {n:,} service IDs, ~{spec.event_count():,} events: append, project")
    built = ds.build(spec, root)
    t0 = time.perf_counter()
    mykey_cmd("rebuild", data=root)
    rebuild_s = time.perf_counter() - t0
    return {"events": built.events, "append_s": built.append_s, "project_s": built.project_s,
            "projection_per_s": built.events / built.project_s, "rebuild_s": rebuild_s,
            "rebuild_per_s": built.events / rebuild_s,
            "verify": audit_verify(root)}  # its events are larger than the import's registrations


def audit_verify(root: Path) -> dict:
    """verify_data_dir, which `mykey audit verify` runs, VERIFY_RUNS times (timed in process: no
    interpreter start-up); the median, and the first run (colder caches) beside it."""
    from mykey.audit.verify import verify_data_dir
    from mykey.datadir import DataDir
    from mykey.log.backend import open_log

    with open_log(DataDir(root), readonly=True) as lg:
        events = lg.last_seq
    runs = []
    for _ in range(VERIFY_RUNS):
        t0 = time.perf_counter()
        rep = verify_data_dir(DataDir(root))
        runs.append(time.perf_counter() - t0)
        if not rep.ok:
            raise RuntimeError(f"`mykey audit verify` found problems in {root}: {rep.to_dict()}")
    took = statistics.median(runs)
    return {"events": events, "seconds": took, "per_s": events / took, "runs_s": runs,
            "first_per_s": events / runs[0]}


# --- one size ------------------------------------------------------------------------------------


def run_size(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    res: dict = {"service_ids": n}
    if args.only != "write":
        imp = workdir / f"import-{n}" / "data"
        imp.parent.mkdir(parents=True, exist_ok=True)
        log(f"{n:,} service IDs: import dataset")
        res["import"] = build_import(imp, n)
        res["sizes_imported"] = sizes(imp, n)
        res["read_imported"] = read_suite(imp, n, args, workdir, f"{n}-imported")
        t0 = time.perf_counter()
        mykey_cmd("rebuild", data=imp)
        res["import"]["rebuild_s"] = time.perf_counter() - t0
        res["sizes_rebuilt"] = sizes(imp, n)
        res["page_model"] = page_model(res["sizes_rebuilt"], args.batch)
        res["verify"] = audit_verify(imp)
        if not args.keep:
            shutil.rmtree(imp.parent, ignore_errors=True)
    if args.only != "read":
        mac = workdir / f"macro-{n}" / "data"
        mac.parent.mkdir(parents=True, exist_ok=True)
        res["write"] = write_suite(mac, n, args.quick)
        if not args.keep:
            shutil.rmtree(mac.parent, ignore_errors=True)
    return res


# --- the report ----------------------------------------------------------------------------------


def measured(res: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    if "read_imported" in res:
        peers = res["read_imported"]["peers"]
        mine = peers["resolve_many"]["cpu_ns"]

        def speedup(peer: str) -> float | None:
            return peers[peer]["cpu_ns"] / mine if peer in peers else None

        single = peers["resolve, one at a time"]["cpu_ns"] / peers["C mdb_get, batches of one"]["cpu_ns"]
        out = {"vs_pure": speedup("pure twin"), "vs_dict": speedup("Python dict loop"),
               "vs_c": speedup("C mdb_get loop"), "page_misses": res["page_model"]["misses_per_key"],
               "single": single, "threads": res["read_imported"]["threads"]["speedup"],
               "verify": res["verify"]["per_s"]}
    if "write" in res:
        out["projection"] = res["write"]["projection_per_s"]
        out["rebuild"] = res["write"]["rebuild_s"]
        out["verify_macro"] = res["write"]["verify"]["per_s"]
    return out


def goal_of(key: str, goal: float | None, n: int) -> float | None:
    if key == "projection":
        return PROJECTION_GOAL.get(n)
    if key == "rebuild" and n != REBUILD_AT:
        return None
    if key in ("vs_pure", "vs_dict", "vs_c") and n != 1_000_000:
        return None
    if key == "page_misses" and n != 10_000_000:
        return None
    return goal


def fmt(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def report(doc: dict) -> str:
    lines = ["# Index throughput targets", "",
             f"- command: `{doc['command']}` ({doc['started']}, {doc['elapsed_s']:.0f} s)",
             f"- machine: {doc['machine']}; load average at start {doc['load_start']}, at end {doc['load_end']}",
             "- figures: medians of interleaved runs; single-threaded ones are CPU time of the measuring thread",
             ""]
    if doc["quick"]:
        lines += ["QUICK MODE: tiny datasets, answers checked; the figures mean nothing.", ""]
    rows = []
    for res in doc["sizes"]:
        n = res["service_ids"]
        got = measured(res)
        for key, what, goal, cmp in TARGETS:
            g = goal_of(key, goal, n)
            value = got.get(key)
            if value is None:
                continue
            verdict = "–" if g is None or doc["quick"] else (
                "PASS" if (value >= g if cmp == "min" else value <= g) else "FAIL")
            rows.append([f"{n:,}", what, fmt(value), "–" if g is None else ("≥ " if cmp == "min" else "≤ ") + fmt(g),
                         verdict])
    lines += table(["service IDs", "target", "measured", "goal", "verdict"], rows)
    for res in doc["sizes"]:
        n = res["service_ids"]
        if "read_imported" not in res:
            lines += ["", f"## {n:,} service IDs", ""] + write_lines(res)
            continue
        rd = res["read_imported"]
        lines += ["", f"## {n:,} service IDs (import dataset): ns per key, median (min–max), CPU time", ""]
        mine = rd["peers"]["resolve_many"]["cpu_ns"]
        rows = []
        for name in PEER_ORDER:
            st = rd["peers"].get(name)
            if st is None:
                continue
            ratio = "" if name in SINGLES else f"{st['cpu_ns'] / mine:.2f}×"
            rows.append([name, f"{st['cpu_ns']:,.0f} ({st['cpu_min']:,.0f}–{st['cpu_max']:,.0f})",
                         f"{st['wall_ns']:,.0f}", ratio])
        lines += table(["peer", "ns/key (CPU)", "ns/key (wall)", "÷ resolve_many"], rows)
        th = rd["threads"]
        calls = th.get("calls", 1)
        lines += ["", f"Two threads: {th['two_threads_ns'] / 1e6:,.1f} ms for {calls} batches each against "
                  f"{th['one_thread_ns'] / 1e6:,.1f} ms for all {2 * calls} in one thread (×{th['speedup']:.2f}, "
                  "wall time); each "
                  f"thread ran {100 * th['cpu_share']:.0f}% of its time, waited {th['waits_per_call']:.1f} "
                  f"times per call (for the GIL, or I/O) and was preempted {th.get('preempted_per_call', 0):.1f} "
                  "times per call" + (": below 100% with few waits and many preemptions, other processes had the "
                                      "cores." if th["cpu_share"] < 0.9 else "."),
                  f"Page walks {rd['walks'][0]:,}, walks given up for LMDB's cursor {rd['walks'][1]:,}."]
        pm = res["page_model"]
        lines += ["", f"Page visits per key (batches of {rd['batch']:,}, model from page counts: "
                  + ("perf stat has no hardware counters here" if not doc["counters"] else "see notes")
                  + f"): {pm['leaf_visits_per_key']:.2f} leaf pages of {pm['leaf_pages']:,}; the branch pages "
                  f"above them ({pm['branch_bytes'] / 1e6:.1f} MB) counted as cached. A mdb_get per key visits "
                  f"{pm['depth']} pages."]
        si, sr = res["sizes_imported"], res["sizes_rebuilt"]
        lines += ["", "Index size per service ID: file / pages in use / the hot database (keys per leaf page)", ""]
        lines += table(["index", "data.mdb", "in use", "svc (hot)", "svc keys/leaf"], [
            [label, f"{s['file_per_id']:.1f} B", f"{s['used_per_id']:.1f} B", f"{s['svc_per_id']:.1f} B",
             f"{s['svc_keys_per_leaf']:.0f}"] for label, s in (("after `mykey service import`", si),
                                                              ("after `mykey rebuild`", sr))])
        imp = res["import"]
        lines += ["", f"Import: {imp['import_s']:.1f} s in {imp['files']} file(s) "
                  f"({n / imp['import_s']:,.0f} IDs/s); its rebuild {imp['rebuild_s']:.1f} s; "
                  f"`mykey audit verify` of {res['verify']['events']:,} events {res['verify']['seconds']:.2f} s "
                  f"(median of {len(res['verify'].get('runs_s', [0]))} runs; the first "
                  f"{res['verify'].get('first_per_s', res['verify']['per_s']):,.0f} events/s)."]
        lines += write_lines(res)
    if doc["problems"]:
        lines += ["", "ANSWERS DISAGREE:"] + [f"- {p}" for p in doc["problems"]]
    return "\n".join(lines) + "\n"


def write_lines(res: dict) -> list[str]:
    if "write" not in res:
        return []
    w = res["write"]
    return [f"Macro dataset: {w['events']:,} events; projection {w['project_s']:.1f} s "
            f"({w['projection_per_s']:,.0f} events/s); `mykey rebuild` {w['rebuild_s']:.1f} s "
            f"({w['rebuild_per_s']:,.0f} events/s); `mykey audit verify` {w['verify']['seconds']:.2f} s "
            f"(median of {len(w['verify']['runs_s'])} runs; the first {w['verify']['first_per_s']:,.0f} events/s)."]


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(head[c]), *(len(r[c]) for r in rows)) if rows else len(head[c]) for c in range(len(head))]
    fmt_row = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return [fmt_row(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(fmt_row(r) for r in rows)]


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.perf_targets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated service ID counts (default 1e6,1e7)")
    ap.add_argument("--quick", action="store_true", help="tiny datasets, answers checked (for tests)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds of every read peer (default 9)")
    ap.add_argument("--batch", type=count, default=None, help="keys per resolve_many batch (default 100,000)")
    ap.add_argument("--singles", type=count, default=None, help="single lookups per round (default 20,000)")
    ap.add_argument("--only", choices=["read", "write"], help="the import dataset's figures only (read), or "
                    "the macro dataset's (write: projection, rebuild)")
    ap.add_argument("--workdir", default=None, help="where to build (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the datasets")
    ap.add_argument("--out", default="perf-targets.json")
    ap.add_argument("--serve-pure", nargs=2, metavar=("DATA", "BLOBS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or "20000"
        args.rounds = args.rounds or 2
        args.batch = args.batch or 20_000
        args.singles = args.singles or 500
    args.sizes = [count(s) for s in (args.sizes or "1e6,1e7").split(",")]
    args.rounds = args.rounds or 9
    args.batch = args.batch or 100_000
    args.singles = args.singles or 20_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_pure:
        return serve_pure(*args.serve_pure)
    started = time.perf_counter()
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="mykey-perf-"))
    doc = {"command": "python -m bench.perf_targets " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
                      f"{platform.platform()}, Python {platform.python_version()}",
           "load_start": [round(x, 2) for x in os.getloadavg()], "counters": hardware_counters(),
           "sizes": [], "problems": []}
    try:
        for n in args.sizes:
            res = run_size(n, args, workdir)
            doc["sizes"].append(res)
            doc["problems"] += res.get("read_imported", {}).get("problems", [])
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    doc["elapsed_s"] = time.perf_counter() - started
    doc["load_end"] = [round(x, 2) for x in os.getloadavg()]
    text = report(doc)
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(text)
    log(f"results written to {Path(args.out).resolve()}")
    return 1 if doc["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
