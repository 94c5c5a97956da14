"""The projection's run handlers (bulk registration, linking, MyKey creation) against the
one-event handlers, and the index layout they write: hot status bytes, records beside them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.domain.ids import MYKEY_ALPHABET
from mykey.domain.status import Status
from mykey.errors import ProjectionError
from mykey.index import keys as k
from mykey.index import projection
from mykey.index.keys import DB_NAMES
from mykey.index.store import Index, decode_envelopes

OP = ev.Actor("operator", "test")
BIDS = ["A0001", "A0002"]
MUNICIPALITIES = {"A0001": "131016", "A0002": "271004"}  # two municipalities: two feeds, two link counts
MKS = ["".join(random.Random(i).choices(MYKEY_ALPHABET, k=8)) for i in range(5)]
SIDS = [f"S{i}" for i in range(12)] + ["customer-000000000001", "x"]


def cert_ref(i: int) -> ev.CertRef:
    return ev.CertRef(f"CN=Root {i % 2}", format(100 + i, "x"), bytes([i]) * 20, bytes([i % 2]) * 20, bytes([i]) * 32)


def mykey_created(mk: str, i: int) -> ev.MyKeyCreated:
    # Every third without a recorded path (as before v3 of the event); the others leaf, CA(s), anchor.
    path = () if i % 3 == 0 else tuple(cert_ref(i + j) for j in range(2 + i % 2))
    return ev.MyKeyCreated(mk, f"CN=CA {i % 2}", format(i + 1, "x"), bytes([i % 7]) * 32, bytes(32), 1_900_000_000,
                           path=path)


BOGUS_MK, BOGUS_SID = "ZZZZZZZZ", "S404"  # records no event makes


def workload(rnd: random.Random) -> list[list[ev._Event]]:
    """Batches of events, mostly runs of one type, about records earlier events made; now and
    then one about BOGUS_MK or BOGUS_SID, which nothing makes (its batch is refused)."""
    events: list[ev._Event] = [ev.BusinessRegistered(b, "Biz", MUNICIPALITIES[b]) for b in BIDS]
    created: list[str] = []
    registered: list[tuple[str, str]] = []
    for _ in range(rnd.randint(1, 14)):
        kind = rnd.choice(["create", "register", "link", "link", "unlink", "suspend", "resume", "invalidate",
                           "renew", "mixed"])
        for _ in range(rnd.randint(1, 10)):
            kk = kind if kind != "mixed" else rnd.choice(["create", "register", "link", "unlink"])
            if kk in ("link", "unlink", "suspend", "resume", "invalidate", "renew") and not created:
                kk = "create"
            if kk in ("link", "unlink") and not registered:
                kk = "register"
            bogus = rnd.random() < 0.02
            mk = BOGUS_MK if bogus and kk != "unlink" else rnd.choice(created or MKS)
            b, s = (BIDS[0], BOGUS_SID) if bogus and kk == "link" and rnd.random() < 0.5 else \
                rnd.choice(registered or [(BIDS[0], SIDS[0])])
            if kk == "create":
                mk = rnd.choice(MKS)
                events.append(mykey_created(mk, rnd.randint(0, 20)))
                created.append(mk)
            elif kk == "register":
                b, s = rnd.choice(BIDS), rnd.choice(SIDS)
                idx = rnd.choice([None, rnd.randrange(1 << 20)])  # a status list position, or none (v1)
                events.append(ev.ServiceIdRegistered(b, s, rnd.choice([None, "C1", "C2"]), status_idx=idx))
                registered.append((b, s))
            elif kk == "link":
                events.append(ev.ServiceIdLinked(b, s, mk))
            elif kk == "unlink":
                events.append(ev.ServiceIdUnlinked(b, s, mk))
            elif kk == "suspend":
                events.append(ev.MyKeySuspended(mk, "lost"))
            elif kk == "resume":
                events.append(ev.MyKeyResumed(mk))
            elif kk == "invalidate":
                events.append(ev.MyKeyInvalidated(mk, "dead"))
            else:
                events.append(ev.CertificateRenewed(mk, bytes(32), "CN=CA 9", "ff", bytes([9]) * 32))
    cuts = sorted(rnd.sample(range(len(events) + 1), min(len(events) + 1, rnd.randint(0, 5))))
    batches, start = [], 0
    for c in [*cuts, len(events)]:
        if c > start:
            batches.append(events[start:c])
            start = c
    return batches


def is_bogus(body: ev._Event) -> bool:
    return getattr(body, "mykey_id", None) == BOGUS_MK or getattr(body, "service_id", None) == BOGUS_SID


def contents(idx: Index) -> dict[bytes, list[tuple[bytes, bytes]]]:
    with idx.env.begin() as txn:
        return {name: list(projection.scan(txn, getattr(idx.dbs, name.decode()))) for name in DB_NAMES}


def counted_links(idx: Index) -> dict[bytes, bytes]:
    """mkmuni as the links themselves say it: per MyKey ID and municipality, how many (u32 BE)."""
    counts: dict[bytes, int] = {}
    with idx.env.begin() as txn:
        for key, _ in projection.scan(txn, idx.dbs.mksvc):
            mk, bid = key[:8], key[8:13].decode()
            ckey = k.mkmuni_key(mk, MUNICIPALITIES[bid][:5])
            counts[ckey] = counts.get(ckey, 0) + 1
    return {c: k.u32(n) for c, n in sorted(counts.items())}


def apply(idx: Index, envs: list[ev.Envelope], runs: bool) -> str | None:
    """Apply one batch in one transaction; the refusal's message, if the projection refused it."""
    txn = idx.env.begin(write=True)
    try:
        projection.apply_envelopes(txn, idx.dbs, envs, runs=runs)
    except ProjectionError as exc:
        txn.abort()
        return str(exc)
    txn.commit()
    return None


