"""How each event changes the index: one handler per event type, over a write txn.

No file or LMDB handling here beyond the txn interface (get/put/delete/cursor),
so the same rules serve the live projector, rebuild and point-in-time replay.
Events are facts: handlers never refuse them (the engine validated the command);
they only make the index say what the log says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from msgspec.structs import replace

from ..domain import events as ev
from ..domain.status import MyKeyState, Status
from ..domain.transitions import STATE_AFTER, feed_change
from ..errors import ProjectionError
from . import keys as k
from .keys import Dbs

Handler = Callable[[Any, Dbs, ev.Envelope, Any], None]
HANDLERS: dict[type, Handler] = {}


def _lacks(env: ev.Envelope, what: str) -> ProjectionError:
    """The error for an event about a record the index does not have."""
    return ProjectionError(
        f"event {env.seq} ({type(env.body).__name__}) {what}, which the index lacks: the index does "
        "not match the log; rebuild it with `mykey rebuild`"
    )


def handles(etype: type) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[etype] = fn
        return fn

    return register


def apply_envelopes(txn: Any, dbs: Dbs, envs: Iterable[ev.Envelope]) -> int:
    """Apply envelopes in order inside txn; returns the last seq applied (0 if none)."""
    last = 0
    svc_run: list[tuple[bytes, bytes]] = []
    for env in envs:
        body = env.body
        if type(body) is ev.ServiceIdRegistered:
            # Bulk imports: batch consecutive registrations into one C-level put loop.
            svc_run.append(_registration(env, body))
        else:
            if svc_run:
                txn.put_many(dbs.svc, svc_run)
                svc_run = []
            HANDLERS[type(body)](txn, dbs, env, body)
            if type(body) in FEED_SCOPED:
                _scoped_feed(txn, dbs, env, body)
        last = env.seq
    if svc_run:
        txn.put_many(dbs.svc, svc_run)
    return last


def scan(txn: Any, db: int, start: bytes = b"", prefix: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of db from start on (only those with prefix); the cursor closes with the loop."""
    cur = txn.cursor(db)
    try:
        yield from cur.iter_from(start, prefix)
    finally:
        cur.close()


def get_mykey(txn: Any, dbs: Dbs, mykey_id: str) -> k.MyKeyRecord | None:
    raw = txn.get(dbs.mykey, mykey_id.encode("ascii"))
    return None if raw is None else k.decode(k.MyKeyRecord, raw)


def _put_mykey(txn: Any, dbs: Dbs, mykey_id: str, rec: k.MyKeyRecord) -> None:
    txn.put(dbs.mykey, mykey_id.encode("ascii"), k.encode(rec))


def _note_event(txn: Any, dbs: Dbs, mykey_id: str, seq: int) -> None:
    txn.put(dbs.mkevents, mykey_id.encode("ascii") + k.u64(seq), b"")


def _set_state(
    txn: Any, dbs: Dbs, env: ev.Envelope, mykey_id: str, state: MyKeyState, reason: str, by_crl: bool = False
) -> None:
    rec = get_mykey(txn, dbs, mykey_id)
    if rec is None:
        raise _lacks(env, f"changes MyKey ID {mykey_id}")
    _put_mykey(txn, dbs, mykey_id, replace(rec, state=state, reason=reason, suspended_by_crl=by_crl))
    _note_event(txn, dbs, mykey_id, env.seq)
    # Denormalised answers: rewrite every linked service key in the same transaction.
    prefix = mykey_id.encode("ascii")
    svc_keys = [key[len(prefix) :] for key, _ in scan(txn, dbs.mksvc, prefix, prefix)]
    status = state.status
    for skey in svc_keys:
        old = txn.get(dbs.svc, skey)
        if old is not None:
            txn.put(dbs.svc, skey, k.with_status(old, status))


@handles(ev.MyKeyCreated)
def _created(txn, dbs, env, b: ev.MyKeyCreated) -> None:
    rec = k.MyKeyRecord(
        MyKeyState.VALID,
        env.seq,
        b.cert_issuer,
        b.cert_serial,
        b.cert_fingerprint,
        b.subject_digest,
        b.cert_not_after,
        env.seq,
        issuer_key_id=b.issuer_key_id,
    )
    mk = b.mykey_id.encode("ascii")
    _put_mykey(txn, dbs, b.mykey_id, rec)
    txn.put(dbs.mkref, k.u64(env.seq), mk)
    txn.put(dbs.cert, k.cert_fp_key(b.cert_fingerprint), mk)
    txn.put(dbs.cert, k.cert_serial_key(b.cert_issuer, b.cert_serial), mk)
    _note_event(txn, dbs, b.mykey_id, env.seq)
    _record_path(txn, dbs, b.mykey_id, b.path)


