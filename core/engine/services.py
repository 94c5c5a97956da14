"""Service ID flows (3): bulk registration (rows or a CSV file), linking (by card or in person), unlinking.

A link needs the person: their card's proof of possession over a challenge naming the
business and the service ID (link_with_card, the normal path; a terminal relays it), or
an operator's attributed decision after checking them in person (link_in_person, with a
reason). Either registers the service ID first if the business has not (first use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from msgspec.structs import replace

from ..domain import events as ev
from ..domain import ids, transitions
from ..domain.status import Status
from ..errors import (
    AlreadyExistsError,
    InactiveError,
    NotFoundError,
    NotLinkedError,
    RegistrationNotAllowedError,
    ValidationError,
)
from ..index.keys import BusinessRecord, SvcValue
from ..index.readmodel import Snapshot
from .base import EngineCore
from .identify import CardReader, card_holder
from .lookups import require_business, require_mykey
from .service_csv import read_service_csv_file
from .statuslists import draw_positions


def registration_events(
    state: Snapshot,
    business_id: str,
    rows: Iterable[tuple[str, str | None]],
    *,
    line_of: Callable[[int], str] | None = None,
) -> list[ev.ServiceIdRegistered]:
    """Validate rows (format, duplicates, already registered) into events; raises on the first bad row."""
    rec = require_business(state, business_id)
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
    for i, registered in enumerate(state.registered(business_id, (e.service_id for e in events))):
        if registered:
            raise AlreadyExistsError(f"{where(i)}: service ID {events[i].service_id!r} is already registered")
    positions = draw_positions(state, business_id, len(events))
    return [replace(e, status_idx=p) for e, p in zip(events, positions, strict=True)]


class ServiceCommands(EngineCore):
    def register_service_ids(
        self, business_id: str, rows: Iterable[tuple[str, str | None]], *, actor: ev.Actor | None = None
    ) -> int:
        """Bulk-register (service_id, customer_id | None) pairs, unlinked; all or nothing."""
        return self._register(business_id, rows, None, actor)

    def _register(
        self,
        business_id: str,
        rows: Iterable[tuple[str, str | None]],
        line_of: Callable[[int], str] | None,
        actor: ev.Actor | None,
    ) -> int:
        with self._read() as state:
            if actor is not None and actor.kind == "terminal":
                _require_registering_terminal(state, actor.id, business_id)
            events = registration_events(state, business_id, rows, line_of=line_of)
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
        name: str | None = None,
    ) -> int:
        """Register service IDs from a CSV file (header service_id,customer_id); all or nothing.

        Streams the file; a bad row anywhere rejects the whole file with its line number.
        name: what refusals call the file (default its path). actor: a terminal registers only
        for its own business, and only if it was enrolled with the right to (can_register).
        """
        rows, lines = read_service_csv_file(path, progress, name=name)
        return self._register(business_id, rows, lambda i: f"{name or path}: line {lines[i]}", actor)

    # --- linking: by the person's card (the normal path), or in person by an operator ----------

    def link_challenge(self, business_id: str, service_id: str, *, terminal_id: str | None = None) -> bytes:
        """A challenge for the person's card to sign, naming this business and service ID (see link_with_card).

        terminal_id: the terminal that will relay the card's proof (None: this engine's operator).
        """
        with self._read() as state:
            rec = require_business(state, business_id)
        ids.check_service_id(service_id, numeric_declared=rec.numeric_service_ids)
        return self.challenges.issue("link", business_id=business_id, service_id=service_id, terminal_id=terminal_id)

    def identify_challenge(self, business_id: str, *, terminal_id: str | None = None) -> bytes:
        """A challenge for the person's card to sign to be identified at this business (see card_reader)."""
        with self._read() as state:
            require_business(state, business_id)
        return self.challenges.issue("identify", business_id=business_id, terminal_id=terminal_id)

    def link_with_card(
        self,
        business_id: str,
        service_id: str,
        certificate: bytes,
        signature: bytes,
        challenge: bytes,
        *,
        actor: ev.Actor | None = None,
    ) -> Status:
        """Link a service ID to the person whose card signed a challenge naming it; returns its status.

        challenge: from link_challenge(business_id, service_id) (a gateway worker issues the same
        from the machine's ChallengeStore), signed by the card; certificate: the card's certificate
        (PEM or DER, a PEM bundle may carry intermediates), verified like creation. The MyKey ID is
        the valid one whose current certificate the card holds: the caller names none. A service
        ID the business has not registered yet is registered first (first use). Linking again to
        the same person changes nothing; a service ID linked to anyone else is refused.

        actor: who relayed the proof: the terminal the challenge was issued to, or (default) this
        engine's operator. The event is the person's (actor user:<MyKey ID>) and records the
        certificate and the relay.
        """
        relay = actor or self.operator
        if relay.kind not in ("terminal", "operator"):
            raise ValidationError(f"a card's proof is relayed by a terminal or an operator, not by a {relay.kind}")
        with self._read() as state:
            rec = require_business(state, business_id)
            ids.check_service_id(service_id, numeric_declared=rec.numeric_service_ids)
            if relay.kind == "terminal":
                _require_terminal_of(state, relay.id, business_id)
            self.challenges.expect(
                challenge,
                "link",
                business_id=business_id,
                service_id=service_id,
                terminal_id=relay.id if relay.kind == "terminal" else None,
            )
            info = self._verify_user_cert(state, certificate, signature, challenge, "link")
            mykey_id = card_holder(state, info)
            svc = state.service(business_id, service_id)
            if svc is not None and svc.linked and state.mykey_by_ref(svc.ref) == mykey_id:
                return svc.status  # already this person's
            position = None if svc is not None else draw_positions(state, business_id, 1)[0]
        numeric = rec.numeric_service_ids and ids.is_individual_number(service_id)
        link = ev.ServiceIdLinked(
            business_id,
            service_id,
            mykey_id,
            numeric,
            "card",
            cert_fingerprint=info.fingerprint,
            relayed_by=f"{relay.kind}:{relay.id}",
        )
        self._commit(_link_events(rec, service_id, svc, numeric, link, position), ev.Actor("user", mykey_id))
        return Status.VALID

    def link_in_person(
        self,
        business_id: str,
        service_id: str,
        mykey_id: str,
        reason: str,
        *,
        actor: ev.Actor | None = None,
    ) -> Status:
        """Link on an operator's attributed decision after checking the person in person; returns its status.

        For when the card cannot do it (no card reader at hand, a helper acting for the holder
        with their documents). reason says how the person was checked; it is recorded with the
        operator (actor, default this engine's operator). The MyKey ID may be valid or
        suspended, never invalid. First-use registration as in link_with_card.
        """
        by = actor or self.operator
        if by.kind != "operator":
            raise ValidationError("only an operator links in person; a terminal links with the person's card")
        ids.check_text(reason, "reason", ev.MAX_REASON, allow_empty=False)
        with self._read() as state:
            rec = require_business(state, business_id)
            ids.check_service_id(service_id, numeric_declared=rec.numeric_service_ids)
            holder = require_mykey(state, mykey_id)
            transitions.check_linkable(holder.state, mykey_id)
            svc = state.service(business_id, service_id)
            position = None if svc is not None else draw_positions(state, business_id, 1)[0]
        numeric = rec.numeric_service_ids and ids.is_individual_number(service_id)
        link = ev.ServiceIdLinked(business_id, service_id, mykey_id, numeric, "in-person", reason)
        self._commit(_link_events(rec, service_id, svc, numeric, link, position), by)
        return holder.state.status

    def card_reader(self) -> CardReader:
        """Identify (read side) over this engine's index and challenges: card_reader().identify(...)."""
        return CardReader(self.read_model, self.challenges, clock=lambda: self.clock(), crl_policy=self.crl_policy)

    def unlink_service_id(self, business_id: str, service_id: str, *, actor: ev.Actor | None = None) -> None:
        """Unlink a service ID from its MyKey ID (it stays registered, UNLINKED)."""
        with self._read() as state:
            rec = require_business(state, business_id, active=False)
            ids.check_service_id(service_id, numeric_declared=rec.numeric_service_ids)
            svc = state.service(business_id, service_id)
            if svc is None:
                raise NotFoundError(f"service ID {service_id} of {business_id} is not registered")
            if not svc.linked:
                raise NotLinkedError(f"service ID {service_id} of {business_id} is not linked")
            mykey_id = state.mykey_by_ref(svc.ref)
        numeric = rec.numeric_service_ids and ids.is_individual_number(service_id)
        self._commit([ev.ServiceIdUnlinked(business_id, service_id, mykey_id, numeric)], actor or self.operator)

    def service_status(self, business_id: str, service_id: str) -> tuple[Status, str | None]:
        """What a business may know about its own service ID: status and its customer ID."""
        ids.check_business_id(business_id)
        with self._read() as state:
            svc = state.service(business_id, service_id)
        return (Status.UNKNOWN, None) if svc is None else (svc.status, svc.customer_id)


