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
# Optional fast paths for runs of consecutive events that share a run handler (bulk imports,
# rebuilds): each leaves the index exactly as HANDLERS[type] applied to every event of the
# run in turn would (tests/test_index_runs.py checks), but reads in one sorted pass and
# writes every database's items in key order (appended past its end, so pages fill up).
RunHandler = Callable[[Any, Dbs, list[ev.Envelope]], None]
RUN_HANDLERS: dict[type, RunHandler] = {}


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


def handles_runs(*etypes: type) -> Callable[[RunHandler], RunHandler]:
    """Register a run handler for runs of events of any of these types."""

    def register(fn: RunHandler) -> RunHandler:
        for etype in etypes:
            RUN_HANDLERS[etype] = fn
        return fn

    return register


def apply_envelopes(txn: Any, dbs: Dbs, envs: Iterable[ev.Envelope], *, runs: bool = True) -> int:
    """Apply envelopes in order inside txn; returns the last seq applied (0 if none).

    Consecutive events with the same run handler go through it together (runs=False: one
    handler call per event, the reference the run handlers are tested against).
    """
    last = 0
    run: list[ev.Envelope] = []
    run_handler: RunHandler | None = None
    run_handlers = RUN_HANDLERS if runs else {}
    for env in envs:
        etype = type(env.body)
        handler = run_handlers.get(etype)
        if handler is not run_handler:
            if run:
                run_handler(txn, dbs, run)  # type: ignore[misc]
                run = []
            run_handler = handler
        if handler is None:
            HANDLERS[etype](txn, dbs, env, env.body)
            if etype in FEED_SCOPED:
                _scoped_feed(txn, dbs, env, env.body)
        else:
            run.append(env)
        last = env.seq
    if run:
        run_handler(txn, dbs, run)  # type: ignore[misc]
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
    """Store a MyKey ID's record, and its state and ref in mkstate (write records only through here)."""
    mk = mykey_id.encode("ascii")
    txn.put(dbs.mykey, mk, k.encode(rec))
    txn.put(dbs.mkstate, mk, k.mykey_state(rec.state, rec.ref))


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
    value = k.STATUS_VALUES[state.status]
    for skey in svc_keys:
        if txn.get(dbs.svc, skey) is not None:
            txn.put(dbs.svc, skey, value)


