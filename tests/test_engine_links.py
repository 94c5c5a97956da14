"""A link needs the person: by their card's proof over a challenge naming the business and the
service ID, or by an operator's attributed decision after an in-person check. And identify:
a card answered with one business's service IDs, from the read side, without the writer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import msgspec
import pytest
from mykey.client import keys as terminal_keys
from mykey.domain import events as ev
from mykey.domain.status import Status
from mykey.engine import Engine
from mykey.errors import (
    AlreadyExistsError,
    CertificateError,
    CertificateRevokedError,
    ChallengeError,
    ChallengeSignatureError,
    InactiveError,
    InvalidMyKeyError,
    NotFoundError,
    SuspendedMyKeyError,
    UnknownCardError,
    ValidationError,
)

from .conftest import create_user, link_card
from .test_engine import appends_nothing, status


def linked_events(engine) -> list[ev.Envelope]:
    return [e for e in engine.log.read() if isinstance(e.body, ev.ServiceIdLinked)]


# --- by card -----------------------------------------------------------------------------------


def test_the_old_call_on_the_callers_word_is_gone():
    assert not hasattr(Engine, "link_service_id")


def test_a_card_link_goes_to_the_cards_own_mykey_id_and_records_its_authority(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk, cred = create_user(engine, pki)
    ch = engine.link_challenge(bid, "M-100")
    assert ch.startswith(f"mykey:link:{bid}:-:M-100:".encode())  # the card signs the business and service ID
    assert engine.link_with_card(bid, "M-100", pki.chain(cred), cred.sign(ch), ch) == Status.VALID
    assert status(engine, bid, "M-100") == Status.VALID and engine.mykey(mk).businesses == [bid]
    (link,) = linked_events(engine)
    assert link.actor == ev.Actor("user", mk)  # the person's own act...
    body = link.body
    assert (body.mykey_id, body.authority, body.reason) == (mk, "card", "")
    with engine.read_model.snapshot() as s:
        assert body.cert_fingerprint == s.mykey(mk).cert_fingerprint  # ...by the certificate that proved it
    assert body.relayed_by == f"operator:{engine.operator.id}"  # ...passed on by whoever ran the command
    registered = [e.body for e in engine.log.read() if isinstance(e.body, ev.ServiceIdRegistered)]
    assert [r.service_id for r in registered] == ["M-100"]  # first use: registered, then linked


def test_a_card_link_relayed_by_a_terminal_needs_its_challenge(engine, pki):
    bid = engine.register_business("Library", "131016")
    t1 = engine.enrol_terminal(bid, terminal_keys.public_pem(terminal_keys.generate()))
    t2 = engine.enrol_terminal(bid, terminal_keys.public_pem(terminal_keys.generate()))
    mk, cred = create_user(engine, pki)
    by_t1 = ev.Actor("terminal", t1)

    def attempt(ch, actor):
        return engine.link_with_card(bid, "S1", pki.chain(cred), cred.sign(ch), ch, actor=actor)

    for ch, actor in [
        (engine.link_challenge(bid, "S1", terminal_id=t1), ev.Actor("terminal", t2)),  # issued to another terminal
        (engine.link_challenge(bid, "S1"), by_t1),  # issued to no terminal
        (engine.link_challenge(bid, "S1", terminal_id=t1), None),  # a terminal's, relayed by the operator
    ]:
        with appends_nothing(engine), pytest.raises(ChallengeError, match="issued to"):
            attempt(ch, actor)
    engine.revoke_terminal(t2)
    with appends_nothing(engine), pytest.raises(InactiveError):
        attempt(engine.link_challenge(bid, "S1", terminal_id=t2), ev.Actor("terminal", t2))
    with appends_nothing(engine), pytest.raises(ValidationError):
        attempt(engine.link_challenge(bid, "S1"), ev.Actor("user", mk))  # a relay is a terminal or an operator
    assert attempt(engine.link_challenge(bid, "S1", terminal_id=t1), by_t1) == Status.VALID
    (link,) = linked_events(engine)
    assert link.actor == ev.Actor("user", mk) and link.body.relayed_by == f"terminal:{t1}"


def test_a_challenge_links_only_what_it_names(engine, pki):
    a = engine.register_business("Library", "131016")
    b = engine.register_business("Pool", "131016")
    _mk, cred = create_user(engine, pki)
    chain = pki.chain(cred)
    for ch, bid, sid in [
        (engine.link_challenge(a, "S1"), a, "S2"),  # another service ID
        (engine.link_challenge(a, "S1"), b, "S1"),  # another business
        (engine.identify_challenge(a), a, "S1"),  # another purpose
        (engine.new_challenge("create"), a, "S1"),
    ]:
        with appends_nothing(engine), pytest.raises(ChallengeError):
            engine.link_with_card(bid, sid, chain, cred.sign(ch), ch)
        with pytest.raises(ChallengeError, match="already used"):  # and it is used up
            engine.challenges.consume(ch, ch.decode().split(":")[1])
    ch = engine.link_challenge(a, "S1")
    engine.link_with_card(a, "S1", chain, cred.sign(ch), ch)
    with appends_nothing(engine), pytest.raises(ChallengeError, match="already used"):
        engine.link_with_card(a, "S1", chain, cred.sign(ch), ch)  # a replay


def test_only_the_card_that_signed_can_link_and_only_to_its_holder(engine, pki):
    bid = engine.register_business("Library", "131016")
    victim, victim_cred = create_user(engine, pki)
    thief, thief_cred = create_user(engine, pki)
    ch = engine.link_challenge(bid, "VICTIM-CARD")
    with appends_nothing(engine), pytest.raises(ChallengeSignatureError):  # the victim's certificate, another key
        engine.link_with_card(bid, "VICTIM-CARD", pki.chain(victim_cred), thief_cred.sign(ch), ch)
    link_card(engine, pki, thief_cred, bid, "VICTIM-CARD")  # the thief's own card links to the thief only
    assert [e.body.mykey_id for e in linked_events(engine)] == [thief]
    assert engine.mykey(victim).businesses == []


@pytest.mark.parametrize("how", ["revoked", "suspended", "invalidated", "no MyKey ID", "renewed away", "untrusted"])
def test_a_card_that_cannot_speak_for_its_holder_links_nothing(engine, pki, how):
    bid = engine.register_business("Library", "131016")
    mk, cred = create_user(engine, pki)
    error: type[Exception] = UnknownCardError
    if how == "revoked":
        engine.apply_crl(pki.inter.crl([(cred, "key_compromise")], number=1))
        error = CertificateRevokedError
    elif how == "suspended":
        engine.suspend(mk, "reported lost")
        error = SuspendedMyKeyError
    elif how == "invalidated":
        engine.invalidate(mk, "deceased")
    elif how == "no MyKey ID":
        cred = pki.user()
    elif how == "renewed away":
        new = pki.inter.renew(cred)
        ch = engine.new_challenge("renew")
        engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch, operator_approval="holder seen in person")
    else:
        cred = pki.other.issue_user()
        error = CertificateError
    with appends_nothing(engine), pytest.raises(error) as refused:
        link_card(engine, pki, cred, bid, "S1")
    assert mk not in str(refused.value)  # a refusal goes back to a terminal: it never names the MyKey ID
    if how == "renewed away":
        assert "renewal" in str(refused.value)


def test_a_service_id_linked_to_someone_else_is_refused_and_relinking_oneself_changes_nothing(engine, pki):
    bid = engine.register_business("Library", "131016")
    first, first_cred = create_user(engine, pki)
    _second, second_cred = create_user(engine, pki)
    link_card(engine, pki, first_cred, bid, "S1")
    with appends_nothing(engine), pytest.raises(AlreadyExistsError, match="already linked"):
        link_card(engine, pki, second_cred, bid, "S1")
    with appends_nothing(engine):
        assert link_card(engine, pki, first_cred, bid, "S1") == Status.VALID  # a terminal retrying after a timeout
    engine.suspend(first, "lost")
    with appends_nothing(engine), pytest.raises(SuspendedMyKeyError):
        link_card(engine, pki, first_cred, bid, "S1")


def test_an_inactive_business_links_nothing(engine, pki):
    bid = engine.register_business("Library", "131016")
    _mk, cred = create_user(engine, pki)
    ch = engine.link_challenge(bid, "S1")
    engine.deactivate_business(bid, "closed")
    with appends_nothing(engine), pytest.raises(InactiveError):
        engine.link_with_card(bid, "S1", pki.chain(cred), cred.sign(ch), ch)
    with appends_nothing(engine), pytest.raises(InactiveError):
        engine.link_challenge(bid, "S2")


# --- in person -------------------------------------------------------------------------------------


def test_an_in_person_link_is_the_operators_attributed_decision_with_a_reason(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk, _ = create_user(engine, pki)
    desk = ev.Actor("operator", "desk-7")
    for reason in ("", "   "):
        with appends_nothing(engine), pytest.raises(ValidationError, match="reason"):
            engine.link_in_person(bid, "S1", mk, reason, actor=desk)
    with appends_nothing(engine), pytest.raises(ValidationError, match="operator"):
        engine.link_in_person(bid, "S1", mk, "checked", actor=ev.Actor("terminal", f"{bid}-T0001"))
    engine.suspend(mk, "requested")  # an operator may link a suspended MyKey ID (a card may not)
    assert engine.link_in_person(bid, "S1", mk, "passport checked at the desk", actor=desk) == Status.SUSPENDED
    (link,) = linked_events(engine)
    assert link.actor == desk
    assert (link.body.authority, link.body.reason, link.body.cert_fingerprint, link.body.relayed_by) == (
        "in-person", "passport checked at the desk", b"", "")
    engine.invalidate(mk, "deceased")
    with appends_nothing(engine), pytest.raises(InvalidMyKeyError):
        engine.link_in_person(bid, "S2", mk, "checked", actor=desk)
    with appends_nothing(engine), pytest.raises(NotFoundError):
        engine.link_in_person(bid, "S2", "ABCDEFGH", "checked", actor=desk)


# --- the event ----------------------------------------------------------------------------------------

FP = b"\x01" * 32


@pytest.mark.parametrize(
    "body",
    [
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "card", relayed_by="operator:op"),  # no certificate
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "card", cert_fingerprint=FP),  # no relay
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "card", "why", FP, "operator:op"),
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "in-person"),  # no reason
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "in-person", "ok", FP),
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "card", "", FP, "user:ABCDEFGH"),
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "said so"),
        ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "unrecorded", "why"),
    ],
)
def test_a_link_event_must_say_consistently_what_authorised_it(body):
    with pytest.raises(ValidationError):
        ev.check_event(body)


def test_a_v1_link_record_reads_as_of_unrecorded_authority():
    for fields in (["A0001", "S1", "ABCDEFGH", False], ["A0001", "S1", "ABCDEFGH"]):
        raw = msgspec.msgpack.encode([7, 1_700_000_000_000_000, ["operator", "op"], 1, ["svc.linked", *fields]])
        env = ev.decode_envelope(raw)
        assert env.v == ev.ServiceIdLinked.VERSION == 2
        assert (env.body.mykey_id, env.body.authority, env.body.reason, env.body.relayed_by) == (
            "ABCDEFGH", "unrecorded", "", "")
    card = ev.ServiceIdLinked("A0001", "S1", "ABCDEFGH", False, "card", "", FP, "terminal:A0001-T0001")
    ev.check_event(card)
    env = ev.Envelope(8, 1, ev.Actor("user", "ABCDEFGH"), 2, card)
    assert ev.decode_envelope(ev.encode_envelope(env)) == env


# --- identify ------------------------------------------------------------------------------------------


def test_identify_answers_one_business_s_service_ids_and_never_the_mykey_id(engine, pki):
    a = engine.register_business("Library", "131016")
    b = engine.register_business("Pool", "131016")
    mk, cred = create_user(engine, pki)
    _other, other_cred = create_user(engine, pki)
    link_card(engine, pki, cred, a, "LIB-2")
    link_card(engine, pki, cred, a, "LIB-1")
    link_card(engine, pki, cred, b, "POOL-1")
    link_card(engine, pki, other_cred, a, "LIB-3")
    engine.register_service_ids(a, [("LIB-4", None)])

    def identify(bid, c=cred, terminal_id=None):
        ch = engine.identify_challenge(bid, terminal_id=terminal_id)
        return engine.card_reader().identify(bid, pki.chain(c), c.sign(ch), ch, terminal_id=terminal_id)

    found = identify(a)
    assert [(x.service_id, x.status) for x in found] == [("LIB-1", Status.VALID), ("LIB-2", Status.VALID)]
    assert mk not in repr(found)
    assert [x.service_id for x in identify(b)] == ["POOL-1"]  # B sees only B's
    c = engine.register_business("Museum", "131016")
    assert identify(c) == []  # a person with no link here: an empty answer
    t = engine.enrol_terminal(a, terminal_keys.public_pem(terminal_keys.generate()))
    assert [x.service_id for x in identify(a, terminal_id=t)] == ["LIB-1", "LIB-2"]
    with pytest.raises(UnknownCardError) as refused:
        identify(a, pki.user())
    assert "no MyKey ID" in str(refused.value)


@pytest.mark.parametrize("how", ["revoked", "suspended", "bad proof", "replayed", "link challenge", "other business"])
def test_identify_refusals_say_why_and_nothing_else(engine, pki, how):
    a = engine.register_business("Library", "131016")
    b = engine.register_business("Pool", "131016")
    mk, cred = create_user(engine, pki)
    link_card(engine, pki, cred, b, "POOL-1")
    ch = engine.identify_challenge(a)
    sig = cred.sign(ch)
    error: type[Exception] = ChallengeError
    if how == "revoked":
        engine.apply_crl(pki.inter.crl([(cred, "key_compromise")], number=1))
        error = CertificateRevokedError
    elif how == "suspended":
        engine.suspend(mk, "lost")
        error = SuspendedMyKeyError
    elif how == "bad proof":
        sig = pki.user().sign(ch)
        error = ChallengeSignatureError
    elif how == "replayed":
        engine.card_reader().identify(a, pki.chain(cred), sig, ch)
    elif how == "link challenge":
        ch = engine.link_challenge(a, "S1")
        sig = cred.sign(ch)
    else:
        ch = engine.identify_challenge(b)
        sig = cred.sign(ch)
    with pytest.raises(error) as refused:
        engine.card_reader().identify(a, pki.chain(cred), sig, ch)
    assert mk not in str(refused.value) and "POOL-1" not in str(refused.value) and b not in str(refused.value)


_WORKER = textwrap.dedent(
    """
    import json, sys
    from mykey.auth.challenges import open_challenge_store
    from mykey.engine.identify import CardReader
    from mykey.errors import MykeyError
    from mykey.index.readmodel import ReadModel
    data, bid, terminal, chain, sig, ch = sys.argv[1:]
    model = ReadModel.open_live(data)
    with model, open_challenge_store(data) as challenges:
        reader = CardReader(model, challenges)
        try:
            found = reader.identify(bid, bytes.fromhex(chain), bytes.fromhex(sig), bytes.fromhex(ch), terminal_id=terminal)
            print(json.dumps([[x.service_id, x.status.label] for x in found]))
        except MykeyError as exc:
            print(json.dumps({"refused": type(exc).__name__, "why": str(exc)}))
        link = challenges.issue("link", business_id=bid, service_id="FIRST-USE", terminal_id=terminal)
        print(link.hex())
    """
)


def test_identify_runs_in_a_gateway_worker_and_challenges_are_single_use_across_processes(tmp_path, pki):
    with Engine.open(tmp_path / "data") as engine:
        engine.add_trust_anchor(pki.root.cert_pem())
        engine.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = engine.register_business("Library", "131016")
        terminal = engine.enrol_terminal(bid, terminal_keys.public_pem(terminal_keys.generate()))
        mk, cred = create_user(engine, pki)
        link_card(engine, pki, cred, bid, "LIB-1")
        ch = engine.identify_challenge(bid, terminal_id=terminal)  # issued by the writer...

        def worker(challenge):
            args = [str(tmp_path / "data"), bid, terminal, pki.chain(cred).hex(), cred.sign(challenge).hex(), challenge.hex()]
            run = subprocess.run([sys.executable, "-c", _WORKER, *args], capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
            answer, link = run.stdout.splitlines()
            return json.loads(answer), bytes.fromhex(link)

        answer, link = worker(ch)  # ...consumed by a worker process, which reads the index without the writer
        assert answer == [["LIB-1", "valid"]]
        with pytest.raises(ChallengeError, match="already used"):
            engine.card_reader().identify(bid, pki.chain(cred), cred.sign(ch), ch, terminal_id=terminal)
        again, _ = worker(ch)
        assert again["refused"] == "ChallengeError"
        # A link challenge a worker issued is consumed by the writer, once.
        by = ev.Actor("terminal", terminal)
        assert engine.link_with_card(bid, "FIRST-USE", pki.chain(cred), cred.sign(link), link, actor=by) == Status.VALID
        with pytest.raises(ChallengeError, match="already used"):
            engine.link_with_card(bid, "FIRST-USE", pki.chain(cred), cred.sign(link), link, actor=by)
        assert engine.mykey(mk).businesses == [bid]


# --- the command line ------------------------------------------------------------------------------------


def test_cli_links_with_the_card_or_in_person_with_a_reason(tmp_path, capsys, pki):
    from mykey.cli import main

    data = tmp_path / "data"
    with Engine.open(data) as engine:
        engine.add_trust_anchor(pki.root.cert_pem())
        engine.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = engine.register_business("Library", "131016")
        mk, cred = create_user(engine, pki)
    cert, key = cred.write(tmp_path, "user")
    cert.write_bytes(pki.chain(cred))
    d = ["--data", str(data)]

    def run(*args):
        code = main([*args])
        out, err = capsys.readouterr()
        return code, out + err

    for bad in (
        [mk],  # the old form: a MyKey ID on the caller's word
        ["--mykey", mk],  # without --in-person
        ["--mykey", mk, "--in-person"],  # without a reason
        ["--in-person", "--reason", "checked"],  # without the MyKey ID
        ["--cert", str(cert)],  # the card needs its key
        ["--cert", str(cert), "--card-key", str(key), "--mykey", mk],  # the card names its MyKey ID itself
    ):
        code, _ = run("service", "link", *d, bid, "S1", *bad)
        assert code in (1, 2), bad
    code, out = run("service", "link", *d, bid, "S1", "--cert", str(cert), "--card-key", str(key))
    assert code == 0 and "the card's holder (valid)" in out and mk not in out
    code, out = run("--json", "service", "link", *d, bid, "S2", "--mykey", mk, "--in-person", "--reason",
                    "passport checked at the desk")
    assert code == 0 and json.loads(out)["authority"] == "in-person"
    with Engine.open(data) as engine:
        assert [(e.body.service_id, e.body.authority, e.actor.kind) for e in linked_events(engine)] == [
            ("S1", "card", "user"), ("S2", "in-person", "operator")]