def _link_events(
    rec: BusinessRecord, service_id: str, svc: SvcValue | None, numeric: bool, link: ev.ServiceIdLinked,
    position: int | None = None,
) -> list[ev.Event]:
    """The link, after the registration at first use (if the business allows it); refused if linked already."""
    business_id = link.business_id
    if svc is None:
        if not rec.first_use_registration:
            raise RegistrationNotAllowedError(
                f"service ID {service_id} is not registered at business {business_id}, which registers its service "
                "IDs itself (no registration at first use); register it first, then link it"
            )
        return [ev.ServiceIdRegistered(business_id, service_id, None, numeric, position), link]
    if svc.linked:
        raise AlreadyExistsError(
            f"service ID {service_id} of {business_id} is already linked to a MyKey ID; unlink it first"
        )
    return [link]


def _require_terminal_of(state: Snapshot, terminal_id: str, business_id: str) -> None:
    """The relaying terminal is enrolled at this business and not revoked."""
    ids.check_terminal_id(terminal_id)
    term = state.terminal(terminal_id)
    if term is None or term.business_id != business_id:
        raise NotFoundError(f"terminal {terminal_id} is not enrolled at business {business_id}")
    if not term.active:
        raise InactiveError(f"terminal {terminal_id} was revoked")


def _require_registering_terminal(state: Snapshot, terminal_id: str, business_id: str) -> None:
    """The terminal registering service IDs is an active terminal of this business with the right to register."""
    _require_terminal_of(state, terminal_id, business_id)
    term = state.terminal(terminal_id)
    if term is None or not term.can_register:
        raise RegistrationNotAllowedError(
            f"terminal {terminal_id} may not register service IDs; the operator enrols a terminal for that with "
            "`mykey terminal enrol BUSINESS --public-key FILE --can-register`"
        )
