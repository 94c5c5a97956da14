"""What a MyKey ID's recorded certificate path says now, over one read-model snapshot.

Each MyKey ID records the whole verified path of its current certificate (leaf first,
trust anchor last). A CA certificate on it that a CRL revoked, or that was removed from
the trust store, makes the certificate unusable: a CRL or a trust removal suspends the
MyKey ID, a resume is refused, and a renewal is allowed without an operator's approval.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import NamedTuple

from ..domain import certs
from ..index.keys import MyKeyRecord
from ..index.readmodel import Snapshot
from .lookups import certificate_revoked

# Designations followed from one CA to its successors (a chain of CA generations).
MAX_SUCCESSOR_STEPS = 32


class Unusable(NamedTuple):
    """Why a MyKey ID's current certificate can no longer be used."""

    authority: str  # "revoked" (it, or a CA on its path, was revoked) or "untrusted" (a CA was removed)
    why: str


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def crl_lookup(state: Snapshot) -> certs.CrlLookup:
    """The latest applied CRL of a CA key, as certificate verification asks for it (freshness policy)."""

    def lookup(issuer: str, key_id: bytes) -> certs.AppliedCrl | None:
        rec = state.latest_crl(issuer, key_id)
        if rec is None:
            return None
        return certs.AppliedCrl(_utc(rec.this_update), _utc(rec.next_update) if rec.next_update else None)

    return lookup


def unusable(state: Snapshot, mykey_id: str, rec: MyKeyRecord) -> Unusable | None:
    """Why the MyKey ID's current certificate is unusable (revoked, or under a revoked or untrusted CA), or None."""
    if state.is_revoked(rec.cert_issuer, rec.cert_serial):
        return Unusable("revoked", f"its certificate (serial {rec.cert_serial}) is revoked")
    path = state.recorded_path(mykey_id)
    for ca in path[1:]:
        if state.is_revoked(ca.issuer, ca.serial):
            return Unusable("revoked", f"the CA certificate serial {ca.serial} from {ca.issuer!r} on its path is revoked")
        if state.trust_removed(ca.fingerprint):
            return Unusable(
                "untrusted", f"the CA certificate {ca.fingerprint.hex()[:16]}... on its path was removed from the trust store"
            )
    if not path and certificate_revoked(state, rec):  # recorded before paths were: its trusted issuing CA
        return Unusable("revoked", "the CA that issued its certificate is revoked")
    return None


def is_successor(state: Snapshot, old_key_id: bytes, new_key_id: bytes) -> bool:
    """True if the CA with new_key_id was designated (directly or along a chain) as a successor of old_key_id."""
    seen, frontier = {old_key_id}, [old_key_id]
    for _ in range(MAX_SUCCESSOR_STEPS):
        nxt = []
        for kid in frontier:
            for succ in state.successors(kid):
                if succ == new_key_id:
                    return True
                if succ not in seen:
                    seen.add(succ)
                    nxt.append(succ)
        if not nxt:
            return False
        frontier = nxt
    return False


def same_issuing_ca(state: Snapshot, mykey_id: str, rec: MyKeyRecord, new: certs.CertInfo) -> bool | None:
    """Was the new certificate issued by the CA that issued the current one (True), by a designated
    successor of it (False), or by neither (None)?

    Compared by the CA's key identifier (computed from its key) when the current path is
    recorded; for a MyKey ID recorded before paths were, by the authority key identifier both
    certificates name (or, without one, by the issuer name).
    """
    old_path = state.recorded_path(mykey_id)
    new_ca = new.path[1]
    if len(old_path) > 1:
        old_kid = old_path[1].key_id
        if new_ca.key_id == old_kid:
            return True
    elif rec.issuer_key_id:
        old_kid = rec.issuer_key_id
        if new.path[0].authority_key_id == old_kid and new.issuer == rec.cert_issuer:
            return True
    else:
        return True if new.issuer == rec.cert_issuer else None
    return False if is_successor(state, old_kid, new_ca.key_id) else None


def cert_actor_id(fingerprint: bytes) -> str:
    """The actor id of a certificate holder: "cert:" + the first 80 bits of its SHA-256 fingerprint, base32.

    Base32 (letters and the digits 2-7) never forms the 12-digit runs the Individual Number guard refuses.
    """
    return "cert:" + base64.b32encode(fingerprint[:10]).decode("ascii").lower()
