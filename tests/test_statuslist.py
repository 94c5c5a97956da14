"""Status lists: the format (against a decoder written from the draft's text), signing, positions, freshness."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from mykey.domain import events as ev
from mykey.domain import statuslist as sl
from mykey.domain.status import Status
from mykey.errors import (
    RecordDecodeError,
    StatusListExpiredError,
    StatusListFormatError,
    StatusListSignatureError,
)

# --- an independent decoder, written from the draft's text -----------------------------------
# "Compressed Byte Array": each byte holds 8/bits statuses; index i is in byte i // (8/bits)
# at bit offset (i % (8/bits)) * bits, least significant bits first; the array is DEFLATE in
# the ZLIB container; lst is base64url without padding. No code of the encoder is used here.


def draft_decode(lst: str, bits: int) -> list[int]:
    raw = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    per = 8 // bits
    out = []
    for byte in raw:
        for j in range(per):
            out.append((byte >> (j * bits)) & ((1 << bits) - 1))
    return out


def test_the_independent_decoder_reads_the_drafts_small_vectors():
    assert draft_decode("eNrbuRgAAhcBXQ", 1)[:16] == [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    assert draft_decode("eNo76fITAAPfAgc", 2)[:12] == [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]


VEC2 = dict(bits=2, set={0: 1, 1993: 2, 25460: 1, 159495: 3, 495669: 1, 554353: 1, 645645: 2, 723232: 1,
                         854545: 1, 934534: 2, 1000345: 3}, lst=(
    "eNrt2zENACEQAEEuoaBABP5VIO01fCjIHTMStt9ovGVIAAAAAABAbiEBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AEB5WwIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAID0ugQAAAAAAAAAAAAAAAAAQG12SgAAAAAAAAAAAAAAAAAAAAAAAAAAAOCSIQEAAAAAAAAAAAAAAAAA"
    "AAAAAAD8ExIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAwJEuAQAAAAAAAAAAAAAAAAAAAAAAAMB9SwIAAAAAAAAA"
    "AAAAAAAAAACoYUoAAAAAAAAAAAAAAEBqH81gAQw"))


def test_the_drafts_2bit_vector_decodes_with_both_decoders_and_our_encoding_matches_it():
    values = draft_decode(VEC2["lst"], 2)
    assert len(values) == 1 << 20
    assert {i: v for i, v in enumerate(values) if v} == VEC2["set"]
    raw = sl.decompress(sl.unb64u(VEC2["lst"]))
    assert hashlib.sha256(raw).hexdigest().startswith("89014d93753a4996")
    ours = sl.pack(1 << 20, VEC2["set"].items())
    assert bytes(ours) == raw
    assert all(sl.get(raw, i) == v for i, v in VEC2["set"].items())
    # level 9 reproduces the draft's own small 2-bit vector byte for byte
    assert sl.status_list_claim(sl.pack(12, enumerate([1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3])), 9) == \
        {"bits": 2, "lst": "eNo76fITAAPfAgc"}


@settings(max_examples=40)
@given(st.integers(1, 5000).flatmap(lambda n: st.lists(st.integers(0, 3), min_size=n, max_size=n)))
def test_random_lists_read_back_with_the_independent_decoder(values):
    array = sl.pack(len(values), enumerate(values))
    claim = sl.status_list_claim(array)
    assert claim["bits"] == 2 and "=" not in claim["lst"]
    assert draft_decode(claim["lst"], 2)[: len(values)] == values
    patched = bytearray(array)
    for i in range(0, len(values), 7):
        sl.put(patched, i, 3 - values[i])
    assert draft_decode(sl.status_list_claim(patched)["lst"], 2)[: len(values)] == [
        3 - v if i % 7 == 0 else v for i, v in enumerate(values)
    ]


def test_the_status_table_maps_each_answer_to_its_draft_value():
    assert sl.LIST_VALUE == {Status.VALID: 0, Status.INVALID: 1, Status.SUSPENDED: 2, Status.UNLINKED: 3}
    assert [sl.STATUS_OF_VALUE[sl.VALUE_OF_CODE[s]] for s in sl.LIST_VALUE] == list(sl.LIST_VALUE)


def test_capacity_pads_to_the_herd_minimum_and_keeps_half_free():
    assert sl.capacity(0) == sl.capacity(65_536) == 131_072
    assert sl.capacity(65_537) == 262_144
    for n in (1, 1000, 10**6, 3 * 10**6 + 1):
        c = sl.capacity(n)
        assert c & (c - 1) == 0 and c >= 2 * n


def test_a_zip_bomb_is_refused():
    bomb = zlib.compress(bytes(8 << 20), 9)
    with pytest.raises(StatusListFormatError, match="more than"):
        sl.decompress(bomb, max_bytes=1 << 20)
    with pytest.raises(StatusListFormatError):
        sl.decompress(bomb[:-10])


# --- the signed token -------------------------------------------------------------------------


def _key(kid="k1"):
    from joserfc.jwk import OKPKey

    return OKPKey.generate_key("Ed25519", parameters={"kid": kid})


def _jwks(key):
    from joserfc.jwk import KeySet

    return KeySet([key]).as_dict(private=False)


def _token(key, *, now, array=None, header=None, exp_in=3600):
    from joserfc import jwt

    array = array if array is not None else sl.pack(sl.MIN_ENTRIES, [(5, 2)])
    claims = sl.claims("A0001", array, iat=now, ttl=60, valid_for=exp_in)
    if header is None:
        return sl.sign(claims, key)
    return jwt.encode(header, claims, key, algorithms=["Ed25519"])


def test_a_signed_list_verifies_and_reads():
    key, now = _key(), int(time.time())
    v = sl.verify(_token(key, now=now), _jwks(key), now=now, sub=sl.list_uri("A0001"))
    assert v.status(5) == Status.SUSPENDED and v.status(6) == Status.VALID and v.entries == sl.MIN_ENTRIES
    with pytest.raises(StatusListFormatError, match="outside"):
        v.status(sl.MIN_ENTRIES)


def test_a_list_larger_than_the_jose_librarys_default_limit_verifies():
    key, now = _key(), int(time.time())
    rnd = __import__("random").Random(5)
    entries = 1 << 21
    array = sl.pack(entries, ((rnd.randrange(entries), rnd.randrange(1, 4)) for _ in range(entries // 5)))
    tok = _token(key, now=now, array=array)
    assert len(tok) > 300_000
    assert sl.verify(tok, _jwks(key), now=now).array == bytes(array)


def test_tampered_expired_wrong_key_wrong_typ_and_wrong_sub_lists_are_refused():
    key, now = _key(), int(time.time())
    tok = _token(key, now=now)
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["status_list"]["lst"] = sl.b64u(zlib.compress(bytes(sl.MIN_ENTRIES // 4)))  # "everyone valid"
    forged = h + "." + sl.b64u(json.dumps(claims).encode()) + "." + s
    with pytest.raises(StatusListSignatureError):
        sl.verify(forged, _jwks(key), now=now)
    with pytest.raises(StatusListExpiredError):
        sl.verify(tok, _jwks(key), now=now + 3600)
    with pytest.raises(StatusListSignatureError):
        sl.verify(tok, _jwks(_key("k1")), now=now)  # same kid, another key
    with pytest.raises(StatusListSignatureError):
        sl.verify(tok, _jwks(_key("k2")), now=now)
    with pytest.raises(StatusListFormatError, match="typ"):
        sl.verify(_token(key, now=now, header={"alg": "Ed25519", "typ": "JWT", "kid": "k1"}), _jwks(key), now=now)
    with pytest.raises(StatusListFormatError, match="expected"):
        sl.verify(tok, _jwks(key), now=now, sub=sl.list_uri("B0002"))


# --- events: positions in the registration, and the upcaster ----------------------------------


def test_a_v1_registration_decodes_with_no_position():
    v1 = msgspec.msgpack.encode([3, 1_000, ["operator", "op"], 1, ["svc.registered", "A0001", "S1", None, False]])
    env = ev.decode_envelope(v1)
    assert env.body == ev.ServiceIdRegistered("A0001", "S1") and env.body.status_idx is None
    assert env.v == 2  # upcast to today's version
    v2 = ev.encode_envelope(ev.Envelope(4, 1_000, ev.SYSTEM, 2, ev.ServiceIdRegistered("A0001", "S2", status_idx=7)))
    assert ev.decode_envelope(v2).body.status_idx == 7
    with pytest.raises(RecordDecodeError):
        ev.decode_envelope(msgspec.msgpack.encode([5, 1, ["system", "mykey"], 3, ["svc.registered", "A0001", "S"]]))


def test_an_assignment_event_is_checked():
    ev.check_event(ev.ServiceStatusIdxAssigned("A0001", ("S1", "S2"), (4, 9)))
    for bad in (ev.ServiceStatusIdxAssigned("A0001", ("S1", "S2"), (4, 4)),
                ev.ServiceStatusIdxAssigned("A0001", ("S1",), (4, 5)),
                ev.ServiceStatusIdxAssigned("A0001", ("S1",), (-1,)),
                ev.ServiceStatusIdxAssigned("A0001", ("123456789018",), (1,))):
        with pytest.raises(Exception):
            ev.check_event(bad)


# --- the engine: positions, assignment, lists -------------------------------------------------


def _positions(engine, bid, sids):
    with engine.read_model.snapshot() as s:
        return s.status_idxs(bid, sids)


def test_positions_are_unique_random_and_not_in_registration_order(engine):
    bid = engine.register_business("Library", "131016")
    sids = [f"S{i:05d}" for i in range(3000)]
    engine.register_service_ids(bid, [(s, None) for s in sids[:1000]])
    for i in range(1000, 3000, 500):
        engine.register_service_ids(bid, [(s, None) for s in sids[i : i + 500]])
    pos = _positions(engine, bid, sids)
    assert None not in pos and len(set(pos)) == len(pos)
    assert all(0 <= p < sl.capacity(3000) for p in pos)
    assert pos != sorted(pos)
    # Spread over the whole list, not packed at its start: each quarter holds about a quarter.
    quarters = [sum(1 for p in pos if q * sl.MIN_ENTRIES // 4 <= p < (q + 1) * sl.MIN_ENTRIES // 4) for q in range(4)]
    assert all(600 < q < 900 for q in quarters), quarters
    # Rank correlation between registration order and position is about zero.
    ranks = {p: r for r, p in enumerate(sorted(pos))}
    n = len(pos)
    d2 = sum((i - ranks[p]) ** 2 for i, p in enumerate(pos))
    assert abs(1 - 6 * d2 / (n * (n * n - 1))) < 0.1
    with engine.read_model.snapshot() as s:
        assert s.status_positions(bid) == 3000


def test_registrations_from_before_positions_are_assigned_once(tmp_path, binding):
    from mykey.engine import Engine
    from mykey.log.filelog import FileLog

    data = tmp_path / "data"
    with Engine.open(data, binding=binding) as e:
        bid = e.register_business("Library", "131016")
        e.register_service_ids(bid, [("NEW", None)])
    log = FileLog.open(data / "log")
    log.append([ev.ServiceIdRegistered(bid, f"OLD{i}") for i in range(30)])  # as v1 wrote them: no position
    log.close()
    with Engine.open(data, binding=binding) as e:
        assert _positions(e, bid, ["OLD0"]) == [None]
        assert e.assign_status_positions(chunk=7) == 30
        assert e.assign_status_positions() == 0
        pos = _positions(e, bid, ["NEW"] + [f"OLD{i}" for i in range(30)])
        assert None not in pos and len(set(pos)) == 31
        assigned = [env for env in e.log.read() if isinstance(env.body, ev.ServiceStatusIdxAssigned)]
        assert len(assigned) == 5 and all(env.actor.kind == "operator" for env in assigned)
    from mykey.index.store import rebuild

    with FileLog.open(data / "log") as log:
        rebuild(__import__("mykey.datadir", fromlist=["DataDir"]).DataDir(data), log, binding=binding)
    with Engine.open(data, binding=binding) as e:
        assert _positions(e, bid, ["NEW"] + [f"OLD{i}" for i in range(30)]) == pos  # the log decides


# --- a hypothesis state machine: every change shows in the next list --------------------------


class StatusListMachine(RuleBasedStateMachine):
    """Registrations, links, suspend/resume/invalidate and unlinks; after each step the next list
    (patched incrementally) says every status, and equals a list built from scratch."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        from mykey.engine import Engine
        from mykey.index.binding import binding_by_name

        from tests.conftest import Pki

        self.tmp = tempfile.TemporaryDirectory()
        self.engine = Engine.open(self.tmp.name + "/data", binding=binding_by_name("native"), audit=False)
        global _PKI
        if _PKI is None:
            _PKI = Pki()
        self.pki = _PKI
        self.engine.add_trust_anchor(self.pki.root.cert_pem())
        self.engine.add_trust_anchor(self.pki.inter.cert_pem(), intermediate=True)
        self.bids = [self.engine.register_business(n, "131016") for n in ("Lib", "Gym")]
        self.people: list[str] = []
        self.sids: dict[str, list[str]] = {b: [] for b in self.bids}
        self.n = 0
        from mykey.engine.statuslists import StatusListStore

        self.store = StatusListStore(self.engine.data, self.engine.read_model, self.engine.log, refresh=0)
        self.jwks = self.store.jwks()

    def teardown(self) -> None:
        self.engine.close()
        self.tmp.cleanup()

    @initialize()
    def first(self) -> None:
        self.register(0, 2)

    @rule(b=st.integers(0, 1), n=st.integers(1, 3))
    def register(self, b, n) -> None:
        bid = self.bids[b]
        new = [f"S{self.n + i}" for i in range(n)]
        self.n += n
        self.engine.register_service_ids(bid, [(s, None) for s in new])
        self.sids[bid] += new

    @rule()
    def person(self) -> None:
        cred = self.pki.user()
        ch = self.engine.new_challenge()
        self.people.append(self.engine.create_mykey(self.pki.chain(cred), cred.sign(ch), ch))

    @rule(data=st.data())
    def link(self, data) -> None:
        if not self.people:
            return
        bid = data.draw(st.sampled_from(self.bids))
        mk = data.draw(st.sampled_from(self.people))
        first_use = data.draw(st.booleans())
        if first_use:
            sid = f"F{self.n}"
            self.n += 1
            self.sids[bid].append(sid)
        else:
            if not self.sids[bid]:
                return
            sid = data.draw(st.sampled_from(self.sids[bid]))
            if self.engine.service_status(bid, sid)[0] != Status.UNLINKED:
                return
        if self.engine.mykey(mk).state.label == "invalid":
            if first_use:
                self.sids[bid].pop()
            return
        self.engine.link_in_person(bid, sid, mk, "checked the card in person")

    @rule(data=st.data())
    def unlink(self, data) -> None:
        bid = data.draw(st.sampled_from(self.bids))
        linked = [s for s in self.sids[bid] if self.engine.service_status(bid, s)[0] != Status.UNLINKED]
        if linked:
            self.engine.unlink_service_id(bid, data.draw(st.sampled_from(linked)))

    @rule(data=st.data(), what=st.sampled_from(["suspend", "resume", "invalidate"]))
    def change(self, data, what) -> None:
        if not self.people:
            return
        mk = data.draw(st.sampled_from(self.people))
        state = self.engine.mykey(mk).state.label
        if what == "suspend" and state == "valid":
            self.engine.suspend(mk, "lost")
        elif what == "resume" and state == "suspended":
            self.engine.resume(mk)
        elif what == "invalidate" and state != "invalid":
            self.engine.invalidate(mk, "dead")

    @invariant()
    def the_next_list_shows_every_status(self) -> None:
        from mykey.engine.statuslists import build_array

        for bid in self.bids:
            built = self.store.token(bid)
            v = sl.verify(built.token, self.jwks, now=time.time(), sub=sl.list_uri(bid))
            sids = self.sids[bid]
            pos = _positions(self.engine, bid, sids)
            for sid, p in zip(sids, pos, strict=True):
                assert v.status(p) == self.engine.service_status(bid, sid)[0], (bid, sid, p)
            with self.engine.read_model.snapshot() as snap:
                assert v.array == bytes(build_array(snap, bid))
            assert sum(1 for x in range(0, len(v.array)) if v.array[x]) <= len(sids)


