"""Every flow of the Engine, with its refusals (each refusal appends nothing)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from mykey.auth.terminals import terminal_auth_message
from mykey.client import keys as terminal_keys
from mykey.domain import certs
from mykey.domain import events as ev
from mykey.domain.status import MyKeyState, Status
from mykey.engine import Engine
from mykey.errors import (
    AlreadyExistsError,
    ChallengeError,
    CommandRefused,
    IllegalTransitionError,
    InactiveError,
    IndividualNumberError,
    MykeyError,
    NotFoundError,
    StaleCrlError,
    TerminalAuthError,
    ValidationError,
)
from mykey_dev.demo import design_example

from .conftest import create_user, engine_authenticator, engine_resolver, link_card

# An operator's approval: what a renewal needs while the current certificate is still usable.
APPROVED = {"operator_approval": "card re-issued, holder seen at the counter"}


class appends_nothing:
    """Context manager asserting the log did not grow inside it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self):
        self.before = self.engine.log.last_seq

    def __exit__(self, *exc):
        assert self.engine.log.last_seq == self.before
        assert self.engine.index.last_seq == self.before


def status(engine, bid, sid) -> Status:
    with engine_resolver(engine) as r:
        return r.resolve(bid, sid)


# --- the design's example table ------------------------------------------------------


def test_design_example_table_comes_out_exactly(engine, pki):
    rows = design_example(engine, pki.inter)
    assert [(state, bid, sid, cust) for _mk, state, bid, sid, cust in rows] == [
        ("valid", "A0001", "123456", ""),
        ("invalid", "B2108", "578901", ""),
        ("suspended", "A0001", "111111", ""),
        ("", "B2108", "589000", ""),
    ]
    with engine_resolver(engine) as r:
        assert r.resolve_statuses("A0001", ["123456", "111111"]) == [Status.VALID, Status.SUSPENDED]
        assert r.resolve_statuses("B2108", ["578901", "589000"]) == [Status.INVALID, Status.UNLINKED]
        # A business never sees another business's service IDs.
        assert r.resolve_statuses("A0001", ["578901", "589000"]) == [Status.UNKNOWN, Status.UNKNOWN]
    assert len({mk for mk, *_ in rows[:3]}) == 3


# --- 1. MyKey ID creation -------------------------------------------------------------


def test_create_with_ec_and_rsa_certificates(engine, pki):
    mk1, cred1 = create_user(engine, pki)
    mk2, _ = create_user(engine, pki, pki.rsa_user())
    # The holder's name (the certificate subject) is stored nowhere in the log.
    name = cred1.cert.subject.rfc4514_string().split("=", 1)[1].encode()
    assert not any(name in raw for _, raw in engine.log.read_raw())
    assert engine.mykey(mk1).state == MyKeyState.VALID and engine.mykey(mk2).state == MyKeyState.VALID
    envs = list(engine.log.read())
    created = [e for e in envs if isinstance(e.body, ev.MyKeyCreated)]
    assert [e.actor for e in created] == [ev.Actor("user", mk1), ev.Actor("user", mk2)]
    # No name is stored: only digests, issuer and serial.
    assert all("CN=" not in e.body.mykey_id for e in created)


def test_requested_id_and_uniqueness(engine, pki):
    mk, _ = create_user(engine, pki, requested_id="ABCDEFGH")
    assert mk == "ABCDEFGH"
    with appends_nothing(engine), pytest.raises(AlreadyExistsError, match="taken"):
        create_user(engine, pki, requested_id="ABCDEFGH")
    with appends_nothing(engine), pytest.raises(ValidationError):
        create_user(engine, pki, requested_id="ABCDEFG1")
    free = engine.suggest_mykey_ids(5)
    assert len(set(free)) == 5 and "ABCDEFGH" not in free


def test_one_certificate_one_live_mykey(engine, pki):
    cred = pki.user()
    mk, _ = create_user(engine, pki, cred)
    with appends_nothing(engine), pytest.raises(AlreadyExistsError, match="already has a live"):
        create_user(engine, pki, cred)
    engine.invalidate(mk, "card replaced")
    mk2, _ = create_user(engine, pki, cred)  # an invalid one is not live
    assert mk2 != mk


