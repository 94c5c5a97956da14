"""A person's own history: every event about their MyKey ID, each with its inclusion proof.

The list of events comes from the index (``mkevents``); each event is then read from
the log and checked to really be about this MyKey ID (its own events, the
revocations of its certificates, the registrations of service IDs it linked), so a
damaged index cannot show one person another's data. No names are ever included.
The result is plain data: event fields as they are (bytes stay bytes); making it JSON
is the presentation's job (the CLI's ``--json`` output does it).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

import msgspec

from ..datadir import DataDir
from ..domain import events as ev
from ..domain.ids import check_mykey_id
from ..errors import NoCheckpointError, SubjectNotFoundError
from ..index import keys as k
from ..index.readmodel import ReadModel, Snapshot
from ..log.store import LogStore
from .checkpoints import latest_checkpoint, verified_checkpoint
from .keys import load_verifier_key
from .proofs import build_inclusion_doc
from .trail import log_reader, open_trail_reader, read_record

__all__ = ["subject_history", "history_from", "describe_event", "format_history", "jsonable", "event_body"]


class Snapshots(Protocol):
    """Where index snapshots come from: a ReadModel, or a gateway worker's Resolver."""

    def snapshot(self) -> AbstractContextManager[Snapshot]: ...


def _about(body: Any, mykey_id: str, certs: set[tuple[str, str]], services: set[tuple[str, str]]) -> bool:
    if isinstance(body, ev.CertificateRevoked):
        return (body.issuer, body.serial) in certs
    if isinstance(body, ev.ServiceIdRegistered):
        return (body.business_id, body.service_id) in services
    return getattr(body, "mykey_id", None) == mykey_id


def _actor(actor: ev.Actor, mykey_id: str) -> dict[str, str]:
    if actor.kind == "user" and actor.id.startswith("cert:"):
        return {"kind": "user", "id": "your certificate"}  # a renewal, attributed to the new certificate
    if actor.kind == "user" and actor.id != mykey_id:
        return {"kind": "user", "id": "(another user)"}  # never show another person's MyKey ID
    return {"kind": actor.kind, "id": "you" if actor.kind == "user" else actor.id}


def describe_event(body: Any) -> str:
    """One short phrase saying what happened (no names, nothing about other people)."""
    if isinstance(body, ev.MyKeyCreated):
        return f"MyKey ID created for certificate serial {body.cert_serial} ({body.cert_issuer})"
    if isinstance(body, ev.MyKeySuspended):
        return f"suspended: {body.reason}" if body.reason else "suspended"
    if isinstance(body, ev.MyKeyResumed):
        return "resumed (valid again)"
    if isinstance(body, ev.MyKeyInvalidated):
        return f"invalidated: {body.reason}" if body.reason else "invalidated"
    if isinstance(body, ev.CertificateRenewed):
        return f"certificate renewed: now serial {body.new_serial} ({body.new_issuer})"
    if isinstance(body, ev.CertificateRevoked):
        return f"certificate serial {body.serial} ({body.issuer}) revoked: {body.reason}"
    if isinstance(body, ev.ServiceIdRegistered):
        return f"business {body.business_id} registered service ID {body.service_id}"
    if isinstance(body, ev.ServiceIdLinked):
        what = f"service ID {body.service_id} of business {body.business_id} linked to your MyKey ID"
        if body.authority == "card":
            kind, _, who = body.relayed_by.partition(":")
            return f"{what} by your card (relayed by {kind} {who})"
        if body.authority == "in-person":
            return f"{what} by an operator who checked you in person: {body.reason}"
        return f"{what} (what authorised it was not recorded)"
    if isinstance(body, ev.ServiceIdUnlinked):
        return f"service ID {body.service_id} of business {body.business_id} unlinked"
    return type(body).__name__


class _Subject(NamedTuple):
    """What the index says about a MyKey ID, read in one snapshot."""

    rec: k.MyKeyRecord
    index_last: int
    seqs: list[int]
    links: list[tuple[str, str]]


def _subject(snapshots: Snapshots, mykey_id: str) -> _Subject:
    with snapshots.snapshot() as state:
        rec = state.mykey(mykey_id)
        if rec is None:
            raise SubjectNotFoundError(f"MyKey ID {mykey_id} is not known to this platform (check the spelling)")
        return _Subject(rec, state.last_seq, state.mykey_event_seqs(mykey_id), state.mykey_links(mykey_id))


def subject_history(data: DataDir, mykey_id: str, *, log: LogStore | None = None) -> dict[str, Any]:
    """Every event about ``mykey_id`` in order, with inclusion proofs against the latest checkpoint.

    Also the current state, certificate issuer/serial and the business IDs it is linked to.
    Opens the live index read-only: call it from a process that does not have it open
    (one that has, a gateway worker, calls history_from with its own snapshots).
    ``log``: the log to read events from (default: the data directory's, opened read-only).
    """
    check_mykey_id(mykey_id)
    model = ReadModel.open_live(data)
    if model is None:
        raise SubjectNotFoundError(f"no index in {data.root}; run `mykey init` first")
    with model:
        subject = _subject(model, mykey_id)
    with log_reader(data, log) as log:
        return _history(data, mykey_id, subject, log)