def _created_record(env: ev.Envelope, b: ev.MyKeyCreated) -> k.MyKeyRecord:
    return k.MyKeyRecord(
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


@handles(ev.MyKeyCreated)
def _created(txn, dbs, env, b: ev.MyKeyCreated) -> None:
    rec = _created_record(env, b)
    mk = b.mykey_id.encode("ascii")
    _put_mykey(txn, dbs, b.mykey_id, rec)
    txn.put(dbs.mkref, k.u64(env.seq), mk)
    txn.put(dbs.cert, k.cert_fp_key(b.cert_fingerprint), mk)
    txn.put(dbs.cert, k.cert_serial_key(b.cert_issuer, b.cert_serial), mk)
    _note_event(txn, dbs, b.mykey_id, env.seq)
    _record_path(txn, dbs, b.mykey_id, b.path)


# The state each event leaves comes from the one table in mykey.domain.transitions; with
# the reason and the CRL flag, it is all of the record such an event changes.
_STATE_CHANGE: dict[type, Callable[[Any], tuple[MyKeyState, str, bool]]] = {
    ev.MyKeySuspended: lambda b: (STATE_AFTER[ev.MyKeySuspended], b.reason, b.by_crl),
    ev.MyKeyResumed: lambda b: (STATE_AFTER[ev.MyKeyResumed], "", False),
    ev.MyKeyInvalidated: lambda b: (STATE_AFTER[ev.MyKeyInvalidated], b.reason, False),
}


@handles(ev.MyKeySuspended)
def _suspended(txn, dbs, env, b: ev.MyKeySuspended) -> None:
    _set_state(txn, dbs, env, b.mykey_id, *_STATE_CHANGE[ev.MyKeySuspended](b))


@handles(ev.MyKeyResumed)
def _resumed(txn, dbs, env, b: ev.MyKeyResumed) -> None:
    _set_state(txn, dbs, env, b.mykey_id, *_STATE_CHANGE[ev.MyKeyResumed](b))


@handles(ev.MyKeyInvalidated)
def _invalidated(txn, dbs, env, b: ev.MyKeyInvalidated) -> None:
    _set_state(txn, dbs, env, b.mykey_id, *_STATE_CHANGE[ev.MyKeyInvalidated](b))


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


_UNLINKED = k.STATUS_VALUES[Status.UNLINKED]


def _service_record(env: ev.Envelope, b: ev.ServiceIdRegistered) -> bytes:
    """svcrec's value for a new registration."""
    return k.encode(k.ServiceRecord(env.seq, 0, b.customer_id, b.status_idx))


@handles(ev.ServiceIdRegistered)
def _svc_registered(txn, dbs, env, b: ev.ServiceIdRegistered) -> None:
    skey = k.service_key(b.business_id, b.service_id)
    txn.put(dbs.svc, skey, _UNLINKED)
    txn.put(dbs.svcrec, skey, _service_record(env, b))
    if b.status_idx is not None:
        _give_positions(txn, dbs, b.business_id, [k.slidx_key(b.business_id, b.status_idx)], [skey])


def _service_of(txn: Any, dbs: Dbs, skey: bytes) -> k.ServiceRecord | None:
    raw = txn.get(dbs.svcrec, skey)
    return None if raw is None else k.decode(k.ServiceRecord, raw)


@handles(ev.ServiceIdLinked)
def _svc_linked(txn, dbs, env, b: ev.ServiceIdLinked) -> None:
    skey = k.service_key(b.business_id, b.service_id)
    old = _service_of(txn, dbs, skey)
    raw = txn.get(dbs.mkstate, b.mykey_id.encode("ascii"))
    if old is None:
        raise _lacks(env, f"links service ID {b.business_id}/{b.service_id}")
    if raw is None:
        raise _lacks(env, f"links to MyKey ID {b.mykey_id}")
    state, ref = k.parse_mykey_state(raw)
    txn.put(dbs.svc, skey, k.STATUS_VALUES[state])
    txn.put(dbs.svcrec, skey, k.encode(replace(old, ref=ref)))
    mk = b.mykey_id.encode("ascii")
    if txn.get(dbs.mksvc, mk + skey) is None:
        txn.put(dbs.mksvc, mk + skey, b"")
        _count_links(txn, dbs, mk, skey, +1)
    _note_event(txn, dbs, b.mykey_id, old.reg_seq)  # the registration is about them too
    _note_event(txn, dbs, b.mykey_id, env.seq)


@handles(ev.ServiceIdUnlinked)
def _svc_unlinked(txn, dbs, env, b: ev.ServiceIdUnlinked) -> None:
    skey = k.service_key(b.business_id, b.service_id)
    old = _service_of(txn, dbs, skey)
    if old is not None:
        txn.put(dbs.svc, skey, _UNLINKED)
        txn.put(dbs.svcrec, skey, k.encode(replace(old, ref=0)))
    mk = b.mykey_id.encode("ascii")
    if txn.get(dbs.mksvc, mk + skey) is not None:
        txn.delete(dbs.mksvc, mk + skey)
        _count_links(txn, dbs, mk, skey, -1)
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


def _municipality(txn: Any, dbs: Dbs, where: dict[bytes, str], bid: bytes) -> str:
    """The municipality (5 digits) of business bid, "" if it is not registered; where caches them."""
    m = where.get(bid)
    if m is None:
        rec = get_business(txn, dbs, bid.decode("ascii"))
        m = where[bid] = "" if rec is None else k.municipality_prefix(rec.municipality_code).decode("ascii")
    return m


def _count_links(txn: Any, dbs: Dbs, mk: bytes, skey: bytes, delta: int) -> None:
    """Count a link of MyKey ID mk to service key skey made (+1) or undone (-1) in mkmuni."""
    municipality = _municipality(txn, dbs, {}, skey[:5])
    if not municipality:
        return  # a business that is not registered belongs to no municipality's feed
    key = k.mkmuni_key(mk, municipality)
    old = txn.get(dbs.mkmuni, key)
    n = (0 if old is None else k.parse_u32(old)) + delta
    if n > 0:
        txn.put(dbs.mkmuni, key, k.u32(n))
    elif old is not None:
        txn.delete(dbs.mkmuni, key)


def _links_in(txn: Any, dbs: Dbs, mk: bytes, municipality: str) -> int:
    """How many linked service IDs MyKey ID mk has at businesses of the municipality."""
    raw = txn.get(dbs.mkmuni, k.mkmuni_key(mk, municipality))
    return 0 if raw is None else k.parse_u32(raw)


def _municipalities(cur: Any, mk: bytes) -> list[str]:
    """The municipalities where MyKey ID mk has linked service IDs (cur: a cursor of mkmuni)."""
    return [key[len(mk):].decode("ascii") for key, _ in cur.iter_from(mk, mk)]


def _scoped_feed(txn: Any, dbs: Dbs, env: ev.Envelope, body: Any) -> None:
    def add(municipality: str, change: str, state: MyKeyState | None) -> None:
        entry = k.FeedEntry(env.ts, change, body.mykey_id, state)
        txn.put(dbs.mfeed, k.feed_entry_key(municipality, env.seq), k.encode(entry))

    mk = body.mykey_id.encode("ascii")
    if type(body) in (ev.ServiceIdLinked, ev.ServiceIdUnlinked):
        rec = get_business(txn, dbs, body.business_id)
        if rec is None:
            return
        municipality = k.municipality_prefix(rec.municipality_code).decode("ascii")
        links = _links_in(txn, dbs, mk, municipality)
        if type(body) is ev.ServiceIdUnlinked and links == 0:
            add(municipality, "left", None)  # its last link there is gone
        elif type(body) is ev.ServiceIdLinked and links == 1:
            mk_rec = get_mykey(txn, dbs, body.mykey_id)
            add(municipality, "joined", None if mk_rec is None else mk_rec.state)  # its first link there
        return
    change = feed_change(body)
    cur = txn.cursor(dbs.mkmuni)
    try:
        municipalities = _municipalities(cur, mk)
    finally:
        cur.close()
    for municipality in municipalities:
        add(municipality, change.change, change.state)


# --- run handlers (see RUN_HANDLERS) -----------------------------------------------------
# Written as list comprehensions over the run and put_keys (lists of bytes, no pairs): the
# per-event Python work is what bounds a rebuild's speed.


@handles_runs(ev.ServiceIdRegistered)
def _svc_registered_run(txn, dbs, envs: list[ev.Envelope]) -> None:
    skeys = [(e.body.business_id + e.body.service_id).encode("ascii") for e in envs]
    txn.put_keys(dbs.svc, skeys, _UNLINKED, sort=True)
    txn.put_keys(dbs.svcrec, skeys, [_service_record(e, e.body) for e in envs], sort=True)
    by_business: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for e, skey in zip(envs, skeys, strict=True):
        if e.body.status_idx is not None:
            pos, held = by_business.setdefault(e.body.business_id, ([], []))
            pos.append(k.slidx_key(e.body.business_id, e.body.status_idx))
            held.append(skey)
    for business_id, (pos, held) in by_business.items():
        _give_positions(txn, dbs, business_id, pos, held)


@handles_runs(ev.ServiceIdLinked)
def _svc_linked_run(txn, dbs, envs: list[ev.Envelope]) -> None:
    # Links change neither a service ID's registration nor a MyKey ID's record, so every
    # event of the run reads what the first one would.
    bodies = [e.body for e in envs]
    skeys = [(b.business_id + b.service_id).encode("ascii") for b in bodies]
    raw_services = txn.get_many(dbs.svcrec, skeys)
    mk_keys = {b.mykey_id: b.mykey_id.encode("ascii") for b in bodies}
    raw_states = dict(zip(mk_keys, txn.get_many(dbs.mkstate, list(mk_keys.values())), strict=True))
    if None in raw_services or None in raw_states.values():
        for e, raw in zip(envs, raw_services, strict=True):
            if raw is None:
                raise _lacks(e, f"links service ID {e.body.business_id}/{e.body.service_id}")
            if raw_states[e.body.mykey_id] is None:
                raise _lacks(e, f"links to MyKey ID {e.body.mykey_id}")
    # Lists of bytes and ints, no tuples: a run holds millions of them, and the cyclic GC
    # would walk every tracked one again and again.
    states = [raw_states[b.mykey_id] for b in bodies]
    olds = list(map(k.decoder(k.ServiceRecord), raw_services))
    mks = [mk_keys[b.mykey_id] for b in bodies]
    u64, encode, status, ref_of = k.u64, k.encode, k.STATUS_VALUES, k.mykey_state_ref
    txn.put_keys(dbs.svc, skeys, [status[k.mykey_state_status(st)] for st in states], sort=True)
    txn.put_keys(dbs.svcrec, skeys, [encode(replace(o, ref=ref_of(st))) for o, st in zip(olds, states, strict=True)],
                 sort=True)
    links = [mk + skey for mk, skey in zip(mks, skeys, strict=True)]
    _linked_feed_run(txn, dbs, envs, mks, skeys, links, raw_states)
    txn.put_keys(dbs.mksvc, links, b"", sort=True)
    # The registration is about the MyKey ID too, as the link is.
    events = [mk + u64(o.reg_seq) for mk, o in zip(mks, olds, strict=True)]
    events += [mk + u64(e.seq) for mk, e in zip(mks, envs, strict=True)]
    txn.put_keys(dbs.mkevents, events, b"", sort=True)


def _linked_feed_run(txn, dbs, envs: list[ev.Envelope], mks: list[bytes], skeys: list[bytes], links: list[bytes],
                     raw_states: dict) -> None:
    """The link counts (mkmuni) and feed entries of a run of links, as _svc_linked and _scoped_feed
    would write them one event at a time (read before the run's own links are stored)."""
    # Links made before the run (mksvc's values are empty: present is "not None").
    known = {link for link, raw in zip(links, txn.get_many(dbs.mksvc, links), strict=True) if raw is not None}
    where: dict[bytes, str] = {}
    for bid in {skey[:5] for skey in skeys}:
        _municipality(txn, dbs, where, bid)
    municipalities = [where[skey[:5]] for skey in skeys]
    ckeys = [k.mkmuni_key(mk, m) if m else b"" for mk, m in zip(mks, municipalities, strict=True)]
    counted = dict.fromkeys(c for c in ckeys if c)
    counted = dict(zip(counted, [0 if raw is None else k.parse_u32(raw)
                                 for raw in txn.get_many(dbs.mkmuni, list(counted))], strict=True))
    keys, values = [], []
    encode, entry, entry_key, state_of = k.encode, k.FeedEntry, k.feed_entry_key, k.parse_mykey_state
    for e, municipality, ckey, link in zip(envs, municipalities, ckeys, links, strict=True):
        if not municipality:
            continue
        if link not in known:
            known.add(link)
            counted[ckey] += 1
        if counted[ckey] == 1:  # its first link there
            mykey_id = e.body.mykey_id
            keys.append(entry_key(municipality, e.seq))
            values.append(encode(entry(e.ts, "joined", mykey_id, state_of(raw_states[mykey_id])[0])))
    u32 = k.u32
    txn.put_keys(dbs.mkmuni, [c for c, n in counted.items() if n], [u32(n) for n in counted.values() if n], sort=True)
    if keys:
        txn.put_keys(dbs.mfeed, keys, values, sort=True)


@handles_runs(ev.MyKeyCreated)
def _created_run(txn, dbs, envs: list[ev.Envelope]) -> None:
    u64, encode = k.u64, k.encode
    mks = [e.body.mykey_id.encode("ascii") for e in envs]
    txn.put_keys(dbs.mykey, mks, [encode(_created_record(e, e.body)) for e in envs], sort=True)
    txn.put_keys(dbs.mkstate, mks, [k.mykey_state(MyKeyState.VALID, e.seq) for e in envs], sort=True)
    txn.put_keys(dbs.mkref, [u64(e.seq) for e in envs], mks, sort=True)
    # Of two keys that are equal, the later event's still wins: fingerprint and serial
    # keys never equal each other, and each kind stays in event order.
    certs = [k.cert_fp_key(e.body.cert_fingerprint) for e in envs]
    certs += [k.cert_serial_key(e.body.cert_issuer, e.body.cert_serial) for e in envs]
    txn.put_keys(dbs.cert, certs, mks + mks, sort=True)
    txn.put_keys(dbs.mkevents, [mk + u64(e.seq) for mk, e in zip(mks, envs, strict=True)], b"", sort=True)
    _record_paths(txn, dbs, envs, mks)


def _record_paths(txn: Any, dbs: Dbs, envs: list[ev.Envelope], mks: list[bytes]) -> None:
    """_record_path of every creation in the run. Each MyKey ID's keys in cas are its own, so the
    MyKey IDs created once in the run without a recorded path are written together, in key order;
    the others (a path to replace, an ID created twice) one event at a time, in event order."""
    olds = txn.get_many(dbs.cas, [k.path_key(e.body.mykey_id) for e in envs])
    seen: dict[bytes, int] = {}
    for mk in mks:
        seen[mk] = seen.get(mk, 0) + 1
    keys, values = [], []
    for e, mk, old in zip(envs, mks, olds, strict=True):
        path = e.body.path
        if old is not None or seen[mk] > 1:
            _record_path(txn, dbs, e.body.mykey_id, path)
        elif path:
            keys.append(k.path_key(e.body.mykey_id))
            values.append(k.encode(path))
            for c in path[1:]:
                keys += (k.ca_serial_prefix(c.issuer, c.serial) + mk, k.ca_fp_prefix(c.fingerprint) + mk)
                values += (b"", b"")
    if keys:
        txn.put_keys(dbs.cas, keys, values, sort=True)


@handles_runs(ev.MyKeySuspended, ev.MyKeyResumed, ev.MyKeyInvalidated)
def _state_run(txn, dbs, envs: list[ev.Envelope]) -> None:
    # Each of these events sets a MyKey ID's state, reason and CRL flag outright: the last
    # one about a MyKey ID decides its record and the answers of its linked service IDs.
    ids = list(dict.fromkeys(e.body.mykey_id for e in envs))
    raws = dict(zip(ids, txn.get_many(dbs.mykey, [m.encode("ascii") for m in ids]), strict=True))
    for e in envs:
        if raws[e.body.mykey_id] is None:
            raise _lacks(e, f"changes MyKey ID {e.body.mykey_id}")
    last = {e.body.mykey_id: _STATE_CHANGE[type(e.body)](e.body) for e in envs}
    decode_record, encode, u64 = k.decoder(k.MyKeyRecord), k.encode, k.u64
    mks = {m: m.encode("ascii") for m in ids}
    records = {m: replace(decode_record(raws[m]), state=st, reason=why, suspended_by_crl=crl)
               for m, (st, why, crl) in last.items()}
    txn.put_keys(dbs.mykey, [mks[m] for m in records], [encode(r) for r in records.values()], sort=True)
    txn.put_keys(dbs.mkstate, [mks[m] for m in records], [k.mykey_state(r.state, r.ref) for r in records.values()],
                 sort=True)
    txn.put_keys(dbs.mkevents, [mks[e.body.mykey_id] + u64(e.seq) for e in envs], b"", sort=True)
    # Denormalised answers: every linked service key (that is registered) answers the new state.
    # A service key linked to two MyKey IDs answers as the later event says: go through the
    # MyKey IDs in the order of their last events, so that of equal keys the later one wins.
    at = {e.body.mykey_id: i for i, e in enumerate(envs)}
    skeys, values = [], []
    cur = txn.cursor(dbs.mksvc)
    try:
        for m in sorted(ids, key=at.__getitem__):
            prefix = mks[m]
            value = k.STATUS_VALUES[last[m][0]]
            for key, _ in cur.iter_from(prefix, prefix):
                skeys.append(key[len(prefix):])
                values.append(value)
    finally:
        cur.close()
    registered = txn.get_many(dbs.svc, skeys)
    txn.put_keys(dbs.svc, [s for s, r in zip(skeys, registered, strict=True) if r is not None],
                 [v for v, r in zip(values, registered, strict=True) if r is not None], sort=True)
    # The feed: links do not change in this run, so each MyKey ID's municipalities are read once.
    cur = txn.cursor(dbs.mkmuni)
    try:
        links = {m: _municipalities(cur, mks[m]) for m in ids}
    finally:
        cur.close()
    keys, entries = [], []
    for e in envs:
        change = feed_change(e.body)
        entry = k.encode(k.FeedEntry(e.ts, change.change, e.body.mykey_id, change.state))
        for municipality in links[e.body.mykey_id]:
            keys.append(k.feed_entry_key(municipality, e.seq))
            entries.append(entry)
    if keys:
        txn.put_keys(dbs.mfeed, keys, entries, sort=True)


# --- status list positions (see mykey.domain.statuslist) ----------------------------------


def _give_positions(txn: Any, dbs: Dbs, business_id: str, positions: list[bytes], skeys: list[bytes]) -> None:
    """Record positions (slidx keys) as held by these service keys, and count them for the business."""
    txn.put_keys(dbs.slidx, positions, skeys, sort=True)
    ckey = k.slidx_count_key(business_id)
    old = txn.get(dbs.slidx, ckey)
    txn.put(dbs.slidx, ckey, k.u64((0 if old is None else k.parse_u64(old)) + len(positions)))


@handles(ev.ServiceStatusIdxAssigned)
def _svc_idx_assigned(txn, dbs, env, b: ev.ServiceStatusIdxAssigned) -> None:
    skeys = [k.service_key(b.business_id, sid) for sid in b.service_ids]
    olds = txn.get_many(dbs.svcrec, skeys)
    for skey, old, idx in zip(skeys, olds, b.idxs, strict=True):
        if old is None:
            raise _lacks(env, f"gives a status list position to service ID {skey[5:].decode('ascii')}")
        txn.put(dbs.svcrec, skey, k.encode(replace(k.decode(k.ServiceRecord, old), idx=idx)))
    _give_positions(txn, dbs, b.business_id, [k.slidx_key(b.business_id, i) for i in b.idxs], skeys)


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