def test_challenge_is_single_use_and_expires(engine, pki):
    cred = pki.user()
    ch = engine.new_challenge()
    engine.create_mykey(pki.chain(cred), cred.sign(ch), ch)
    other = pki.user()
    with appends_nothing(engine), pytest.raises(ChallengeError, match="already used"):
        engine.create_mykey(pki.chain(other), other.sign(ch), ch)
    now = [1_000_000.0]
    engine.clock = lambda: now[0]
    ch = engine.new_challenge()
    now[0] += 301
    with appends_nothing(engine), pytest.raises(ChallengeError, match="expired"):
        engine.create_mykey(pki.chain(other), other.sign(ch), ch)
    with pytest.raises(ChallengeError):
        engine.create_mykey(pki.chain(other), other.sign(b"made up"), b"made up")


def test_bad_signature_wrong_challenge(engine, pki):
    cred = pki.user()
    ch = engine.new_challenge()
    with appends_nothing(engine), pytest.raises(certs.ChallengeSignatureError):
        engine.create_mykey(pki.chain(cred), cred.sign(b"another challenge"), ch)
    ch = engine.new_challenge()
    impostor = pki.user()
    with appends_nothing(engine), pytest.raises(certs.ChallengeSignatureError):
        engine.create_mykey(pki.chain(cred), impostor.sign(ch), ch)


def test_certificate_problems_are_refused(engine, pki):
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    cases = [
        (pki.other.issue_user(), certs.UntrustedCertificateError, False),  # wrong issuer
        (pki.inter.issue_user(not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)),
         certs.CertificateExpiredError, True),
        (pki.inter.issue_user(not_before=now + timedelta(days=1), not_after=now + timedelta(days=10)),
         certs.CertificateNotYetValidError, True),
        (pki.inter.issue_user(key_usage_digital_signature=False), certs.KeyUsageError, True),
    ]
    for cred, error, with_chain in cases:
        ch = engine.new_challenge()
        pem = pki.chain(cred) if with_chain else cred.cert_pem()
        with appends_nothing(engine), pytest.raises(error):
            engine.create_mykey(pem, cred.sign(ch), ch)


def test_revoked_certificate_cannot_create(engine, pki):
    cred = pki.user()
    engine.apply_crl(pki.inter.crl([(cred, "key_compromise")], number=1))
    with pytest.raises(certs.CertificateRevokedError):
        create_user(engine, pki, cred)


def test_no_trust_anchor(tmp_path, binding, pki):
    with Engine.open(tmp_path / "d", binding=binding) as e, appends_nothing(e):
        with pytest.raises(CommandRefused, match="trust anchor"):
            create_user(e, pki)


# --- 2. businesses and terminals -----------------------------------------------------------


def test_business_ids_are_issued_in_order(engine):
    assert [engine.register_business(f"B{i}", "131016") for i in range(3)] == ["A0001", "A0002", "A0003"]
    assert engine.register_business("x", "131016", business_id="A9999") == "A9999"
    assert engine.register_business("y", "131016") == "B0001"
    with appends_nothing(engine), pytest.raises(AlreadyExistsError):
        engine.register_business("z", "131016", business_id="A0002")
    with appends_nothing(engine), pytest.raises(ValidationError):
        engine.register_business("", "131016")
    with appends_nothing(engine), pytest.raises(IndividualNumberError):
        engine.register_business("Shop 123456789018", "131016")


