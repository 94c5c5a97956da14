"""mykey against the tools a team would otherwise pick, side by side, in one run.

    python -m bench                      # default size (under 3 minutes on 2 cores)
    python -m bench --service-ids 1e6 --mykeys 3e5 --businesses 100
    python -m bench --scale              # the read side at 1M and 10M service IDs
    python -m bench --quick              # tiny and fast (tests)
    mykey bench ...                      # the same (a dev command, in a source checkout)
    make bench-check                     # the runner end to end at --quick size, answers checked

Builds a dataset through mykey's own write path (events appended to the file log,
projected into the LMDB index), then measures:

- write side: append events/s (batches of 1 / 100 / 10,000; fsync always and
  never) beside plain SQLite inserts (one transaction per batch) and the
  eventsourcing library (its SQLite recorder); projection events/s; full rebuild.
- read side: ns per lookup for resolve_many (batches of 1 / 100 / 10,000 /
  100,000, random order, 10% absent keys) and resolve one at a time, beside a
  py-lmdb txn.get loop, a plain C mdb_get loop, a Python dict, SQLite and Redis
  (pipelined MGET on 127.0.0.1, when redis-server is installed).

Every peer answers the same queries; the runner checks each answer against the
dataset's known truth before it prints a figure. Figures are medians of several
runs with the min-max spread; ratios are the headline, because absolute times
drift on shared machines. Prints Markdown tables and writes bench-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

# Query sets: batch size -> number of batches (default, quick).
QUERY_SETS = {1: (20_000, 300), 100: (200, 10), 10_000: (10, 2), 100_000: (2, 1)}
# Write side: (batch, fsync) -> events per run (default, quick).
WRITE_EVENTS = {
    (1, "always"): (300, 30),
    (100, "always"): (10_000, 500),
    (10_000, "always"): (100_000, 10_000),
    (1, "never"): (20_000, 500),
    (100, "never"): (100_000, 2_000),
    (10_000, "never"): (200_000, 20_000),
}
ES_EVENTS = {1: (300, 30), 100: (10_000, 500), 10_000: (20_000, 10_000)}
SCALE_SIZES = (1_000_000, 10_000_000)
DEFAULT_SERVICE_IDS = 1_000_000

PEER_ORDER = [
    "mykey resolve_many (Cython)",
    "mykey resolve, one at a time",
    "mykey resolve_many (pure twin)",
    "py-lmdb txn.get loop",
    "plain C mdb_get loop",
    "Python dict",
    "SQLite",
    "Redis pipelined MGET",
]
HEADLINE = "mykey resolve_many (Cython)"
# SQLite runs two lookup methods and reports the faster one, marked.
VARIANT_MARK = {"IN chunks": "[IN]", "prepared loop": "[loop]"}
WORKERS = ["mykey", "mykey-resolve", "mykey-pure", "pylmdb", "c", "dict", "sqlite", "redis"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def count(text: str) -> int:
    """Accept 1000000, 1e6, 1_000_000, 1,000,000."""
    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 1e6)") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--service-ids", type=count, default=None,
                    help=f"service IDs in the dataset (default {DEFAULT_SERVICE_IDS:,}; e.g. 1e6)")
    ap.add_argument("--mykeys", type=count, default=None, help="MyKey IDs (default: a third of the service IDs)")
    ap.add_argument("--businesses", type=count, default=None, help="businesses (default 100, Zipf-sized)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per figure (default 5; 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small query sets and write runs (for tests)")
    ap.add_argument("--scale", action="store_true",
                    help="run the read side at 1M and 10M service IDs, with sizes on disk and peak RSS")
    ap.add_argument("--only", choices=["write", "read"], help="run one side only")
    ap.add_argument("--rebuilds", type=int, default=None,
                    help="timed full rebuilds per dataset (default 3; 1 with --quick; 0 above 5M events, "
                         "where the projection figure already times the same replay)")
    ap.add_argument("--peers", default=None,
                    help=f"comma-separated read peers to run (default all: {','.join(WORKERS)})")
    ap.add_argument("--out", default="bench-results.json", help="where to write the JSON results")
    ap.add_argument("--workdir", default=None, help="where to build datasets (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of the tables")
    args = ap.parse_args(argv)
    if args.scale and args.service_ids is not None:
        ap.error("--scale picks its own sizes (1M and 10M); leave out --service-ids")
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    peers = WORKERS if args.peers is None else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(WORKERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; choose from {','.join(WORKERS)}")
    if "mykey" not in peers:
        peers.insert(0, "mykey")  # the reference every ratio divides by
    args.peer_list = peers
    return args


# --- machine facts ---------------------------------------------------------------------


def _cmd_version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def machine_facts() -> dict:
    import lmdb
    import msgspec
    import psutil
    from mykey.index import binding as lmdbenv

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        native = ".".join(map(str, lmdbenv.binding_by_name("native").LMDB_VERSION))
    except ImportError:
        native = None
    facts = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "lmdb_native": native,
        "lmdb_pylmdb": ".".join(map(str, lmdb.version())),
        "pylmdb": lmdb.__version__,
        "sqlite": __import__("sqlite3").sqlite_version,
        "msgspec": msgspec.__version__,
        "cc": _cmd_version(["cc", "--version"]),
        "redis_server": None,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    redis_server = shutil.which("redis-server")
    if redis_server:
        v = _cmd_version([redis_server, "--version"]) or ""
        m = re.search(r"v=(\S+)", v)
        facts["redis_server"] = m.group(1) if m else v
    for mod in ("redis", "eventsourcing", "hiredis"):
        try:
            from importlib.metadata import version

            facts[mod] = version(mod)
        except Exception:
            facts[mod] = None
    return facts


# --- helpers ----------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ns(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.1f}×" if x < 100 else f"{x:,.0f}×"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n} B"


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A Markdown table, padded so it also reads well as plain text."""
    cols = len(header)
    align = align or "l" + "r" * (cols - 1)
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) if rows else len(header[c]) for c in range(cols)]

    def line(cells: list[str]) -> str:
        out = []
        for c, cell in enumerate(cells):
            out.append(cell.ljust(widths[c]) if align[c] == "l" else cell.rjust(widths[c]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MYKEY_PURE", None)
    return env


def run_json(cmd: list[str], what: str, timeout: float = 24 * 3600) -> dict:
    """Run a helper process; its last stdout line is JSON. Its stderr (progress bars) passes through."""
    proc = subprocess.run(cmd, cwd=REPO, env=python_env(), stdout=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); its output:\n{proc.stdout[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"{what} printed nothing")
    return json.loads(lines[-1])


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# --- C baseline ---------------------------------------------------------------------------


def build_c(workdir: Path, notes: list[str]) -> Path | None:
    """Compile bench/c/mdb_get_loop.c (into bench/_build/, or the work dir); None with a note on failure."""
    src = BENCH / "c" / "mdb_get_loop.c"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        notes.append("plain C mdb_get loop skipped: no C compiler (cc) on PATH")
        return None
    for outdir in (BENCH / "_build", workdir):
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        exe = outdir / "mdb_get_loop"
        if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
            return exe
        proc = subprocess.run([cc, "-O2", "-o", str(exe), str(src), "-llmdb"], capture_output=True, text=True)
        if proc.returncode == 0:
            return exe
        if "lmdb" in proc.stderr:
            notes.append("plain C mdb_get loop skipped: lmdb.h / -llmdb not found (apt-get install liblmdb-dev)")
            return None
    notes.append("plain C mdb_get loop skipped: it did not compile")
    return None


# --- Redis --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a free loopback port: no persistence, stopped afterwards."""

    def __init__(self, exe: str, workdir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "yes", "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        import redis

        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {err.strip()[:500]}") from None
                time.sleep(0.05)

    def peak_rss_kb(self) -> int | None:
        return vm_hwm_kb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the write side -------------------------------------------------------------------------


def run_write_side(args: argparse.Namespace, workdir: Path, notes: list[str]) -> dict:
    from bench import macro_write as w

    q = 1 if args.quick else 0
    rows = []
    total = len(WRITE_EVENTS) * 2 + len(ES_EVENTS)
    step = 0
    for (batch, fsync), sizes in WRITE_EVENTS.items():
        n = sizes[q]
        step += 1
        log(f"write side {step}/{total}: mykey append, batch {batch:,}, fsync={fsync}")
        rows.append({"peer": "mykey", "batch": batch, "fsync": fsync, "events": n,
                     **stats(w.repeat(lambda: w.mykey_append(workdir, batch, fsync, n), args.repeat))})
        step += 1
        log(f"write side {step}/{total}: SQLite insert, batch {batch:,}, synchronous={'FULL' if fsync == 'always' else 'OFF'}")
        rows.append({"peer": "SQLite", "batch": batch, "fsync": fsync, "events": n,
                     **stats(w.repeat(lambda: w.sqlite_insert(workdir, batch, fsync == "always", n), args.repeat))})
    es_mode = None
    try:
        es_mode = w.eventsourcing_synchronous(workdir)
        for batch, sizes in ES_EVENTS.items():
            n = sizes[q]
            step += 1
            log(f"write side {step}/{total}: eventsourcing save, batch {batch:,}")
            rows.append({"peer": "eventsourcing", "batch": batch, "fsync": "always", "events": n,
                         **stats(w.repeat(lambda: w.eventsourcing_save(workdir, batch, n), args.repeat))})
    except ImportError:
        notes.append("eventsourcing skipped: the library is not installed (pip install -e '.[dev]')")
    return {"rows": rows, "eventsourcing_sqlite": es_mode}


# --- the read side ----------------------------------------------------------------------------


def run_size(args: argparse.Namespace, spec, workdir: Path, notes: list[str], c_exe: Path | None) -> dict:
    """Build one dataset, time projection and rebuild, run every read peer; returns the results."""
    from bench import macro_dataset as ds

    root = workdir / f"data-{spec.service_ids}"
    if root.exists():
        shutil.rmtree(root)
    spec_file = workdir / f"spec-{spec.service_ids}.json"
    spec_file.write_text(json.dumps(spec.to_json()))
    est = spec.event_count()
    if args.rebuilds is not None:
        rebuilds = max(0, args.rebuilds)
    else:
        rebuilds = 1 if args.quick else 0 if est > 5_000_000 else min(args.repeat, 3)
    log(f"building {spec.service_ids:,} service IDs, {spec.mykeys:,} MyKey IDs, {spec.businesses:,} businesses "
        f"(~{est:,} events), then {rebuilds} rebuild(s)")
    t0 = time.perf_counter()
    built = run_json([sys.executable, "-m", "bench.macro_dataset", str(spec_file), str(root), str(rebuilds)],
                     "dataset build")
    log(f"built in {time.perf_counter() - t0:.1f} s")
    result: dict = {"dataset": spec.to_json(), "build": built, "blocks_largest": spec.block_sizes()[0]}

    if args.only == "write":
        return result

    # The queries, and the answer every peer must give.
    sets = []
    for batch, (n_default, n_quick) in QUERY_SETS.items():
        n_batches = n_quick if args.quick else n_default
        batches = spec.queries(batch, n_batches, salt=batch)
        path = workdir / f"queries-{spec.service_ids}-{batch}.bin"
        ds.write_queries(path, batches)
        expected = spec.expected(batches)
        sets.append({"name": f"b{batch}", "batch": batch, "queries": str(path), "n_batches": n_batches,
                     "keys": len(expected), "expected": expected,
                     "absent": expected.count(0), "sampled_with_replacement": spec.block_sizes()[0] < batch * 0.9})
    if any(s["sampled_with_replacement"] for s in sets):
        notes.append(f"at {spec.service_ids:,} service IDs the largest business has {spec.block_sizes()[0]:,}; "
                     "bigger batches repeat some IDs")
    job = {"dataset": spec.to_json(), "data_root": str(root), "index_dir": built["index_dir"], "repeat": args.repeat,
           "workdir": str(workdir), "sets": [{k: s[k] for k in ("name", "batch", "queries")} for s in sets]}
    job_file = workdir / f"job-{spec.service_ids}.json"

    rows: list[dict] = []
    processes: list[dict] = [{"process": "build (append + project + rebuilds)", "maxrss_kb": built["maxrss_kb"],
                              "peak_anon_kb": built.get("peak_anon_kb")}]
    sizes = {"log": built["log_bytes"], "index files": built["index_bytes"],
             "index: pages in use by its databases": sum(built["db_bytes"].values()),
             "index: the svc database resolve reads": built["db_bytes"]["svc"]}
    loads: dict[str, float] = {}
    for peer in args.peer_list:
        if peer == "c":
            if c_exe is None:
                continue
            log(f"read side: plain C mdb_get loop ({spec.service_ids:,} keys)")
            c_rss = None
            for s in sets:
                ans = workdir / f"answers-c-{s['name']}.bin"
                out = run_json([str(c_exe), built["index_dir"], s["queries"], str(ans), str(args.repeat)],
                               "the C mdb_get loop")
                rows.append({"label": "plain C mdb_get loop", "set": s["name"], "batch": s["batch"],
                             "keys": s["keys"], "runs_ns": out["runs_ns"], "answers": str(ans)})
                c_rss = out
            processes.append({"process": "plain C mdb_get loop", "maxrss_kb": c_rss and c_rss["maxrss_kb"],
                              "rss_anon_kb": c_rss and c_rss.get("rss_anon_kb"),
                              "rss_file_kb": c_rss and c_rss.get("rss_file_kb")})
            continue
        server = None
        if peer == "redis":
            exe = shutil.which("redis-server")
            if exe is None:
                notes.append("Redis skipped: redis-server is not installed (apt-get install redis-server)")
                continue
            try:
                import redis  # noqa: F401
            except ImportError:
                notes.append("Redis skipped: the redis client library is not installed (pip install -e '.[dev]')")
                continue
            server = RedisServer(exe, workdir)
            job["redis_port"] = server.port
        job_file.write_text(json.dumps(job))
        log(f"read side: {peer} ({spec.service_ids:,} keys)")
        try:
            out = run_json([sys.executable, "-m", "bench.peers_read", peer, str(job_file)], f"read peer {peer}")
            if server is not None:
                processes.append({"process": "redis-server", "maxrss_kb": server.peak_rss_kb()})
                sizes["redis used_memory"] = out.get("used_memory")
                if not out.get("hiredis"):
                    notes.append("Redis client without hiredis (redis-py's pure-Python parser); "
                                 "`pip install hiredis` makes big MGET replies faster")
        finally:
            if server is not None:
                server.stop()
        rows.extend(out["rows"])
        notes.extend(out["notes"])
        label = {"mykey": "mykey resolve_many (Cython)", "mykey-resolve": "mykey resolve (Cython)",
                 "mykey-pure": "mykey resolve_many (pure twin)", "pylmdb": "py-lmdb",
                 "dict": "Python dict", "sqlite": "SQLite", "redis": "Redis client"}[peer]
        proc = out["process"]
        processes.append({"process": label, "maxrss_kb": proc.get("VmHWM", proc["maxrss_kb"]),
                          "rss_anon_kb": proc.get("RssAnon"), "rss_file_kb": proc.get("RssFile")})
        if peer in ("dict", "sqlite", "redis"):
            loads[label] = out["load_s"]
        if peer == "sqlite":
            sizes["SQLite file"] = out["disk_bytes"]

    # Check every answer before any figure is printed.
    by_set = {s["name"]: s for s in sets}
    problems = []
    for row in rows:
        expected = by_set[row["set"]]["expected"]
        files = row.get("variant_answers") or {None: row["answers"]}
        row["agree"] = True
        for variant, path in files.items():
            got = Path(path).read_bytes()
            if got != expected:
                bad = sum(1 for a, b in zip(got, expected) if a != b) + abs(len(got) - len(expected))
                who = row["label"] + (f" [{variant}]" if variant else "")
                problems.append(f"{who}: {bad:,} of {len(expected):,} answers differ from the truth in set {row['set']}")
                row["agree"] = False
        ns = [r / row["keys"] for r in row["runs_ns"]]
        row["ns_per_lookup"] = stats(ns)
        row.pop("answers", None)
        row.pop("variant_answers", None)
    for s in sets:
        s.pop("expected")
    result.update(sets=sets, rows=rows, processes=processes, sizes=sizes, loads=loads, problems=problems)
    return result


# --- report -------------------------------------------------------------------------------------


def write_tables(write: dict | None) -> list[str]:
    if not write:
        return []
    out = ["## Write side: events/s, median (min–max); × = mykey ÷ peer", ""]
    by = {(r["peer"], r["batch"], r["fsync"]): r for r in write["rows"]}
    rows = []
    for fsync in ("always", "never"):
        for batch in (1, 100, 10_000):
            mk = by.get(("mykey", batch, fsync))
            if mk is None:
                continue
            sq = by.get(("SQLite", batch, fsync))
            es = by.get(("eventsourcing", batch, fsync))

            def cell(r):
                return f"{fmt_int(r['median'])} ({fmt_int(r['min'])}–{fmt_int(r['max'])})" if r else "–"

            durability = "fsync=always / synchronous=FULL" if fsync == "always" else "fsync=never / synchronous=OFF"
            rows.append([f"{batch:,}", durability, cell(mk), cell(sq),
                         fmt_ratio(mk["median"] / sq["median"]) if sq else "–", cell(es),
                         fmt_ratio(mk["median"] / es["median"]) if es else "–"])
    out.append(md_table(["batch", "durability", "mykey append", "SQLite insert", "×", "eventsourcing save", "×"],
                        rows, "llrrrrr"))
    out.append("")
    return out


def build_table(results: list[dict]) -> list[str]:
    out = ["## Projection and rebuild", ""]
    rows = []
    for res in results:
        b = res["build"]
        rb = b["rebuild_s"]
        rb_cell = "not run (--rebuilds 0)"
        if rb:
            med = statistics.median(rb)
            rb_cell = f"{med:,.1f} s ({min(rb):,.1f}–{max(rb):,.1f}); {fmt_int(b['events'] / med)} events/s"
        rows.append([f"{res['dataset']['service_ids']:,}", f"{b['events']:,}",
                     f"{fmt_int(b['events'] / b['append_s'])}", f"{fmt_int(b['events'] / b['project_s'])}", rb_cell])
    out.append(md_table(["service IDs", "events", "build: append events/s (fsync=never, batch 10,000)",
                         "projection events/s (catch_up)", "full rebuild, median (min–max)"],
                        rows, "rrrrl"))
    out.append("")
    return out


def read_tables(res: dict) -> list[str]:
    rows = res.get("rows")
    if not rows:
        return []
    sets = res["sets"]
    n = res["dataset"]["service_ids"]
    cell_of: dict[tuple[str, str], dict] = {(r["label"], r["set"]): r for r in rows}
    labels = [p for p in PEER_ORDER if any(lbl == p for lbl, _ in cell_of)]
    head = [f"batch {s['batch']:,}" for s in sets]
    out = [f"## Read side at {n:,} service IDs: ns per lookup, median (min–max)", ""]
    table = []
    for label in labels:
        line = [label]
        for s in sets:
            r = cell_of.get((label, s["name"]))
            if r is None:
                line.append("–")
            elif not r["agree"]:
                line.append("answers differ")
            else:
                st = r["ns_per_lookup"]
                v = f" {VARIANT_MARK[r['variant']]}" if r.get("variant") else ""
                line.append(f"{fmt_ns(st['median'])} ({fmt_ns(st['min'])}–{fmt_ns(st['max'])}){v}")
        table.append(line)
    ref = [cell_of.get((HEADLINE, s["name"])) for s in sets]
    table.append(["lookups/s, " + HEADLINE] + [fmt_int(1e9 / r["ns_per_lookup"]["median"]) if r and r["agree"] else "–"
                                                for r in ref])
    out.append(md_table(["peer"] + head, table))
    out.append("")
    out.append(f"## Ratios at {n:,} service IDs: peer's time ÷ {HEADLINE}'s time (above 1×: mykey is faster)")
    out.append("")
    ratio_rows = []
    for label in labels:
        if label == HEADLINE:
            continue
        line = [label]
        for s, base in zip(sets, ref):
            r = cell_of.get((label, s["name"]))
            if r is None or base is None or not r["agree"] or not base["agree"]:
                line.append("–")
            else:
                line.append(fmt_ratio(r["ns_per_lookup"]["median"] / base["ns_per_lookup"]["median"]))
        ratio_rows.append(line)
    out.append(md_table(["peer"] + head, ratio_rows))
    out.append("")
    keys = ", ".join(f"{s['batch']:,}: {s['n_batches']:,} batch{'es' if s['n_batches'] != 1 else ''} "
                     f"({s['keys']:,} keys, {s['absent']:,} absent)" for s in sets)
    if any(r.get("variant") for r in rows):
        out.append("SQLite: the faster, per batch size, of `SELECT k, code ... WHERE k IN (...)` in chunks of "
                   "1,000 ([IN]) and a prepared `WHERE k=?` loop ([loop]), one read transaction per batch.")
        out.append("")
    out.append(f"Queries per run (batch size: batches): {keys}. Random order; 10% of the IDs are absent "
               "(half never registered, half another business's). Warm cache.")
    out.append("")
    return out


def resources_table(results: list[dict]) -> list[str]:
    """Sizes on disk, load times and each process's peak RSS; one column per dataset size."""
    out = ["## Sizes on disk and peak RSS per process", ""]
    what: dict[str, dict[int, str]] = {}
    for i, res in enumerate(results):
        for name, size in res.get("sizes", {}).items():
            what.setdefault(f"size: {name}", {})[i] = fmt_bytes(size)
        for p in res.get("processes", []):
            cell = fmt_bytes(p["maxrss_kb"] * 1024) if p.get("maxrss_kb") else "–"
            if p.get("peak_anon_kb"):
                cell += f" (private at most {fmt_bytes(p['peak_anon_kb'] * 1024)})"
            elif p.get("rss_file_kb") is not None:
                cell += (f" (at the end: {fmt_bytes(p['rss_anon_kb'] * 1024)} private, "
                         f"{fmt_bytes(p['rss_file_kb'] * 1024)} file-backed)")
            what.setdefault(f"peak RSS: {p['process']}", {})[i] = cell
        for name, secs in res.get("loads", {}).items():
            what.setdefault(f"load time: {name}", {})[i] = f"{secs:,.1f} s"
    head = ["what"] + [f"{res['dataset']['service_ids']:,} service IDs" for res in results]
    rows = [[k] + [v.get(i, "–") for i in range(len(results))] for k, v in what.items()]
    out.append(md_table(head, rows))
    out.append("")
    out.append("Peak RSS counts mapped file pages: for LMDB readers (and the build) that is the index in the "
               "page cache, shared by every process that maps it, not a per-process copy; the private part is "
               "what each extra process costs.")
    out.append("")
    return out


def scale_table(results: list[dict]) -> list[str]:
    """With more than one dataset size: each peer's ns per lookup at every size, side by side."""
    if len(results) < 2:
        return []
    head = ["peer"]
    cols = []
    for res in results:
        for name, label in (("b1", "batch 1"), ("b10000", "batch 10,000")):
            head.append(f"{res['dataset']['service_ids']:,}: {label}")
            cols.append(({(r["label"], r["set"]): r for r in res.get("rows", [])}, name))
    rows = []
    for label in PEER_ORDER:
        line = [label]
        for cells, name in cols:
            r = cells.get((label, name))
            line.append("–" if r is None else "answers differ" if not r["agree"]
                        else fmt_ns(r["ns_per_lookup"]["median"]))
        if any(c != "–" for c in line[1:]):
            rows.append(line)
    return ["## Scale: ns per lookup (median) as the dataset grows", "", md_table(head, rows), ""]


def headline(results: list[dict], write: dict | None) -> list[str]:
    out = ["## Headline", ""]
    for res in results:
        rows = {(r["label"], r["set"]): r for r in res.get("rows", [])}
        n = res["dataset"]["service_ids"]
        for batch, name in ((10_000, "b10000"), (1, "b1")):
            base = rows.get((HEADLINE, name))
            if base is None or not base["agree"]:
                continue
            parts = []
            for label in PEER_ORDER:
                r = rows.get((label, name))
                if label == HEADLINE or r is None or not r["agree"]:
                    continue
                ratio = r["ns_per_lookup"]["median"] / base["ns_per_lookup"]["median"]
                parts.append(f"{fmt_ratio(ratio)} as fast as {label}" if ratio >= 1
                             else f"{label} is {fmt_ratio(1 / ratio)} as fast")
            what = "batches of 10,000" if batch == 10_000 else "single lookups (batches of 1)"
            out.append(f"- {n:,} service IDs, {what}: resolve_many takes "
                       f"{fmt_ns(base['ns_per_lookup']['median'])} ns per lookup: " + "; ".join(parts) + ".")
    if write:
        by = {(r["peer"], r["batch"], r["fsync"]): r for r in write["rows"]}
        mk, sq, es = by.get(("mykey", 100, "always")), by.get(("SQLite", 100, "always")), by.get(("eventsourcing", 100, "always"))
        if mk and sq:
            line = (f"- Durable appends in batches of 100: mykey {fmt_int(mk['median'])} events/s, "
                    f"{fmt_ratio(mk['median'] / sq['median'])} plain SQLite")
            if es:
                line += f" and {fmt_ratio(mk['median'] / es['median'])} eventsourcing"
            out.append(line + ".")
    out.append("")
    return out if len(out) > 3 else []


PEERS_TEXT = [
    "How each peer answers a batch (one business, its service IDs as bytes):",
    "",
    "- mykey resolve_many: one call; the Cython binding looks every key up in one read transaction without the "
    "GIL (sorted, then one walk over LMDB's pages with prefetching; `mdb_get` per key for the smallest batches). "
    "The pure twin is the same API on py-lmdb. `resolve`: one call per ID.",
    "- py-lmdb: `txn.get` in a list comprehension inside one `env.begin()` per batch, in its own process over "
    "the same index files (never two bindings on one environment in one process).",
    "- plain C: `mdb_get` per key, one renewed read transaction per batch (bench/c/mdb_get_loop.c, "
    "`cc -O2 ... -llmdb`).",
    "- Python dict: a dict per business (service ID -> status code), `[get(k, 0) for k in ids]`.",
    "- SQLite: table `svc(k BLOB PRIMARY KEY, code INTEGER) WITHOUT ROWID`, loaded with executemany in one "
    "transaction; mmap and a 1 GiB page cache; warm.",
    "- Redis: one key per service ID, loaded with pipelined MSET; MGET in pipelined chunks of 1,000 over "
    "127.0.0.1, `--save '' --appendonly no`.",
    "",
]


def report(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# mykey benchmark",
        "",
        f"- command: `{doc['command']}`  ({doc['started']}, {doc['elapsed_s']:.0f} s)",
        f"- machine: {m['cpu']}, {m['logical_cores']} logical / {m['physical_cores']} physical cores, "
        f"{m['ram_gib']} GiB RAM; {m['os']}",
        f"- software: {m['python']}; LMDB {m['lmdb_native']} (C library: mykey's Cython binding and the C loop), "
        f"py-lmdb {m['pylmdb']} bundling LMDB {m['lmdb_pylmdb']}; SQLite {m['sqlite']}; "
        f"Redis {m['redis_server'] or 'not installed'} (redis-py {m['redis']}, hiredis {m['hiredis'] or 'no'}); "
        f"eventsourcing {m['eventsourcing']}; msgspec {m['msgspec']}",
        f"- figures: median of {doc['repeat']} runs after a warm-up run (min–max); every peer's answers were "
        "checked against the dataset's truth",
        f"- load average (1/5/15 min) at start {' / '.join(map(str, m['loadavg_start']))}, at end "
        f"{' / '.join(map(str, doc['loadavg_end']))}: other work on the machine inflates round trips between processes",
        "",
    ]
    results = doc["sizes"]
    if results:
        d = results[0]["dataset"]
        if len(results) == 1:
            from bench.macro_dataset import INVALID_PCT, LINKED_PCT, SUSPENDED_PCT

            lines.append(f"Dataset: {d['service_ids']:,} service IDs ({LINKED_PCT}% linked), {d['mykeys']:,} MyKey IDs "
                         f"({SUSPENDED_PCT}% suspended, {INVALID_PCT}% invalidated), {d['businesses']:,} businesses "
                         "(Zipf-sized; the largest has "
                         f"{results[0]['blocks_largest']:,} service IDs), {results[0]['build']['events']:,} events.")
            lines.append("")
    lines += headline(results, doc.get("write"))
    lines += write_tables(doc.get("write"))
    if doc.get("write"):
        lines.append(f"eventsourcing's SQLite: {doc['write'].get('eventsourcing_sqlite')}. mykey validates every "
                     "event and frames it with a CRC; the SQLite peer stores the same msgpack records.")
        lines.append("")
    if results:
        lines += build_table(results)
    for res in results:
        lines += read_tables(res)
    lines += scale_table(results)
    if results and any(res.get("rows") for res in results):
        lines += PEERS_TEXT
    if results and any(res.get("processes") for res in results):
        lines += resources_table(results)
    if doc["notes"]:
        lines.append("Notes:")
        lines += [f"- {n}" for n in dict.fromkeys(doc["notes"])]
        lines.append("")
    if doc["problems"]:
        lines.append("ANSWERS DISAGREE (those figures are not printed):")
        lines += [f"- {p}" for p in doc["problems"]]
        lines.append("")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.macro_dataset import Spec

    started = time.perf_counter()
    command = "python -m bench" + ("" if not (argv if argv is not None else sys.argv[1:]) else
                                   " " + " ".join(argv if argv is not None else sys.argv[1:]))
    notes: list[str] = []
    machine = machine_facts()
    if machine["lmdb_native"] is None:
        log("error: the native LMDB binding mykey._lmdb is not built; run `make build` first")
        return 1
    if args.scale:
        sizes = list(SCALE_SIZES)
    else:
        sizes = [args.service_ids or DEFAULT_SERVICE_IDS]
    specs = []
    for n in sizes:
        mykeys = args.mykeys or max(1, n // 3)
        businesses = args.businesses or min(100, max(1, n // 20))
        if businesses > min(max(1, n // 2), 26 * 10_000):
            log(f"error: {businesses:,} businesses need at least {2 * businesses:,} service IDs "
                "(and there are at most 260,000 business IDs)")
            return 2
        specs.append(Spec(n, mykeys, businesses, args.seed))

    tmp = None
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="mykey-bench-"))
    doc: dict = {
        "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "repeat": args.repeat,
        "quick": args.quick,
        "notes": notes,
        "write": None,
        "sizes": [],
        "problems": [],
    }
    try:
        if args.only != "read":
            doc["write"] = run_write_side(args, workdir, notes)
        c_exe = build_c(workdir, notes) if "c" in args.peer_list and args.only != "write" else None
        for spec in specs:
            res = run_size(args, spec, workdir, notes, c_exe)
            doc["sizes"].append(res)
            doc["problems"] += res.get("problems", [])
            if args.scale and spec is not specs[-1] and not args.keep:
                shutil.rmtree(workdir / f"data-{spec.service_ids}", ignore_errors=True)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif args.keep:
            log(f"work directory kept: {workdir}")
    doc["elapsed_s"] = time.perf_counter() - started
    doc["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["orchestrator_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    text = report(doc)
    doc["report"] = text
    out = Path(args.out)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps(doc, default=str) if args.json else text)
    log(f"results written to {out.resolve()}")
    return 1 if doc["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
