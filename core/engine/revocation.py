"""Trust configuration and revocation checks (6): trusted CAs, and CRLs that suspend MyKey IDs."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from ..domain import certs, ids, transitions
from ..domain import events as ev
from ..errors import NotFoundError, StaleCrlError, ValidationError
from ..index.readmodel import Snapshot, TrustedCas
from .base import EngineCore
from .crl_sync import CrlSource, SyncReport, apply_fetched, crl_locations, fetch_crls
from .lookups import issuing_cas, require_trust, revocation_check

# The reason a trust removal suspends the MyKey IDs under the CA with (a renewal lifts it).
UNTRUSTED_REASON = "its certificate's CA was removed from the trust store"


@dataclass
class CrlReport:
    """What applying a CRL did."""

    issuer: str
    number: int
    entries: int
    newly_revoked: int
    suspended: list[str]
    already_applied: bool


@dataclass
class TrustRemoval:
    """What removing a trusted CA did."""

    fingerprint: str
    intermediate: bool
    suspended: list[str]


def crl_events(state: Snapshot, info: certs.CrlInfo) -> tuple[list[ev.Event], list[str]]:
    """The revocations and suspensions a verified, new CRL causes: (events, suspended MyKey IDs)."""
    events: list[ev.Event] = []
    suspended: list[str] = []
    seen: set[str] = set()
    for entry in info.entries:
        serial = format(entry.serial, "x")
        if serial in seen or state.is_revoked(info.issuer, serial):
            continue  # listed twice, or revoked by an earlier CRL
        seen.add(serial)
        at = int(entry.revoked_at.timestamp()) if entry.revoked_at else int(info.this_update.timestamp())
        events.append(ev.CertificateRevoked(info.issuer, serial, entry.reason, at, info.fingerprint))
        mykey_id = state.current_holder(info.issuer, serial)
        if mykey_id is None:
            continue  # not a current certificate of any MyKey ID (e.g. superseded by a renewal)
        rec = state.mykey(mykey_id)
        if rec is not None and rec.cert_serial == serial and transitions.crl_suspends(rec.state):
            events.append(transitions.crl_suspension(mykey_id, entry.reason))
            suspended.append(mykey_id)
    # A revoked CA certificate on a recorded path (trusted, or an intermediate the user sent)
    # takes every MyKey ID standing on it.
    for serial in sorted(seen):
        for mykey_id in state.mykeys_under_ca_serial(info.issuer, serial):
            rec = state.mykey(mykey_id)
            if rec is not None and mykey_id not in suspended and transitions.crl_suspends(rec.state):
                events.append(transitions.crl_suspension(mykey_id, "a CA on its certificate path"))
                suspended.append(mykey_id)
    # MyKey IDs recorded before paths were: matched to the trusted intermediate that issued them.
    revoked_cas = [ca for ca in issuing_cas(state) if ca.issuer == info.issuer and ca.serial in seen]
    if revoked_cas:
        for mykey_id, rec in state.mykeys():
            if (
                transitions.crl_suspends(rec.state)
                and mykey_id not in suspended
                and not state.recorded_path(mykey_id)
                and any(certs.issued_by(rec.cert_issuer, rec.issuer_key_id, ca) for ca in revoked_cas)
            ):
                events.append(transitions.crl_suspension(mykey_id, "its issuing CA"))
                suspended.append(mykey_id)
    return events, suspended


def _fingerprint_arg(value: str) -> str:
    """A fingerprint (or a unique prefix of at least 8 hex digits) as lower-case hex, colons allowed."""
    text = value.strip().lower().replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{8,64}", text):
        raise ValidationError(
            f"{value!r} is not a certificate fingerprint: give the SHA-256 fingerprint in hex (at least its first "
            "8 digits, as `mykey trust add` printed it) or the CA certificate file"
        )
    return text


def _trusted_ca(state: Snapshot, which: bytes | str) -> tuple[bytes, bool, bytes]:
    """(fingerprint, intermediate?, DER) of a trusted CA named by its certificate bytes or fingerprint."""
    cas = state.trusted_cas()
    entries = [(hashlib.sha256(der).digest(), False, der) for der in cas.anchors] + [
        (hashlib.sha256(der).digest(), True, der) for der in cas.intermediates
    ]
    if isinstance(which, (bytes, bytearray, memoryview)):
        want = [hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).digest() for c in certs.load_certificates(bytes(which))]
        if len(want) != 1:
            raise ValidationError(f"name one CA certificate at a time; the file holds {len(want)}")
        found = [e for e in entries if e[0] == want[0]]
        label = want[0].hex()
    else:
        prefix = _fingerprint_arg(which)
        found = [e for e in entries if e[0].hex().startswith(prefix)]
        label = prefix
    if not found:
        raise NotFoundError(f"no trusted CA certificate has fingerprint {label}; list them with `mykey trust list`")
    if len({e[0] for e in found}) > 1:
        raise ValidationError(f"fingerprint prefix {label} matches several trusted CA certificates; give more digits")
    return found[0]


class RevocationCommands(EngineCore):
    def add_trust_anchor(
        self, pem_or_der: bytes, *, intermediate: bool = False, actor: ev.Actor | None = None
    ) -> list[str]:
        """Trust CA certificates (a root, or an intermediate that chains to a trusted root)."""
        cas = certs.load_certificates(pem_or_der)
        events = []
        with self._read() as state:
            if intermediate:
                trust = require_trust(state)
                for ca in cas:
                    trust.verify_ca(ca, at=self.now())
            else:
                certs.TrustStore(cas)  # refuses certificates that are not CA certificates
            for ca in cas:
                der = ca.public_bytes(serialization.Encoding.DER)
                fp = hashlib.sha256(der).digest()
                if not state.is_trusted(fp, intermediate=intermediate):
                    events.append(ev.TrustAnchorAdded(fp, der, intermediate))
        if events:
            self._commit(events, actor or self.operator)
        return [e.fingerprint.hex() for e in events]

    def trusted_cas(self) -> TrustedCas:
        """The trusted CA certificates (DER): roots (anchors) and intermediates."""
        with self._read() as state:
            return state.trusted_cas()

    def remove_trust_anchor(self, which: bytes | str, reason: str, *, actor: ev.Actor | None = None) -> TrustRemoval:
        """Stop trusting a CA certificate (named by its PEM/DER bytes or its SHA-256 fingerprint in hex).

        Handled as a revoked CA: every valid MyKey ID whose recorded path holds it is suspended
        (marked as caused by revocation, so a renewal onto a trusted CA lifts it), and a resume
        stays refused while the CA is not trusted. Trusting it again (`add_trust_anchor`) ends that.
        """
        ids.check_text(reason, "reason", ev.MAX_REASON, allow_empty=False)
        with self._read() as state:
            fp, intermediate, der = _trusted_ca(state, which)
            under = set(state.mykeys_under_ca(fp))
            ca = certs.issuing_ca(der)  # MyKey IDs recorded before paths were: those it issued directly
            under |= {
                mykey_id
                for mykey_id, rec in state.mykeys()
                if not state.recorded_path(mykey_id) and certs.issued_by(rec.cert_issuer, rec.issuer_key_id, ca)
            }
            events: list[ev.Event] = [ev.TrustAnchorRemoved(fp, intermediate, reason)]
            suspended = []
            for mykey_id in sorted(under):
                rec = state.mykey(mykey_id)
                if rec is not None and transitions.crl_suspends(rec.state):
                    events.append(ev.MyKeySuspended(mykey_id, UNTRUSTED_REASON, by_crl=True))
                    suspended.append(mykey_id)
        self._commit(events, actor or self.operator)
        return TrustRemoval(fp.hex(), intermediate, suspended)

    def designate_successor_ca(
        self, old: bytes | str, new: bytes | str, reason: str, *, actor: ev.Actor | None = None
    ) -> bool:
        """Let renewals move MyKey IDs from certificates of CA old to certificates of CA new.

        old is a CA certificate (PEM/DER bytes) or the fingerprint of a trusted one; new must be
        trusted. Returns False if the designation existed already (nothing is appended).
        """
        ids.check_text(reason, "reason", ev.MAX_REASON, allow_empty=False)
        with self._read() as state:
            if isinstance(old, str):
                old_der = _trusted_ca(state, old)[2]
            else:
                loaded = certs.load_certificates(bytes(old))
                if len(loaded) != 1:
                    raise ValidationError(f"name one CA certificate at a time; the file holds {len(loaded)}")
                old_der = loaded[0].public_bytes(serialization.Encoding.DER)
            new_der = _trusted_ca(state, new)[2]
            old_cert = certs.load_certificate(old_der)
            if not certs.is_ca(old_cert):
                raise ValidationError("the old certificate is not a CA certificate; name the CA that issued the old card certificates")
            old_kid, new_kid = certs.key_id(old_cert), certs.key_id(certs.load_certificate(new_der))
            if old_kid == new_kid:
                raise ValidationError("both certificates carry the same CA key: it needs no successor")
            if new_kid in state.successors(old_kid):
                return False
        self._commit([ev.CaSuccessorDesignated(old_kid, new_kid, reason)], actor or self.operator)
        return True

    def sync_crls(self, source: str | CrlSource, *, client=None) -> SyncReport:
        """Fetch the CRLs of every trusted CA from a base URL or directory and apply what is new.

        Fetches while this engine holds the writer lock; a long-running process that should not
        hold it while waiting on the network uses crl_sync.sync_round instead (as the CLI does).
        """
        src = source if isinstance(source, CrlSource) else CrlSource.parse(source)
        fetched = fetch_crls(crl_locations(src, self.trusted_cas()), client=client)
        return apply_fetched(self.apply_crl, fetched)

    def apply_crl(self, crl: bytes, *, actor: ev.Actor | None = None) -> CrlReport:
        """Verify a CRL, record its revocations and suspend MyKey IDs whose current certificate it revokes.

        Idempotent: the same CRL again appends nothing. An older CRL of the same issuer is refused.
        """
        with self._read() as state:
            info = certs.verify_crl(crl, require_trust(state), at=self.now(), revoked=revocation_check(state))
            number = info.number or 0
            if state.crl_applied(info.fingerprint):
                return CrlReport(info.issuer, number, len(info.entries), 0, [], True)
            highest = state.highest_crl_number(info.issuer)
            if highest is not None and highest > number:
                raise StaleCrlError(
                    f"CRL number {number} of {info.issuer} is older than number {highest} already applied; "
                    "fetch the current CRL"
                )
            events, suspended = crl_events(state, info)
        newly = sum(1 for e in events if isinstance(e, ev.CertificateRevoked))
        events.append(
            ev.CrlApplied(
                info.issuer,
                number,
                info.fingerprint,
                int(info.this_update.timestamp()),
                len(info.entries),
                int(info.next_update.timestamp()) if info.next_update else 0,
                info.issuer_key_id,
            )
        )
        self._commit(events, actor or ev.Actor("system", "crl-check"))
        return CrlReport(info.issuer, number, len(info.entries), newly, suspended, False)