def test_terminals_enrol_authenticate_revoke(engine):
    resolver = engine_resolver(engine)
    auth = engine_authenticator(engine, resolver)
    bid = engine.register_business("Library", "131016")
    key, key2 = terminal_keys.generate(), terminal_keys.generate()  # made on the terminals
    t1 = engine.enrol_terminal(bid, terminal_keys.public_pem(key))
    t2 = engine.enrol_terminal(bid, terminal_keys.public_pem(key2), can_register=True)
    assert (t1, t2) == (f"{bid}-T0001", f"{bid}-T0002")
    with engine.read_model.snapshot() as state:
        assert [state.terminal(t).can_register for t in (t1, t2)] == [False, True]

    def msg(tid=t1, ts=None):
        return terminal_auth_message(tid, int(time.time()) if ts is None else ts, os.urandom(16))

    m = msg()
    assert auth.authenticate(t1, m, key.sign(m)) == bid
    with pytest.raises(TerminalAuthError, match="already used"):
        auth.authenticate(t1, m, key.sign(m))  # a replay
    m = msg()
    with pytest.raises(TerminalAuthError, match="failed"):
        auth.authenticate(t1, m, key.sign(m + b"x"))
    m = msg(t2)
    with pytest.raises(TerminalAuthError, match="failed"):
        auth.authenticate(t2, m, key.sign(m))  # t1's key is not t2's
    m = msg()
    with pytest.raises(TerminalAuthError, match="not a mykey terminal authentication message"):
        auth.authenticate(t2, m, key2.sign(m))  # signed for another terminal
    m = msg(ts=int(time.time()) - 3600)
    with pytest.raises(TerminalAuthError, match="time window") as stale:
        auth.authenticate(t1, m, key.sign(m))
    assert "3600" not in str(stale.value) and "old" not in str(stale.value)  # our clock is not told
    with pytest.raises(TerminalAuthError):
        auth.authenticate(t1, b"lookup request 42", key.sign(b"lookup request 42"))
    engine.revoke_terminal(t1)
    m = msg()
    with pytest.raises(TerminalAuthError, match="revoked"):
        auth.authenticate(t1, m, key.sign(m))
    with appends_nothing(engine), pytest.raises(InactiveError):
        engine.revoke_terminal(t1)
    m = msg(f"{bid}-T0099")
    with pytest.raises(TerminalAuthError, match="failed"):  # unknown: no hint to an unauthenticated caller
        auth.authenticate(f"{bid}-T0099", m, key.sign(m))
    engine.deactivate_business(bid, "closed")
    m = msg(t2)
    with pytest.raises(TerminalAuthError, match="deactivated"):
        auth.authenticate(t2, m, key2.sign(m))
    with appends_nothing(engine), pytest.raises(InactiveError):
        engine.enrol_terminal(bid, terminal_keys.public_pem(key))
    with appends_nothing(engine), pytest.raises(NotFoundError):
        engine.enrol_terminal("Z9999", terminal_keys.public_pem(key))
    auth.close()
    resolver.close()


# --- 3. service IDs ----------------------------------------------------------------------