_PKI = None
TestStatusListMachine = StatusListMachine.TestCase
TestStatusListMachine.settings = settings(max_examples=12, stateful_step_count=12, deadline=None)


def test_stale_lists_are_served_within_refresh_and_rebuilt_after(engine):
    from mykey.engine.statuslists import StatusListStore

    bid = engine.register_business("Library", "131016")
    engine.register_service_ids(bid, [("S1", None)])
    clock = [1_000_000.0]
    store = StatusListStore(engine.data, engine.read_model, engine.log, refresh=60, clock=lambda: clock[0])
    first = store.token(bid)
    assert store.token(bid).token == first.token  # nothing changed
    engine.register_service_ids(bid, [("S2", None)])
    clock[0] += 30
    assert store.token(bid).token == first.token  # within refresh: served as it is
    clock[0] += 31
    second = store.token(bid)
    assert second.token != first.token and second.seq == engine.log.last_seq
    # another process (a second store over the same files) serves the same bytes
    other = StatusListStore(engine.data, engine.read_model, engine.log, refresh=60, clock=lambda: clock[0])
    assert other.token(bid).token == second.token and other.token(bid).etag == second.etag



def test_a_current_list_is_built_as_of_the_index_now_whatever_its_age(engine):
    """`mykey status-list build` asks for current=True: a change made a second ago is in it."""
    from mykey.engine.statuslists import StatusListStore

    bid = engine.register_business("Library", "131016")
    engine.register_service_ids(bid, [("S1", None)])
    clock = [1_000_000.0]
    store = StatusListStore(engine.data, engine.read_model, engine.log, refresh=60, clock=lambda: clock[0])
    first = store.token(bid)
    engine.register_service_ids(bid, [("S2", None)])
    clock[0] += 1
    assert store.token(bid).token == first.token  # served: within refresh
    built = store.token(bid, current=True)
    assert built.token != first.token and built.seq == engine.log.last_seq