def same_after_every_batch(base, binding, batches: list[list[ev._Event]]) -> int:
    """Apply the batches to two indexes, through the run handlers and event by event; every
    database (and every refusal, with the same words) is the same after every batch.
    Returns how many events of the applied batches have a run handler."""
    applied = 0
    with Index.open(DataDir(base / "runs"), binding=binding) as fast, \
            Index.open(DataDir(base / "events"), binding=binding) as slow:
        seq = 0
        for batch in batches:
            envs = [ev.Envelope(seq + i + 1, 0, OP, type(b).VERSION, b) for i, b in enumerate(batch)]
            refused = apply(fast, envs, runs=True)
            assert refused == apply(slow, envs, runs=False)
            assert contents(fast) == contents(slow)
            if refused is not None:  # apply the rest, as the generator assumed
                assert any(is_bogus(b) for b in batch), refused
                batch = [b for b in batch if not is_bogus(b)]
                envs = [ev.Envelope(seq + i + 1, 0, OP, type(b).VERSION, b) for i, b in enumerate(batch)]
                assert apply(fast, envs, runs=True) is None and apply(slow, envs, runs=False) is None
                assert contents(fast) == contents(slow)
            assert dict(contents(fast)[b"mkmuni"]) == counted_links(fast)
            seq += len(envs)
            applied += sum(type(b) in projection.RUN_HANDLERS for b in batch)
    return applied


@settings(max_examples=60)
@given(rnd=st.randoms(use_true_random=False))
def test_run_handlers_leave_what_the_event_handlers_leave(tmp_path_factory, binding, rnd):
    same_after_every_batch(tmp_path_factory.mktemp("runs"), binding, workload(rnd))


def test_run_handlers_on_seeded_workloads(tmp_path, binding):
    """The same on fixed seeds, checking that the workloads do reach the run handlers."""
    applied = sum(same_after_every_batch(tmp_path / str(seed), binding, workload(random.Random(seed)))
                  for seed in range(25))
    assert applied > 300