def test_register_link_unlink(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk, cred = create_user(engine, pki)
    assert engine.register_service_ids(bid, [("S1", None), ("S2", "C2")]) == 2
    assert status(engine, bid, "S1") == Status.UNLINKED
    assert link_card(engine, pki, cred, bid, "S1") == Status.VALID
    assert status(engine, bid, "S1") == Status.VALID
    with appends_nothing(engine), pytest.raises(AlreadyExistsError, match="already linked"):
        engine.link_in_person(bid, "S1", mk, "checked the card at the desk")
    link_card(engine, pki, cred, bid, "NEW-AT-FIRST-USE")  # registered by the user at first use
    assert status(engine, bid, "NEW-AT-FIRST-USE") == Status.VALID
    assert engine.mykey(mk).businesses == [bid]
    engine.unlink_service_id(bid, "S1")
    assert status(engine, bid, "S1") == Status.UNLINKED
    assert engine.service_status(bid, "S2") == (Status.UNLINKED, "C2")
    with appends_nothing(engine), pytest.raises(CommandRefused, match="not linked"):
        engine.unlink_service_id(bid, "S1")
    with appends_nothing(engine), pytest.raises(NotFoundError):
        engine.unlink_service_id(bid, "nope")
    with appends_nothing(engine), pytest.raises(NotFoundError):
        engine.link_in_person(bid, "S2", "ABCDEFGH", "checked the card at the desk")


def test_registration_is_all_or_nothing(engine):
    bid = engine.register_business("Library", "131016")
    engine.register_service_ids(bid, [("S1", None)])
    for rows, error in [
        ([("S2", None), ("S1", None)], AlreadyExistsError),
        ([("S2", None), ("S2", None)], AlreadyExistsError),
        ([("S2", None), ("bad id", None)], ValidationError),
        ([("S2", None), ("123456789018", None)], IndividualNumberError),
        ([("S2", "123456789018")], IndividualNumberError),
        ([("S2", "x" * 33)], ValidationError),
    ]:
        with appends_nothing(engine), pytest.raises(error):
            engine.register_service_ids(bid, rows)
    assert status(engine, bid, "S2") == Status.UNKNOWN


def test_numeric_service_ids_need_a_declaration(engine, pki):
    plain = engine.register_business("Shop", "131016")
    numeric = engine.register_business("Card shop", "131016", numeric_service_ids=True)
    with appends_nothing(engine), pytest.raises(IndividualNumberError):
        engine.register_service_ids(plain, [("123456789018", None)])
    engine.register_service_ids(numeric, [("123456789018", None)])
    _mk, cred = create_user(engine, pki)
    link_card(engine, pki, cred, numeric, "123456789018")
    assert status(engine, numeric, "123456789018") == Status.VALID
    reg = [e for e in engine.log.read() if isinstance(e.body, ev.BusinessRegistered)]
    assert [e.body.numeric_service_ids for e in reg] == [False, True]
    assert all(e.actor.kind == "operator" for e in reg)  # the declaration is attributable


def test_csv_import(engine, tmp_path):
    bid = engine.register_business("Library", "131016")
    good = tmp_path / "good.csv"
    good.write_text("service_id,customer_id\nA1,C1\nA2,\n\nA3,C3\n")
    assert engine.import_service_ids_csv(bid, good) == 3
    assert engine.service_status(bid, "A1") == (Status.UNLINKED, "C1")
    for text, where in [
        ("service_id,customer_id\nB1,\nbad id,\n", "line 3"),
        ("service_id,customer_id\nB1,\nB2,123456789018\n", "line 3"),
        ("service_id,customer_id\nB1,\nA1,\n", "line 3"),  # already registered
        ("service_id,customer_id\nB1,\nB1,\n", "line 3"),
        ("service_id,customer_id\nB1,\nB2,x,y\n", "line 3"),
        ("sid,cid\nB1,\n", "line 1"),
        ("", "empty"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with appends_nothing(engine), pytest.raises(MykeyError, match=where):
            engine.import_service_ids_csv(bid, bad)
    assert status(engine, bid, "B1") == Status.UNKNOWN
    (tmp_path / "latin.csv").write_bytes("service_id,customer_id\nB\xe9,\n".encode("latin-1"))
    with appends_nothing(engine), pytest.raises(ValidationError, match="ASCII"):
        engine.import_service_ids_csv(bid, tmp_path / "latin.csv")


def test_big_import_is_one_batch(engine, tmp_path):
    bid = engine.register_business("Library", "131016")
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write("service_id,customer_id\n")
        for i in range(20_000):
            f.write(f"S{i:08d},\n")
    before = engine.log.last_seq
    assert engine.import_service_ids_csv(bid, path) == 20_000
    batches = [(first, len(p)) for first, p in engine.log.read_batches(before + 1)]
    assert batches == [(before + 1, 20_000)]


# --- 4. suspension and invalidation -----------------------------------------------------


def test_transitions_and_denormalised_answers(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk, _ = create_user(engine, pki)
    for i in range(50):
        engine.link_in_person(bid, f"S{i}", mk, "bulk migration, checked in person")
    r = engine_resolver(engine)
    sids = [f"S{i}" for i in range(50)]
    assert set(r.resolve_many(bid, sids)) == {Status.VALID}
    engine.suspend(mk, "lost card")
    assert set(r.resolve_many(bid, sids)) == {Status.SUSPENDED}
    with appends_nothing(engine), pytest.raises(IllegalTransitionError):
        engine.suspend(mk, "again")
    engine.resume(mk)
    assert set(r.resolve_many(bid, sids)) == {Status.VALID}
    with appends_nothing(engine), pytest.raises(IllegalTransitionError):
        engine.resume(mk)
    engine.invalidate(mk, "deceased")
    assert set(r.resolve_many(bid, sids)) == {Status.INVALID}
    for action in (lambda: engine.resume(mk), lambda: engine.suspend(mk, "x"), lambda: engine.invalidate(mk, "x")):
        with appends_nothing(engine), pytest.raises(IllegalTransitionError, match="final"):
            action()
    with appends_nothing(engine), pytest.raises(CommandRefused, match="invalid"):
        engine.link_in_person(bid, "S-new", mk, "checked in person")
    with appends_nothing(engine), pytest.raises(NotFoundError):
        engine.suspend("ABCDEFGH", "x")
    r.close()


# --- 5. renewal -----------------------------------------------------------------------------


def test_renewal_keeps_the_mykey_id(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk, old = create_user(engine, pki)
    link_card(engine, pki, old, bid, "S1")
    new = pki.inter.renew(old)
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch, **APPROVED)
    view = engine.mykey(mk)
    assert view.cert_serial == format(new.serial, "x") and view.state == MyKeyState.VALID
    # The old certificate no longer resolves to the MyKey ID as its current certificate.
    with engine.index.env.begin() as txn:
        from mykey.index import keys

        assert txn.get(engine.index.dbs.cert, keys.cert_serial_key(view.cert_issuer, format(old.serial, "x"))) is None
    assert status(engine, bid, "S1") == Status.VALID
    # A renewal must keep the holder: another person's certificate is refused.
    stranger = pki.user()
    ch = engine.new_challenge("renew")
    with appends_nothing(engine), pytest.raises(CommandRefused, match="subject"):
        engine.renew_certificate(mk, pki.chain(stranger), stranger.sign(ch), ch)
    ch = engine.new_challenge("renew")
    with appends_nothing(engine), pytest.raises(CommandRefused, match="current certificate"):
        engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch)


def test_renewal_lifts_a_revocation_suspension(engine, pki):
    mk, old = create_user(engine, pki)
    report = engine.apply_crl(pki.inter.crl([(old, "key_compromise")], number=10))
    assert report.suspended == [mk] and engine.mykey(mk).state == MyKeyState.SUSPENDED
    new = pki.inter.renew(old)
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch)
    assert engine.mykey(mk).state == MyKeyState.VALID


# --- 6. CRLs --------------------------------------------------------------------------------


def test_crl_suspends_and_is_idempotent(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk1, c1 = create_user(engine, pki)
    mk2, c2 = create_user(engine, pki)
    mk3, c3 = create_user(engine, pki)
    link_card(engine, pki, c1, bid, "S1")
    new3 = pki.inter.renew(c3)
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk3, pki.chain(new3), new3.sign(ch), ch, **APPROVED)
    crl = pki.inter.crl([(c1, "key_compromise"), (c3, "superseded"), (pki.user(), "unspecified")], number=20)
    report = engine.apply_crl(crl)
    assert report.suspended == [mk1] and report.newly_revoked == 3 and not report.already_applied
    assert status(engine, bid, "S1") == Status.SUSPENDED
    assert engine.mykey(mk1).reason.startswith("certificate revoked (key_compromise)")
    assert engine.mykey(mk3).state == MyKeyState.VALID  # superseded after a renewal changes nothing
    assert engine.mykey(mk2).state == MyKeyState.VALID
    with appends_nothing(engine):
        again = engine.apply_crl(crl)
    assert again.already_applied and again.suspended == []
    # A newer CRL repeating old entries adds only what is new; an older one is refused.
    report = engine.apply_crl(pki.inter.crl([(c1, "key_compromise"), (c2, "key_compromise")], number=21))
    assert report.newly_revoked == 1 and report.suspended == [mk2]
    with appends_nothing(engine), pytest.raises(StaleCrlError):
        engine.apply_crl(pki.inter.crl([], number=19))
    with appends_nothing(engine), pytest.raises(certs.CrlError):
        engine.apply_crl(pki.other.crl([], number=1))
    with appends_nothing(engine), pytest.raises(certs.CrlError):
        engine.apply_crl(b"garbage")


# --- 7. feed ----------------------------------------------------------------------------------


def test_feed_and_ack_survive_restart(tmp_path, binding, pki):
    data = tmp_path / "data"
    with Engine.open(data, binding=binding) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        e.register_consumer("points", "131016")
        e.register_consumer("other", "131016")
        bid = e.register_business("Library", "131016")
        mk, cred = create_user(e, pki)
        link_card(e, pki, cred, bid, "S1")  # the first link in the consumers' municipality
        e.suspend(mk, "x")
        items = e.feed("points")
        me = e.feed_pseudonym("points", mk)
        assert [(i.change, i.pseudonym, i.state) for i in items] == [("joined", me, "valid"), ("suspended", me, "suspended")]
        e.ack("points", items[0].seq)
        with pytest.raises(CommandRefused):
            e.ack("points", 0)
        with pytest.raises(ValidationError):
            e.ack("points", 10**6)
        with appends_nothing(e), pytest.raises(NotFoundError, match="consumer add"):
            e.ack("unregistered", 1)
    with Engine.open(data, binding=binding) as e:
        assert [i.change for i in e.feed("points")] == ["suspended"]
        e.resume(mk)
        assert [i.change for i in e.feed("points")] == ["suspended", "resumed"]
        assert [i.change for i in e.feed("other")][:1] == ["joined"]
        assert [i.change for i in e.feed("points", after=0)][0] == "joined"


# --- rules ---------------------------------------------------------------------------------------


def test_every_event_is_attributed(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk, cred = create_user(engine, pki)
    link_card(engine, pki, cred, bid, "S1")
    engine.link_in_person(bid, "S2", mk, "passport checked at the desk")
    engine.suspend(mk, "x", actor=ev.Actor("operator", "desk-7"))
    actors = [(type(e.body).__name__, e.actor.kind, e.actor.id) for e in engine.log.read()]
    assert ("MyKeyCreated", "user", mk) in actors
    assert ("ServiceIdLinked", "user", mk) in actors  # the card's proof: the person's own act
    assert ("ServiceIdLinked", "operator", engine.operator.id) in actors  # in person: the operator's decision
    assert ("MyKeySuspended", "operator", "desk-7") in actors
    assert all(kind in ("operator", "user", "terminal", "system") and aid for _, kind, aid in actors)


def test_reopen_replays_what_the_index_lacks(tmp_path, binding, pki):
    from mykey.log.filelog import FileLog

    data = tmp_path / "data"
    with Engine.open(data, binding=binding) as e:
        bid = e.register_business("Library", "131016")
        e.register_service_ids(bid, [("S1", None)])
    # Events appended to the log but never applied (as after a crash between append and apply).
    log = FileLog.open(data / "log")
    log.append([ev.ServiceIdRegistered(bid, "S2")])
    log.close()
    with Engine.open(data, binding=binding) as e:
        assert e.index.last_seq == e.log.last_seq
        assert status(e, bid, "S2") == Status.UNLINKED


def test_resume_is_refused_while_the_certificate_is_revoked(engine, pki):
    mk, cred = create_user(engine, pki)
    engine.suspend(mk, "requested")
    engine.apply_crl(pki.inter.crl([(cred, "key_compromise")], number=30))
    with appends_nothing(engine), pytest.raises(CommandRefused, match="renewing"):
        engine.resume(mk)


def test_a_create_challenge_cannot_renew(engine, pki):
    mk, old = create_user(engine, pki)
    new = pki.inter.renew(old)
    ch = engine.new_challenge("create")
    assert ch.startswith(b"mykey:create:")  # the purpose is part of what the card signs
    with appends_nothing(engine), pytest.raises(ChallengeError, match="issued to create"):
        engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch)
    with pytest.raises(ValidationError):
        engine.new_challenge("login")


def test_subject_digest_is_keyed(engine, pki):
    import hashlib
    import os
    import stat

    mk, cred = create_user(engine, pki)
    created = next(e.body for e in engine.log.read() if isinstance(e.body, ev.MyKeyCreated))
    plain = hashlib.sha256(cred.cert.subject.public_bytes()).digest()
    assert len(created.subject_digest) == 32 and created.subject_digest != plain
    key_file = engine.data.keys / "subject.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_index_ahead_of_a_shortened_log_is_refused_until_rebuilt(tmp_path, binding, capsys):
    """After an OS crash with fsync="never" the log may lose a tail the index already applied."""
    from mykey.cli import main
    from mykey.errors import IndexAheadError
    from mykey.log.filelog import list_segments

    data = tmp_path / "data"
    with Engine.open(data, binding=binding, fsync="never", audit=False) as e:
        bid = e.register_business("Library", "131016")
        e.register_service_ids(bid, [("S1", None)])
        seg = list_segments(data / "log")[-1].path
        size_after_s1 = seg.stat().st_size
        e.register_service_ids(bid, [("S2", None)])
    with open(seg, "r+b") as f:
        f.truncate(size_after_s1)  # the last batch never reached the disk
    with pytest.raises(IndexAheadError, match="mykey rebuild"):
        Engine.open(data, binding=binding, audit=False)
    assert main(["rebuild", "--data", str(data)]) == 0  # the operator accepts the loss
    with Engine.open(data, binding=binding, audit=False) as e:
        assert e.index.last_seq == e.log.last_seq == 2
        assert status(e, bid, "S1") == Status.UNLINKED and status(e, bid, "S2") == Status.UNKNOWN
        e.register_service_ids(bid, [("S3", None)])  # and it accepts commands again
    capsys.readouterr()


def test_a_renewed_away_certificate_cannot_come_back(engine, pki):
    mk, old = create_user(engine, pki)
    new = pki.inter.renew(old)
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch, **APPROVED)
    with appends_nothing(engine), pytest.raises(AlreadyExistsError, match="live MyKey ID"):
        create_user(engine, pki, old)  # no second live MyKey ID for the same person
    newer = pki.inter.renew(new)
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk, pki.chain(newer), newer.sign(ch), ch, **APPROVED)
    ch = engine.new_challenge("renew")
    with appends_nothing(engine), pytest.raises(CommandRefused, match="already replaced"):
        engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch, **APPROVED)



