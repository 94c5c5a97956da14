"""Recorded certificate paths (issue 10, item 3) and removing trusted CAs (item 12): a CRL revoking
any CA certificate on a MyKey ID's path, or a trust removal, suspends it and blocks its resume."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from mykey.cli import main
from mykey.domain import certs
from mykey.domain import events as ev
from mykey.domain.status import MyKeyState
from mykey.engine import Engine
from mykey.errors import NotFoundError, ResumeBlockedError, ValidationError
from mykey_dev.pki import ThrowawayCA


@pytest.fixture(scope="module")
def pkis():
    root = ThrowawayCA.create("paths root")
    trusted = root.intermediate("trusted user CA", path_length=1)
    supplied = root.intermediate("user-supplied CA")  # never added to the trust store
    below = trusted.intermediate("CA below the trusted one")  # user-supplied too
    return root, trusted, supplied, below


@pytest.fixture
def e(tmp_path, pkis):
    root, trusted, _supplied, _below = pkis
    with Engine.open(tmp_path / "data") as engine:
        engine.add_trust_anchor(root.cert_pem())
        engine.add_trust_anchor(trusted.cert_pem(), intermediate=True)
        yield engine


def create(engine, *chain_cas, cred=None):
    cred = cred or chain_cas[0].issue_user()
    ch = engine.new_challenge()
    bundle = cred.cert_pem() + b"".join(ca.cert_pem() for ca in chain_cas)
    return engine.create_mykey(bundle, cred.sign(ch), ch), cred


def fp(ca) -> bytes:
    return hashlib.sha256(ca.cert_der()).digest()


def test_the_whole_path_is_recorded(e, pkis):
    root, trusted, _supplied, below = pkis
    mk, cred = create(e, below, trusted)
    created = [env for env in e.log.read(1) if isinstance(env.body, ev.MyKeyCreated)][-1]
    assert created.v == 3
    path = created.body.path
    assert [(c.issuer, c.serial) for c in path] == [
        ("CN=CA below the trusted one", format(cred.serial, "x")),
        ("CN=trusted user CA", format(below.cert.serial_number, "x")),
        ("CN=paths root", format(trusted.cert.serial_number, "x")),
        ("CN=paths root", format(root.cert.serial_number, "x")),
    ]
    assert [c.fingerprint for c in path[1:]] == [fp(below), fp(trusted), fp(root)]
    assert path[0].authority_key_id == path[1].key_id == certs.key_id(below.cert)
    with e.read_model.snapshot() as s:
        assert s.recorded_path(mk) == path
        assert s.mykeys_under_ca(fp(below)) == [mk] and s.mykeys_under_ca(fp(root)) == [mk]
        assert s.mykeys_under_ca_serial("CN=trusted user CA", format(below.cert.serial_number, "x")) == [mk]


def test_revoking_a_user_supplied_intermediate_suspends_and_blocks_resume(e, pkis):
    root, trusted, supplied, below = pkis
    under_supplied, _ = create(e, supplied)
    under_below, _ = create(e, below, trusted)
    elsewhere, _ = create(e, trusted)
    report = e.apply_crl(root.crl([(supplied.cert, "ca_compromise")], number=1))
    assert report.suspended == [under_supplied]
    report = e.apply_crl(trusted.crl([(below.cert, "ca_compromise")], number=1))
    assert report.suspended == [under_below]
    for mk in (under_supplied, under_below):
        view = e.mykey(mk)
        assert view.state == MyKeyState.SUSPENDED and "a CA on its certificate path" in view.reason
        with pytest.raises(ResumeBlockedError, match="on its path is revoked"):
            e.resume(mk)
    assert e.mykey(elsewhere).state == MyKeyState.VALID
    # Nobody gets a new MyKey ID through the revoked intermediate either.
    with pytest.raises(certs.CertificateRevokedError):
        create(e, supplied)
    # An operator's suspension of a MyKey ID under a revoked CA: resume is refused too.
    e.suspend(elsewhere, "lost")
    e.resume(elsewhere)


def test_a_renewal_moves_the_path_index(e, pkis):
    root, trusted, supplied, below = pkis
    mk, old = create(e, supplied)
    e.designate_successor_ca(supplied.cert_pem(), trusted.cert_pem(), "supplied CA retires")
    new = trusted.issue_user(subject=old.cert.subject)
    ch = e.new_challenge("renew")
    e.renew_certificate(mk, new.cert_pem(), new.sign(ch), ch, operator_approval="seen in person")
    with e.read_model.snapshot() as s:
        assert s.mykeys_under_ca(fp(supplied)) == [] and s.mykeys_under_ca(fp(trusted)) == [mk]
    report = e.apply_crl(root.crl([(supplied.cert, "ca_compromise")], number=5))
    assert report.suspended == [] and e.mykey(mk).state == MyKeyState.VALID


def test_removing_a_trusted_ca_suspends_what_stands_on_it(tmp_path, e, pkis, capsys):
    root, trusted, supplied, _below = pkis
    under, cred = create(e, trusted)
    other, _ = create(e, supplied)
    seq = e.log.last_seq
    with pytest.raises(NotFoundError, match="no trusted CA"):
        e.remove_trust_anchor("00" * 32, "x")
    with pytest.raises(ValidationError, match="fingerprint"):
        e.remove_trust_anchor("not-hex", "x")
    with pytest.raises(ValidationError, match="reason"):
        e.remove_trust_anchor(trusted.cert_pem(), "")
    assert e.log.last_seq == seq
    removal = e.remove_trust_anchor(fp(trusted).hex()[:10], "CA key leaked")
    assert removal.intermediate and removal.suspended == [under] and removal.fingerprint == fp(trusted).hex()
    envs = list(e.log.read(seq + 1))
    assert isinstance(envs[0].body, ev.TrustAnchorRemoved) and envs[0].actor == e.operator
    assert envs[1].body == ev.MyKeySuspended(under, "its certificate's CA was removed from the trust store", by_crl=True)
    assert e.mykey(other).state == MyKeyState.VALID
    with pytest.raises(ResumeBlockedError, match="removed from the trust store"):
        e.resume(under)
    with pytest.raises(certs.UntrustedCertificateError):
        create(e, trusted)  # no longer trusted
    with pytest.raises(NotFoundError):
        e.remove_trust_anchor(trusted.cert_pem(), "again")
    # Trusting it again ends the block (the suspension itself stays until someone resumes).
    e.add_trust_anchor(trusted.cert_pem(), intermediate=True)
    assert e.resume(under) == MyKeyState.VALID
    # Removing the root takes everything under it, whatever the intermediate.
    removal = e.remove_trust_anchor(root.cert_pem(), "root retired")
    assert not removal.intermediate and sorted(removal.suspended) == sorted([under, other])


def test_trust_remove_from_the_cli(tmp_path, pkis, capsys):
    root, trusted, _supplied, _below = pkis
    d = ["--data", str(tmp_path / "data")]
    (tmp_path / "root.pem").write_bytes(root.cert_pem())
    (tmp_path / "ca.pem").write_bytes(trusted.cert_pem())
    assert main(["init", *d, "--trust-anchor", str(tmp_path / "root.pem")]) == 0
    assert main(["trust", "add", *d, "--intermediate", str(tmp_path / "ca.pem")]) == 0
    capsys.readouterr()
    assert main(["trust", "list", *d]) == 0
    listed = capsys.readouterr().out
    assert fp(trusted).hex() in listed and "intermediate" in listed
    assert main(["trust", "remove", *d, str(tmp_path / "ca.pem")]) == 2  # --reason is required
    capsys.readouterr()
    assert main(["trust", "remove", *d, str(tmp_path / "ca.pem"), "--reason", "retired"]) == 0
    assert f"removed intermediate {fp(trusted).hex()}" in capsys.readouterr().out
    assert main(["--json", "trust", "remove", *d, fp(root).hex(), "--reason", "retired"]) == 0
    assert '"intermediate": false' in capsys.readouterr().out


# --------------------------------------------------------------------------- records written before paths


def _raw(seq: int, actor: list, version: int, body: list) -> bytes:
    return msgspec.msgpack.encode([seq, 1_700_000_000_000_000, actor, version, body])


def test_older_event_versions_still_decode():
    created = ev.decode_envelope(_raw(1, ["user", "ABCDEFGH"], 2, [
        "mk.created", "ABCDEFGH", "CN=Root", "1f", b"\x01" * 32, b"\x02" * 32, 99, b"\x03" * 20]))
    assert created.v == 3 and created.body.path == () and created.body.issuer_key_id == b"\x03" * 20
    renewed = ev.decode_envelope(_raw(2, ["user", "ABCDEFGH"], 1, [
        "cert.renewed", "ABCDEFGH", b"\x01" * 32, "CN=Root", "20", b"\x04" * 32, b"\x02" * 32, 100, b""]))
    assert renewed.v == 2 and renewed.body.path == () and renewed.body.authority == ""
    assert renewed.body.new_serial == "20" and not renewed.body.via_successor
    applied = ev.decode_envelope(_raw(3, ["system", "crl-check"], 1, [
        "crl.applied", "CN=Root", 7, b"\x05" * 32, 1_700_000_000, 3]))
    assert applied.v == 2 and applied.body.next_update == 0 and applied.body.issuer_key_id == b""


def test_event_checks_of_the_new_fields():
    ref = ev.CertRef("CN=Root", "1f", b"\x01" * 20, b"", b"\x02" * 32)
    ev.check_event(ev.MyKeyCreated("ABCDEFGH", "CN=Root", "1f", b"\x01" * 32, path=(ref, ref)))
    with pytest.raises(ValidationError, match="path"):
        ev.check_event(ev.MyKeyCreated("ABCDEFGH", "CN=Root", "1f", b"\x01" * 32, path=(ref,) * 7))
    with pytest.raises(ValidationError):
        ev.check_event(ev.MyKeyCreated("ABCDEFGH", "CN=Root", "1f", b"\x01" * 32, path=[ref]))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="fingerprint"):
        bad = ref._replace(fingerprint=b"x")
        ev.check_event(ev.MyKeyCreated("ABCDEFGH", "CN=Root", "1f", b"\x01" * 32, path=(bad,)))
    base = ("ABCDEFGH", b"\x01" * 32, "CN=Root", "20", b"\x04" * 32)
    with pytest.raises(ValidationError, match="authority"):
        ev.check_event(ev.CertificateRenewed(*base, authority="because"))
    with pytest.raises(ValidationError, match="names the operator"):
        ev.check_event(ev.CertificateRenewed(*base, authority="operator"))
    with pytest.raises(ValidationError, match="names the operator"):
        ev.check_event(ev.CertificateRenewed(*base, authority="revoked", approved_by="alice", approval_reason="x"))
    ev.check_event(ev.CertificateRenewed(*base, authority="operator", approved_by="alice", approval_reason="seen"))
    with pytest.raises(ValidationError, match="own successor"):
        ev.check_event(ev.CaSuccessorDesignated(b"\x01" * 20, b"\x01" * 20, "x"))
    with pytest.raises(ValidationError, match="reason"):
        ev.check_event(ev.TrustAnchorRemoved(b"\x01" * 32, False, ""))


def test_a_mykey_id_recorded_without_a_path_is_still_matched(tmp_path, pkis):
    # MyKey IDs created before paths were recorded: the trusted intermediate that issued them decides.
    root, trusted, _supplied, _below = pkis
    with Engine.open(tmp_path / "old") as e:
        e.add_trust_anchor(root.cert_pem())
        e.add_trust_anchor(trusted.cert_pem(), intermediate=True)
        cred = trusted.issue_user()
        info = certs.TrustStore([root.cert], [trusted.cert]).verify(cred.cert, at=e.now())
        body = ev.MyKeyCreated("PREPATH2", info.issuer, format(info.serial, "x"), info.fingerprint, b"",
                               int(info.not_after.timestamp()), certs.authority_key_id(info))
        e._commit([body], ev.Actor("user", "PREPATH2"))
        report = e.apply_crl(root.crl([(trusted.cert, "ca_compromise")], number=9))
        assert report.suspended == ["PREPATH2"]
        with pytest.raises(ResumeBlockedError, match="CA that issued"):
            e.resume("PREPATH2")
