"""Renewal is not authorised by a subject match alone (issue 10, item 4), and creation reveals
nothing about taken MyKey IDs before the proof of possession (item 19)."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta, timezone

import pytest
from mykey.cli import main
from mykey.domain import events as ev
from mykey.domain.certs import ChallengeSignatureError
from mykey.domain.status import MyKeyState
from mykey.engine import Engine
from mykey.engine.certpaths import cert_actor_id
from mykey.errors import AlreadyExistsError, RenewalRefused, ValidationError
from mykey_dev.pki import ThrowawayCA

from .conftest import create_user
from .test_engine import appends_nothing

APPROVAL = "holder seen at the counter with the new card"


@pytest.fixture(scope="module")
def cas():
    root = ThrowawayCA.create("renewal root")
    return root, root.intermediate("user CA one"), root.intermediate("user CA two")


@pytest.fixture
def e(tmp_path, cas):
    root, one, two = cas
    with Engine.open(tmp_path / "data") as engine:
        engine.add_trust_anchor(root.cert_pem())
        engine.add_trust_anchor(one.cert_pem() + two.cert_pem(), intermediate=True)
        yield engine


def create(engine, ca, cred=None):
    cred = cred or ca.issue_user()
    ch = engine.new_challenge()
    return engine.create_mykey(cred.cert_pem() + ca.cert_pem(), cred.sign(ch), ch), cred


def renew(engine, mk, ca, cred, **kw):
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk, cred.cert_pem() + ca.cert_pem(), cred.sign(ch), ch, **kw)


def last_body(engine):
    return list(engine.log.read(engine.log.last_seq))[-1]


def test_a_second_trusted_ca_with_the_victims_subject_does_not_take_over(e, cas):
    _root, one, two = cas
    victim_mk, victim = create(e, one)
    forged = two.issue_user(subject=victim.cert.subject)  # the attacker holds this key
    for kw in ({}, {"operator_approval": APPROVAL}):
        with appends_nothing(e), pytest.raises(RenewalRefused, match="not by the CA that issued"):
            renew(e, victim_mk, two, forged, **kw)
    # Even once the victim's certificate is revoked (the moment a takeover would pay), it stays refused.
    e.apply_crl(one.crl([(victim, "key_compromise")], number=1))
    with appends_nothing(e), pytest.raises(RenewalRefused, match="not by the CA that issued"):
        renew(e, victim_mk, two, forged)
    assert e.mykey(victim_mk).cert_serial == format(victim.serial, "x")


def test_same_ca_and_a_usable_old_certificate_needs_an_operator(e, cas):
    _root, one, _two = cas
    mk, old = create(e, one)
    new = one.renew(old)
    with appends_nothing(e), pytest.raises(RenewalRefused, match="still valid and not revoked"):
        renew(e, mk, one, new)
    with pytest.raises(ValidationError, match="approval reason"):
        renew(e, mk, one, new, operator_approval="  ")
    with pytest.raises(ValidationError, match="only an operator"):
        renew(e, mk, one, new, operator_approval=APPROVAL, approver=ev.Actor("user", mk))
    renew(e, mk, one, new, operator_approval=APPROVAL)
    env = last_body(e)
    body = env.body
    assert isinstance(body, ev.CertificateRenewed) and env.v == 2
    assert (body.authority, body.approved_by, body.approval_reason) == ("operator", e.operator.id, APPROVAL)
    assert not body.via_successor
    # Attributed to the new certificate, never as the MyKey ID (no impersonation of its holder).
    new_fp = body.new_fingerprint
    assert env.actor == ev.Actor("user", cert_actor_id(new_fp)) and env.actor.id != mk
    assert env.actor.id.startswith("cert:") and not any(ch in "0189" for ch in env.actor.id[5:])
    assert [c.serial for c in body.path] == [format(new.serial, "x"), format(one.cert.serial_number, "x"),
                                             format(_root.cert.serial_number, "x")]


def test_a_revoked_old_certificate_allows_the_renewal(e, cas):
    _root, one, _two = cas
    mk, old = create(e, one)
    e.apply_crl(one.crl([(old, "key_compromise")], number=2))
    assert e.mykey(mk).state == MyKeyState.SUSPENDED
    renew(e, mk, one, one.renew(old))
    renewed = [env for env in e.log.read(1) if isinstance(env.body, ev.CertificateRenewed)][-1]
    assert renewed.body.authority == "revoked" and renewed.body.approved_by == ""
    assert e.mykey(mk).state == MyKeyState.VALID  # the CRL's suspension is lifted


def test_an_expired_old_certificate_allows_the_renewal(tmp_path, cas):
    root, one, _two = cas
    now = [time.time()]
    with Engine.open(tmp_path / "d", clock=lambda: now[0]) as e:
        e.add_trust_anchor(root.cert_pem())
        e.add_trust_anchor(one.cert_pem(), intermediate=True)
        start = datetime.fromtimestamp(now[0], tz=timezone.utc)
        mk, old = create(e, one, one.issue_user(not_after=start + timedelta(days=1)))
        new = one.renew(old)
        with pytest.raises(RenewalRefused, match="still valid"):
            renew(e, mk, one, new)
        now[0] += 2 * 86400  # the old certificate expired
        renew(e, mk, one, new)
        assert last_body(e).body.authority == "expired"


def test_a_designated_successor_ca_may_issue_the_renewal(e, cas):
    _root, one, two = cas
    mk, old = create(e, one)
    new = two.issue_user(subject=old.cert.subject)
    with pytest.raises(RenewalRefused, match="successor"):
        renew(e, mk, two, new, operator_approval=APPROVAL)
    seq = e.log.last_seq
    assert e.designate_successor_ca(hashlib.sha256(one.cert_der()).hexdigest()[:12], two.cert_pem(),
                                    "CA one retires") is True
    designation = list(e.log.read(seq + 1))[0]
    assert isinstance(designation.body, ev.CaSuccessorDesignated) and designation.actor == e.operator
    assert e.designate_successor_ca(one.cert_pem(), two.cert_pem(), "again") is False  # nothing appended
    assert e.log.last_seq == seq + 1
    with pytest.raises(RenewalRefused, match="still valid"):
        renew(e, mk, two, new)  # a successor CA alone is not enough either
    renew(e, mk, two, new, operator_approval=APPROVAL)
    assert last_body(e).body.via_successor is True


def test_a_new_subject_needs_an_operator(e, cas):
    _root, one, _two = cas
    mk, old = create(e, one)
    e.apply_crl(one.crl([(old, "superseded")], number=3))
    other = one.issue_user()  # JPKI cards may get a new opaque CN on re-issue
    with appends_nothing(e), pytest.raises(RenewalRefused, match="subject differs"):
        renew(e, mk, one, other)
    renew(e, mk, one, other, operator_approval=APPROVAL)
    assert e.mykey(mk).cert_serial == format(other.serial, "x")


def test_the_cli_renewal_needs_the_approval_flag(tmp_path, capsys, cas):
    root, one, _two = cas
    d = ["--data", str(tmp_path / "data")]
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(root.cert_pem())
    inter_pem = tmp_path / "one.pem"
    inter_pem.write_bytes(one.cert_pem())
    assert main(["init", *d, "--trust-anchor", str(root_pem)]) == 0
    assert main(["trust", "add", *d, "--intermediate", str(inter_pem)]) == 0
    old = one.issue_user()
    cert, key = old.write(tmp_path, "old")
    cert.write_bytes(old.cert_pem() + one.cert_pem())
    assert main(["create", *d, "--cert", str(cert), "--key", str(key), "--id", "ABCDEFGH"]) == 0
    new = one.renew(old)
    cert, key = new.write(tmp_path, "new")
    cert.write_bytes(new.cert_pem() + one.cert_pem())
    capsys.readouterr()
    assert main(["renew", *d, "ABCDEFGH", "--cert", str(cert), "--key", str(key)]) == 1
    assert "--approved-by-operator" in capsys.readouterr().err
    assert main(["renew", *d, "ABCDEFGH", "--cert", str(cert), "--key", str(key), "--approved-by-operator"]) == 1
    assert "--reason" in capsys.readouterr().err
    assert main(["renew", *d, "ABCDEFGH", "--cert", str(cert), "--key", str(key),
                 "--approved-by-operator", "--reason", "seen in person"]) == 0
    assert "renewed" in capsys.readouterr().out


# --------------------------------------------------------------------------- item 19


def test_create_with_a_taken_id_says_nothing_before_the_proof(e, cas):
    _root, one, _two = cas
    taken, _ = create(e, one)
    cred = one.issue_user()
    ch = e.new_challenge()
    wrong = one.issue_user().sign(ch)
    with appends_nothing(e), pytest.raises(ChallengeSignatureError):
        e.create_mykey(cred.cert_pem() + one.cert_pem(), wrong, ch, requested_id=taken)
    ch = e.new_challenge()
    with appends_nothing(e), pytest.raises(AlreadyExistsError, match="taken"):  # a proven holder may learn it
        e.create_mykey(cred.cert_pem() + one.cert_pem(), cred.sign(ch), ch, requested_id=taken)
    with pytest.raises(ValidationError):  # a malformed ID is still refused at once
        e.create_mykey(cred.cert_pem(), b"x", e.new_challenge(), requested_id="bad id")


def test_create_user_helper_still_works(tmp_path, pki):
    # The shared test helper (conftest) creates through the same path.
    with Engine.open(tmp_path / "x") as engine:
        engine.add_trust_anchor(pki.root.cert_pem())
        engine.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        mk, _ = create_user(engine, pki)
        assert engine.mykey(mk).state == MyKeyState.VALID