def test_engine_stops_cleanly_when_the_index_cannot_follow(engine, monkeypatch):
    bid = engine.register_business("Library", "131016")

    def broken(envs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.index, "apply", broken)
    monkeypatch.setattr(engine.index, "catch_up", lambda log: broken(None))
    with pytest.raises(MykeyError, match="recorded in the log .* reopen"):
        engine.register_service_ids(bid, [("S1", None)])
    with pytest.raises(MykeyError, match="reopen"):
        engine.register_service_ids(bid, [("S2", None)])


def test_crl_listing_a_serial_twice(engine, pki):
    mk, cred = create_user(engine, pki)
    report = engine.apply_crl(pki.inter.crl([(cred, "key_compromise"), (cred, "key_compromise")], number=40))
    assert report.suspended == [mk] and report.newly_revoked == 1


def test_an_operator_suspension_survives_a_renewal(engine, pki):
    mk, old = create_user(engine, pki)
    engine.suspend(mk, "certificate revoked (says the operator)")
    new = pki.inter.renew(old)
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch, **APPROVED)
    assert engine.mykey(mk).state == MyKeyState.SUSPENDED


def test_business_ids_fill_gaps_after_z9999(engine):
    engine.register_business("a", "131016")
    engine.register_business("z", "131016", business_id="Z9999")
    assert engine.register_business("b", "131016") == "A0002"


