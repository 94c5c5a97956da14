"""Which Python HTTP server the gateway runs on: the same small app on three stacks, side by side.

    python -m bench.http_servers            # 3 rounds x 5 s per run (about 5 minutes)
    python -m bench.http_servers --quick    # 1 round x 1 s per run (under 60 s)
    python -m bench.http_servers --json out.json

The app is the gateway's hot path reduced to its parts: `GET /healthz`, and `GET
/v1/status/{sid}` that checks an HMAC bearer token (`hmac.digest` + `compare_digest`;
the token names its business: `Bearer <business>.<hex HMAC-SHA256(key, business)>`) and
answers the ID's status from a real mykey index, through a `Resolver` each worker opens
after the fork (RSGI: `__rsgi_init__`; ASGI: lifespan startup). The stacks:

1. granian, RSGI interface (what `mykey serve` runs);
2. granian, ASGI interface;
3. uvicorn, ASGI (`--loop uvloop --http httptools --no-access-log`).

No framework on either: a framework costs the same on every server, and hides the
server's own cost.

1. Builds 20,000 service IDs through mykey's write path (bench.macro_dataset: events
   appended to the log, projected into the index).
2. For each round, for 1 and 2 workers, for each stack (the order rotated each round, so
   drift on a shared machine hits every stack alike): starts the server on a free loopback
   port in its own process group, checks a sample of answers against the dataset (and
   that a wrong token is refused), warms up, then runs wrk (HTTP/1.1 keep-alive, the
   same Authorization header on both endpoints) against `/healthz` and the status
   endpoint, and stops the server (SIGTERM, then SIGKILL to the whole group; always,
   even on Ctrl-C).
3. Also records the CPU time each worker process spent during the timed runs: how evenly
   a stack spreads keep-alive connections over its workers, and the workers' CPU per
   request (less sensitive than req/s to how much of a shared machine a stack got).

Prints a table (req/s median (min-max) over rounds, p50/p99 ms, errors, the ratio to
granian RSGI) and the worker CPU split; --json writes everything, raw runs included.
wrk shares the cores with the server: compare rows of one run, not absolute figures
across machines. Exit status 1 if a check fails or a run had errors.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# --- the app: imported by every worker of every stack (keep the import free of side effects) ---

DATA_ENV = "MYKEY_HTTP_BENCH_DATA"
KEY_ENV = "MYKEY_HTTP_BENCH_KEY"
STATUS_PREFIX = "/v1/status/"
HEALTHZ = b'{"ok":true}'
UNAUTHORIZED = b'{"error":"unauthorized"}'
NOT_FOUND = b'{"error":"not found"}'
_to_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators=) builds one per call
_KEY = bytes.fromhex(os.environ.get(KEY_ENV, ""))


def token_for(key: bytes, business: str) -> str:
    return f"{business}.{hmac.digest(key, business.encode(), 'sha256').hex()}"


def _business(auth: str | None) -> str | None:
    """The business a bearer token was issued to, or None when the token is missing or wrong."""
    if not auth or not auth.startswith("Bearer "):
        return None
    business, _, mac = auth[7:].rpartition(".")
    if not business or not hmac.compare_digest(hmac.digest(_KEY, business.encode(), "sha256").hex(), mac):
        return None
    return business


def status_answer(resolver, auth: str | None, sid: str) -> tuple[int, bytes]:
    business = _business(auth)
    if business is None:
        return 401, UNAUTHORIZED
    status = resolver.resolve(business, sid).label
    return 200, _to_json({"service_id": sid, "status": status}).encode()


def _open_resolver():
    from mykey.index.resolver import Resolver

    return Resolver.open(os.environ[DATA_ENV])


class RSGIApp:
    """granian RSGI: the resolver opens in each worker, after the fork, before it serves."""

    resolver = None
    headers = [("content-type", "application/json")]

    def __rsgi_init__(self, loop) -> None:
        self.resolver = _open_resolver()

    def __rsgi_del__(self, loop) -> None:
        self.resolver.close()

    async def __rsgi__(self, scope, proto) -> None:
        path = scope.path
        if path == "/healthz":
            return proto.response_bytes(200, self.headers, HEALTHZ)
        if path.startswith(STATUS_PREFIX) and scope.method == "GET":
            code, body = status_answer(self.resolver, scope.headers.get("authorization"), path[len(STATUS_PREFIX):])
            return proto.response_bytes(code, self.headers, body)
        return proto.response_bytes(404, self.headers, NOT_FOUND)


rsgi_app = RSGIApp()
_asgi_resolver = None


async def asgi_app(scope, receive, send) -> None:
    """ASGI (granian and uvicorn): the resolver opens at lifespan startup, once per worker."""
    global _asgi_resolver
    if scope["type"] == "http":
        path = scope["path"]
        if path == "/healthz":
            code, body = 200, HEALTHZ
        elif path.startswith(STATUS_PREFIX) and scope["method"] == "GET":
            auth = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    auth = value.decode("latin-1")
                    break
            code, body = status_answer(_asgi_resolver, auth, path[len(STATUS_PREFIX):])
        else:
            code, body = 404, NOT_FOUND
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _asgi_resolver = _open_resolver()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _asgi_resolver is not None:
                    _asgi_resolver.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


# --- the driver ----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
STACKS = ("granian RSGI", "granian ASGI", "uvicorn ASGI")
BASELINE = STACKS[0]
ENDPOINTS = {"healthz": "GET /healthz", "status": "GET /v1/status/{sid} (token)"}
SAMPLE = 300  # answers checked per server start (10% of them absent IDs)


@dataclass(frozen=True)
class Plan:
    duration: int  # seconds per wrk run (wrk takes whole seconds; the names gateway_http.wrk reads)
    reps: int
    threads: int
    connections: int
    warmup: int
    service_ids: int = 20_000


PLANS = {
    "quick": Plan(duration=1, reps=1, threads=1, connections=32, warmup=1),
    "default": Plan(duration=5, reps=3, threads=1, connections=32, warmup=1),
}


def server_command(stack: str, port: int, workers: int) -> list[str]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if stack.startswith("granian"):
        interface, target = ("rsgi", "bench.http_servers:rsgi_app") if "RSGI" in stack else \
            ("asgi", "bench.http_servers:asgi_app")
        return [sys.executable, "-m", "granian", "--interface", interface, *common, "--no-ws",
                "--no-access-log", "--log-level", "warning", target]
    return [sys.executable, "-m", "uvicorn", "bench.http_servers:asgi_app", *common, "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--lifespan", "on", "--log-level", "warning"]


def _server_class():
    """A server process of one stack; stop() (SIGTERM, then SIGKILL to the group) comes from gateway_http."""
    import httpx
    import psutil

    from bench.gateway_http import Server, _cmdline, free_port

    class StackServer(Server):
        def __init__(self, stack: str, workers: int, data: Path, key: bytes, log_path: Path) -> None:
            self.stack, self.n_workers = stack, workers
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log_path = log_path
            env = {**os.environ, DATA_ENV: str(data), KEY_ENV: key.hex(), "PYTHONPATH": str(REPO)}
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(server_command(stack, self.port, workers), cwd=REPO, env=env,
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)

        def workers(self) -> set[int]:
            """The processes that serve: the children (not multiprocessing's helper), else the server itself."""
            try:
                kids = psutil.Process(self.proc.pid).children()
            except psutil.NoSuchProcess:
                return set()
            pids = {p.pid for p in kids if "resource_tracker" not in " ".join(_cmdline(p))}
            return pids or {self.proc.pid}

        def wait_ready(self, deadline: float = 60.0) -> None:
            end = time.monotonic() + deadline
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.stack} exited with {self.proc.returncode}: see {self.log_path}")
                try:
                    up = httpx.get(self.url + "/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    up = False
                if up and (self.n_workers == 1 or len(self.workers()) == self.n_workers):
                    return
                time.sleep(0.05)
            raise SystemExit(f"{self.stack} was not ready within {deadline:g} s: see {self.log_path}")

    return StackServer


def build_data(root: Path, n: int):
    from bench.macro_dataset import Spec, build

    spec = Spec(n, max(1, n * 3 // 10), 4)
    build(spec, root / "data")
    return spec, root / "data"


def sample_ids(spec, rnd: random.Random) -> tuple[list[str], dict[str, str]]:
    """IDs to ask as business 0 (90% its own; 10% other businesses' or never registered, all "unknown" to it)
    and the answer the dataset says each gets."""
    from mykey.domain.status import Status

    start, size = spec.blocks()[0]
    assert start == 0 and size < spec.service_ids
    nums = rnd.sample(range(start, start + size), SAMPLE * 9 // 10)
    absent = SAMPLE - len(nums)
    nums += rnd.sample(range(start + size, spec.service_ids), absent // 2)  # other businesses' IDs
    nums += rnd.sample(range(spec.service_ids, 2 * spec.service_ids), absent - absent // 2)  # never registered
    want = {f"S{i:09d}": Status(spec.status(i)).label if i < start + size else "unknown" for i in nums}
    return list(want), want


def check_answers(url: str, token: str, want: dict[str, str]) -> int:
    """Every sampled answer must be the dataset's, and a wrong token refused; returns how many were checked."""
    import httpx

    with httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
        r = client.get("/healthz")
        if r.status_code != 200 or r.json() != {"ok": True}:
            raise SystemExit(f"/healthz answered {r.status_code} {r.text!r}")
        for sid, status in want.items():
            r = client.get(STATUS_PREFIX + sid)
            if r.status_code != 200 or r.json() != {"service_id": sid, "status": status}:
                raise SystemExit(f"{url} answered {r.status_code} {r.text!r} for {sid}; the dataset says {status}")
        bad = token[:-1] + ("0" if token[-1] != "0" else "1")
        sid = next(iter(want))
        for auth in (f"Bearer {bad}", None):
            r = client.get(STATUS_PREFIX + sid, headers={"Authorization": auth} if auth else {"Authorization": ""})
            if r.status_code != 401:
                raise SystemExit(f"{url} answered {r.status_code} to a wrong or missing token")
    return len(want) + 2


def timed_run(server, token: str, ids_file: Path, mode: str, plan: Plan) -> dict:
    """One wrk run, plus the CPU seconds each worker process spent during it."""
    import psutil

    from bench.gateway_http import wrk

    def cpu() -> dict[int, float]:
        out = {}
        for pid in server.workers():
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            out[pid] = t.user + t.system
        return out

    before = cpu()
    run = wrk(server.url, token, ids_file, mode, plan)
    after = cpu()
    run["worker_cpu_s"] = sorted((after[p] - before.get(p, 0.0) for p in after), reverse=True)
    return run


def summarise(runs: list[dict], workers_list: list[int]) -> list[dict]:
    rows = []
    for w in workers_list:
        for mode in ENDPOINTS:
            base = None
            for stack in STACKS:
                rs = [r for r in runs if r["stack"] == stack and r["workers"] == w and r["mode"] == mode]
                if not rs:
                    continue
                rps = [r["rps"] for r in rs]
                cpu = [sum(x) for x in zip(*(r["worker_cpu_s"] + [0.0] * (w - len(r["worker_cpu_s"]))
                                              for r in rs), strict=True)]
                row = {"workers": w, "mode": mode, "stack": stack, "runs": len(rs),
                       "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                       "p50_ms": statistics.median(r["p50_us"] for r in rs) / 1000,
                       "p99_ms": statistics.median(r["p99_us"] for r in rs) / 1000,
                       "errors": sum(r["errors"] for r in rs), "requests": sum(r["requests"] for r in rs),
                       "worker_cpu_s": cpu,
                       "cpu_us_per_request": sum(cpu) / max(1, sum(r["requests"] for r in rs)) * 1e6,
                       "busiest_share_worst_run": max(max(r["worker_cpu_s"], default=0) / (sum(r["worker_cpu_s"]) or 1)
                                                      for r in rs)}
                if stack == BASELINE:
                    base = row["rps"]
                row["vs_rsgi"] = row["rps"] / base if base else None
                rows.append(row)
    return rows


def print_tables(rows: list[dict], plan: Plan, info: dict) -> None:
    print(f"the same app on {len(STACKS)} stacks: {plan.service_ids:,} service IDs, wrk -t{plan.threads} "
          f"-c{plan.connections}, {plan.reps} round(s) x {plan.duration} s per run, stack order rotated each "
          f"round; load average before: {info['loadavg_before'][0]:.2f} on {info['cpus']} cores")
    print()
    print("| workers | endpoint | stack | req/s median (min-max) | p50 ms | p99 ms | errors | ÷ granian RSGI "
          "| worker CPU µs/request |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['vs_rsgi']:.2f}" if r["vs_rsgi"] is not None else "-"
        print(f"| {r['workers']} | {ENDPOINTS[r['mode']]} | {r['stack']} | {r['rps']:,.0f} "
              f"({r['rps_min']:,.0f}-{r['rps_max']:,.0f}) | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} "
              f"| {ratio} | {r['cpu_us_per_request']:.0f} |")
    multi = [r for r in rows if r["workers"] > 1]
    if multi:
        print()
        print("CPU seconds of each worker process during the timed runs (keep-alive connections spread):")
        print("| workers | endpoint | stack | CPU s per worker (all runs) | busiest worker's share | in the worst run |")
        print("|---|---|---|---|---|---|")
        for r in multi:
            total = sum(r["worker_cpu_s"]) or 1.0
            print(f"| {r['workers']} | {ENDPOINTS[r['mode']]} | {r['stack']} | "
                  f"{' / '.join(f'{c:.2f}' for c in r['worker_cpu_s'])} | {max(r['worker_cpu_s']) / total:.0%} "
                  f"| {r['busiest_share_worst_run']:.0%} |")


def versions() -> dict[str, str]:
    out = {}
    for name in ("granian", "uvicorn", "uvloop", "httptools"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    out["wrk"] = (wrk.stdout or wrk.stderr).split(" [")[0].removeprefix("wrk ").strip()
    out["python"] = sys.version.split()[0]
    return out


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # so that the finally blocks stop the server in hand


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round (under 60 s)")
    parser.add_argument("--reps", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 5; --quick 1)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (for the server logs)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    plan = PLANS["quick" if args.quick else "default"]
    plan = Plan(args.duration or plan.duration, args.reps or plan.reps, plan.threads, plan.connections, plan.warmup,
                plan.service_ids)
    workers_list = [int(w) for w in args.workers.split(",")]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    from bench.gateway_http import wrk
    from bench.macro_dataset import business_id

    StackServer = _server_class()
    work = Path(tempfile.mkdtemp(prefix="mykey-http-bench-"))
    t0 = time.monotonic()
    key = os.urandom(32)
    token = token_for(key, business_id(0))
    command = " ".join(["python -m bench.http_servers", *(sys.argv[1:] if argv is None else argv)])
    info = {"command": command, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "versions": versions(),
            "plan": plan.__dict__, "workers": workers_list}
    runs: list[dict] = []
    checked: dict[str, int] = {s: 0 for s in STACKS}
    try:
        spec, data = build_data(work, plan.service_ids)
        ids, want = sample_ids(spec, random.Random(spec.seed))
        ids_file = work / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        for rnd in range(plan.reps):
            for w in workers_list if rnd % 2 == 0 else workers_list[::-1]:
                k = rnd % len(STACKS)
                for stack in STACKS[k:] + STACKS[:k]:
                    server = StackServer(stack, w, data, key, work / f"{stack.replace(' ', '-')}.log")
                    try:
                        server.wait_ready()
                        checked[stack] += check_answers(server.url, token, want)
                        wrk(server.url, token, ids_file, "status", plan, duration=plan.warmup)
                        for mode in ("healthz", "status") if rnd % 2 == 0 else ("status", "healthz"):
                            run = timed_run(server, token, ids_file, mode, plan)
                            runs.append({"round": rnd, "workers": w, "stack": stack, "mode": mode, **run})
                    finally:
                        rc = server.stop()
                    if rc not in (0, -signal.SIGTERM):
                        print(f"note: {stack} exited with {rc} on SIGTERM (see {server.log_path})", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = summarise(runs, workers_list)
    info["seconds"] = time.monotonic() - t0
    print_tables(rows, plan, info)
    print(f"answers checked per stack before timing: {checked}; total {info['seconds']:.0f} s")
    failures = [f"{r['errors']} errors: {r['stack']}, {r['workers']} worker(s), {r['mode']}" for r in rows if r["errors"]]
    if args.json:
        Path(args.json).write_text(json.dumps({**info, "checked": checked, "rows": rows, "runs": runs,
                                               "failures": failures}, indent=1))
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the server in hand was stopped", file=sys.stderr)
        sys.exit(130)