def history_from(snapshots: Snapshots, log: LogStore, data: DataDir, mykey_id: str) -> dict[str, Any]:
    """subject_history over an index the caller holds open (a Resolver or ReadModel) and its open log.

    The log is refreshed after the index is read, so it holds every event the index applied.
    """
    check_mykey_id(mykey_id)
    subject = _subject(snapshots, mykey_id)
    log.refresh()
    return _history(data, mykey_id, subject, log)


def _history(data: DataDir, mykey_id: str, subject: _Subject, log: LogStore) -> dict[str, Any]:
    rec, links = subject.rec, subject.links
    envs = [(seq, raw, ev.decode_envelope(raw)) for seq in subject.seqs for raw in [read_record(log, seq)]]
    certs: set[tuple[str, str]] = set()
    services: set[tuple[str, str]] = set()
    for _, _, e in envs:
        b = e.body
        if isinstance(b, ev.MyKeyCreated) and b.mykey_id == mykey_id:
            certs.add((b.cert_issuer, b.cert_serial))
        elif isinstance(b, ev.CertificateRenewed) and b.mykey_id == mykey_id:
            certs.add((b.new_issuer, b.new_serial))
        elif isinstance(b, (ev.ServiceIdLinked, ev.ServiceIdUnlinked)) and b.mykey_id == mykey_id:
            services.add((b.business_id, b.service_id))

    note: str | None
    try:
        note = latest_checkpoint(data)
    except NoCheckpointError:
        note = None
    cp = verified_checkpoint(note, load_verifier_key(data), "latest checkpoint") if note else None
    store = open_trail_reader(data) if cp is not None else None
    events = []
    try:
        for seq, raw, e in envs:
            if e.seq != seq or not _about(e.body, mykey_id, certs, services):
                continue  # the index pointed at something that is not about this person: never show it
            proof = None
            if cp is not None and store is not None and seq <= cp.size:
                proof = build_inclusion_doc(store, seq - 1, raw, note, seq=seq).to_dict()  # type: ignore[arg-type]
            events.append(
                {
                    "seq": seq,
                    "time": e.time.isoformat(),
                    "type": type(e.body).__struct_config__.tag,
                    "what": describe_event(e.body),
                    "by": _actor(e.actor, mykey_id),
                    "body": msgspec.structs.asdict(e.body),
                    "proof": proof,
                }
            )
    finally:
        if store is not None:
            store.close()
    return {
        "mykey_id": mykey_id,
        "state": rec.state.label,
        "reason": rec.reason,
        "certificate": {"issuer": rec.cert_issuer, "serial": rec.cert_serial, "not_after": rec.cert_not_after},
        "businesses": sorted({b for b, _ in links}),
        "links": [{"business_id": b, "service_id": s} for b, s in links],
        "events": events,
        "index_last_seq": subject.index_last,
        "checkpoint": None
        if cp is None
        else {"size": cp.size, "root": cp.root_hash.hex(), "time": cp.timestamp, "note": note},
    }


def jsonable(value: Any) -> Any:
    """A history (or any part of it) as JSON-ready data: bytes as lower-case hex, tuples as lists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {key: jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def event_body(payload: bytes) -> tuple[int, str, Any]:
    """(seq, type, body as a history shows it, JSON-ready) of a stored log record (a proof's leaf data).

    A reader of a history checks with it that the proven leaf is the event shown.
    """
    env = ev.decode_envelope(payload)
    return env.seq, type(env.body).__struct_config__.tag, jsonable(msgspec.structs.asdict(env.body))


def format_history(h: dict[str, Any]) -> list[str]:
    """Readable lines: a header, then one line per event (time, what happened, by whom)."""
    cert = h["certificate"]
    lines = [
        f"MyKey ID {h['mykey_id']}: {h['state']}" + (f" ({h['reason']})" if h["reason"] else ""),
        f"certificate: serial {cert['serial']} issued by {cert['issuer']}",
        "linked to businesses: " + (", ".join(h["businesses"]) or "none"),
    ]
    cp = h["checkpoint"]
    lines.append(
        f"proofs against signed checkpoint of size {cp['size']} (root {cp['root']})"
        if cp
        else "no signed checkpoint yet: events carry no proofs (an operator runs `mykey audit checkpoint`)"
    )
    lines.append(f"{len(h['events'])} events:")
    for e in h["events"]:
        by = e["by"]
        who = "you" if by["id"] == "you" else f"{by['kind']} {by['id']}"
        proven = "proof included" if e["proof"] else "not yet in a signed checkpoint"
        lines.append(f"{e['time'][:19]}Z  {e['what']}  — by {who}  [seq {e['seq']}, {proven}]")
    return lines