def test_revoking_an_intermediate_ca_suspends_what_it_issued(tmp_path, binding, pki):
    from mykey_dev.pki import ThrowawayCA

    root = ThrowawayCA.create("own root")
    ca_a = root.intermediate("CA A")
    ca_b = root.intermediate("CA B")
    with Engine.open(tmp_path / "d", binding=binding) as e:
        e.add_trust_anchor(root.cert_pem())
        e.add_trust_anchor(ca_a.cert_pem() + ca_b.cert_pem(), intermediate=True)
        made = {}
        for ca in (ca_a, ca_a, ca_b):
            cred = ca.issue_user()
            ch = e.new_challenge()
            made[e.create_mykey(cred.cert_pem() + ca.cert_pem(), cred.sign(ch), ch)] = (ca, cred)
        report = e.apply_crl(root.crl([(ca_a.cert.serial_number, "ca_compromise")], number=1))
        under_a = sorted(mk for mk, (ca, _) in made.items() if ca is ca_a)
        assert sorted(report.suspended) == under_a
        assert [e.mykey(mk).state for mk in made if mk not in under_a] == [MyKeyState.VALID]
        with appends_nothing(e), pytest.raises(CommandRefused, match="renewing"):
            e.resume(under_a[0])
        # Renewal onto a certificate from a sound CA (designated as CA A's successor) restores the MyKey ID.
        old_ca, old = made[under_a[0]]
        new = ca_b.issue_user(subject=old.cert.subject)
        assert e.designate_successor_ca(ca_a.cert_pem(), ca_b.cert_pem(), "CA A compromised; CA B takes over")
        ch = e.new_challenge("renew")
        e.renew_certificate(under_a[0], new.cert_pem() + ca_b.cert_pem(), new.sign(ch), ch)
        assert e.mykey(under_a[0]).state == MyKeyState.VALID


