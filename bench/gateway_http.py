"""The terminal gateway over HTTP, measured with wrk (HTTP/1.1 keep-alive), and identify, in one run.

    python -m bench.gateway_http            # default size and durations (a few minutes)
    python -m bench.gateway_http --quick    # under 60 s
    python -m bench.gateway_http --json out.json

1. Builds a dataset through mykey's write path (bench.macro_dataset: events appended to
   the log, projected into the index), enrols a terminal with the Engine.
2. Starts `mykey serve` on a free loopback port (its own process group, no rate limit),
   signs in with the reference client, and checks a sample of answers against the
   dataset's known truth.
3. Throughput: wrk with bench/gateway.lua sends authenticated single-ID status lookups
   (GET /v1/status/<random ID>), then GET /healthz with the same header, alternating, on
   the same server. Reports req/s, p50/p99 latency, errors (socket errors and non-2xx)
   and the ratio status/healthz (target: at least 0.60).
4. A SIGKILLed worker: kills one worker while wrk runs, waits for its replacement, then
   runs wrk again: that run must have 0 errors.
5. `mykey rebuild` under load: wrk runs while `mykey rebuild` builds a new index
   generation and swaps it in (the writer is idle, so the log is free); 0 errors, and
   the gateway answers from the new generation afterwards.
6. identify (a card's proof answered with the business's service IDs): in-process, the
   work one worker does per identify, split into its parts (the single-use challenge,
   parsing the bundle, the card's signature, the certificate path and revocation); then
   over HTTP, clients doing challenge + identify round trips against the 2 workers. The
   cards are a throwaway CA's (EC P-256 and RSA-2048 user certificates under an intermediate).

wrk runs on the same machine as the server: on a small machine they compete for the
cores, so the absolute figures are lower than with a remote load generator; the ratio is
the comparable figure. Exit status 1 if a check fails (not for the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.macro_dataset import Spec, build, business_id

HERE = Path(__file__).resolve().parent
LUA = HERE / "gateway.lua"
RATIO_TARGET = 0.60


@dataclass(frozen=True)
class Plan:
    spec: Spec
    duration: int  # seconds per wrk run
    reps: int
    threads: int
    connections: int
    workers: int


PLANS = {
    "quick": Plan(Spec(20_000, 6_000, 4), duration=3, reps=2, threads=1, connections=32, workers=2),
    "default": Plan(Spec(200_000, 60_000, 10), duration=10, reps=3, threads=1, connections=32, workers=2),
}
CARD_PEOPLE = 20  # people with cards and MyKey IDs, linked at the terminal's business (EC P-256; one RSA)
IDENTIFY_CLIENTS = 4  # client threads doing challenge + identify over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mykey(*args: str) -> list[str]:
    return [sys.executable, "-m", "mykey", *args]


class Server:
    """`mykey serve` in its own process group; stop() always leaves nothing behind."""

    def __init__(self, data: Path, workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                mykey("--data", str(data), "serve", "--port", str(self.port), "--workers", str(workers),
                      "--rate-limit", "0", "--token-ttl", "3600"),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait_ready(self, deadline: float = 60.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"mykey serve exited with {self.proc.returncode}: see {self.log_path}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"mykey serve was not ready within {deadline:g} s: see {self.log_path}")

    def workers(self) -> set[int]:
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return set()
        return {p.pid for p in kids if "mykey.gateway.writer" not in " ".join(_cmdline(p))}

    def stop(self) -> int | None:
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything the server left (it never should)
        except ProcessLookupError:
            pass
        return self.proc.returncode


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def wrk(url: str, token: str, ids_file: Path, mode: str, plan: Plan, duration: float | None = None) -> dict:
    """One wrk run; its done() JSON plus req/s and an error total."""
    cmd = ["wrk", f"-t{plan.threads}", f"-c{plan.connections}", f"-d{duration or plan.duration}s", "--latency",
           "-s", str(LUA), url, "--", token, str(ids_file), mode]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=(duration or plan.duration) + 60)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed ({r.returncode}): {r.stderr or r.stdout}")
    out = json.loads(lines[-1])
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    out["errors"] = out["connect"] + out["read"] + out["write"] + out["timeout"] + out["status"]
    return out


def build_data(root: Path, spec: Spec) -> tuple[Path, str, Path]:
    """The dataset, a terminal of the biggest business, and its key file."""
    from mykey.client import keys as terminal_keys
    from mykey.datadir import DataDir, ensure_subject_key
    from mykey.engine import Engine

    data = root / "data"
    ensure_subject_key(DataDir(data))  # the dataset records MyKey IDs; the engine needs the key they were made with
    build(spec, data)
    key, pub = terminal_keys.write_key_pair(root / "terminal.key")  # made on the terminal's machine
    with Engine.open(data) as engine:
        terminal_id = engine.enrol_terminal(business_id(0), pub.read_bytes())
    return data, terminal_id, key


@dataclass(frozen=True)
class Person:
    chain: bytes  # the card's certificate and its intermediate, PEM
    cred: object  # mykey_dev.pki.UserCredential: signs like the card
    key_type: str
    service_id: str


def card_people(data: Path, n: int) -> list[Person]:
    """A throwaway CA trusted by the platform, n people with cards and MyKey IDs, each linked at business 0."""
    from mykey.engine import Engine
    from mykey_dev.pki import ThrowawayCA

    root = ThrowawayCA.create("bench root CA")
    inter = root.intermediate("bench user CA")
    people = []
    with Engine.open(data, checkpoint_on_close=True) as engine:
        engine.add_trust_anchor(root.cert_pem())
        engine.add_trust_anchor(inter.cert_pem(), intermediate=True)
        for i in range(n):
            key_type = "rsa" if i == n - 1 else "ec-p256"
            cred = inter.issue_user(key_type=key_type)
            chain = cred.cert_pem() + inter.cert_pem()
            challenge = engine.new_challenge()
            mykey_id = engine.create_mykey(chain, cred.sign(challenge), challenge)
            sid = f"CARD{i:05d}"
            engine.link_in_person(business_id(0), sid, mykey_id, "bench: seen in person")
            people.append(Person(chain, cred, "RSA-2048" if key_type == "rsa" else "EC P-256", sid))
    return people


def identify_in_process(data: Path, terminal: str, people: list[Person], n: int) -> dict:
    """µs per identify in one process (what a worker does), and its parts; per key type."""
    from mykey.auth.challenges import open_challenge_store
    from mykey.domain import certs
    from mykey.engine.identify import CardReader
    from mykey.engine.lookups import require_trust
    from mykey.index.resolver import Resolver

    bid = business_id(0)
    out: dict = {}
    with Resolver.open(data) as resolver, open_challenge_store(data, resolver.binding) as store:
        reader = CardReader(resolver, store)
        for kind in ("EC P-256", "RSA-2048"):
            who = [p for p in people if p.key_type == kind]
            proofs = []
            for i in range(n):
                person = who[i % len(who)]
                ch = store.issue("identify", business_id=bid, terminal_id=terminal)
                proofs.append((person, ch, person.cred.sign(ch)))  # the card's work: not the platform's
            t = time.perf_counter()
            for person, ch, sig in proofs:
                got = reader.identify(bid, person.chain, sig, ch, terminal_id=terminal)
                if [x.service_id for x in got] != [person.service_id]:
                    raise SystemExit(f"identify answered {got} for {person.service_id}")
            total = (time.perf_counter() - t) / n * 1e6
            t = time.perf_counter()
            for _ in range(n):
                store.consume(store.issue("identify", business_id=bid, terminal_id=terminal), "identify")
            challenge = (time.perf_counter() - t) / n * 1e6
            t = time.perf_counter()
            for person, _ch, _sig in proofs:
                certs.load_bundle(person.chain)
            parse = (time.perf_counter() - t) / n * 1e6
            leaves = [certs.load_bundle(person.chain)[0] for person, _c, _s in proofs]
            t = time.perf_counter()
            for leaf, (_person, ch, sig) in zip(leaves, proofs, strict=True):
                certs.verify_challenge_signature(leaf, ch, sig)
            signature = (time.perf_counter() - t) / n * 1e6
            t = time.perf_counter()
            for _ in range(n):
                with resolver.snapshot() as state:
                    require_trust(state)
            trust = (time.perf_counter() - t) / n * 1e6
            out[kind] = {
                "identify_us": total, "per_second": 1e6 / total, "challenge_us": challenge, "parse_us": parse,
                "signature_us": signature, "trust_store_us": trust,
                "path_and_rest_us": max(0.0, total - challenge - parse - signature - trust),
            }
    return out


def _cpu_seconds(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def identify_over_http(server: Server, terminal: str, key: Path, people: list[Person], seconds: float) -> dict:
    """Challenge + identify round trips from IDENTIFY_CLIENTS threads (keep-alive each) for `seconds`.

    Also the CPU each side spent per identify: the workers' (the server) and this process's
    (the clients: HTTP, JSON, the card's signature), since both share the machine's cores.
    """
    import resource
    import threading

    from mykey.client.gateway import Card, GatewayClient

    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors: list[str] = []
    ec = [p for p in people if p.key_type == "EC P-256"]

    def client(k: int) -> None:
        with GatewayClient(url, terminal, key, timeout=30) as gw:
            i = k
            while time.monotonic() < stop:
                person = ec[i % len(ec)]
                i += IDENTIFY_CLIENTS
                t = time.perf_counter()
                try:
                    got = gw.identify(Card(person.chain, person.cred.sign))
                except Exception as exc:  # counted and reported, never fatal to the run
                    errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - t)
                if got != [(person.service_id, "valid")]:
                    errors.append(f"identify answered {got} for {person.service_id}")

    url = server.url
    workers = server.workers()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(IDENTIFY_CLIENTS)]
    server_cpu, me = _cpu_seconds(workers), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    server_cpu = _cpu_seconds(workers) - server_cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (after.ru_utime - me.ru_utime) + (after.ru_stime - me.ru_stime)
    lat = sorted(latencies) or [0.0]
    n = max(1, len(latencies))
    return {"per_second": len(latencies) / took, "identifies": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None, "clients": IDENTIFY_CLIENTS,
            "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
            "server_cpu_ms": server_cpu / n * 1000, "client_cpu_ms": client_cpu / n * 1000}


def check_answers(url: str, terminal: str, key: Path, spec: Spec) -> tuple[str, list[str]]:
    """Sign in; compare a sample of answers with the dataset's truth. Returns the token and the IDs to ask."""
    from mykey.client.gateway import GatewayClient
    from mykey.domain.status import Status

    start, size = spec.blocks()[0]
    rnd = random.Random(spec.seed)
    present = [start + rnd.randrange(size) for _ in range(2000)]
    ids = [f"S{i:09d}" for i in present] + [f"S{spec.service_ids + i:09d}" for i in range(200)]  # + absent
    with GatewayClient(url, terminal, key) as gw:
        got = dict(gw.statuses(ids))
        for sid in ids[:50]:
            got_one = gw.status(sid)
            if got_one != got[sid]:
                raise SystemExit(f"GET and POST disagree about {sid}: {got_one} / {got[sid]}")
        token = gw.session.token  # type: ignore[union-attr]
    for sid in ids:
        i = int(sid[1:])
        want = Status(spec.status(i)).label if i < start + size else "unknown"
        if got[sid] != want:
            raise SystemExit(f"the gateway answered {got[sid]} for {sid}, the dataset says {want}")
    return token, ids


def per_request_costs(data: Path, terminal: str, n: int = 100_000) -> dict:
    """µs per call of what the gateway adds to each authenticated request, measured in this process."""
    from mykey.gateway.tokens import TokenSigner
    from mykey.index.resolver import Resolver

    signer = TokenSigner(os.urandom(32))
    token, _ = signer.issue(terminal, business_id(0), time.time())
    now = time.time()
    with Resolver.open(data) as resolver:
        t = time.perf_counter()
        for _ in range(n):
            term = resolver.terminal(terminal)
            resolver.business(term.business_id)  # type: ignore[union-attr]
        records = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            resolver.resolve(business_id(0), "S000000001")
        lookup = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        signer.verify(token, now)
    verify = (time.perf_counter() - t) / n * 1e6
    return {"token_verify_us": verify, "records_check_us": records, "one_lookup_us": lookup}


def throughput(server: Server, token: str, ids_file: Path, plan: Plan) -> dict:
    wrk(server.url, token, ids_file, "status", plan, duration=1)  # warm-up
    runs: dict[str, list[dict]] = {"status": [], "healthz": []}
    for rep in range(plan.reps):
        for mode in (("status", "healthz") if rep % 2 == 0 else ("healthz", "status")):
            runs[mode].append(wrk(server.url, token, ids_file, mode, plan))
    out = {}
    for mode, rs in runs.items():
        out[mode] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "rps_min": min(r["rps"] for r in rs), "rps_max": max(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_us"] for r in rs) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in rs) / 1000,
            "errors": sum(r["errors"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
        }
    out["ratio"] = out["status"]["rps"] / out["healthz"]["rps"]
    return out


def killed_worker(server: Server, token: str, ids_file: Path, plan: Plan) -> dict:
    """SIGKILL a worker during a wrk run; after its replacement, a second run must have 0 errors."""
    import threading

    before = server.workers()
    victim = min(before)
    result: dict = {}

    def load():
        result["during"] = wrk(server.url, token, ids_file, "status", plan, duration=plan.duration)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(plan.duration / 3)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        now = server.workers()
        if victim not in now and len(now) == len(before):
            break
        time.sleep(0.005)
    else:
        raise SystemExit("the killed worker was not replaced within 20 s")
    replaced_ms = (time.monotonic() - killed_at) * 1000
    t.join()
    after = wrk(server.url, token, ids_file, "status", plan)
    return {"replaced_ms": replaced_ms, "errors_during_kill": result["during"]["errors"],
            "rps_during": result["during"]["rps"], "errors_after": after["errors"], "rps_after": after["rps"]}


def rebuild_under_load(server: Server, data: Path, token: str, ids_file: Path, plan: Plan) -> dict:
    """`mykey rebuild` while wrk runs: no request may fail; the workers move to the new generation."""
    import threading

    before = os.readlink(data / "index")
    result: dict = {}
    duration = max(plan.duration, 4)

    def load():
        result["load"] = wrk(server.url, token, ids_file, "status", plan, duration=duration)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.5)
    end = time.monotonic() + 30
    while True:  # the writer lets go of the log when it has been idle for a moment
        r = subprocess.run(mykey("--data", str(data), "rebuild"), capture_output=True, text=True, timeout=600)
        if r.returncode == 0 or time.monotonic() > end or "pid" not in (r.stderr + r.stdout):
            break
        time.sleep(0.2)
    t.join()
    if r.returncode != 0:
        raise SystemExit(f"mykey rebuild failed: {r.stderr or r.stdout}")
    after = os.readlink(data / "index")
    ok = httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    return {"errors": result["load"]["errors"], "requests": result["load"]["requests"],
            "generation_before": before, "generation_after": after, "ready_after": ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and short (under 60 s)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (for the server log)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    plan = PLANS["quick" if args.quick else "default"]
    if args.workers:
        plan = Plan(plan.spec, plan.duration, plan.reps, plan.threads, plan.connections, args.workers)
    work = Path(tempfile.mkdtemp(prefix="mykey-gw-bench-"))
    t0 = time.monotonic()
    server = None
    failures: list[str] = []
    try:
        data, terminal, key = build_data(work, plan.spec)
        people = card_people(data, CARD_PEOPLE)
        costs = per_request_costs(data, terminal)
        in_process = identify_in_process(data, terminal, people, 200 if args.quick else 2000)
        server = Server(data, plan.workers, work / "serve.log")
        server.wait_ready()
        token, ids = check_answers(server.url, terminal, key, plan.spec)
        ids_file = work / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        res = {"plan": {"service_ids": plan.spec.service_ids, "duration_s": plan.duration, "reps": plan.reps,
                        "wrk": f"-t{plan.threads} -c{plan.connections}", "workers": plan.workers,
                        "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}}
        res["per_request_us"] = costs
        res["throughput"] = tp = throughput(server, token, ids_file, plan)
        res["killed_worker"] = kw = killed_worker(server, token, ids_file, plan)
        res["rebuild"] = rb = rebuild_under_load(server, data, token, ids_file, plan)
        res["identify"] = {"in_process": in_process,
                           "http": (ih := identify_over_http(server, terminal, key, people, plan.duration))}
        res["stop_rc"] = server.stop()
        server = None
        res["seconds"] = time.monotonic() - t0
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for mode in ("status", "healthz"):
        if tp[mode]["errors"]:
            failures.append(f"{tp[mode]['errors']} errors in the {mode} runs")
    if kw["errors_after"]:
        failures.append(f"{kw['errors_after']} errors after the killed worker was replaced")
    if rb["errors"] or not rb["ready_after"] or rb["generation_after"] == rb["generation_before"]:
        failures.append(f"rebuild under load: {rb}")
    if ih["errors"] or not ih["identifies"]:
        failures.append(f"identify over HTTP: {ih['errors']} errors of {ih['identifies']} ({ih['first_error']})")
    if res["stop_rc"] != 0:
        failures.append(f"mykey serve exited with {res['stop_rc']} on SIGTERM")
    print(f"gateway over HTTP/1.1 keep-alive, wrk {res['plan']['wrk']}, {plan.workers} workers, "
          f"{plan.spec.service_ids} service IDs, {plan.reps} x {plan.duration} s runs "
          f"(load average before: {res['plan']['loadavg_before'][0]:.2f} on {os.cpu_count()} cores)")
    print()
    print("| endpoint | req/s (median, min-max) | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for mode, label in (("status", "GET /v1/status/{id} (token)"), ("healthz", "GET /healthz")):
        r = tp[mode]
        print(f"| {label} | {r['rps']:,.0f} ({r['rps_min']:,.0f}-{r['rps_max']:,.0f}) | {r['p50_ms']:.2f} "
              f"| {r['p99_ms']:.2f} | {r['errors']} |")
    print()
    print(f"status/healthz ratio: {tp['ratio']:.2f} (target >= {RATIO_TARGET:.2f})")
    print(f"per authenticated request, in-process: token HMAC {costs['token_verify_us']:.2f} µs, terminal + "
          f"business records {costs['records_check_us']:.2f} µs, the lookup itself {costs['one_lookup_us']:.2f} µs")
    print(f"SIGKILLed worker: replaced in {kw['replaced_ms']:.0f} ms; {kw['errors_during_kill']} errors during the "
          f"kill (connections on the killed worker), {kw['errors_after']} after the replacement")
    print(f"mykey rebuild under load: {rb['errors']} errors in {rb['requests']:,} requests; "
          f"{rb['generation_before']} -> {rb['generation_after']}")
    print()
    print("identify, in one process (a worker's work per card proof; the card's signing not counted):")
    print("| card | identify/s | µs each | challenge (single use) | parse bundle | card signature "
          "| trust store from the index | path validation, revocation, lookups |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, r in in_process.items():
        print(f"| {kind} | {r['per_second']:,.0f} | {r['identify_us']:,.0f} | {r['challenge_us']:.0f} | "
              f"{r['parse_us']:.0f} | {r['signature_us']:.0f} | {r['trust_store_us']:.0f} | {r['path_and_rest_us']:,.0f} |")
    print(f"identify over HTTP (EC P-256; {ih['clients']} client threads on the same machine, each a challenge + an "
          f"identify + the card's signature): {ih['per_second']:,.0f}/s, p50 {ih['p50_ms']:.1f} ms, "
          f"p99 {ih['p99_ms']:.1f} ms, {ih['errors']} errors; CPU per identify: workers {ih['server_cpu_ms']:.2f} ms, "
          f"clients {ih['client_cpu_ms']:.2f} ms (on {os.cpu_count()} shared cores)")
    print(f"total {res['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
