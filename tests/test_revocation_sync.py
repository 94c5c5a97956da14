"""Revocation freshness (issue 10, item 10): stale CRLs refuse certificates by default, under an
explicit, configurable policy; and `mykey crl sync` fetches every trusted CA's CRL from a real
HTTP server (or a directory) and applies what is new, once or on a schedule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from mykey.cli import main
from mykey.domain import certs
from mykey.domain import events as ev
from mykey.domain.certs import AppliedCrl, CrlPolicy, StaleRevocationError
from mykey.domain.status import MyKeyState
from mykey.engine import Engine
from mykey.engine.crl_sync import CrlSource, crl_locations, parse_duration, run_every
from mykey.errors import ValidationError
from mykey_dev.pki import ThrowawayCA

DAY = 86400.0
T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def pki():
    root = ThrowawayCA.create("sync root", now=T0 - timedelta(days=30))
    return root, root.intermediate("sync user CA", now=T0 - timedelta(days=30))


class Clock:
    def __init__(self, at: datetime) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, days: float) -> None:
        self.t += days * DAY


def open_engine(path, pki, clock, **kw) -> Engine:
    root, inter = pki
    e = Engine.open(path, clock=clock, **kw)
    if not e.trusted_cas().anchors:
        e.add_trust_anchor(root.cert_pem())
        e.add_trust_anchor(inter.cert_pem(), intermediate=True)
    return e


def create(e, inter, cred=None):
    cred = cred or inter.issue_user(now=T0 - timedelta(days=1))
    ch = e.new_challenge()
    return e.create_mykey(cred.cert_pem() + inter.cert_pem(), cred.sign(ch), ch), cred


# --------------------------------------------------------------------------- the freshness policy


def test_policy_decisions():
    at = T0
    fresh = AppliedCrl(at - timedelta(days=1), at + timedelta(days=1))
    expired = AppliedCrl(at - timedelta(days=10), at - timedelta(days=1))
    no_next = AppliedCrl(at - timedelta(days=8), None)
    default = CrlPolicy()
    assert default.stale_reason(fresh, at) is None and default.stale_reason(None, at) is None
    assert "expired at" in default.stale_reason(expired, at)
    assert "no nextUpdate" in default.stale_reason(no_next, at)
    assert CrlPolicy(max_age=timedelta(days=9)).stale_reason(no_next, at) is None
    assert CrlPolicy(refuse_stale=False).stale_reason(expired, at) is None
    assert "no CRL" in CrlPolicy(require_crl=True).stale_reason(None, at)


def test_a_certificate_is_refused_once_its_issuers_crl_is_past_next_update(tmp_path, pki):
    root, inter = pki
    clock = Clock(T0)
    with open_engine(tmp_path / "d", pki, clock) as e:
        e.apply_crl(inter.crl([], number=1, this_update=T0, next_update=T0 + timedelta(days=1)))
        mk, cred = create(e, inter)
        clock.advance(40)  # forty days after the CRL's nextUpdate
        with pytest.raises(StaleRevocationError, match="expired at .*crl sync"):
            create(e, inter)
        new = inter.renew(cred, now=T0)
        ch = e.new_challenge("renew")
        with pytest.raises(StaleRevocationError):
            e.renew_certificate(mk, new.cert_pem() + inter.cert_pem(), new.sign(ch), ch, operator_approval="x")
        # A fresh CRL makes it acceptable again.
        e.apply_crl(inter.crl([], number=2, this_update=T0 + timedelta(days=40)))
        create(e, inter)
    # The policy is explicit and can be relaxed when the engine is opened.
    clock.advance(40)
    with open_engine(tmp_path / "d", pki, clock, crl_policy=CrlPolicy(refuse_stale=False)) as e:
        create(e, inter)
    with open_engine(tmp_path / "d", pki, clock) as e, pytest.raises(StaleRevocationError):
        create(e, inter)


def test_the_roots_crl_counts_for_the_intermediate(tmp_path, pki):
    root, inter = pki
    clock = Clock(T0)
    with open_engine(tmp_path / "d", pki, clock) as e:
        e.apply_crl(root.crl([], number=1, this_update=T0, next_update=T0 + timedelta(days=1)))
        clock.advance(2)
        with pytest.raises(StaleRevocationError, match="sync root"):
            create(e, inter)


def test_a_crl_without_next_update_goes_stale_after_the_configured_age(tmp_path, pki):
    root, inter = pki
    clock = Clock(T0)
    with open_engine(tmp_path / "d", pki, clock) as e:
        # cryptography cannot build such a CRL; record the fact as apply_crl would for one.
        e._commit([ev.CrlApplied(inter.name, 1, b"\x07" * 32, int(T0.timestamp()), 0, 0, certs.key_id(inter.cert))],
                  ev.Actor("system", "crl-check"))
        clock.advance(6)
        create(e, inter)
        clock.advance(2)
        with pytest.raises(StaleRevocationError, match="no nextUpdate"):
            create(e, inter)
    with open_engine(tmp_path / "d", pki, clock, crl_policy=CrlPolicy(max_age=timedelta(days=30))) as e:
        create(e, inter)
    with open_engine(tmp_path / "d", pki, clock, crl_policy=CrlPolicy(max_age=timedelta(days=30), require_crl=True)) as e:
        with pytest.raises(StaleRevocationError, match="no CRL of it"):
            create(e, inter)  # the root never published one


def test_cli_flags_set_the_policy(tmp_path, pki, capsys):
    root, inter = pki
    data = tmp_path / "data"
    past = Clock(datetime.now(timezone.utc) - timedelta(days=20))
    with open_engine(data, pki, past) as e:
        e.apply_crl(inter.crl([], number=1, now=datetime.fromtimestamp(past.t, tz=timezone.utc)))  # nextUpdate +7 days
    cred = inter.issue_user()
    cert, key = cred.write(tmp_path, "card")
    cert.write_bytes(cred.cert_pem() + inter.cert_pem())
    args = ["create", "--data", str(data), "--cert", str(cert), "--key", str(key)]
    assert main(args) == 1
    assert "expired at" in capsys.readouterr().err
    assert main([*args, "--crl-max-age", "bogus"]) == 1
    assert main([*args, "--accept-stale-crl"]) == 0


# --------------------------------------------------------------------------- crl sync


@pytest.fixture
def crl_server(request):
    """A real HTTP server on a free loopback port serving files[path]; stopped by a finalizer."""
    files: dict[str, bytes] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    request.addfinalizer(stop)
    return f"http://127.0.0.1:{server.server_port}", files, hits


def kid(ca) -> str:
    return certs.key_id(ca.cert).hex()


def test_sync_fetches_every_trusted_ca_and_applies_what_is_new(tmp_path, pki, crl_server):
    root, inter = pki
    base, files, hits = crl_server
    clock = time.time
    with open_engine(tmp_path / "d", pki, clock) as e:
        mk1, c1 = create(e, inter)
        mk2, c2 = create(e, inter)
        files[f"/crl/{kid(inter)}.crl"] = inter.crl([(c1, "key_compromise")], number=1)
        report = e.sync_crls(base + "/crl")
        assert [(i.ca, i.outcome) for i in report.items] == [
            ("CN=sync root", "not published"), ("CN=sync user CA", "applied")]
        assert report.suspended == [mk1] and e.mykey(mk1).state == MyKeyState.SUSPENDED
        assert hits == [f"/crl/{kid(root)}.crl", f"/crl/{kid(inter)}.crl"]
        again = e.sync_crls(base + "/crl/")
        assert [i.outcome for i in again.items] == ["not published", "unchanged"] and again.suspended == []
        # A newer CRL, and garbage where the root's should be: the good one still applies.
        files[f"/crl/{kid(inter)}.crl"] = inter.crl([(c1, "key_compromise"), (c2, "superseded")], number=2)
        files[f"/crl/{kid(root)}.crl"] = b"not a CRL"
        report = e.sync_crls(base + "/crl")
        assert [i.outcome for i in report.items] == ["failed", "applied"], report.items
        assert report.suspended == [mk2]
        assert "not a valid CRL" in report.items[0].detail
        assert "1 CRL(s) applied" in report.summary() and mk2 in report.summary()
        # An older CRL than one applied is reported, not applied.
        files[f"/crl/{kid(inter)}.crl"] = inter.crl([], number=1)
        assert [i.outcome for i in e.sync_crls(base + "/crl").items] == ["failed", "failed"]


def test_sync_follows_crl_distribution_points_of_ca_certificates(tmp_path, pki, crl_server):
    root, _inter = pki
    base, files, hits = crl_server
    key = ec.generate_private_key(ec.SECP256R1())
    dp = x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier(base + "/dp/root.crl")], None, None, None)])
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dp CA")]))
        .issuer_name(root.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(T0 - timedelta(days=30)).not_valid_after(T0 + timedelta(days=900))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(root.cert.extensions.get_extension_for_class(x509.KeyUsage).value, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
        .add_extension(dp, critical=False)
        .sign(root.key, hashes.SHA256())
    )
    dp_ca = ThrowawayCA(cert, key)
    with Engine.open(tmp_path / "d") as e:
        e.add_trust_anchor(root.cert_pem())
        e.add_trust_anchor(dp_ca.cert_pem(), intermediate=True)
        mk, _ = create(e, dp_ca)
        files["/dp/root.crl"] = root.crl([(dp_ca.cert, "ca_compromise")], number=1)
        locations = crl_locations(CrlSource.parse(base), e.trusted_cas())
        assert [loc.where for loc in locations] == [
            f"{base}/{kid(root)}.crl", f"{base}/{kid(dp_ca)}.crl", f"{base}/dp/root.crl"]
        report = e.sync_crls(base)
        assert report.suspended == [mk] and "/dp/root.crl" in hits


def test_sync_from_a_directory(tmp_path, pki):
    root, inter = pki
    drop = tmp_path / "drop"
    drop.mkdir()
    with open_engine(tmp_path / "d", pki, time.time) as e:
        mk, cred = create(e, inter)
        (drop / f"{kid(inter)}.crl").write_bytes(inter.crl([(cred, "key_compromise")], number=1))
        (drop / f"{kid(root)}.crl").write_bytes(root.crl([], number=1))
        report = e.sync_crls(str(drop))
        assert [i.outcome for i in report.items] == ["applied", "applied"] and report.suspended == [mk]


def test_sources_and_durations_are_checked(tmp_path):
    with pytest.raises(ValidationError, match="not a directory"):
        CrlSource.parse(str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="http"):
        CrlSource.parse("ftp://pki.example/crl")
    assert CrlSource.parse("https://pki.example/crl").base == "https://pki.example/crl/"
    assert [parse_duration(t) for t in ("6h", "30m", "90s", "1d", "120")] == [21600, 1800, 90, 86400, 120]
    for bad in ("", "0h", "6 hours", "-1h"):
        with pytest.raises(ValidationError):
            parse_duration(bad)


def test_run_every_repeats_until_stopped():
    stop = threading.Event()
    calls = []

    def one_round():
        calls.append(time.monotonic())
        if len(calls) == 3:
            stop.set()

    assert run_every(one_round, 0.01, stop) == 3 and len(calls) == 3


def test_cli_sync_once_and_on_a_schedule_until_sigterm(tmp_path, pki, crl_server, capsys):
    root, inter = pki
    base, files, _hits = crl_server
    data = tmp_path / "data"
    with open_engine(data, pki, time.time) as e:
        mk, cred = create(e, inter)
    files[f"/{kid(inter)}.crl"] = inter.crl([(cred, "key_compromise")], number=1)
    assert main(["crl", "sync", "--data", str(data), "--from", base]) == 0
    out = capsys.readouterr().out
    assert f"1 MyKey ID(s) suspended ({mk})" in out and "applied:" in out
    assert main(["crl", "sync", "--data", str(data), "--from", base, "--every", "soon"]) == 1

    files[f"/{kid(inter)}.crl"] = inter.crl([(cred, "key_compromise")], number=2)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mykey", "crl", "sync", "--data", str(data), "--from", base, "--every", "6h"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        first = proc.stdout.readline()  # the first round runs at once
        while first and "location(s)" not in first:
            first = proc.stdout.readline()
        assert "1 CRL(s) applied" in first, first
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped after 1 round(s)" in rest
