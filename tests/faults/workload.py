"""The one mixed workload every fault test drives through the Engine API (keep Engine calls here).

``Workload.step()`` runs one random command: CSV imports, bulk registration, MyKey ID
creation, links and unlinks, suspensions, resumptions, invalidations, renewals, CRLs,
terminal enrolment and signed checkpoints. What it chooses comes from ``Fold``, a small
model folded from the log itself, so a workload can pick up where a killed process left
off. A command that returns is acknowledged: ``on_ack(kind, last_seq, extra)`` is called
after it returned, with the log's last sequence number then (and the checkpoint note).
A refusal (CommandRefused) appends nothing and is counted, not acknowledged.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mykey.domain import events as ev
from mykey.errors import CommandRefused

Ack = Callable[[str, int, object], None]


class Pki:
    """A throwaway root and issuing CA (slow keys are made once) and card credentials."""

    def __init__(self) -> None:
        from mykey_dev.pki import ThrowawayCA

        self.root = ThrowawayCA.create("faults root")
        self.inter = self.root.intermediate("faults user CA")
        self.creds: dict[str, object] = {}  # serial (hex) -> credential made in this process

    def user(self):
        cred = self.inter.issue_user()
        self.creds[format(cred.serial, "x")] = cred
        return cred

    def chain(self, cred) -> bytes:
        return cred.cert_pem() + self.inter.cert_pem()


@dataclass
class Fold:
    """What the workload needs to know, folded from the log's events."""

    seq: int = 0
    trusted: bool = False
    businesses: list[str] = field(default_factory=list)
    services: dict[tuple[str, str], str | None] = field(default_factory=dict)  # -> linked MyKey ID
    mykeys: dict[str, list] = field(default_factory=dict)  # id -> [state, serial hex]
    crl_number: int = 0
    revoked: set[str] = field(default_factory=set)
    terminals: list[str] = field(default_factory=list)
    counter: int = 0

    def advance(self, log) -> None:
        """Fold the events after self.seq."""
        for env in log.read(self.seq + 1):
            self._apply(env.body)
            self.seq = env.seq

    def _apply(self, e: ev.Event) -> None:
        if isinstance(e, ev.TrustAnchorAdded):
            self.trusted = True
        elif isinstance(e, ev.BusinessRegistered):
            self.businesses.append(e.business_id)
        elif isinstance(e, ev.ServiceIdRegistered):
            self.services[(e.business_id, e.service_id)] = None
        elif isinstance(e, ev.ServiceIdLinked):
            self.services[(e.business_id, e.service_id)] = e.mykey_id
        elif isinstance(e, ev.ServiceIdUnlinked):
            self.services[(e.business_id, e.service_id)] = None
        elif isinstance(e, ev.MyKeyCreated):
            self.mykeys[e.mykey_id] = ["valid", e.cert_serial]
        elif isinstance(e, ev.MyKeySuspended):
            self.mykeys[e.mykey_id][0] = "suspended"
        elif isinstance(e, ev.MyKeyResumed):
            self.mykeys[e.mykey_id][0] = "valid"
        elif isinstance(e, ev.MyKeyInvalidated):
            self.mykeys[e.mykey_id][0] = "invalid"
        elif isinstance(e, ev.CertificateRenewed):
            self.mykeys[e.mykey_id][1] = e.new_serial
        elif isinstance(e, ev.CertificateRevoked):
            self.revoked.add(e.serial)
        elif isinstance(e, ev.CrlApplied):
            self.crl_number = max(self.crl_number, e.number)
        elif isinstance(e, ev.TerminalEnrolled):
            self.terminals.append(e.terminal_id)
        if isinstance(e, (ev.ServiceIdRegistered, ev.BusinessRegistered)):
            self.counter += 1


OPS = (
    ("import", 3), ("register", 2), ("create", 4), ("link", 6), ("unlink", 2), ("suspend", 2), ("resume", 2),
    ("invalidate", 1), ("renew", 1), ("crl", 1), ("checkpoint", 1), ("terminal", 1), ("newbiz", 1),
)


