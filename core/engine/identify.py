"""Who is at the terminal: a card proof answered with one business's service IDs (read side).

Identify runs in every gateway worker, so it needs no writer: a CardReader verifies the
card proof through the engine's own certificate verification path (chain, validity,
key usage, revocation, proof of possession, the challenge used up) against a read-only
snapshot of the index and the machine's ChallengeStore, finds the MyKey ID whose
current certificate the card holds, and answers with that business's service IDs
linked to it and their statuses: never the MyKey ID, nothing about other businesses.
The Engine's card links use the same card_holder rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from ..auth.challenges import ChallengeStore
from ..domain import certs, ids, transitions
from ..domain.status import Status
from ..errors import UnknownCardError
from ..index.keys import MyKeyRecord
from ..index.readmodel import Snapshot
from .lookups import require_business
from .mykeys import verify_card_proof


@dataclass(frozen=True)
class LinkedServiceId:
    """One of the business's service IDs linked to the person, and its status."""

    service_id: str
    status: Status
    idx: int | None = None  # its position in the business's status list


class Snapshots(Protocol):
    """Where index snapshots come from: a ReadModel (the engine's, or one over a gateway worker's index)."""

    def snapshot(self) -> AbstractContextManager[Snapshot]: ...


def card_holder(state: Snapshot, info: certs.CertInfo) -> str:
    """The MyKey ID whose current certificate the verified card holds, if the card may speak for it.

    Refusals (UnknownCardError, SuspendedMyKeyError) never name a MyKey ID: they go back to
    the terminal that relayed the card.
    """
    mykey_id, rec = _current_holder(state, info)
    transitions.check_card_holder(rec.state)
    return mykey_id


def _current_holder(state: Snapshot, info: certs.CertInfo) -> tuple[str, MyKeyRecord]:
    """The MyKey ID (any state) whose current certificate is the card's; UnknownCardError if none."""
    serial = format(info.serial, "x")
    mykey_id = state.current_holder(info.issuer, serial)
    rec = state.mykey(mykey_id) if mykey_id is not None else None
    if mykey_id is None or rec is None or rec.cert_fingerprint != info.fingerprint:
        if state.replaced_by_renewal(info.issuer, serial):
            raise UnknownCardError("this card's certificate was replaced by a renewal; present the card with the new one")
        raise UnknownCardError("this card has no MyKey ID; the holder can create one with the card")
    return mykey_id, rec


class CardReader:
    """Verifies card proofs and answers identify from the index, without the writer.

    snapshots: the index to read (the engine's read model, or a ReadModel over a gateway
    worker's read-only index); challenges: the machine's ChallengeStore. Safe to use from
    one thread at a time per snapshot source, like the ReadModel it reads.
    """

    def __init__(
        self,
        snapshots: Snapshots,
        challenges: ChallengeStore,
        *,
        clock: Callable[[], float] = time.time,
        crl_policy: certs.CrlPolicy | None = None,
    ):
        self.snapshots = snapshots
        self.challenges = challenges
        self.clock = clock
        self.crl_policy = crl_policy or certs.CrlPolicy()  # the same freshness rule as the engine's

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=timezone.utc)

    def identify(
        self,
        business_id: str,
        certificate: bytes,
        signature: bytes,
        challenge: bytes,
        *,
        terminal_id: str | None = None,
    ) -> list[LinkedServiceId]:
        """The business's service IDs linked to the person whose card signed the challenge (may be empty).

        challenge: an "identify" challenge issued for this business (and terminal_id, the
        terminal relaying the card; None for none), signed by the card. Refused with the
        reason (ChallengeError, a CertificateError such as CertificateRevokedError or
        ChallengeSignatureError, UnknownCardError, SuspendedMyKeyError, InactiveError).
        """
        ids.check_business_id(business_id)
        with self.snapshots.snapshot() as state:
            require_business(state, business_id)
            self.challenges.expect(challenge, "identify", business_id=business_id, terminal_id=terminal_id)
            info = verify_card_proof(
                state, self.challenges, certificate, signature, challenge, "identify",
                at=self.now(), crl_policy=self.crl_policy,
            )
            links = state.linked_service_ids(card_holder(state, info), business_id)
        return [LinkedServiceId(sid, value.status, value.idx) for sid, value in links]

    def own_mykey_id(self, certificate: bytes, signature: bytes, challenge: bytes) -> str:
        """The MyKey ID whose current certificate the card holds, proven over a "history" challenge.

        For the person's own view only (a gateway shows the holder their history): it names
        the MyKey ID, so its answer goes to the card's holder, never to a terminal. Any state
        will do: a suspended or invalidated MyKey ID still has its history. Refused like
        identify (ChallengeError, a CertificateError, UnknownCardError).
        """
        with self.snapshots.snapshot() as state:
            self.challenges.expect(challenge, "history")
            info = verify_card_proof(
                state, self.challenges, certificate, signature, challenge, "history",
                at=self.now(), crl_policy=self.crl_policy,
            )
            return _current_holder(state, info)[0]
