"""Trust configuration and revocation checks (6): trusted CAs, and CRLs that suspend MyKey IDs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from ..domain import certs, transitions
from ..domain import events as ev
from ..errors import StaleCrlError
from ..index.readmodel import Snapshot
from .base import EngineCore
from .lookups import issuing_cas, require_trust, revocation_check


@dataclass
class CrlReport:
    """What applying a CRL did."""

    issuer: str
    number: int
    entries: int
    newly_revoked: int
    suspended: list[str]
    already_applied: bool


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
    # A revoked intermediate CA takes every certificate it issued with it.
    revoked_cas = [ca for ca in issuing_cas(state) if ca.issuer == info.issuer and ca.serial in seen]
    if revoked_cas:
        for mykey_id, rec in state.mykeys():
            if (
                transitions.crl_suspends(rec.state)
                and mykey_id not in suspended
                and any(certs.issued_by(rec.cert_issuer, rec.issuer_key_id, ca) for ca in revoked_cas)
            ):
                events.append(transitions.crl_suspension(mykey_id, "its issuing CA"))
                suspended.append(mykey_id)
    return events, suspended


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
            ev.CrlApplied(info.issuer, number, info.fingerprint, int(info.this_update.timestamp()), len(info.entries))
        )
        self._commit(events, actor or ev.Actor("system", "crl-check"))
        return CrlReport(info.issuer, number, len(info.entries), newly, suspended, False)
