"""Event model: round trips, schema evolution, decoder robustness, validation at the edge."""

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mykey.domain import events as ev
from mykey.errors import IndividualNumberError, RecordDecodeError, ValidationError

from .strategies import EVENT_STRATEGIES, actors, events


@pytest.mark.parametrize("etype", ev.EVENT_TYPES, ids=lambda t: t.__name__)
@given(data=st.data(), actor=actors, seq=st.integers(1, 2**62), ts=st.integers(0, 2**62))
def test_envelope_round_trip_every_type(etype, data, actor, seq, ts):
    body = data.draw(EVENT_STRATEGIES[etype])
    body.check()
    env = ev.Envelope(seq, ts, actor, body.VERSION, body)
    assert ev.decode_envelope(ev.encode_envelope(env)) == env


def test_strategies_cover_every_event_type():
    assert set(EVENT_STRATEGIES) == set(ev.EVENT_TYPES)


def test_tags_are_unique_and_stable():
    assert len(ev.TAGS) == len(ev.EVENT_TYPES)
    assert ev.TAGS["mk.created"] is ev.MyKeyCreated
    assert ev.TAGS["svc.registered"] is ev.ServiceIdRegistered


class MyKeyCreatedV1(msgspec.Struct, array_like=True, tag="mk.created"):
    """MyKeyCreated as schema v1 wrote it: the serial was an int."""

    mykey_id: str
    cert_issuer: str
    cert_serial: int
    cert_fingerprint: bytes


class EnvelopeV1(msgspec.Struct, array_like=True):
    seq: int
    ts: int
    actor: ev.Actor
    v: int
    body: MyKeyCreatedV1


def test_v1_record_decodes_into_todays_type():
    old = msgspec.msgpack.encode(
        EnvelopeV1(7, 1_700_000_000_000_000, ev.Actor("user", "ABCDEFGH"), 1,
                   MyKeyCreatedV1("ABCDEFGH", "CN=Root", 0xDEADBEEF, b"\x01" * 32))
    )
    env = ev.decode_envelope(old)
    assert env.v == ev.MyKeyCreated.VERSION == 3
    assert env.body == ev.MyKeyCreated("ABCDEFGH", "CN=Root", "deadbeef", b"\x01" * 32)
    assert env.body.subject_digest == b"" and env.body.cert_not_after == 0  # new fields get defaults


def test_newer_schema_than_known_is_refused():
    body = ev.MyKeyResumed("ABCDEFGH")
    raw = msgspec.msgpack.encode([1, 0, ["system", "x"], 99, ["mk.resumed", "ABCDEFGH"]])
    with pytest.raises(RecordDecodeError, match="schema version 99"):
        ev.decode_envelope(raw)
    assert body.VERSION == 1


def test_unknown_event_type_is_refused():
    raw = msgspec.msgpack.encode([1, 0, ["system", "x"], 1, ["no.such", "x"]])
    with pytest.raises(RecordDecodeError, match="unknown event type"):
        ev.decode_envelope(raw)


@given(st.binary(max_size=200))
def test_random_bytes_raise_our_error(data):
    try:
        env = ev.decode_envelope(data)
    except RecordDecodeError:
        return
    assert isinstance(env, ev.Envelope)  # astronomically unlikely, but then it is a real envelope


@given(events, st.integers(0, 60))
def test_truncated_records_raise_our_error(body, cut):
    raw = ev.encode_envelope(ev.Envelope(1, 0, ev.SYSTEM, body.VERSION, body))
    cut = min(cut, len(raw) - 1)
    with pytest.raises(RecordDecodeError):
        ev.decode_envelope(raw[:cut])


@pytest.mark.parametrize(
    "event, error",
    [
        (ev.ServiceIdRegistered("A0001", "123456789018"), IndividualNumberError),
        (ev.ServiceIdRegistered("A0001", "ok", "123456789018"), IndividualNumberError),
        (ev.ServiceIdLinked("A0001", "123456789018", "ABCDEFGH"), IndividualNumberError),
        (ev.ServiceIdRegistered("a0001", "x"), ValidationError),
        (ev.ServiceIdRegistered("A0001", "x" * 33), ValidationError),
        (ev.ServiceIdRegistered("A0001", "has space"), ValidationError),
        (ev.MyKeySuspended("ABCDEFGH", "r" * 257), ValidationError),
        (ev.MyKeyCreated("ABCDEFG0", "CN=x", "01", b"\0" * 32), ValidationError),
        (ev.MyKeyCreated("ABCDEFGH", "CN=x", "XYZ", b"\0" * 32), ValidationError),
        (ev.MyKeyCreated("ABCDEFGH", "CN=x", "01", b"\0" * 31), ValidationError),
        (ev.TerminalEnrolled("A0001-T0001", "B0001", b"\0" * 32), ValidationError),
        (ev.TerminalEnrolled("A0001-T0001", "A0001", b"\0" * 31), ValidationError),
        (ev.BusinessRegistered("A0001", "", "131016"), ValidationError),
        (ev.BusinessRegistered("A0001", "Library", "13"), ValidationError),
        # Wrong Python types would write a record that never decodes again.
        (ev.BusinessRegistered("A0001", "Library", "131016", 1), ValidationError),
        (ev.FeedAcked("points", True), ValidationError),
        (ev.TrustAnchorAdded(b"\0" * 32, b"der", "yes"), ValidationError),
        (ev.ServiceIdRegistered("A0001", "S1", 42), ValidationError),
        (ev.MyKeyCreated("ABCDEFGH", "CN=x", "01", bytearray(32)), ValidationError),
    ],
)
def test_bad_events_are_refused(event, error):
    with pytest.raises(error):
        ev.check_event(event)


def test_declared_numeric_service_ids_pass():
    ev.check_event(ev.ServiceIdRegistered("A0001", "123456789018", None, numeric_declared=True))


def test_actor_must_not_be_an_individual_number():
    with pytest.raises(IndividualNumberError):
        ev.Actor("user", "123456789018").check()
    with pytest.raises(ValidationError):
        ev.Actor("robot", "x").check()