def test_layout_hot_status_byte_and_the_record_beside_it(tmp_path, binding):
    """svc holds one status byte per service key; svcrec the rest (registration, link, customer)."""
    events = [ev.BusinessRegistered("A0001", "Biz", "131016"), mykey_created(MKS[0], 1),
              ev.ServiceIdRegistered("A0001", "S1", "C9"), ev.ServiceIdRegistered("A0001", "S2"),
              ev.ServiceIdLinked("A0001", "S1", MKS[0]), ev.MyKeySuspended(MKS[0], "lost")]
    envs = [ev.Envelope(i + 1, 0, OP, type(b).VERSION, b) for i, b in enumerate(events)]
    with Index.open(DataDir(tmp_path), binding=binding) as idx:
        idx.apply(envs)
        with idx.env.begin() as txn:
            hot = dict(projection.scan(txn, idx.dbs.svc))
            assert hot == {b"A0001S1": bytes([Status.SUSPENDED]), b"A0001S2": bytes([Status.UNLINKED])}
            rec = k.decode(k.ServiceRecord, txn.get(idx.dbs.svcrec, b"A0001S1"))
            assert rec == k.ServiceRecord(reg_seq=3, ref=2, customer_id="C9")
            assert k.decode(k.ServiceRecord, txn.get(idx.dbs.svcrec, b"A0001S2")) == k.ServiceRecord(4)


def test_service_records_decode_with_fields_added_later():
    """A field added at the end (with a default) still reads records written before it."""
    import msgspec

    class Later(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True):
        reg_seq: int
        ref: int = 0
        customer_id: str | None = None
        idx: int | None = None
        added_later: int | None = None

    old = k.encode(k.ServiceRecord(7, 3))
    assert msgspec.msgpack.decode(old, type=Later) == Later(7, 3, None, None, None)
    assert k.decode(k.ServiceRecord, msgspec.msgpack.encode(Later(7, 3, "C", 12, 5))) == k.ServiceRecord(7, 3, "C", 12)


def test_decode_envelopes_is_decode_envelope_of_each(tmp_path):
    """One decode call for a batch; an older schema version still goes through its upcaster."""
    import msgspec

    bodies = [ev.ServiceIdRegistered("A0001", f"S{i}") for i in range(40)] + [mykey_created(MKS[1], 3)]
    payloads = [ev.encode_envelope(ev.Envelope(i + 1, 5, OP, type(b).VERSION, b)) for i, b in enumerate(bodies)]
    # A MyKeyCreated of schema version 1 (an int serial), as an older mykey wrote it.
    v1 = msgspec.msgpack.encode([42, 5, ["operator", "test"], 1, ["mk.created", MKS[2], "CN=CA", 255, bytes(32)]])
    for batch in (payloads, payloads[:1], [], [*payloads[:3], v1, *payloads[3:]], [v1]):
        assert decode_envelopes(batch) == [ev.decode_envelope(p) for p in batch]
    assert decode_envelopes([v1])[0].body.cert_serial == "ff"


@pytest.mark.parametrize("case", ["link-unknown-service", "link-unknown-mykey"])
def test_a_refused_run_names_its_first_event_and_changes_nothing(tmp_path, binding, case):
    events = [ev.BusinessRegistered("A0001", "Biz", "131016"), mykey_created(MKS[0], 1),
              ev.ServiceIdRegistered("A0001", "S1")]
    bad = ev.ServiceIdLinked("A0001", "S404", MKS[0]) if case == "link-unknown-service" else \
        ev.ServiceIdLinked("A0001", "S1", MKS[3])
    with Index.open(DataDir(tmp_path), binding=binding) as idx:
        idx.apply([ev.Envelope(i + 1, 0, OP, type(b).VERSION, b) for i, b in enumerate(events)])
        before = contents(idx)
        run = [ev.ServiceIdLinked("A0001", "S1", MKS[0]), bad, ev.ServiceIdLinked("A0001", "S1", MKS[0])]
        with pytest.raises(ProjectionError, match="event 5 .ServiceIdLinked.*mykey rebuild"):
            idx.apply([ev.Envelope(i + 4, 0, OP, 1, b) for i, b in enumerate(run)])
        assert contents(idx) == before and idx.last_seq == 3