class Workload:
    """Random commands against an open Engine (see the module docstring)."""

    def __init__(self, engine, pki: Pki, rng: random.Random, scratch: Path, on_ack: Ack | None = None,
                 *, big_imports: bool = False) -> None:
        self.engine = engine
        self.pki = pki
        self.rng = rng
        self.scratch = scratch
        self.on_ack = on_ack or (lambda kind, seq, extra: None)
        self.big_imports = big_imports
        self.fold = Fold()
        self.fold.advance(engine.log)
        self.refused = 0
        self.names, self.weights = zip(*OPS, strict=True)

    def _ack(self, kind: str, extra: object = None) -> None:
        self.fold.advance(self.engine.log)
        self.on_ack(kind, self.engine.log.last_seq, extra)

    def setup(self) -> None:
        """Trust the CAs and register two businesses, unless the log has them already."""
        e = self.engine
        if not self.fold.trusted:
            e.add_trust_anchor(self.pki.root.cert_pem())
            e.add_trust_anchor(self.pki.inter.cert_pem(), intermediate=True)
            self._ack("trust")
        while len(self.fold.businesses) < 2:
            e.register_business(f"Business {len(self.fold.businesses)}", "131016")
            self._ack("business")

    def step(self, kind: str | None = None) -> str:
        """Run one command (a random kind unless given); returns its kind."""
        kind = kind or self.rng.choices(self.names, self.weights)[0]
        try:
            extra = getattr(self, "_" + kind)()
        except CommandRefused:
            self.refused += 1
            self.fold.advance(self.engine.log)
            return kind + " (refused)"
        if extra is not False:
            self._ack(kind, extra)
        return kind

    # --- the commands

    def _sid(self) -> str:
        self.fold.counter += 1
        return f"S{self.fold.seq}x{self.fold.counter}{self.rng.randrange(1 << 20):05x}"

    def _rows(self) -> list[tuple[str, str | None]]:
        n = self.rng.choice([1, 3, 20, 100, 1000] if self.big_imports else [1, 3, 10, 40])
        return [(self._sid(), self.rng.choice([None, f"c{i}"])) for i in range(n)]

    def _business(self) -> str:
        return self.rng.choice(self.fold.businesses)

    def _import(self):
        rows = self._rows()
        path = self.scratch / f"import-{self.rng.randrange(1 << 30)}.csv"
        path.write_text("service_id,customer_id\n" + "".join(f"{s},{c or ''}\n" for s, c in rows), "ascii")
        try:
            self.engine.import_service_ids_csv(self._business(), path)
        finally:
            path.unlink()

    def _register(self):
        self.engine.register_service_ids(self._business(), self._rows())

    def _create(self):
        cred = self.pki.user()
        challenge = self.engine.new_challenge()
        return self.engine.create_mykey(self.pki.chain(cred), cred.sign(challenge), challenge)

    def _pick_mykey(self, *states: str) -> str | None:
        ids = sorted(m for m, (st, _) in self.fold.mykeys.items() if st in states)
        return self.rng.choice(ids) if ids else None

    def _link(self):
        mykey_id = self._pick_mykey("valid", "suspended")
        if mykey_id is None:
            return self._create()
        free = sorted(k for k, v in self.fold.services.items() if v is None)
        bid, sid = self.rng.choice(free) if free and self.rng.random() < 0.7 else (self._business(), self._sid())
        state, serial = self.fold.mykeys[mykey_id]
        cred = self.pki.creds.get(serial) if state == "valid" and self.rng.random() < 0.5 else None
        link_service_id(self.engine, bid, sid, mykey_id, cred, self.pki.chain(cred) if cred is not None else b"")

    def _unlink(self):
        linked = sorted(k for k, v in self.fold.services.items() if v is not None)
        if not linked:
            return self._link()
        bid, sid = self.rng.choice(linked)
        self.engine.unlink_service_id(bid, sid)

    def _suspend(self):
        m = self._pick_mykey("valid")
        if m is None:
            return self._create()
        self.engine.suspend(m, "reported lost")

    def _resume(self):
        m = self._pick_mykey("suspended")
        if m is None:
            return self._suspend()
        self.engine.resume(m)

    def _invalidate(self):
        m = self._pick_mykey("valid", "suspended")
        if m is None:
            return self._create()
        self.engine.invalidate(m, "holder died")

    def _renew(self):
        known = sorted(m for m, (st, serial) in self.fold.mykeys.items()
                       if st != "invalid" and serial in self.pki.creds and serial not in self.fold.revoked)
        if not known:
            return self._create()
        m = self.rng.choice(known)
        new = self.pki.inter.renew(self.pki.creds[self.fold.mykeys[m][1]])
        self.pki.creds[format(new.serial, "x")] = new
        challenge = self.engine.new_challenge("renew")
        self.engine.renew_certificate(m, self.pki.chain(new), new.sign(challenge), challenge)

    def _crl(self):
        serials = sorted({s for _, s in self.fold.mykeys.values()} - self.fold.revoked)
        chosen = self.rng.sample(serials, min(len(serials), self.rng.randint(1, 2)))
        crl = self.pki.inter.crl([(int(s, 16), "key_compromise") for s in chosen], number=self.fold.crl_number + 1)
        self.engine.apply_crl(crl)

    def _checkpoint(self):
        return self.engine.trail.checkpoint()

    def _terminal(self):
        enrol_terminal(self.engine, self._business())

    def _newbiz(self):
        self.engine.register_business(f"Business {len(self.fold.businesses)}", "131016")


def link_service_id(engine, business_id: str, service_id: str, mykey_id: str, cred=None, chain: bytes = b"") -> None:
    """The one place a link is made: with the person's card where the API asks for it and the card is at
    hand (cred, chain: its certificate bundle), else in person on an operator's decision; the older
    API took the MyKey ID alone."""
    if not hasattr(engine, "link_in_person"):
        engine.link_service_id(business_id, service_id, mykey_id)
    elif cred is not None:
        challenge = engine.link_challenge(business_id, service_id)
        engine.link_with_card(business_id, service_id, chain, cred.sign(challenge), challenge)
    else:
        engine.link_in_person(business_id, service_id, mykey_id, "identity card checked at the counter")


def enrol_terminal(engine, business_id: str) -> None:
    """Enrol a terminal: by the public key of a key pair it made itself where the engine asks for one."""
    import inspect

    if "public_key" not in inspect.signature(engine.enrol_terminal).parameters:
        engine.enrol_terminal(business_id)
        return
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    engine.enrol_terminal(business_id, public)


def record_digest(payload: bytes) -> int:
    """What an acknowledgement line carries to identify the record at its sequence number."""
    return zlib.crc32(payload)