# The state each event leaves comes from the one table in mykey.domain.transitions.
@handles(ev.MyKeySuspended)
def _suspended(txn, dbs, env, b: ev.MyKeySuspended) -> None:
    _set_state(txn, dbs, env, b.mykey_id, STATE_AFTER[ev.MyKeySuspended], b.reason, b.by_crl)


@handles(ev.MyKeyResumed)
def _resumed(txn, dbs, env, b: ev.MyKeyResumed) -> None:
    _set_state(txn, dbs, env, b.mykey_id, STATE_AFTER[ev.MyKeyResumed], "")


@handles(ev.MyKeyInvalidated)
def _invalidated(txn, dbs, env, b: ev.MyKeyInvalidated) -> None:
    _set_state(txn, dbs, env, b.mykey_id, STATE_AFTER[ev.MyKeyInvalidated], b.reason)


@handles(ev.CertificateRenewed)
def _renewed(txn, dbs, env, b: ev.CertificateRenewed) -> None:
    rec = get_mykey(txn, dbs, b.mykey_id)
    if rec is None:
        raise _lacks(env, f"renews the certificate of MyKey ID {b.mykey_id}")
    mk = b.mykey_id.encode("ascii")
    # The old certificate no longer resolves to the MyKey ID.
    if txn.get(dbs.cert, k.cert_fp_key(rec.cert_fingerprint)) == mk:
        txn.delete(dbs.cert, k.cert_fp_key(rec.cert_fingerprint))
    if txn.get(dbs.cert, k.cert_serial_key(rec.cert_issuer, rec.cert_serial)) == mk:
        txn.delete(dbs.cert, k.cert_serial_key(rec.cert_issuer, rec.cert_serial))
    # Remembered as a former certificate, so its later revocation lands in the holder's history.
    txn.put(dbs.cert, k.former_cert_key(rec.cert_issuer, rec.cert_serial), mk)
    new = replace(
        rec,
        cert_issuer=b.new_issuer,
        cert_serial=b.new_serial,
        cert_fingerprint=b.new_fingerprint,
        subject_digest=b.subject_digest or rec.subject_digest,
        cert_not_after=b.new_not_after,
        issuer_key_id=b.issuer_key_id,
    )
    _put_mykey(txn, dbs, b.mykey_id, new)
    txn.put(dbs.cert, k.cert_fp_key(b.new_fingerprint), mk)
    txn.put(dbs.cert, k.cert_serial_key(b.new_issuer, b.new_serial), mk)
    _note_event(txn, dbs, b.mykey_id, env.seq)
    _record_path(txn, dbs, b.mykey_id, b.path)


@handles(ev.CertificateRevoked)
def _revoked(txn, dbs, env, b: ev.CertificateRevoked) -> None:
    txn.put(dbs.revoked, k.revoked_key(b.issuer, b.serial), k.encode(k.RevokedRecord(b.reason, b.revoked_at, env.seq)))
    mk = txn.get(dbs.cert, k.cert_serial_key(b.issuer, b.serial)) or txn.get(
        dbs.cert, k.former_cert_key(b.issuer, b.serial)
    )
    if mk is not None:
        _note_event(txn, dbs, mk.decode("ascii"), env.seq)


@handles(ev.CrlApplied)
def _crl(txn, dbs, env, b: ev.CrlApplied) -> None:
    txn.put(dbs.crl, b"f" + b.crl_fingerprint, k.u64(b.number))
    ikey = b"i" + k.issuer_digest(b.issuer)
    old = txn.get(dbs.crl, ikey)
    if old is None or k.parse_u64(old) < b.number:
        txn.put(dbs.crl, ikey, k.u64(b.number))
    _note_crl_freshness(txn, dbs, b)


@handles(ev.TrustAnchorAdded)
def _trust(txn, dbs, env, b: ev.TrustAnchorAdded) -> None:
    txn.put(dbs.trust, (b"i" if b.intermediate else b"a") + b.fingerprint, b.der)
    txn.delete(dbs.cas, k.untrusted_key(b.fingerprint))  # trusted again


@handles(ev.BusinessRegistered)
def _business(txn, dbs, env, b: ev.BusinessRegistered) -> None:
    rec = k.BusinessRecord(b.name, b.municipality_code, b.numeric_service_ids, True, 0, b.first_use_registration)
    txn.put(dbs.business, b.business_id.encode("ascii"), k.encode(rec))


def get_business(txn: Any, dbs: Dbs, business_id: str) -> k.BusinessRecord | None:
    raw = txn.get(dbs.business, business_id.encode("ascii"))
    return None if raw is None else k.decode(k.BusinessRecord, raw)