def test_a_replay_to_another_gateway_process_is_refused(tmp_path, binding):
    import subprocess
    import sys
    import textwrap

    data = tmp_path / "data"
    with Engine.open(data, binding=binding) as e:
        bid = e.register_business("Library", "131016")
        key = terminal_keys.generate()
        terminal_id = e.enrol_terminal(bid, terminal_keys.public_pem(key))
    m = terminal_auth_message(terminal_id, int(time.time()), os.urandom(16))
    code = textwrap.dedent(
        f"""
        import sys
        from mykey import Resolver, TerminalAuthError
        from mykey.auth.terminals import TerminalAuthenticator
        r = Resolver.open({str(data)!r})
        auth = TerminalAuthenticator.open({str(data)!r}, r, r.binding)
        try:
            print(auth.authenticate({terminal_id!r}, bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])))
        except TerminalAuthError as exc:
            print("refused:", exc)
        auth.close()
        r.close()
        """
    )
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code, m.hex(), key.sign(m).hex()], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run() == bid  # the first gateway process accepts the message...
    assert run().startswith("refused:") and "replay" in run()  # ...any other one refuses it again


def test_every_resolver_in_a_process_shares_one_nonce_record(tmp_path):
    from mykey.auth.terminals import TerminalAuthenticator
    from mykey.datadir import DataDir
    from mykey.index.binding import binding_by_name
    from mykey.index.resolver import Resolver
    from mykey.index.store import rebuild
    from mykey.log.filelog import FileLog

    data = tmp_path / "data"
    with Engine.open(data) as e:
        bid = e.register_business("Library", "131016")
        key = terminal_keys.generate()
        terminal_id = e.enrol_terminal(bid, terminal_keys.public_pem(key))
    m = terminal_auth_message(terminal_id, int(time.time()), os.urandom(16))
    a = Resolver.open(data, binding=binding_by_name("pure"))  # an index generation...
    log = FileLog.open(data / "log")
    rebuild(DataDir(data), log)
    log.close()
    b = Resolver.open(data, binding=binding_by_name("native"))  # ...and the rebuilt one, other binding
    assert a.generation != b.generation
    auth_a = TerminalAuthenticator.open(data, a, a.binding)
    auth_b = TerminalAuthenticator.open(data, b, b.binding)
    assert auth_a.authenticate(terminal_id, m, key.sign(m)) == bid
    with pytest.raises(TerminalAuthError, match="replay"):
        auth_b.authenticate(terminal_id, m, key.sign(m))
    auth_a.close()
    a.close()
    with pytest.raises(TerminalAuthError, match="replay"):
        auth_b.authenticate(terminal_id, m, key.sign(m))  # still shared after a closed
    auth_b.close()
    b.close()


