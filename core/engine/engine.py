"""The Engine: every flow of the MyKey platform as a validated command that emits events.

Each command reads the current state from the LMDB index (never a second copy in
memory), validates, appends all of its events as one atomic log batch, then
applies them to the index. A refused command raises a specific error and appends
nothing. On open, whatever the log holds beyond the index is replayed first.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import hmac
import io
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..auth.terminals import TerminalAuthenticator, open_nonce_store
from ..datadir import DataDir
from ..domain import certs, ids
from ..domain import events as ev
from ..domain.status import MyKeyState, Status
from ..domain.transitions import next_state
from ..errors import (
    AlreadyExistsError,
    ChallengeError,
    CommandRefused,
    InactiveError,
    IndexAheadError,
    MykeyError,
    NotFoundError,
    StaleCrlError,
    ValidationError,
)
from ..index import keys as k
from ..index.projection import get_business, get_mykey, get_terminal, scan
from ..index.resolver import Resolver
from ..index.store import Index
from ..log.filelog import FileLog

CHALLENGE_TTL = 300.0  # seconds a challenge stays usable
CHALLENGE_BYTES = 32
CHALLENGE_PURPOSES = ("create", "renew")
MAX_OPEN_CHALLENGES = 100_000
CSV_HEADER = ["service_id", "customer_id"]
REVOKED_REASON = "certificate revoked"  # reason of suspensions by a CRL (which a renewal lifts)


@dataclass(frozen=True)
class TerminalCredential:
    """A new terminal's ID and its private key (PEM); the platform keeps only the public key."""

    terminal_id: str
    business_id: str
    private_key_pem: bytes = field(repr=False)


@dataclass
class CrlReport:
    """What applying a CRL did."""

    issuer: str
    number: int
    entries: int
    newly_revoked: int
    suspended: list[str]
    already_applied: bool


@dataclass(frozen=True)
class FeedItem:
    """A MyKey-level change for linked systems (no certificates, no service IDs)."""

    seq: int
    time: datetime
    change: str  # created | suspended | resumed | invalidated | renewed
    mykey_id: str
    state: str | None  # the state after the change; None for a renewal (state unchanged)


@dataclass(frozen=True)
class MyKeyView:
    """A MyKey ID's current state (for its holder and operators; never shown to businesses)."""

    mykey_id: str
    state: MyKeyState
    cert_issuer: str
    cert_serial: str
    cert_not_after: int
    reason: str
    businesses: list[str]


def ensure_subject_key(data: DataDir) -> bytes:
    """The platform's secret for keyed subject digests (DATA/keys/subject.key, mode 0600); made once."""
    path = data.keys / "subject.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        data.keys.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
    if len(key) != 32:
        raise CommandRefused(f"{path} is damaged (not 32 bytes); restore it from your backup of DATA/keys")
    return key


def _operator_actor() -> ev.Actor:
    try:
        name = re.sub(r"[^\x21-\x7e]", "_", getpass.getuser())[:64] or "operator"
    except Exception:  # no user name in this environment
        name = "operator"
    return ev.Actor("operator", name)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