@handles(ev.BusinessDeactivated)
def _business_off(txn, dbs, env, b: ev.BusinessDeactivated) -> None:
    rec = get_business(txn, dbs, b.business_id)
    if rec is None:
        raise _lacks(env, f"deactivates business {b.business_id}")
    txn.put(dbs.business, b.business_id.encode("ascii"), k.encode(replace(rec, active=False)))


@handles(ev.TerminalEnrolled)
def _terminal(txn, dbs, env, b: ev.TerminalEnrolled) -> None:
    term = k.TerminalRecord(b.business_id, b.public_key, True, b.can_register)
    txn.put(dbs.terminal, b.terminal_id.encode("ascii"), k.encode(term))
    rec = get_business(txn, dbs, b.business_id)
    if rec is not None:
        txn.put(
            dbs.business,
            b.business_id.encode("ascii"),
            k.encode(replace(rec, terminals=rec.terminals + 1)),
        )


def get_terminal(txn: Any, dbs: Dbs, terminal_id: str) -> k.TerminalRecord | None:
    raw = txn.get(dbs.terminal, terminal_id.encode("ascii"))
    return None if raw is None else k.decode(k.TerminalRecord, raw)


@handles(ev.TerminalRevoked)
def _terminal_off(txn, dbs, env, b: ev.TerminalRevoked) -> None:
    rec = get_terminal(txn, dbs, b.terminal_id)
    if rec is None:
        raise _lacks(env, f"revokes terminal {b.terminal_id}")
    txn.put(dbs.terminal, b.terminal_id.encode("ascii"), k.encode(replace(rec, active=False)))


def _registration(env: ev.Envelope, b: ev.ServiceIdRegistered) -> tuple[bytes, bytes]:
    return k.service_key(b.business_id, b.service_id), k.svc_value(Status.UNLINKED, 0, env.seq, b.customer_id)


@handles(ev.ServiceIdRegistered)
def _svc_registered(txn, dbs, env, b: ev.ServiceIdRegistered) -> None:
    txn.put(dbs.svc, *_registration(env, b))


@handles(ev.ServiceIdLinked)
def _svc_linked(txn, dbs, env, b: ev.ServiceIdLinked) -> None:
    skey = k.service_key(b.business_id, b.service_id)
    old = txn.get(dbs.svc, skey)
    rec = get_mykey(txn, dbs, b.mykey_id)
    if old is None:
        raise _lacks(env, f"links service ID {b.business_id}/{b.service_id}")
    if rec is None:
        raise _lacks(env, f"links to MyKey ID {b.mykey_id}")
    txn.put(dbs.svc, skey, k.with_status(old, rec.state.status, rec.ref))
    txn.put(dbs.mksvc, b.mykey_id.encode("ascii") + skey, b"")
    _note_event(txn, dbs, b.mykey_id, k.parse_svc_value(old).reg_seq)  # the registration is about them too
    _note_event(txn, dbs, b.mykey_id, env.seq)


@handles(ev.ServiceIdUnlinked)
def _svc_unlinked(txn, dbs, env, b: ev.ServiceIdUnlinked) -> None:
    skey = k.service_key(b.business_id, b.service_id)
    old = txn.get(dbs.svc, skey)
    if old is not None:
        txn.put(dbs.svc, skey, k.with_status(old, Status.UNLINKED, 0))
    txn.delete(dbs.mksvc, b.mykey_id.encode("ascii") + skey)
    _note_event(txn, dbs, b.mykey_id, env.seq)


@handles(ev.FeedAcked)
def _feed(txn, dbs, env, b: ev.FeedAcked) -> None:
    txn.put(dbs.feed, b.consumer.encode("ascii"), k.u64(b.seq))


def _record_path(txn: Any, dbs: Dbs, mykey_id: str, path: k.RecordedPath) -> None:
    """Make path the MyKey ID's current certificate path, indexed by each CA certificate on it."""
    mk = mykey_id.encode("ascii")
    old = txn.get(dbs.cas, k.path_key(mykey_id))
    if old is not None:
        for c in k.decode(k.RecordedPath, old)[1:]:
            txn.delete(dbs.cas, k.ca_serial_prefix(c.issuer, c.serial) + mk)
            txn.delete(dbs.cas, k.ca_fp_prefix(c.fingerprint) + mk)
        txn.delete(dbs.cas, k.path_key(mykey_id))
    if not path:
        return  # recorded before v3 of the events: no path known
    txn.put(dbs.cas, k.path_key(mykey_id), k.encode(path))
    for c in path[1:]:
        txn.put(dbs.cas, k.ca_serial_prefix(c.issuer, c.serial) + mk, b"")
        txn.put(dbs.cas, k.ca_fp_prefix(c.fingerprint) + mk, b"")


