"""Lookups several commands share, over one read-model snapshot: the thing, or the refusal saying why not."""

from __future__ import annotations

from ..domain import certs, ids
from ..errors import InactiveError, NotFoundError, NoTrustAnchorError
from ..index.keys import BusinessRecord, MyKeyRecord
from ..index.readmodel import Snapshot


def require_mykey(state: Snapshot, mykey_id: str) -> MyKeyRecord:
    ids.check_mykey_id(mykey_id)
    rec = state.mykey(mykey_id)
    if rec is None:
        raise NotFoundError(f"MyKey ID {mykey_id} does not exist")
    return rec


def require_business(state: Snapshot, business_id: str, *, active: bool = True) -> BusinessRecord:
    ids.check_business_id(business_id)
    rec = state.business(business_id)
    if rec is None:
        raise NotFoundError(f"business {business_id} is not registered; register it with `mykey business add`")
    if active and not rec.active:
        raise InactiveError(f"business {business_id} is deactivated")
    return rec


def trust_store(state: Snapshot) -> certs.TrustStore | None:
    """The configured trust anchors and intermediates, or None before the first anchor."""
    cas = state.trusted_cas()
    if not cas.anchors:
        return None
    return certs.TrustStore(
        [certs.load_certificate(der) for der in cas.anchors], [certs.load_certificate(der) for der in cas.intermediates]
    )


def require_trust(state: Snapshot) -> certs.TrustStore:
    trust = trust_store(state)
    if trust is None:
        raise NoTrustAnchorError(
            "no trust anchor is configured; run `mykey init --trust-anchor CA.pem` or `mykey trust add`"
        )
    return trust


def revocation_check(state: Snapshot) -> certs.Revoked:
    """The `revoked(issuer, serial)` callback certificate verification asks, answered from this snapshot."""
    return lambda issuer, serial: state.is_revoked(issuer, format(serial, "x"))


def issuing_cas(state: Snapshot) -> list[certs.IssuingCa]:
    """The trusted intermediate CAs, as revocation sees them."""
    return [certs.issuing_ca(der) for der in state.intermediates()]


def certificate_revoked(state: Snapshot, rec: MyKeyRecord) -> bool:
    """True if the MyKey ID's current certificate, or the intermediate CA that issued it, is revoked."""
    if state.is_revoked(rec.cert_issuer, rec.cert_serial):
        return True
    return any(
        state.is_revoked(ca.issuer, ca.serial)
        for ca in issuing_cas(state)
        if certs.issued_by(rec.cert_issuer, rec.issuer_key_id, ca)
    )