class Engine:
    """The write side of mykey over one data directory (holds the log's writer lock).

    Commands run one at a time: use an Engine from one thread (gateways resolve through
    Resolver objects, which are safe to share between threads).
    """

    def __init__(
        self,
        data: DataDir,
        log: FileLog,
        index: Index,
        *,
        clock: Callable[[], float] = time.time,
        operator: ev.Actor | None = None,
        trail=None,
    ) -> None:
        self.data = data
        self.log = log
        self.index = index
        self.clock = clock
        self.operator = operator or _operator_actor()
        self.trail = trail
        self._challenges: dict[bytes, tuple[float, str]] = {}  # challenge -> (expiry, purpose)
        self._resolver: Resolver | None = None
        self._authenticator: TerminalAuthenticator | None = None
        self._checkpoint_from: int | None = None
        self._failed: str | None = None  # set when the index could not follow the log
        self._subject_key = ensure_subject_key(data)

    # --- opening ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        fsync: str = "always",
        binding: ModuleType | None = None,
        clock: Callable[[], float] = time.time,
        operator: ev.Actor | None = None,
        audit: bool = True,
        checkpoint_on_close: bool = False,
    ) -> Engine:
        """Open (creating if needed) the data directory; replays log events the index lacks.

        checkpoint_on_close signs an audit checkpoint at close() when events were appended
        (the CLI does, so every change is covered by a signed checkpoint at once).
        """
        data = DataDir(Path(data_dir))
        index = Index.open(data, binding=binding)
        log = None
        trail = None
        try:
            # Recovery may cut a torn tail, never events the index applied or a checkpoint signed.
            from ..audit.trail import signed_size

            keep = max(index.last_seq, signed_size(data))
            log = FileLog.open(data.log, fsync=fsync, keep_through=keep)
            if index.last_seq > log.last_seq:
                raise IndexAheadError(
                    f"the index has applied events up to sequence {index.last_seq} but the log ends at "
                    f"{log.last_seq}: the log lost events. Restore the log from a replica or backup; or, if it "
                    "ran with fsync='interval' or 'never' and the machine crashed, accept the loss with "
                    "`mykey rebuild`"
                )
            index.catch_up(log)
            if audit:
                from ..audit.trail import AuditTrail, ensure_signing_key

                ensure_signing_key(data)
                trail = AuditTrail.open(data, log)
        except BaseException:
            index.close()
            if log is not None:
                log.close()
            raise
        engine = cls(data, log, index, clock=clock, operator=operator, trail=trail)
        engine._checkpoint_from = log.last_seq if checkpoint_on_close else None
        return engine

    def close(self) -> None:
        """Close the resolver, audit trail, index and log (releases the writer locks)."""
        try:
            if self._authenticator is not None:
                self._authenticator.close()
                self._authenticator = None
            if self._resolver is not None:
                self._resolver.close()
                self._resolver = None
        finally:
            try:
                if self.trail is not None:
                    try:
                        if self._checkpoint_from is not None and self.log.last_seq > self._checkpoint_from:
                            self.trail.checkpoint()
                    finally:
                        self.trail.close()
                        self.trail = None
            finally:
                self._close_storage()

    def _close_storage(self) -> None:
        try:
            self.index.close()
        finally:
            self.log.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one write path ------------------------------------------------

    def _commit(self, events: Sequence[ev.Event], actor: ev.Actor) -> list[ev.Envelope]:
        """Append one atomic batch (validated against the state the index shows), then apply it."""
        if self._failed is not None:
            raise MykeyError(self._failed)
        envs = self.log.append(events, actor, expected_last_seq=self.index.last_seq)
        try:
            self.index.apply(envs)
        except Exception as exc:
            try:
                self.index.catch_up(self.log)  # the events are in the log: apply them from there
            except Exception:
                self._failed = (
                    f"the command was recorded in the log (sequence {envs[0].seq}-{envs[-1].seq}) but the index "
                    f"could not apply it ({exc}); close and reopen the engine, which replays it"
                )
                raise MykeyError(self._failed) from exc
        if self.trail is not None:
            self.trail.catch_up()  # if this fails, the next open catches the trail up from the log
        return envs

    def _txn(self):
        return self.index.env.begin()

    def now(self) -> datetime:
        return _utc(self.clock())

    def resolver(self) -> Resolver:
        """A Resolver sharing this engine's index environment (one env per process)."""
        if self._resolver is None:
            self._resolver = Resolver(self.index.env, self.index.dbs, owns_env=False, binding=self.index.binding)
        return self._resolver

    # --- trust configuration -----------------------------------------------

    def add_trust_anchor(self, pem_or_der: bytes, *, intermediate: bool = False, actor: ev.Actor | None = None) -> list[str]:
        """Trust CA certificates (a root, or an intermediate that chains to a trusted root)."""
        cas = certs.load_certificates(pem_or_der)
        events = []
        if intermediate:
            trust = self._require_trust()
            for ca in cas:
                trust.verify_ca(ca, at=self.now())
        else:
            certs.TrustStore(cas)  # refuses certificates that are not CA certificates
        with self._txn() as txn:
            for ca in cas:
                der = ca.public_bytes(serialization.Encoding.DER)
                fp = hashlib.sha256(der).digest()
                if txn.get(self.index.dbs.trust, (b"i" if intermediate else b"a") + fp) is None:
                    events.append(ev.TrustAnchorAdded(fp, der, intermediate))
        if events:
            self._commit(events, actor or self.operator)
        return [e.fingerprint.hex() for e in events]

    def _trust_store(self) -> certs.TrustStore | None:
        anchors, inter = [], []
        with self._txn() as txn:
            for key, der in scan(txn, self.index.dbs.trust):
                (inter if key[:1] == b"i" else anchors).append(x509.load_der_x509_certificate(der))
        return certs.TrustStore(anchors, inter) if anchors else None

    def _require_trust(self) -> certs.TrustStore:
        trust = self._trust_store()
        if trust is None:
            raise CommandRefused("no trust anchor is configured; run `mykey init --trust-anchor CA.pem` or `mykey trust add`")
        return trust

    def _intermediates(self, txn) -> dict[tuple[str, str], tuple[str, bytes]]:
        """Trusted intermediate CAs: (their issuer, serial hex) -> (subject, subject key identifier or b"")."""
        out = {}
        for _key, der in scan(txn, self.index.dbs.trust, b"i", b"i"):
            ca = x509.load_der_x509_certificate(der)
            try:
                ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                ski = b""
            out[(ca.issuer.rfc4514_string(), format(ca.serial_number, "x"))] = (ca.subject.rfc4514_string(), ski)
        return out

    def _certificate_revoked(self, rec: k.MyKeyRecord) -> bool:
        """True if the MyKey ID's current certificate, or the intermediate CA that issued it, is revoked."""
        if self._is_revoked(rec.cert_issuer, int(rec.cert_serial, 16)):
            return True
        with self._txn() as txn:
            cas = [key for key, ca in self._intermediates(txn).items() if _issued_by(rec, *ca)]
        return any(self._is_revoked(issuer, int(serial, 16)) for issuer, serial in cas)

    def _is_revoked(self, issuer: str, serial: int) -> bool:
        with self._txn() as txn:
            return txn.get(self.index.dbs.revoked, k.revoked_key(issuer, format(serial, "x"))) is not None

    # --- 1. MyKey ID creation ------------------------------------------------

    def new_challenge(self, purpose: str = "create") -> bytes:
        """A fresh single-use nonce for proof of possession, for one purpose ("create" or "renew").

        The purpose is part of the signed bytes (b"mykey:create:" + 32 random bytes, hex), so a
        signature made for one flow cannot be replayed in another. Expires after CHALLENGE_TTL seconds.
        """
        if purpose not in CHALLENGE_PURPOSES:
            raise ValidationError(f"challenge purpose must be one of {', '.join(CHALLENGE_PURPOSES)}")
        now = self.clock()
        if len(self._challenges) >= MAX_OPEN_CHALLENGES:
            self._challenges = {c: v for c, v in self._challenges.items() if v[0] > now}
            if len(self._challenges) >= MAX_OPEN_CHALLENGES:
                raise ChallengeError("too many open challenges; try again shortly")
        challenge = f"mykey:{purpose}:{secrets.token_hex(CHALLENGE_BYTES)}".encode("ascii")
        self._challenges[challenge] = (now + CHALLENGE_TTL, purpose)
        return challenge

    def _consume_challenge(self, challenge: bytes, purpose: str) -> None:
        entry = self._challenges.pop(challenge, None)  # single use, even if what follows fails
        if entry is None:
            raise ChallengeError("unknown or already used challenge; call new_challenge() and sign the new one")
        if self.clock() > entry[0]:
            raise ChallengeError("the challenge expired; call new_challenge() and sign the new one")
        if entry[1] != purpose:
            raise ChallengeError(f"that challenge was issued to {entry[1]}, not to {purpose}; ask for a new one")

    def _verify_user_cert(self, certificate: bytes, signature: bytes, challenge: bytes, purpose: str) -> certs.CertInfo:
        """Chain, validity, key usage, revocation and proof of possession; the challenge is used up."""
        self._consume_challenge(challenge, purpose)
        chain = certs.load_certificates(certificate)
        info = self._require_trust().verify(chain[0], at=self.now(), revoked=self._is_revoked, extra_intermediates=chain[1:])
        certs.verify_challenge_signature(chain[0], challenge, signature)
        return info

    def _subject_digest(self, info: certs.CertInfo) -> bytes:
        """HMAC-SHA256 of the certificate subject under the platform's secret key.

        Keyed, so the stored digest cannot be matched against guessed subjects; equal
        for the same holder across renewals. The key lives in DATA/keys/subject.key.
        """
        subject = x509.load_der_x509_certificate(info.der).subject.public_bytes()
        return hmac.new(self._subject_key, subject, hashlib.sha256).digest()

    def _live_mykey_for_cert(self, info: certs.CertInfo) -> str | None:
        """The live MyKey ID this certificate belongs to, now or before a renewal replaced it."""
        serial = format(info.serial, "x")
        keys = (k.cert_serial_key(info.issuer, serial), k.cert_fp_key(info.fingerprint), k.former_cert_key(info.issuer, serial))
        with self._txn() as txn:
            for key in keys:
                mk = txn.get(self.index.dbs.cert, key)
                if mk is not None:
                    rec = get_mykey(txn, self.index.dbs, mk.decode())
                    if rec is not None and rec.state != MyKeyState.INVALID:
                        return mk.decode()
        return None

    def mykey_exists(self, mykey_id: str) -> bool:
        with self._txn() as txn:
            return txn.get(self.index.dbs.mykey, mykey_id.encode("ascii")) is not None

    def suggest_mykey_ids(self, n: int = 5) -> list[str]:
        """n random MyKey IDs that are free right now."""
        out: list[str] = []
        with self._txn() as txn:
            while len(out) < n:
                cand = ids.random_mykey_id()
                if cand not in out and txn.get(self.index.dbs.mykey, cand.encode()) is None:
                    out.append(cand)
        return out

    def create_mykey(
        self, certificate: bytes, signature: bytes, challenge: bytes, requested_id: str | None = None
    ) -> str:
        """Verify the user's certificate and signature over the challenge; issue a MyKey ID.

        certificate is PEM or DER (a PEM bundle may carry intermediates after the leaf).
        """
        if requested_id is not None:
            ids.check_mykey_id(requested_id, "requested MyKey ID")
            if self.mykey_exists(requested_id):
                raise AlreadyExistsError(
                    f"MyKey ID {requested_id} is taken; pick another, e.g. one of {', '.join(self.suggest_mykey_ids(3))}"
                )
        info = self._verify_user_cert(certificate, signature, challenge, "create")
        live = self._live_mykey_for_cert(info)
        if live is not None:
            raise AlreadyExistsError(
                "this certificate already has a live MyKey ID; one certificate holds at most one "
                "(invalidate the old one first, or use it)"
            )
        mykey_id = requested_id or self.suggest_mykey_ids(1)[0]
        body = ev.MyKeyCreated(
            mykey_id,
            info.issuer,
            format(info.serial, "x"),
            info.fingerprint,
            self._subject_digest(info),
            int(info.not_after.timestamp()),
            _authority_key_id(info),
        )
        self._commit([body], ev.Actor("user", mykey_id))
        return mykey_id

    # --- 2. businesses and terminals -------------------------------------------

    def _next_business_id(self) -> str:
        """The ID after the highest one issued; when Z9999 is taken, the lowest free one."""
        with self._txn() as txn:
            taken = [key.decode() for key, _ in scan(txn, self.index.dbs.business)]
        if not taken:
            return "A0001"
        last = taken[-1]
        if last != "Z9999":
            letter, num = last[0], int(last[1:])
            return f"{letter}{num + 1:04d}" if num < 9999 else f"{chr(ord(letter) + 1)}0001"
        used = set(taken)
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            for num in range(1, 10000):
                if f"{letter}{num:04d}" not in used:
                    return f"{letter}{num:04d}"
        raise CommandRefused("all business IDs A0001-Z9999 are used")

    def register_business(
        self,
        name: str,
        municipality_code: str,
        *,
        numeric_service_ids: bool = False,
        business_id: str | None = None,
        actor: ev.Actor | None = None,
    ) -> str:
        """Register a business (facility) and issue its business ID (the next free one).

        numeric_service_ids declares that its own service IDs are 12-digit numbers;
        business_id asks for a specific free ID (e.g. when migrating existing businesses).
        """
        if business_id is not None:
            ids.check_business_id(business_id)
            with self._txn() as txn:
                if get_business(txn, self.index.dbs, business_id) is not None:
                    raise AlreadyExistsError(f"business ID {business_id} is taken; omit it to get the next free one")
        bid = business_id or self._next_business_id()
        self._commit([ev.BusinessRegistered(bid, name, municipality_code, numeric_service_ids)], actor or self.operator)
        return bid

    def _business(self, business_id: str, *, active: bool = True) -> k.BusinessRecord:
        ids.check_business_id(business_id)
        with self._txn() as txn:
            rec = get_business(txn, self.index.dbs, business_id)
        if rec is None:
            raise NotFoundError(f"business {business_id} is not registered; register it with `mykey business add`")
        if active and not rec.active:
            raise InactiveError(f"business {business_id} is deactivated")
        return rec

    def deactivate_business(self, business_id: str, reason: str, *, actor: ev.Actor | None = None) -> None:
        """Deactivate a business; its terminals stop authenticating at once."""
        self._business(business_id)
        self._commit([ev.BusinessDeactivated(business_id, reason)], actor or self.operator)

    def enrol_terminal(self, business_id: str, *, actor: ev.Actor | None = None) -> TerminalCredential:
        """Enrol a terminal: a new Ed25519 key pair; only the public key is stored."""
        rec = self._business(business_id)
        terminal_id = f"{business_id}-T{rec.terminals + 1:04d}"
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._commit([ev.TerminalEnrolled(terminal_id, business_id, public)], actor or self.operator)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return TerminalCredential(terminal_id, business_id, pem)

    def revoke_terminal(self, terminal_id: str, reason: str = "revoked", *, actor: ev.Actor | None = None) -> None:
        """Revoke a terminal's credential; its next authentication fails."""
        ids.check_terminal_id(terminal_id)
        with self._txn() as txn:
            rec = get_terminal(txn, self.index.dbs, terminal_id)
        if rec is None:
            raise NotFoundError(f"terminal {terminal_id} is not enrolled")
        if not rec.active:
            raise InactiveError(f"terminal {terminal_id} is already revoked")
        self._commit([ev.TerminalRevoked(terminal_id, reason)], actor or self.operator)

    def authenticate_terminal(self, terminal_id: str, message: bytes, signature: bytes) -> str:
        """Verify a terminal's Ed25519 signature; returns its business ID (see Resolver)."""
        if self._authenticator is None:
            self._authenticator = TerminalAuthenticator(self.resolver(), open_nonce_store(self.data, self.index.binding))
        return self._authenticator.authenticate(terminal_id, message, signature, now=self.clock())

    # --- 3. service IDs ----------------------------------------------------------

    def _registration_events(
        self, business_id: str, rows: Iterable[tuple[str, str | None]], *, line_of: Callable[[int], str] | None = None
    ) -> list[ev.ServiceIdRegistered]:
        """Validate rows (format, duplicates, already registered) into events; raises on the first bad row."""
        rec = self._business(business_id)
        numeric = rec.numeric_service_ids
        events: list[ev.ServiceIdRegistered] = []
        seen: set[str] = set()
        where = line_of or (lambda i: f"row {i + 1}")
        for i, (sid, cid) in enumerate(rows):
            try:
                ids.check_service_id(sid, numeric_declared=numeric)
                cid = ids.check_customer_id(cid or None)
            except ValidationError as exc:
                raise type(exc)(f"{where(i)}: {exc}") from None
            if sid in seen:
                raise AlreadyExistsError(f"{where(i)}: service ID {sid!r} appears twice")
            seen.add(sid)
            events.append(ev.ServiceIdRegistered(business_id, sid, cid, numeric and ids.is_individual_number(sid)))
        if events:
            codes = self.resolver().resolve_many(business_id, [e.service_id for e in events])
            for i, code in enumerate(codes):
                if code:
                    raise AlreadyExistsError(f"{where(i)}: service ID {events[i].service_id!r} is already registered")
        return events

    def register_service_ids(
        self, business_id: str, rows: Iterable[tuple[str, str | None]], *, actor: ev.Actor | None = None
    ) -> int:
        """Bulk-register (service_id, customer_id | None) pairs, unlinked; all or nothing."""
        events = self._registration_events(business_id, rows)
        if events:
            self._commit(events, actor or self.operator)
        return len(events)

    def import_service_ids_csv(
        self,
        business_id: str,
        path: str | Path,
        *,
        progress: Callable[[int], None] | None = None,
        actor: ev.Actor | None = None,
    ) -> int:
        """Register service IDs from a CSV file (header service_id,customer_id); all or nothing.

        Streams the file; a bad row anywhere rejects the whole file with its line number.
        """
        with open(path, newline="", encoding="ascii", errors="strict") as f:
            try:
                rows, line_numbers = _read_service_csv(f, progress)
            except UnicodeDecodeError as exc:
                raise ValidationError(f"{path}: not ASCII text ({exc.reason} at byte {exc.start})") from None
        events = self._registration_events(business_id, rows, line_of=lambda i: f"{path}: line {line_numbers[i]}")
        if events:
            self._commit(events, actor or self.operator)
        return len(events)

    def _service(self, business_id: str, service_id: str) -> k.SvcValue | None:
        with self._txn() as txn:
            raw = txn.get(self.index.dbs.svc, k.service_key(business_id, service_id))
        return None if raw is None else k.parse_svc_value(raw)

    def _mykey(self, mykey_id: str) -> k.MyKeyRecord:
        ids.check_mykey_id(mykey_id)
        with self._txn() as txn:
            rec = get_mykey(txn, self.index.dbs, mykey_id)
        if rec is None:
            raise NotFoundError(f"MyKey ID {mykey_id} does not exist")
        return rec

    def link_service_id(
        self,
        business_id: str,
        service_id: str,
        mykey_id: str,
        *,
        customer_id: str | None = None,
        actor: ev.Actor | None = None,
    ) -> None:
        """Link a business's service ID to a MyKey ID, registering it first if it is new (first use)."""
        rec = self._business(business_id)
        ids.check_service_id(service_id, numeric_declared=rec.numeric_service_ids)
        numeric = rec.numeric_service_ids and ids.is_individual_number(service_id)
        mk = self._mykey(mykey_id)
        if mk.state == MyKeyState.INVALID:
            raise CommandRefused(f"MyKey ID {mykey_id} is invalid; it cannot be linked")
        events: list[ev.Event] = []
        svc = self._service(business_id, service_id)
        if svc is None:
            events.append(ev.ServiceIdRegistered(business_id, service_id, ids.check_customer_id(customer_id), numeric))
        elif svc.linked:
            raise AlreadyExistsError(
                f"service ID {service_id} of {business_id} is already linked to a MyKey ID; unlink it first"
            )
        events.append(ev.ServiceIdLinked(business_id, service_id, mykey_id, numeric))
        self._commit(events, actor or self.operator)

    def unlink_service_id(self, business_id: str, service_id: str, *, actor: ev.Actor | None = None) -> None:
        """Unlink a service ID from its MyKey ID (it stays registered, UNLINKED)."""
        rec = self._business(business_id, active=False)
        ids.check_service_id(service_id, numeric_declared=rec.numeric_service_ids)
        svc = self._service(business_id, service_id)
        if svc is None:
            raise NotFoundError(f"service ID {service_id} of {business_id} is not registered")
        if not svc.linked:
            raise CommandRefused(f"service ID {service_id} of {business_id} is not linked")
        with self._txn() as txn:
            mykey_id = txn.get(self.index.dbs.mkref, k.u64(svc.ref)).decode()
        numeric = rec.numeric_service_ids and ids.is_individual_number(service_id)
        self._commit([ev.ServiceIdUnlinked(business_id, service_id, mykey_id, numeric)], actor or self.operator)

    def service_status(self, business_id: str, service_id: str) -> tuple[Status, str | None]:
        """What a business may know about its own service ID: status and its customer ID."""
        svc = self._service(ids.check_business_id(business_id), service_id)
        return (Status.UNKNOWN, None) if svc is None else (svc.status, svc.customer_id)

    # --- 4. suspension and invalidation ---------------------------------------------

    def _transition(self, mykey_id: str, action: str, reason: str, actor: ev.Actor | None) -> MyKeyState:
        rec = self._mykey(mykey_id)
        new = next_state(rec.state, action)
        body = {
            "suspend": lambda: ev.MyKeySuspended(mykey_id, reason),
            "resume": lambda: ev.MyKeyResumed(mykey_id),
            "invalidate": lambda: ev.MyKeyInvalidated(mykey_id, reason),
        }[action]()
        self._commit([body], actor or self.operator)
        return new

    def suspend(self, mykey_id: str, reason: str, *, actor: ev.Actor | None = None) -> MyKeyState:
        """valid -> suspended; every linked service ID answers SUSPENDED on the next lookup."""
        return self._transition(mykey_id, "suspend", reason, actor)

    def resume(self, mykey_id: str, *, actor: ev.Actor | None = None) -> MyKeyState:
        """suspended -> valid; refused while the current certificate is revoked (renew it instead)."""
        rec = self._mykey(mykey_id)
        if rec.state == MyKeyState.SUSPENDED and self._certificate_revoked(rec):
            raise CommandRefused(
                f"the certificate of {mykey_id} is revoked; it can be resumed only by renewing the certificate"
            )
        return self._transition(mykey_id, "resume", "", actor)

    def invalidate(self, mykey_id: str, reason: str, *, actor: ev.Actor | None = None) -> MyKeyState:
        """valid/suspended -> invalid (final)."""
        return self._transition(mykey_id, "invalidate", reason, actor)

    def mykey(self, mykey_id: str) -> MyKeyView:
        """The MyKey ID's state, certificate issuer/serial and the businesses it is linked at."""
        rec = self._mykey(mykey_id)
        prefix = mykey_id.encode()
        with self._txn() as txn:
            links = scan(txn, self.index.dbs.mksvc, prefix, prefix)
            businesses = sorted({key[len(prefix) : len(prefix) + 5].decode() for key, _ in links})
        return MyKeyView(mykey_id, rec.state, rec.cert_issuer, rec.cert_serial, rec.cert_not_after, rec.reason, businesses)

    # --- 5. certificate renewal -------------------------------------------------------

    def renew_certificate(self, mykey_id: str, new_certificate: bytes, signature: bytes, challenge: bytes) -> None:
        """Move the MyKey ID to a renewed certificate of the same subject (new serial)."""
        rec = self._mykey(mykey_id)
        if rec.state == MyKeyState.INVALID:
            raise CommandRefused(f"MyKey ID {mykey_id} is invalid; create a new MyKey ID instead")
        info = self._verify_user_cert(new_certificate, signature, challenge, "renew")
        subject_digest = self._subject_digest(info)
        if not rec.subject_digest or not hmac.compare_digest(subject_digest, rec.subject_digest):
            raise CommandRefused("the new certificate's subject differs from the current one; renewal keeps the same holder")
        if info.fingerprint == rec.cert_fingerprint:
            raise CommandRefused("that is the current certificate; present the renewed one")
        with self._txn() as txn:
            if txn.get(self.index.dbs.cert, k.former_cert_key(info.issuer, format(info.serial, "x"))) is not None:
                raise CommandRefused("that certificate was already replaced by a renewal; present the newest one")
        other = self._live_mykey_for_cert(info)
        if other is not None and other != mykey_id:
            raise AlreadyExistsError("the new certificate already belongs to another live MyKey ID")
        events: list[ev.Event] = [
            ev.CertificateRenewed(
                mykey_id,
                rec.cert_fingerprint,
                info.issuer,
                format(info.serial, "x"),
                info.fingerprint,
                subject_digest,
                int(info.not_after.timestamp()),
                _authority_key_id(info),
            )
        ]
        if rec.state == MyKeyState.SUSPENDED and rec.suspended_by_crl:
            events.append(ev.MyKeyResumed(mykey_id))  # the revoked certificate is replaced
        self._commit(events, ev.Actor("user", mykey_id))

    # --- 6. revocation checks -----------------------------------------------------------

    def apply_crl(self, crl: bytes, *, actor: ev.Actor | None = None) -> CrlReport:
        """Verify a CRL, record its revocations and suspend MyKey IDs whose current certificate it revokes.

        Idempotent: the same CRL again appends nothing. An older CRL of the same issuer is refused.
        """
        info = certs.verify_crl(crl, self._require_trust(), at=self.now(), revoked=self._is_revoked)
        number = info.number or 0
        dbs = self.index.dbs
        with self._txn() as txn:
            if txn.get(dbs.crl, b"f" + info.fingerprint) is not None:
                return CrlReport(info.issuer, number, len(info.entries), 0, [], True)
            highest = txn.get(dbs.crl, b"i" + k.issuer_digest(info.issuer))
            if highest is not None and k.parse_u64(highest) > number:
                raise StaleCrlError(
                    f"CRL number {number} of {info.issuer} is older than number {k.parse_u64(highest)} already applied; "
                    "fetch the current CRL"
                )
            events: list[ev.Event] = []
            suspended: list[str] = []
            seen: set[str] = set()
            for entry in info.entries:
                serial = format(entry.serial, "x")
                if serial in seen or txn.get(dbs.revoked, k.revoked_key(info.issuer, serial)) is not None:
                    continue  # listed twice, or revoked by an earlier CRL
                seen.add(serial)
                at = int(entry.revoked_at.timestamp()) if entry.revoked_at else int(info.this_update.timestamp())
                events.append(ev.CertificateRevoked(info.issuer, serial, entry.reason, at, info.fingerprint))
                mk = txn.get(dbs.cert, k.cert_serial_key(info.issuer, serial))
                if mk is None:
                    continue  # not a current certificate of any MyKey ID (e.g. superseded by a renewal)
                rec = get_mykey(txn, dbs, mk.decode())
                if rec is not None and rec.state == MyKeyState.VALID and rec.cert_serial == serial:
                    events.append(ev.MyKeySuspended(mk.decode(), f"{REVOKED_REASON} ({entry.reason})", by_crl=True))
                    suspended.append(mk.decode())
            # A revoked intermediate CA takes every certificate it issued with it.
            revoked_cas = [
                ca for (issuer, serial), ca in self._intermediates(txn).items()
                if issuer == info.issuer and serial in seen
            ]
            if revoked_cas:
                for key, raw in scan(txn, dbs.mykey):
                    rec = k.decode(k.MyKeyRecord, raw)
                    mk_id = key.decode()
                    if (
                        rec.state == MyKeyState.VALID
                        and mk_id not in suspended
                        and any(_issued_by(rec, *ca) for ca in revoked_cas)
                    ):
                        events.append(ev.MyKeySuspended(mk_id, f"{REVOKED_REASON} (its issuing CA)", by_crl=True))
                        suspended.append(mk_id)
        newly = sum(1 for e in events if isinstance(e, ev.CertificateRevoked))
        events.append(
            ev.CrlApplied(info.issuer, number, info.fingerprint, int(info.this_update.timestamp()), len(info.entries))
        )
        self._commit(events, actor or ev.Actor("system", "crl-check"))
        return CrlReport(info.issuer, number, len(info.entries), newly, suspended, False)

    # --- 7. sync feed for linked systems ---------------------------------------------------

    def feed_position(self, consumer: str) -> int:
        """The last sequence number the consumer acknowledged (0 if none)."""
        ids.check_actor_id(consumer, "consumer")
        with self._txn() as txn:
            raw = txn.get(self.index.dbs.feed, consumer.encode())
        return 0 if raw is None else k.parse_u64(raw)

    def feed(self, consumer: str, after: int | None = None) -> Iterator[FeedItem]:
        """MyKey-level changes in order after `after` (default: the consumer's acknowledged position)."""
        start = (self.feed_position(consumer) if after is None else after) + 1
        return feed_items(self.log.read(start, self.index.last_seq))

    def ack(self, consumer: str, seq: int) -> None:
        """Durably store that consumer processed everything up to seq."""
        ids.check_actor_id(consumer, "consumer")
        if not 0 <= seq <= self.index.last_seq:
            raise ValidationError(f"feed position {seq} is beyond the log's last sequence {self.index.last_seq}")
        if seq < self.feed_position(consumer):
            raise CommandRefused(f"consumer {consumer} already acknowledged past {seq}; positions only move forward")
        self._commit([ev.FeedAcked(consumer, seq)], ev.Actor("system", consumer))