def _note_crl_freshness(txn: Any, dbs: Dbs, b: ev.CrlApplied) -> None:
    """Remember the newest CRL applied for the CA key that signed it (for the freshness policy)."""
    if not b.issuer_key_id:
        return  # applied before v2 of the event: its nextUpdate was not recorded
    key = k.crl_fresh_key(b.issuer, b.issuer_key_id)
    old = txn.get(dbs.crl, key)
    if old is None or k.decode(k.CrlFreshness, old).this_update <= b.this_update:
        txn.put(dbs.crl, key, k.encode(k.CrlFreshness(b.this_update, b.next_update)))


@handles(ev.TrustAnchorRemoved)
def _trust_removed(txn, dbs, env, b: ev.TrustAnchorRemoved) -> None:
    txn.delete(dbs.trust, (b"i" if b.intermediate else b"a") + b.fingerprint)
    txn.put(dbs.cas, k.untrusted_key(b.fingerprint), b"")


@handles(ev.CaSuccessorDesignated)
def _successor(txn, dbs, env, b: ev.CaSuccessorDesignated) -> None:
    txn.put(dbs.cas, k.successor_prefix(b.old_key_id) + b.new_key_id, b"")


@handles(ev.ConsumerRegistered)
def _consumer(txn, dbs, env, b: ev.ConsumerRegistered) -> None:
    txn.put(dbs.consumer, b.consumer.encode("ascii"), k.encode(k.ConsumerRecord(b.municipality_code, env.seq)))


# --- the municipality-scoped sync feed (see mykey.engine.feed) -----------------------------
# After its handler, each of these events adds an entry to the feed of every municipality
# that sees the MyKey ID: one where it has a linked service ID at a business.
FEED_SCOPED = frozenset(
    {ev.ServiceIdLinked, ev.ServiceIdUnlinked, ev.MyKeySuspended, ev.MyKeyResumed, ev.MyKeyInvalidated,
     ev.CertificateRenewed}
)


def _links_by_municipality(txn: Any, dbs: Dbs, mykey_id: str) -> dict[str, int]:
    """How many linked service IDs the MyKey ID has at the businesses of each municipality (5 digits)."""
    prefix = mykey_id.encode("ascii")
    where: dict[bytes, str] = {}
    counts: dict[str, int] = {}
    for key, _ in scan(txn, dbs.mksvc, prefix, prefix):
        bid = key[len(prefix) : len(prefix) + 5]
        if bid not in where:
            rec = get_business(txn, dbs, bid.decode("ascii"))
            where[bid] = "" if rec is None else k.municipality_prefix(rec.municipality_code).decode("ascii")
        counts[where[bid]] = counts.get(where[bid], 0) + 1
    counts.pop("", None)
    return counts


def _scoped_feed(txn: Any, dbs: Dbs, env: ev.Envelope, body: Any) -> None:
    def add(municipality: str, change: str, state: MyKeyState | None) -> None:
        entry = k.FeedEntry(env.ts, change, body.mykey_id, state)
        txn.put(dbs.mfeed, k.feed_entry_key(municipality, env.seq), k.encode(entry))

    links = _links_by_municipality(txn, dbs, body.mykey_id)
    if type(body) in (ev.ServiceIdLinked, ev.ServiceIdUnlinked):
        rec = get_business(txn, dbs, body.business_id)
        if rec is None:
            return
        municipality = k.municipality_prefix(rec.municipality_code).decode("ascii")
        if type(body) is ev.ServiceIdUnlinked and municipality not in links:
            add(municipality, "left", None)  # its last link there is gone
        elif type(body) is ev.ServiceIdLinked and links.get(municipality) == 1:
            mk = get_mykey(txn, dbs, body.mykey_id)
            add(municipality, "joined", None if mk is None else mk.state)  # its first link there
        return
    change = feed_change(body)
    for municipality in links:
        add(municipality, change.change, change.state)


def check_handlers(handlers: dict[type, Handler], event_types: Iterable[type]) -> None:
    """Raise ProjectionError unless handlers has exactly one handler per event type."""
    types = set(event_types)
    missing = sorted(t.__name__ for t in types - set(handlers))
    extra = sorted(t.__name__ for t in set(handlers) - types)
    if missing or extra:
        raise ProjectionError(
            f"the projection handlers do not match the event types (no handler for {missing}, "
            f"handlers of unknown types {extra}): add or remove @handles(...) functions in "
            "mykey.index.projection"
        )


check_handlers(HANDLERS, ev.EVENT_TYPES)  # at import: a new event type without a handler fails loudly
