"""Service ID flows (3): bulk registration (rows or a CSV file), linking at first use, unlinking."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..domain import events as ev
from ..domain import ids, transitions
from ..domain.status import Status
from ..errors import AlreadyExistsError, NotFoundError, NotLinkedError, ValidationError
from ..index.readmodel import Snapshot
from .base import EngineCore
from .lookups import require_business, require_mykey
from .service_csv import read_service_csv_file


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
    return events


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
    ) -> int:
        """Register service IDs from a CSV file (header service_id,customer_id); all or nothing.

        Streams the file; a bad row anywhere rejects the whole file with its line number.
        """
        rows, lines = read_service_csv_file(path, progress)
        return self._register(business_id, rows, lambda i: f"{path}: line {lines[i]}", actor)

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
        with self._read() as state:
            rec = require_business(state, business_id)
            ids.check_service_id(service_id, numeric_declared=rec.numeric_service_ids)
            numeric = rec.numeric_service_ids and ids.is_individual_number(service_id)
            transitions.check_linkable(require_mykey(state, mykey_id).state, mykey_id)
            svc = state.service(business_id, service_id)
        events: list[ev.Event] = []
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