def _authority_key_id(info: certs.CertInfo) -> bytes:
    """The issuing CA's key identifier named in the certificate (AKI), or b""."""
    try:
        aki = x509.load_der_x509_certificate(info.der).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return b""
    return aki.value.key_identifier or b""


def _issued_by(rec: k.MyKeyRecord, ca_subject: str, ca_key_id: bytes) -> bool:
    """Was the MyKey ID's current certificate issued by this CA? By key identifier when both
    sides have one (a CA's key rollover keeps its name), else by name."""
    if rec.issuer_key_id and ca_key_id:
        return rec.issuer_key_id == ca_key_id and rec.cert_issuer == ca_subject
    return rec.cert_issuer == ca_subject


_FEED_CHANGE = {
    ev.MyKeyCreated: ("created", "valid"),
    ev.MyKeySuspended: ("suspended", "suspended"),
    ev.MyKeyResumed: ("resumed", "valid"),
    ev.MyKeyInvalidated: ("invalidated", "invalid"),
    ev.CertificateRenewed: ("renewed", None),
}


def feed_items(envs: Iterable[ev.Envelope]) -> Iterator[FeedItem]:
    """The feed's view of envelopes: MyKey-level changes only."""
    for env in envs:
        change = _FEED_CHANGE.get(type(env.body))
        if change is not None:
            yield FeedItem(env.seq, env.time, change[0], env.body.mykey_id, change[1])


def _read_service_csv(f: io.TextIOBase, progress: Callable[[int], None] | None) -> tuple[list[tuple[str, str | None]], list[int]]:
    reader = csv.reader(f, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationError("the CSV file is empty; it needs the header service_id,customer_id") from None
    except csv.Error as exc:
        raise ValidationError(f"line 1: {exc}") from None
    if [h.strip() for h in header] != CSV_HEADER:
        raise ValidationError(f"line 1: header must be exactly service_id,customer_id (got {','.join(header)})")
    rows: list[tuple[str, str | None]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) == 1:
                row = [row[0], ""]
            if len(row) != 2:
                raise ValidationError(f"line {reader.line_num}: expected 2 fields (service_id,customer_id), got {len(row)}")
            rows.append((row[0], row[1] or None))
            lines.append(reader.line_num)
            if progress is not None and len(rows) % 10_000 == 0:
                progress(10_000)
    except csv.Error as exc:
        raise ValidationError(f"line {reader.line_num}: {exc}") from None
    if progress is not None:
        progress(len(rows) % 10_000)
    return rows, lines