def test_replays_are_judged_by_the_callers_clock(tmp_path):
    data = tmp_path / "data"
    lagging = time.time() - 3600
    with Engine.open(data, clock=lambda: lagging) as e:
        bid = e.register_business("Library", "131016")
        key = terminal_keys.generate()
        terminal_id = e.enrol_terminal(bid, terminal_keys.public_pem(key))
        m = terminal_auth_message(terminal_id, int(lagging), os.urandom(16))
        with engine_resolver(e) as r, engine_authenticator(e, r) as auth:
            assert auth.authenticate(terminal_id, m, key.sign(m), now=lagging) == bid
            with pytest.raises(TerminalAuthError, match="replay"):
                auth.authenticate(terminal_id, m, key.sign(m), now=lagging)


def test_revoking_a_rolled_over_ca_spares_certificates_of_its_successor(tmp_path, binding):
    from mykey_dev.pki import ThrowawayCA

    root = ThrowawayCA.create("own root")
    old_ca = root.intermediate("CA A")
    new_ca = root.intermediate("CA A")  # key rollover: same name, new key
    with Engine.open(tmp_path / "d", binding=binding) as e:
        e.add_trust_anchor(root.cert_pem())
        e.add_trust_anchor(old_ca.cert_pem() + new_ca.cert_pem(), intermediate=True)
        made = {}
        for ca in (old_ca, new_ca):
            cred = ca.issue_user()
            ch = e.new_challenge()
            made[ca] = e.create_mykey(cred.cert_pem() + ca.cert_pem(), cred.sign(ch), ch)
        report = e.apply_crl(root.crl([(old_ca.cert.serial_number, "superseded")], number=1))
        assert report.suspended == [made[old_ca]]
        assert e.mykey(made[new_ca]).state == MyKeyState.VALID
