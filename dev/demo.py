"""`mykey demo`: build a realistic platform on the embedded engine and resolve through a terminal.

Every step goes through the Engine's public commands with real certificates,
signatures and CSV files, so the demo exercises what production would.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mykey.auth.terminals import TerminalAuthenticator, open_nonce_store
from mykey.client import keys as terminal_keys
from mykey.datadir import DataDir
from mykey.domain.status import Status
from mykey.engine.engine import Engine
from mykey.errors import MykeyError
from mykey.index.resolver import Resolver
from mykey.log.filelog import FileLog

from .pki import ThrowawayCA, UserCredential

MUNICIPALITIES = ["131016", "131024", "141003", "271004", "011002"]
IN_PERSON_REASON = "membership card and photo ID checked at the counter"
FACILITY_KINDS = ["Library", "Sports Centre", "Shopping Street", "Public Hospital", "Museum", "Community Pool"]


@dataclass
class DemoConfig:
    """Sizes of the demo platform (defaults finish in about a minute on 2 cores)."""

    businesses: int = 30
    terminals_per_business: int = 2
    users: int = 1000
    rsa_users: int = 10
    service_ids: int = 1_000_000
    links_per_user: int = 3
    card_links_per_user: int = 1  # by the card (~2 ms each: chain + proof); the rest in person, with a reason
    suspend_fraction: float = 0.02
    revoke_fraction: float = 0.01
    lookups: int = 1_000_000
    lookup_batch: int = 100_000
    gateway: bool = True  # then start `mykey serve` and drive it with the reference client
    seed: int = 20261126


@dataclass
class Phase:
    name: str
    count: int
    seconds: float
    unit: str

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class DemoResult:
    phases: list[Phase] = field(default_factory=list)
    status_counts: Counter = field(default_factory=Counter)
    lookups_per_second: float = 0.0
    index_bytes: int = 0
    log_bytes: int = 0
    last_seq: int = 0
    checkpoint: str = ""
    example_table: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    gateway: list[str] = field(default_factory=list)  # what the gateway tour did, one line each
    gateway_seconds: float = 0.0


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


DEMO_MARKER = ".mykey-demo"


def prepare_data_dir(root: Path) -> None:
    """Replace a previous demo's data directory; refuse to touch anything else.

    Only a directory that a demo made (it holds DEMO_MARKER) is deleted, and only
    while no engine holds its log's writer lock.
    """
    if root.exists() and any(root.iterdir()):
        if not (root / DEMO_MARKER).is_file():
            raise MykeyError(
                f"{root} is not empty and was not made by `mykey demo`; the demo never replaces real data. "
                "Pass --data to a new or empty directory"
            )
        if (root / "log").is_dir():
            FileLog.open(root / "log").close()  # LogLockedError while an engine is running there
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("made by `mykey demo`; the next demo run may replace this directory\n")


class _Timer:
    def __init__(self, result: DemoResult, name: str, unit: str, on_phase: Callable[[Phase], None] | None) -> None:
        self.result, self.name, self.unit, self.on_phase = result, name, unit, on_phase
        self.count = 0

    def __enter__(self) -> _Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            phase = Phase(self.name, self.count, time.perf_counter() - self.t0, self.unit)
            self.result.phases.append(phase)
            if self.on_phase:
                self.on_phase(phase)


def run_demo(
    data_dir: Path,
    config: DemoConfig | None = None,
    *,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    on_phase: Callable[[Phase], None] | None = None,
) -> DemoResult:
    """Build the demo platform in data_dir (replacing an earlier demo) and measure each phase."""
    config = DemoConfig() if config is None else config
    rng = random.Random(config.seed)
    prepare_data_dir(data_dir)
    res = DemoResult()

    def bar(name: str, total: int) -> Callable[[int], None]:
        return progress(name, total) if progress else (lambda n: None)

    def timer(name: str, unit: str) -> _Timer:
        return _Timer(res, name, unit, on_phase)

    data = DataDir(data_dir)
    engine = Engine.open(data_dir)
    try:
        with timer("trust: throwaway root + intermediate CA", "CA") as t:
            root = ThrowawayCA.create("mykey demo root CA")
            inter = root.intermediate("mykey demo user CA")
            engine.add_trust_anchor(root.cert_pem())
            engine.add_trust_anchor(inter.cert_pem(), intermediate=True)
            t.count = 2

        with timer("the design's example table", "cmd") as t:
            res.example_table = design_example(engine, inter)
            t.count = 12

        with timer("businesses and terminals", "cmd") as t:
            tick = bar("businesses", config.businesses)
            businesses: list[str] = []
            terminals: dict[str, list[tuple[str, Ed25519PrivateKey]]] = {}
            for i in range(config.businesses):
                name = f"{FACILITY_KINDS[i % len(FACILITY_KINDS)]} {i // len(FACILITY_KINDS) + 1}"
                bid = engine.register_business(name, MUNICIPALITIES[i % len(MUNICIPALITIES)])
                businesses.append(bid)
                terminals[bid] = []
                for _ in range(config.terminals_per_business):
                    key = terminal_keys.generate()  # made on the terminal: the platform gets the public key
                    terminals[bid].append((engine.enrol_terminal(bid, terminal_keys.public_pem(key)), key))
                t.count += 1 + config.terminals_per_business
                tick(1)

        with timer("users create MyKey IDs (cert chain + signature)", "user") as t:
            tick = bar("MyKey IDs", config.users)
            users: list[tuple[str, UserCredential]] = []
            for i in range(config.users):
                cred = inter.issue_user(key_type="rsa" if i < config.rsa_users else "ec-p256")
                challenge = engine.new_challenge()
                chain = cred.cert_pem() + inter.cert_pem()
                users.append((engine.create_mykey(chain, cred.sign(challenge), challenge), cred))
                tick(1)
            t.count = len(users)

        with timer("bulk import of service IDs (CSV, all or nothing)", "row") as t:
            tick = bar("service IDs", config.service_ids)
            per = max(1, config.service_ids // len(businesses))
            registered: dict[str, list[str]] = {}
            with tempfile.TemporaryDirectory(prefix="mykey-demo-") as tmp:
                remaining = config.service_ids
                for n, bid in enumerate(businesses):
                    count = remaining if n == len(businesses) - 1 else min(per, remaining)
                    remaining -= count
                    path = Path(tmp) / f"{bid}.csv"
                    sids = [f"{bid[0]}{n:03d}{j:08d}" for j in range(count)]
                    with open(path, "w", newline="") as f:
                        w = csv.writer(f)
                        w.writerow(["service_id", "customer_id"])
                        for j, sid in enumerate(sids):
                            w.writerow([sid, f"C{j}" if j % 4 == 0 else ""])
                    t.count += engine.import_service_ids_csv(bid, path)
                    registered[bid] = sids
                    tick(count)

        with timer("users link service IDs", "link") as t:
            tick = bar("links", config.users * config.links_per_user)
            linked: dict[str, list[str]] = {b: [] for b in businesses}
            pools = {b: rng.sample(range(len(registered[b])), min(len(registered[b]), config.users)) for b in businesses}
            for mykey_id, cred in users:
                for n, bid in enumerate(rng.sample(businesses, min(config.links_per_user, len(businesses)))):
                    if not pools[bid]:
                        continue
                    sid = registered[bid][pools[bid].pop()]
                    if n < config.card_links_per_user:
                        link_by_card(engine, bid, sid, cred, inter)
                    else:
                        engine.link_in_person(bid, sid, mykey_id, IN_PERSON_REASON)
                    linked[bid].append(sid)
                    t.count += 1
                    tick(1)

        with timer("suspensions, an invalidation, a renewal", "cmd") as t:
            victims = rng.sample(users[config.rsa_users :], max(1, int(config.users * config.suspend_fraction)) + 2)
            for mykey_id, _ in victims[:-2]:
                engine.suspend(mykey_id, "reported lost at the counter")
                t.count += 1
            engine.invalidate(victims[-2][0], "holder deceased")
            renewed_id, old_cred = victims[-1]
            new_cred = inter.renew(old_cred)
            challenge = engine.new_challenge("renew")
            engine.renew_certificate(renewed_id, new_cred.cert_pem() + inter.cert_pem(), new_cred.sign(challenge), challenge,
                                     operator_approval="card re-issued; holder seen at the counter")
            t.count += 2

        with timer("CRL: verify, record revocations, suspend", "entry") as t:
            revoked = rng.sample(users[config.rsa_users :], max(1, int(config.users * config.revoke_fraction)))
            unusable = {mk for mk, _ in [*victims, *revoked]}  # suspended, invalidated, renewed, revoked
            entries = [(cred, "key_compromise") for _, cred in revoked] + [(old_cred, "superseded")]
            report = engine.apply_crl(inter.crl(entries, number=1))
            t.count = report.entries

        with timer("terminal authenticates, resolves a random batch", "lookup") as t:
            bid = businesses[0]
            terminal_id, key = terminals[bid][0]
            message, signature = terminal_keys.authentication(key, terminal_id)
            with _gateway_resolver(engine) as resolver:
                with TerminalAuthenticator(resolver, open_nonce_store(data, engine.index.binding)) as auth:
                    business = auth.authenticate(terminal_id, message, signature)
                other = businesses[1] if len(businesses) > 1 else None
                query = _lookup_mix(rng, config.lookups, registered, linked, business, other)
                counts: Counter = Counter()
                t0 = time.perf_counter()
                for i in range(0, len(query), config.lookup_batch):
                    counts.update(resolver.resolve_many(business, query[i : i + config.lookup_batch]))
                elapsed = time.perf_counter() - t0
            res.status_counts = Counter({Status(c).label: n for c, n in counts.items()})
            res.lookups_per_second = len(query) / elapsed if elapsed else float("inf")
            t.count = len(query)

        if engine.trail is not None:
            res.checkpoint = engine.trail.checkpoint()
        res.last_seq = engine.log.last_seq
    finally:
        engine.close()
    res.index_bytes = _dir_size(data.index.resolve())
    res.log_bytes = _dir_size(data.log)
    if config.gateway:  # the engine is closed: the gateway's writer takes the log
        t0 = time.perf_counter()
        holder = next(u for u in users[config.rsa_users :] if u[0] not in unusable)
        tour = GatewayTour(
            data_dir,
            card=_card(holder[1], inter),
            suspended_card=_card(next((u for u in victims[:-2] if u not in revoked), victims[0])[1], inter),
            terminal=terminals[businesses[0]][0],
            other_terminal=terminals[businesses[1]][0] if len(businesses) > 1 else None,
            unlinked=[sid for sid in registered[businesses[0]][:50] if sid not in linked[businesses[0]]][:1],
            elsewhere=registered[businesses[1]][:1] if len(businesses) > 1 else [],
        )
        res.gateway = tour.run()
        res.gateway_seconds = time.perf_counter() - t0
    return res


def _card(cred: UserCredential, ca: ThrowawayCA):
    """The reference client's card: a real terminal's card reader gives the certificate and signs."""
    from mykey.client.gateway import Card

    return Card(cred.cert_pem() + ca.cert_pem(), cred.sign)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GATEWAY_READY_DEADLINE = 60.0  # seconds for `mykey serve` to answer /readyz
GATEWAY_STOP_DEADLINE = 30.0


@dataclass
class GatewayTour:
    """`mykey serve` on a free loopback port, driven by the reference client, always stopped.

    The server runs in its own process group (a Ctrl-C of the demo does not reach it
    half-way); whatever happens, the tour sends the group SIGTERM, then SIGKILL.
    """

    data_dir: Path
    card: object  # mykey.client.gateway.Card of a person with a valid MyKey ID
    suspended_card: object
    terminal: tuple[str, Ed25519PrivateKey]
    other_terminal: tuple[str, Ed25519PrivateKey] | None
    unlinked: list[str]
    elsewhere: list[str]
    lines: list[str] = field(default_factory=list)

    def run(self) -> list[str]:
        import httpx

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory(prefix="mykey-demo-gw-") as tmp:
            log_path = Path(tmp) / "serve.log"
            cmd = [sys.executable, "-m", "mykey", "--data", str(self.data_dir), "serve", "--port", str(port),
                   "--workers", "2", "--writer-idle", "0.2"]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env={**os.environ, "TMPDIR": tmp})
            try:
                t0 = time.monotonic()
                while True:
                    if proc.poll() is not None:
                        raise MykeyError(f"mykey serve exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
                    try:
                        if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() - t0 > GATEWAY_READY_DEADLINE:
                        raise MykeyError(f"mykey serve was not ready in {GATEWAY_READY_DEADLINE:g} s")
                    time.sleep(0.05)
                self.say(f"mykey serve on {url} (2 workers + the writer), ready in {time.monotonic() - t0:.1f} s")
                self.drive(url)
            finally:
                code, gone = _stop_group(proc)
                self.say(f"gateway stopped with SIGTERM: exit code {code}, "
                         + ("no process left" if gone else "processes left behind!"))
        return self.lines

    def say(self, text: str) -> None:
        self.lines.append(text)

    def drive(self, url: str) -> None:
        from mykey.client.gateway import GatewayClient, PersonClient, check_history
        from mykey.errors import GatewayRefusedError

        terminal_id, key = self.terminal
        with GatewayClient(url, terminal_id, key) as gw:
            session = gw.sign_in()
            self.say(f"terminal {terminal_id} signed in (Ed25519): a session token for business {session.business_id}")
            found = gw.identify(self.card)
            self.say(f"identify (a card taps the reader): {_pairs(found) or 'no service ID here yet'}")
            new = f"NEW{session.business_id}1"
            self.say(f"first-use link of membership number {new} by the card: {gw.link(new, self.card)} "
                     "(registered and linked; the terminal never saw a MyKey ID)")
            self.say(f"identify again: {_pairs(gw.identify(self.card))}")
            asked = [new, *self.unlinked, *self.elsewhere, "NOT-REGISTERED"]
            self.say(f"status lookups: {_pairs(gw.statuses(asked))}")
            try:
                gw.identify(self.suspended_card)
            except GatewayRefusedError as exc:
                self.say(f"a suspended person's card: refused ({exc.status} {exc.problem.get('type', '').split(':')[-1]})")
        if self.other_terminal is not None:
            other_id, other_key = self.other_terminal
            with GatewayClient(url, other_id, other_key) as gw:
                seen = _pairs(gw.identify(self.card)) or "no service ID there"
                self.say(f"the same card at {other_id} (another business): {seen}; none of {session.business_id}'s")
        vkey = self.data_dir / "keys" / "checkpoint.vkey"
        with PersonClient(url) as me:
            deadline = time.monotonic() + 15
            while True:  # the writer signs a checkpoint over the new link once it is idle
                history = me.history(self.card)
                if all(e["proof"] for e in history["events"]) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        checked = check_history(history, vkey)
        proven = sum(1 for line in checked if "OK inclusion" in line)
        self.say(f"the person's own history (no terminal): {len(history['events'])} events, {proven} proven "
                 f"against checkpoint {history['checkpoint']['size'] if history['checkpoint'] else '-'}, "
                 f"checked offline with {vkey.name}")
        for e in history["events"][-2:]:
            self.say(f"  {e['time'][:19]}Z  {e['what']}")


def _pairs(pairs) -> str:
    return ", ".join(f"{sid} {status}" for sid, status in pairs)


def _stop_group(proc: subprocess.Popen) -> tuple[int | None, bool]:
    """SIGTERM the server's process group and wait; SIGKILL whatever is left. (exit code, group gone)."""
    for sig, wait in ((signal.SIGTERM, GATEWAY_STOP_DEADLINE), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
            time.sleep(0.05)
        if proc.poll() is not None and not _group_alive(proc.pid):
            break
    if proc.poll() is None:
        proc.wait(5)
    return proc.returncode, not _group_alive(proc.pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _gateway_resolver(engine: Engine) -> Resolver:
    """The gateway's read path over the engine's own index environment (one environment per process)."""
    index = engine.index
    return Resolver(index.env, index.dbs, owns_env=False, binding=index.binding)


def _lookup_mix(
    rng: random.Random,
    n: int,
    registered: dict[str, list[str]],
    linked: dict[str, list[str]],
    business: str,
    other: str | None,
) -> list[str]:
    """n service IDs a terminal of business asks about: 5% linked, 80% its own, 10% another's, the rest absent."""
    own = registered[business]
    others = registered[other] if other is not None else []
    query: list[str] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05 and linked[business]:
            query.append(rng.choice(linked[business]))
        elif r < 0.85:
            query.append(own[rng.randrange(len(own))])
        elif r < 0.95 and others:
            query.append(others[rng.randrange(len(others))])  # another business's IDs: unknown here
        else:
            query.append(f"absent-{rng.randrange(10**9)}")
    return query


def link_by_card(engine: Engine, business_id: str, service_id: str, cred: UserCredential, ca: ThrowawayCA) -> None:
    """What a terminal does at first use: the card signs a challenge naming the business and service ID."""
    challenge = engine.link_challenge(business_id, service_id)
    engine.link_with_card(business_id, service_id, cred.cert_pem() + ca.cert_pem(), cred.sign(challenge), challenge)


def design_example(engine: Engine, ca: ThrowawayCA) -> list[tuple[str, str, str, str, str]]:
    """The platform design's example table, rebuilt with real commands (needs A0001 and B2108 free)."""
    a = engine.register_business("Example Library", "131016", business_id="A0001")
    b = engine.register_business("Example Sports Centre", "131024", business_id="B2108")
    ids, creds = [], []
    for _ in range(3):
        cred = ca.issue_user()
        challenge = engine.new_challenge()
        ids.append(engine.create_mykey(cred.cert_pem() + ca.cert_pem(), cred.sign(challenge), challenge))
        creds.append(cred)
    link_by_card(engine, a, "123456", creds[0], ca)  # the person taps their card: no MyKey ID is named
    link_by_card(engine, b, "578901", creds[1], ca)
    engine.invalidate(ids[1], "example")
    link_by_card(engine, a, "111111", creds[2], ca)
    engine.suspend(ids[2], "example")
    engine.register_service_ids(b, [("589000", None)])
    rows = []
    for bid, sid, mk in ((a, "123456", ids[0]), (b, "578901", ids[1]), (a, "111111", ids[2]), (b, "589000", "")):
        status, customer = engine.service_status(bid, sid)
        state = engine.mykey(mk).state.label if mk else ""
        rows.append((mk, state, bid, sid, customer or ""))
    return rows


def format_result(res: DemoResult) -> str:
    """The demo's closing table."""
    lines = ["", f"{'phase':<52} {'count':>10} {'seconds':>9} {'rate/s':>12}"]
    for p in res.phases:
        lines.append(f"{p.name:<52} {p.count:>10,} {p.seconds:>9.2f} {p.rate:>12,.0f}")
    lines.append("")
    lines.append("statuses returned to the terminal: " + ", ".join(f"{k} {v:,}" for k, v in sorted(res.status_counts.items())))
    lines.append(f"resolve_many through the authenticated terminal: {res.lookups_per_second:,.0f} lookups/s")
    lines.append(f"log: {res.last_seq:,} events, {res.log_bytes / 1e6:.1f} MB; index: {res.index_bytes / 1e6:.1f} MB")
    if res.example_table:
        lines += ["", "the design's example table, built with real commands:",
                  f"  {'MyKey ID':<9} {'state':<10} {'business':<9} {'service':<8} customer"]
        for mk, state, bid, sid, cust in res.example_table:
            lines.append(f"  {mk:<9} {state:<10} {bid:<9} {sid:<8} {cust}")
    if res.checkpoint:
        lines += ["", "signed audit checkpoint (C2SP tlog-checkpoint):", *("  " + l for l in res.checkpoint.rstrip().splitlines())]
    if res.gateway:
        lines += ["", f"the terminal gateway, driven by the reference client ({res.gateway_seconds:.1f} s):",
                  *("  " + line for line in res.gateway)]
    return "\n".join(lines)
