"""MyKey ID flows: creation (1), suspension and invalidation (4), certificate renewal (5)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Self

from ..auth.challenges import ChallengeStore
from ..domain import certs, ids, transitions
from ..domain import events as ev
from ..domain.status import MyKeyState
from ..domain.transitions import Action
from ..errors import (
    AlreadyExistsError,
    RenewalRefused,
    ResumeBlockedError,
    ValidationError,
)
from ..index.readmodel import Snapshot
from .base import EngineCore
from .certpaths import cert_actor_id, crl_lookup, same_issuing_ca, unusable
from .lookups import require_mykey, require_trust, revocation_check


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


def verify_card_proof(
    state: Snapshot,
    challenges: ChallengeStore,
    certificate: bytes,
    signature: bytes,
    challenge: bytes,
    purpose: str,
    *,
    at: datetime,
    crl_policy: certs.CrlPolicy,
) -> certs.CertInfo:
    """A card's proof over a challenge, as every flow checks it (creation, renewal, links, identify).

    The challenge is used up first (single use even if what follows fails); then proof of
    possession (bounded parsing, one signature check), the path, validity, key usage,
    revocation and CRL freshness, against one snapshot of the index.
    """
    challenges.consume(challenge, purpose)
    return certs.verify_presented(
        require_trust(state),
        certificate,
        challenge,
        signature,
        at=at,
        revoked=revocation_check(state),
        crl_lookup=crl_lookup(state),
        crl_policy=crl_policy,
        distrusted=state.trust_removed,
    )


def _free_mykey_ids(state: Snapshot, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        cand = ids.random_mykey_id()
        if cand not in out and not state.mykey_exists(cand):
            out.append(cand)
    return out


def _live_holder(state: Snapshot, info: certs.CertInfo) -> str | None:
    """The live MyKey ID this certificate belongs to, now or before a renewal replaced it."""
    for holder in state.certificate_holders(info.issuer, format(info.serial, "x"), info.fingerprint):
        if transitions.is_live(holder.state):
            return holder.mykey_id
    return None


class MyKeyCommands(EngineCore):
    # How fresh each issuer's latest applied CRL must be for its certificates to be accepted.
    crl_policy: certs.CrlPolicy = certs.CrlPolicy()

    @classmethod
    def open(cls, data_dir: str | Path, *, crl_policy: certs.CrlPolicy | None = None, **kwargs) -> Self:
        """EngineCore.open, plus crl_policy: the CRL freshness policy (default certs.CrlPolicy():
        refuse a certificate whose issuer's latest applied CRL is past its nextUpdate, or older
        than 7 days when it has none)."""
        engine = super().open(data_dir, **kwargs)
        if crl_policy is not None:
            engine.crl_policy = crl_policy
        return engine

    # --- 1. MyKey ID creation ------------------------------------------------

    def new_challenge(self, purpose: str = "create") -> bytes:
        """A fresh single-use nonce for proof of possession, for one purpose ("create" or "renew").

        The purpose is part of the signed bytes (b"mykey:create:" + 32 random bytes, hex), so a
        signature made for one flow cannot be replayed in another. Expires after CHALLENGE_TTL seconds.
        """
        return self.challenges.issue(purpose)

    def _verify_user_cert(
        self, state: Snapshot, certificate: bytes, signature: bytes, challenge: bytes, purpose: str
    ) -> certs.CertInfo:
        """verify_card_proof with this engine's challenges, clock and CRL policy."""
        return verify_card_proof(
            state, self.challenges, certificate, signature, challenge, purpose, at=self.now(), crl_policy=self.crl_policy
        )

    def mykey_exists(self, mykey_id: str) -> bool:
        with self._read() as state:
            return state.mykey_exists(mykey_id)

    def suggest_mykey_ids(self, n: int = 5) -> list[str]:
        """n random MyKey IDs that are free right now."""
        with self._read() as state:
            return _free_mykey_ids(state, n)

    def create_mykey(
        self, certificate: bytes, signature: bytes, challenge: bytes, requested_id: str | None = None
    ) -> str:
        """Verify the user's certificate and signature over the challenge; issue a MyKey ID.

        certificate is PEM or DER (a PEM bundle may carry intermediates after the leaf).
        """
        with self._read() as state:
            if requested_id is not None:
                ids.check_mykey_id(requested_id, "requested MyKey ID")
            info = self._verify_user_cert(state, certificate, signature, challenge, "create")
            # Only a proven card holder learns whether a MyKey ID is taken.
            if requested_id is not None and state.mykey_exists(requested_id):
                raise AlreadyExistsError(
                    f"MyKey ID {requested_id} is taken; pick another, e.g. one of "
                    f"{', '.join(_free_mykey_ids(state, 3))}"
                )
            if _live_holder(state, info) is not None:
                raise AlreadyExistsError(
                    "this certificate already has a live MyKey ID; one certificate holds at most one "
                    "(invalidate the old one first, or use it)"
                )
            mykey_id = requested_id or _free_mykey_ids(state, 1)[0]
        body = ev.MyKeyCreated(
            mykey_id,
            info.issuer,
            format(info.serial, "x"),
            info.fingerprint,
            certs.keyed_subject_digest(self._subject_key, info),
            int(info.not_after.timestamp()),
            certs.authority_key_id(info),
            info.path,
        )
        self._commit([body], ev.Actor("user", mykey_id))
        return mykey_id

    def mykey(self, mykey_id: str) -> MyKeyView:
        """The MyKey ID's state, certificate issuer/serial and the businesses it is linked at."""
        with self._read() as state:
            rec = require_mykey(state, mykey_id)
            businesses = state.linked_businesses(mykey_id)
        return MyKeyView(mykey_id, rec.state, rec.cert_issuer, rec.cert_serial, rec.cert_not_after, rec.reason, businesses)

    # --- 4. suspension and invalidation ---------------------------------------------

    def transition(
        self, mykey_id: str, action: Action | str, reason: str = "", *, actor: ev.Actor | None = None
    ) -> MyKeyState:
        """Apply a state action (see mykey.domain.transitions); returns the new state."""
        action = transitions.parse_action(action)
        with self._read() as state:
            rec = require_mykey(state, mykey_id)
            blocked = unusable(state, mykey_id, rec) if action is Action.RESUME else None
        new = transitions.next_state(rec.state, action, mykey_id=mykey_id)
        if blocked is not None:
            raise ResumeBlockedError(
                f"{mykey_id} cannot be resumed: {blocked.why}; it can be resumed only by renewing the certificate"
            )
        self._commit([transitions.transition_event(action, mykey_id, reason)], actor or self.operator)
        return new

    def suspend(self, mykey_id: str, reason: str, *, actor: ev.Actor | None = None) -> MyKeyState:
        """valid -> suspended; every linked service ID answers SUSPENDED on the next lookup."""
        return self.transition(mykey_id, Action.SUSPEND, reason, actor=actor)

    def resume(self, mykey_id: str, *, actor: ev.Actor | None = None) -> MyKeyState:
        """suspended -> valid; refused while the current certificate is revoked (renew it instead)."""
        return self.transition(mykey_id, Action.RESUME, actor=actor)

    def invalidate(self, mykey_id: str, reason: str, *, actor: ev.Actor | None = None) -> MyKeyState:
        """valid/suspended -> invalid (final)."""
        return self.transition(mykey_id, Action.INVALIDATE, reason, actor=actor)

    # --- 5. certificate renewal -------------------------------------------------------

    def renew_certificate(
        self,
        mykey_id: str,
        new_certificate: bytes,
        signature: bytes,
        challenge: bytes,
        *,
        operator_approval: str | None = None,
        approver: ev.Actor | None = None,
    ) -> None:
        """Move the MyKey ID to a renewed certificate (new key, new serial).

        Allowed only when all hold: the holder proves possession of the new key; the new
        certificate comes from the CA that issued the current one, or from a CA an operator
        designated as its successor (designate_successor_ca); and either the current certificate
        can no longer be used (revoked by an applied CRL, under a revoked or removed CA, or
        expired) or an operator approves (operator_approval: the reason, recorded with the
        approver, default self.operator). The subject must stay the same unless an operator
        approves. The event is attributed to the new certificate (actor "user", "cert:...").
        """
        if operator_approval is not None:
            ids.check_text(operator_approval, "approval reason", ev.MAX_REASON, allow_empty=False)
            approver = approver or self.operator
            if approver.kind != "operator":
                raise ValidationError(f"only an operator approves a renewal, not a {approver.kind}")
        with self._read() as state:
            rec = require_mykey(state, mykey_id)
            transitions.check_renewable(rec.state, mykey_id)
            info = self._verify_user_cert(state, new_certificate, signature, challenge, "renew")
            subject_digest = certs.keyed_subject_digest(self._subject_key, info)
            same_subject = bool(rec.subject_digest) and hmac.compare_digest(subject_digest, rec.subject_digest)
            if info.fingerprint == rec.cert_fingerprint:
                raise RenewalRefused("that is the current certificate; present the renewed one")
            if state.replaced_by_renewal(info.issuer, format(info.serial, "x")):
                raise RenewalRefused("that certificate was already replaced by a renewal; present the newest one")
            other = _live_holder(state, info)
            if other is not None and other != mykey_id:
                raise AlreadyExistsError("the new certificate already belongs to another live MyKey ID")
            same_ca = same_issuing_ca(state, mykey_id, rec, info)
            if same_ca is None:
                raise RenewalRefused(
                    f"the new certificate was issued by {info.issuer!r}, not by the CA that issued the current one "
                    "nor a CA designated as its successor; if that CA really succeeds it, an operator can say so "
                    "with `mykey trust successor OLD-CA NEW-CA --reason R`"
                )
            if not same_subject and operator_approval is None:
                raise RenewalRefused(
                    "the new certificate's subject differs from the current one; renewal keeps the same holder "
                    "(after an in-person check an operator may approve it: --approved-by-operator --reason R)"
                )
            if operator_approval is not None:
                authority = "operator"
            else:
                blocked = unusable(state, mykey_id, rec)
                if blocked is not None:
                    authority = blocked.authority
                elif rec.cert_not_after and rec.cert_not_after < self.clock():
                    authority = "expired"
                else:
                    raise RenewalRefused(
                        "the current certificate is still valid and not revoked, so presenting another one is not "
                        "enough: apply the CRL that revokes it, wait until it expires, or have an operator approve "
                        "the renewal after an in-person check (--approved-by-operator --reason R)"
                    )
        events: list[ev.Event] = [
            ev.CertificateRenewed(
                mykey_id,
                rec.cert_fingerprint,
                info.issuer,
                format(info.serial, "x"),
                info.fingerprint,
                subject_digest,
                int(info.not_after.timestamp()),
                certs.authority_key_id(info),
                info.path,
                authority,
                approver.id if operator_approval is not None and approver is not None else "",
                operator_approval or "",
                not same_ca,
            )
        ]
        if transitions.resumes_on_renewal(rec.state, rec.suspended_by_crl):
            events.append(transitions.transition_event(Action.RESUME, mykey_id))  # the revoked certificate is replaced
        self._commit(events, ev.Actor("user", cert_actor_id(info.fingerprint)))