# --- the terminal's offline check (files only, no gateway) -------------------------------------


def test_the_first_fetch_pins_the_key_set_and_a_gateway_serving_another_key_is_refused(tmp_path):
    from mykey.client import statuslist as client

    key, rogue, now = _key(), _key(), int(time.time())
    path = tmp_path / "list.jwt"
    client.save(path, _token(key, now=now).encode(), _jwks(key), "A0001", {"S1": 1})
    pinned = (tmp_path / "list.jwt.jwks.json").read_bytes()
    forged = _token(rogue, now=now).encode()
    # a gateway that signs with another key and serves that key beside the list: refused, nothing written
    with pytest.raises(StatusListSignatureError):
        client.save(path, forged, _jwks(rogue), "A0001", {"S1": 1})
    # a list signed by the pinned key while the gateway serves another key set: refused too
    with pytest.raises(StatusListSignatureError, match="other than the one pinned"):
        client.save(path, _token(key, now=now).encode(), _jwks(rogue), "A0001", {})
    assert (tmp_path / "list.jwt.jwks.json").read_bytes() == pinned
    assert client.check(path, ["S1"], now=now)[1][0].status == "valid"
    # a key set obtained out of band (--jwks) decides from the first fetch on
    fresh = tmp_path / "fresh.jwt"
    with pytest.raises(StatusListSignatureError):
        client.save(fresh, forged, _jwks(rogue), "A0001", {}, pinned=_jwks(key))
    assert not fresh.exists()


def test_the_offline_check_refuses_expired_forged_and_inflating_lists(tmp_path):
    from mykey.client import statuslist as client
    from mykey.errors import ValidationError

    key, now = _key(), int(time.time())
    path = tmp_path / "list.jwt"
    array = sl.pack(sl.MIN_ENTRIES, [(9, 2), (10, 3)])
    client.save(path, _token(key, now=now, array=array).encode(), _jwks(key), "A0001", {"S9": 9, "S10": 10, "X": None})
    verified, answers = client.check(path, ["S9", "S10", "S11", "Z=9"], now=now)
    assert [(a.service_id, a.idx, a.status) for a in answers] == [
        ("S9", 9, "suspended"), ("S10", 10, "unlinked"), ("S11", None, "unknown"), ("Z", 9, "suspended")]
    with pytest.raises(StatusListExpiredError):
        client.check(path, ["S9"], now=now + 7200)
    other = tmp_path / "other.jwks.json"
    other.write_text(json.dumps(_jwks(_key())))
    with pytest.raises(StatusListSignatureError):
        client.check(path, ["S9"], jwks_path=other, now=now)
    with pytest.raises(ValidationError):
        client.check(path, ["S9=x"], now=now)
    # a list of another business than the terminal's map is refused (sub)
    client.save(tmp_path / "b.jwt", _token(key, now=now).encode(), _jwks(key), "B0002", {})
    with pytest.raises(StatusListFormatError, match="expected"):
        client.check(tmp_path / "b.jwt", ["S9"], now=now)
    # a correctly signed list that inflates to more than the bound (a zip bomb) is refused
    from joserfc import jwt

    claims = {"sub": sl.list_uri("A0001"), "iat": now, "exp": now + 60,
              "status_list": {"bits": 2, "lst": sl.b64u(zlib.compress(bytes(sl.MAX_LIST_BYTES + 1), 9))}}
    bomb = jwt.encode({"alg": "Ed25519", "typ": sl.TYP, "kid": "k1"}, claims, key, algorithms=["Ed25519"])
    path.write_text(bomb)
    with pytest.raises(StatusListFormatError, match="more than"):
        client.check(path, ["S9"], now=now)


def test_a_missing_list_file_is_named_with_the_way_to_get_one(tmp_path):
    from mykey.client import statuslist as client

    with pytest.raises(StatusListFormatError, match=r"cannot read the status list .*status-list fetch"):
        client.check(tmp_path / "none.jwt", ["S1"])
