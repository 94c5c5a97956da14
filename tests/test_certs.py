"""Tests for mykey.certs (verification) and mykey.pki (throwaway PKI)."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mykey.domain import certs
from mykey.domain.certs import (
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    ChallengeSignatureError,
    CrlError,
    KeyUsageError,
    TrustStore,
    UnsupportedKeyError,
    UntrustedCertificateError,
)
from mykey.errors import MykeyError, ValidationError
from mykey_dev import pki
from mykey_dev.pki import ThrowawayCA, UserCredential

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
CHALLENGE = b"mykey-challenge-" + bytes(range(16))


# ---------------------------------------------------------------- shared (expensive) objects


@pytest.fixture(scope="module")
def root() -> ThrowawayCA:
    return ThrowawayCA.create(now=NOW)


@pytest.fixture(scope="module")
def inter(root: ThrowawayCA) -> ThrowawayCA:
    return root.intermediate("mykey test intermediate", now=NOW)


@pytest.fixture(scope="module")
def other_root() -> ThrowawayCA:
    return ThrowawayCA.create("some other root", now=NOW)


@pytest.fixture(scope="module")
def trust(root: ThrowawayCA, inter: ThrowawayCA) -> TrustStore:
    return TrustStore([root.cert], [inter.cert])


@pytest.fixture(scope="module")
def user(root: ThrowawayCA) -> UserCredential:
    return root.issue_user(now=NOW)


@pytest.fixture(scope="module")
def rsa_root() -> ThrowawayCA:
    return ThrowawayCA.create("mykey rsa root", key_type="rsa", now=NOW)  # RSA key 1 of 2


@pytest.fixture(scope="module")
def rsa_user(rsa_root: ThrowawayCA) -> UserCredential:
    return rsa_root.issue_user(key_type="rsa", now=NOW)  # RSA key 2 of 2


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# ---------------------------------------------------------------- chains


def test_direct_chain_returns_privacy_safe_info(root: ThrowawayCA, user: UserCredential) -> None:
    info = TrustStore([root.cert]).verify(user.cert, at=NOW)
    der = user.cert_der()
    assert info.issuer == "CN=mykey throwaway root"
    assert info.serial == user.cert.serial_number
    assert info.fingerprint == hashlib.sha256(der).digest()
    assert info.subject_digest == hashlib.sha256(user.cert.subject.public_bytes()).digest()
    assert len(info.fingerprint) == len(info.subject_digest) == 32
    assert info.key_type == "ec-p256"
    assert info.der == der
    assert info.not_before.tzinfo is not None and info.not_before <= NOW <= info.not_after
    cn = user.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str) and not cn.startswith("mykey throwaway")  # pseudonymous CN
    assert cn not in repr(info) and cn.encode() not in repr(info).encode()


def test_pem_and_der_input(root: ThrowawayCA, user: UserCredential) -> None:
    ts = TrustStore.from_bytes(root.cert_pem())
    assert ts.verify(user.cert_pem(), at=NOW).serial == user.serial
    assert ts.verify(user.cert_der(), at=NOW).serial == user.serial


def test_chain_with_configured_intermediate(trust: TrustStore, inter: ThrowawayCA) -> None:
    u = inter.issue_user(now=NOW)
    assert trust.verify(u.cert, at=NOW).issuer == "CN=mykey test intermediate"


def test_chain_with_supplied_intermediate(root: ThrowawayCA, inter: ThrowawayCA) -> None:
    u = inter.issue_user(now=NOW)
    ts = TrustStore([root.cert])
    with pytest.raises(UntrustedCertificateError, match="trust anchor"):
        ts.verify(u.cert, at=NOW)
    assert ts.verify(u.cert, at=NOW, extra_intermediates=[inter.cert]).serial == u.serial
    assert ts.verify(u.cert, at=NOW, extra_intermediates=[inter.cert_pem()]).serial == u.serial


def test_two_intermediates_and_path_length(root: ThrowawayCA) -> None:
    i1 = root.intermediate("level 1", path_length=1, now=NOW)
    i2 = i1.intermediate("level 2", path_length=0, now=NOW)
    u = i2.issue_user(now=NOW)
    assert TrustStore([root.cert], [i1.cert, i2.cert]).verify(u.cert, at=NOW).serial == u.serial

    tight = root.intermediate("level 1 pathlen 0", path_length=0, now=NOW)
    below = tight.intermediate("level 2 not allowed", now=NOW)
    u2 = below.issue_user(now=NOW)
    with pytest.raises(UntrustedCertificateError, match="path length constraint"):
        TrustStore([root.cert], [tight.cert, below.cert]).verify(u2.cert, at=NOW)


def test_root_key_rollover_same_name(root: ThrowawayCA) -> None:
    new_root = ThrowawayCA.create(now=NOW)  # same default name, different key
    u = new_root.issue_user(now=NOW)
    ts = TrustStore([root.cert, new_root.cert])
    assert ts.verify(u.cert, at=NOW).serial == u.serial
    with pytest.raises(UntrustedCertificateError):
        TrustStore([root.cert]).verify(u.cert, at=NOW)


def test_ed25519_ca_refused_and_rsa_root(rsa_root: ThrowawayCA, rsa_user: UserCredential) -> None:
    # The path validator verifies RSA and ECDSA issuers only: an Ed25519 CA is refused when configured.
    ed_root = ThrowawayCA.create("ed root", key_type="ed25519", now=NOW)
    with pytest.raises(CertificateError, match="unsupported key"):
        TrustStore([ed_root.cert])
    ed_inter = ThrowawayCA.create("rsa", key_type="rsa", now=NOW).intermediate("ed under rsa", key_type="ed25519", now=NOW)
    with pytest.raises(CertificateError, match="unsupported key"):
        TrustStore([rsa_root.cert], [ed_inter.cert])
    info = TrustStore([rsa_root.cert]).verify(rsa_user.cert, at=NOW)
    assert info.key_type == "rsa"


# ---------------------------------------------------------------- validity


def test_expired_and_not_yet_valid(root: ThrowawayCA) -> None:
    ts = TrustStore([root.cert])
    u = root.issue_user(not_before=NOW - 10 * DAY, not_after=NOW + 10 * DAY, now=NOW)
    assert ts.verify(u.cert, at=NOW + 10 * DAY).serial == u.serial  # notAfter is inclusive
    with pytest.raises(CertificateExpiredError, match="expired at") as exc:
        ts.verify(u.cert, at=NOW + 11 * DAY)
    assert not isinstance(exc.value, CertificateNotYetValidError)
    with pytest.raises(CertificateNotYetValidError, match="not valid until"):
        ts.verify(u.cert, at=NOW - 11 * DAY)
    assert issubclass(CertificateNotYetValidError, CertificateExpiredError)


def test_expired_intermediate(root: ThrowawayCA) -> None:
    old = root.intermediate("short-lived", not_before=NOW - 30 * DAY, not_after=NOW - DAY, now=NOW)
    u = old.issue_user(not_before=NOW - 10 * DAY, now=NOW)
    with pytest.raises(CertificateExpiredError, match="intermediate"):
        TrustStore([root.cert], [old.cert]).verify(u.cert, at=NOW)


def test_naive_time_rejected(trust: TrustStore, user: UserCredential) -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        trust.verify(user.cert, at=NOW.replace(tzinfo=None))


# ---------------------------------------------------------------- trust failures


def test_wrong_issuer(other_root: ThrowawayCA, trust: TrustStore) -> None:
    stranger = other_root.issue_user(now=NOW)
    with pytest.raises(UntrustedCertificateError, match="does not chain"):
        trust.verify(stranger.cert, at=NOW)
    impostor = ThrowawayCA.create(now=NOW)  # same issuer name as the trusted root, other key
    with pytest.raises(UntrustedCertificateError):
        trust.verify(impostor.issue_user(now=NOW).cert, at=NOW)


def test_tampered_tbs_and_signature(root: ThrowawayCA) -> None:
    ts = TrustStore([root.cert])
    u = root.issue_user(subject_cn="pseudonym-aaaaaaaa", now=NOW)
    der = u.cert_der()
    assert ts.verify(der, at=NOW)
    tbs = der.replace(b"pseudonym-aaaaaaaa", b"pseudonym-aaaaaaab")
    assert tbs != der
    with pytest.raises(UntrustedCertificateError):
        ts.verify(tbs, at=NOW)
    with pytest.raises(UntrustedCertificateError):
        ts.verify(_flip(der, len(der) - 1), at=NOW)  # last byte of the ECDSA signature


def test_signature_bit_string_malleability_rejected(rsa_root: ThrowawayCA) -> None:
    # An RSA signature ending in a 0 bit can be re-wrapped as a BIT STRING with 1 unused bit; cryptography
    # still verifies it, which would give one certificate two fingerprints. certs.verify rejects it.
    for _ in range(64):
        der = rsa_root.issue_user(now=NOW).cert_der()
        if der[-1] % 2 == 0:
            break
    head = b"\x03\x82\x01\x01\x00"
    assert der[-261:-256] == head
    malleated = der[:-257] + b"\x01" + der[-256:]
    assert x509.load_der_x509_certificate(malleated).signature == x509.load_der_x509_certificate(der).signature
    ts = TrustStore([rsa_root.cert])
    assert ts.verify(der, at=NOW)
    with pytest.raises(UntrustedCertificateError, match="canonically"):
        ts.verify(malleated, at=NOW)


def test_leaf_signed_by_non_ca(root: ThrowawayCA, user: UserCredential) -> None:
    fake_ca = ThrowawayCA(user.cert, user.key)
    victim = fake_ca.issue_user(now=NOW)
    with pytest.raises(UntrustedCertificateError, match="cA must be asserted"):
        TrustStore([root.cert]).verify(victim.cert, at=NOW, extra_intermediates=[user.cert])


def test_ca_without_key_cert_sign(root: ThrowawayCA) -> None:
    weak = root.intermediate("no keyCertSign", key_cert_sign=False, now=NOW)
    u = weak.issue_user(now=NOW)
    with pytest.raises(UntrustedCertificateError, match="keyCertSign"):
        TrustStore([root.cert], [weak.cert]).verify(u.cert, at=NOW)


def test_non_ca_anchor_rejected(user: UserCredential) -> None:
    with pytest.raises(CertificateError, match="not a CA"):
        TrustStore([user.cert])


def test_key_usage_without_digital_signature(trust: TrustStore, root: ThrowawayCA) -> None:
    u = root.issue_user(key_usage_digital_signature=False, now=NOW)
    with pytest.raises(KeyUsageError, match="digitalSignature"):
        trust.verify(u.cert, at=NOW)


def test_ca_certificate_as_user_rejected(trust: TrustStore, root: ThrowawayCA, inter: ThrowawayCA) -> None:
    with pytest.raises(KeyUsageError, match="CA certificate"):
        trust.verify(inter.cert, at=NOW)


def test_unsupported_user_key(trust: TrustStore, root: ThrowawayCA) -> None:
    u = root.issue_user(key_type="ed25519", now=NOW)
    with pytest.raises(UnsupportedKeyError, match="not supported"):
        trust.verify(u.cert, at=NOW)


# ---------------------------------------------------------------- revocation callback


def test_revoked_leaf(trust: TrustStore, root: ThrowawayCA, user: UserCredential) -> None:
    asked: list[tuple[str, int]] = []

    def revoked(issuer: str, serial: int) -> bool:
        asked.append((issuer, serial))
        return serial == user.serial

    with pytest.raises(CertificateRevokedError) as exc:
        trust.verify(user.cert, at=NOW, revoked=revoked)
    assert f"{user.serial:#x}" in str(exc.value) and "CN=mykey throwaway root" in str(exc.value)
    assert asked == [("CN=mykey throwaway root", user.serial)]  # the anchor is never asked


def test_revoked_intermediate(trust: TrustStore, inter: ThrowawayCA) -> None:
    u = inter.issue_user(now=NOW)
    asked: list[tuple[str, int]] = []

    def revoked(issuer: str, serial: int) -> bool:
        asked.append((issuer, serial))
        return serial == inter.cert.serial_number

    with pytest.raises(CertificateRevokedError, match="intermediate CA"):
        trust.verify(u.cert, at=NOW, revoked=revoked)
    assert asked == [("CN=mykey test intermediate", u.serial), ("CN=mykey throwaway root", inter.cert.serial_number)]
    assert trust.verify(u.cert, at=NOW, revoked=lambda i, s: False).serial == u.serial


# ---------------------------------------------------------------- challenge (proof of possession)


def test_challenge_ec(user: UserCredential, trust: TrustStore) -> None:
    sig = user.sign(CHALLENGE)
    certs.verify_challenge_signature(user.cert, CHALLENGE, sig)
    certs.verify_challenge_signature(trust.verify(user.cert, at=NOW), CHALLENGE, sig)  # CertInfo works too
    with pytest.raises(ChallengeSignatureError, match="request a new challenge"):
        certs.verify_challenge_signature(user.cert, CHALLENGE + b"x", sig)
    with pytest.raises(ChallengeSignatureError):
        certs.verify_challenge_signature(user.cert, CHALLENGE, _flip(sig, len(sig) - 1))
    with pytest.raises(ChallengeSignatureError):
        certs.verify_challenge_signature(user.cert, CHALLENGE, b"\x00" * 64)


def test_challenge_rsa(rsa_user: UserCredential, user: UserCredential) -> None:
    sig = rsa_user.sign(CHALLENGE)
    assert len(sig) == 256
    certs.verify_challenge_signature(rsa_user.cert, CHALLENGE, sig)
    with pytest.raises(ChallengeSignatureError):
        certs.verify_challenge_signature(rsa_user.cert, b"another nonce", sig)
    with pytest.raises(ChallengeSignatureError):
        certs.verify_challenge_signature(rsa_user.cert, CHALLENGE, _flip(sig, 100))
    with pytest.raises(ChallengeSignatureError):  # someone else's card
        certs.verify_challenge_signature(user.cert, CHALLENGE, sig)
    with pytest.raises(ChallengeSignatureError):
        certs.verify_challenge_signature(rsa_user.cert, CHALLENGE, user.sign(CHALLENGE))


def test_challenge_empty_inputs(user: UserCredential) -> None:
    with pytest.raises(ChallengeSignatureError, match="non-empty"):
        certs.verify_challenge_signature(user.cert, b"", user.sign(b""))
    with pytest.raises(ChallengeSignatureError, match="empty"):
        certs.verify_challenge_signature(user.cert, CHALLENGE, b"")


# ---------------------------------------------------------------- renewal


def test_renewal_keeps_subject_changes_serial_and_key(root: ThrowawayCA, trust: TrustStore, user: UserCredential) -> None:
    new = root.renew(user, now=NOW + 30 * DAY)
    a = trust.verify(user.cert, at=NOW + 30 * DAY)
    b = trust.verify(new.cert, at=NOW + 30 * DAY)
    assert certs.same_subject(a, b)
    assert a.subject_digest == b.subject_digest
    assert a.serial != b.serial and a.fingerprint != b.fingerprint
    spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    assert new.key.public_key().public_bytes(*spki) != user.key.public_key().public_bytes(*spki)
    other = trust.verify(root.issue_user(now=NOW).cert, at=NOW)
    assert not certs.same_subject(a, other)
    with pytest.raises(ChallengeSignatureError):  # the old card's key no longer matches
        certs.verify_challenge_signature(new.cert, CHALLENGE, user.sign(CHALLENGE))


# ---------------------------------------------------------------- CRLs


def test_crl_der_and_pem(root: ThrowawayCA, trust: TrustStore, user: UserCredential) -> None:
    der = root.crl(
        [(user, "superseded"), (1234, "key_compromise"), (user.cert, "unspecified", NOW - 2 * DAY)],
        number=7,
        this_update=NOW - DAY,
        next_update=NOW + 6 * DAY,
    )
    pem = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    for data in (der, pem):
        info = certs.verify_crl(data, trust, at=NOW)
        assert info.issuer == "CN=mykey throwaway root"
        assert info.number == 7
        assert info.this_update == NOW - DAY and info.next_update == NOW + 6 * DAY
        assert info.fingerprint == hashlib.sha256(der).digest()
        assert [(e.serial, e.reason) for e in info.entries] == [
            (user.serial, "superseded"),
            (1234, "key_compromise"),
            (user.serial, "unspecified"),
        ]
        assert info.entries[0].revoked_at == NOW - DAY and info.entries[2].revoked_at == NOW - 2 * DAY


def test_crl_empty_and_feeds_callback(root: ThrowawayCA, trust: TrustStore, user: UserCredential) -> None:
    assert certs.verify_crl(root.crl([], now=NOW), trust, at=NOW).entries == ()
    info = certs.verify_crl(root.crl([(user, "superseded")], now=NOW), trust, at=NOW)
    revoked = {(info.issuer, e.serial) for e in info.entries}
    with pytest.raises(CertificateRevokedError):
        trust.verify(user.cert, at=NOW, revoked=lambda i, s: (i, s) in revoked)


def test_crl_by_intermediate(trust: TrustStore, inter: ThrowawayCA, root: ThrowawayCA) -> None:
    info = certs.verify_crl(inter.crl([(5, "cessation_of_operation")], now=NOW), trust, at=NOW)
    assert info.issuer == "CN=mykey test intermediate"
    assert info.entries[0].reason == "cessation_of_operation"
    with pytest.raises(CrlError, match="not a configured"):  # intermediate not known to this store
        certs.verify_crl(inter.crl([], now=NOW), TrustStore([root.cert]), at=NOW)
    with pytest.raises(CrlError, match="revoked"):
        certs.verify_crl(
            inter.crl([], now=NOW), trust, at=NOW, revoked=lambda i, s: s == inter.cert.serial_number
        )


def test_crl_by_expired_intermediate(root: ThrowawayCA) -> None:
    old = root.intermediate("expired crl signer", not_before=NOW - 30 * DAY, not_after=NOW - DAY, now=NOW)
    crl = old.crl([], now=NOW)
    with pytest.raises(CrlError, match="not trusted"):
        certs.verify_crl(crl, TrustStore([root.cert], [old.cert]), at=NOW)


def test_crl_issuer_without_crl_sign(root: ThrowawayCA) -> None:
    no_crl = root.intermediate("no cRLSign", key_cert_sign=False, now=NOW)
    with pytest.raises(CrlError, match="cRLSign"):
        certs.verify_crl(no_crl.crl([], now=NOW), TrustStore([root.cert], [no_crl.cert]), at=NOW)


def test_crl_unknown_ca(other_root: ThrowawayCA, trust: TrustStore) -> None:
    with pytest.raises(CrlError, match="not a configured trust anchor"):
        certs.verify_crl(other_root.crl([(1, "superseded")], now=NOW), trust, at=NOW)
    impostor = ThrowawayCA.create(now=NOW)  # same name as the trusted root
    with pytest.raises(CrlError, match="signature"):
        certs.verify_crl(impostor.crl([(1, "superseded")], now=NOW), trust, at=NOW)


def test_crl_tampered(root: ThrowawayCA, trust: TrustStore) -> None:
    der = root.crl([(0x1234567, "key_compromise")], now=NOW)
    serial_bytes = (0x1234567).to_bytes(4, "big")
    assert der.count(serial_bytes) == 1
    tampered = der.replace(serial_bytes, (0x1234568).to_bytes(4, "big"))
    with pytest.raises(CrlError, match="signature"):
        certs.verify_crl(tampered, trust, at=NOW)
    with pytest.raises(CrlError):
        certs.verify_crl(_flip(der, len(der) - 1), trust, at=NOW)


def test_crl_expired_and_not_yet_valid(root: ThrowawayCA, trust: TrustStore) -> None:
    crl = root.crl([], this_update=NOW - 10 * DAY, next_update=NOW - DAY)
    with pytest.raises(CrlError, match="fetch a fresh CRL"):
        certs.verify_crl(crl, trust, at=NOW)
    assert certs.verify_crl(crl, trust, at=NOW - DAY).number == 1  # nextUpdate inclusive
    future = root.crl([], this_update=NOW + DAY)
    with pytest.raises(CrlError, match="not valid until"):
        certs.verify_crl(future, trust, at=NOW)


def test_crl_bad_reason_rejected_by_builder(root: ThrowawayCA) -> None:
    with pytest.raises(ValueError, match="superseded"):
        root.crl([(1, "Superseded!")], now=NOW)


# ---------------------------------------------------------------- loading and garbage


def test_load_certificates_bundle(root: ThrowawayCA, inter: ThrowawayCA) -> None:
    bundle = b"\n" + root.cert_pem() + inter.cert_pem()
    assert [c.subject for c in certs.load_certificates(bundle)] == [root.cert.subject, inter.cert.subject]
    assert certs.load_certificates(root.cert_der()) == [root.cert]
    assert certs.load_certificate(b"  \n" + root.cert_pem()) == root.cert
    with pytest.raises(CertificateError):
        certs.load_certificates(b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"\x30\x03\x02\x01\x01"],
)
def test_garbage_is_certificate_error(data: bytes, trust: TrustStore) -> None:
    with pytest.raises(CertificateError):
        certs.load_certificate(data)
    with pytest.raises(CertificateError):
        trust.verify(data, at=NOW)
    with pytest.raises(CrlError):
        certs.verify_crl(data, trust, at=NOW)


def test_non_bytes_is_certificate_error(trust: TrustStore) -> None:
    with pytest.raises(CertificateError, match="must be bytes"):
        certs.load_certificate("-----BEGIN CERTIFICATE-----")  # type: ignore[arg-type]
    with pytest.raises(CrlError, match="must be bytes"):
        certs.verify_crl(None, trust, at=NOW)  # type: ignore[arg-type]


def test_errors_are_mykey_errors() -> None:
    for cls in (UntrustedCertificateError, CertificateExpiredError, CertificateRevokedError, KeyUsageError,
                ChallengeSignatureError, CrlError, UnsupportedKeyError):
        assert issubclass(cls, CertificateError) and issubclass(cls, MykeyError)


_fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(trust: TrustStore, data: bytes) -> None:
    with pytest.raises(CertificateError):
        certs.load_certificate(data)
    with pytest.raises(CrlError):
        certs.verify_crl(data, trust, at=NOW)


@_fuzz
@given(st.data())
def test_fuzz_mutated_cert_and_crl(trust: TrustStore, inter: ThrowawayCA, data: st.DataObject) -> None:
    cert_der, crl_der = _mutation_targets(inter)
    i = data.draw(st.integers(0, len(cert_der) - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = cert_der[:i] + bytes([cert_der[i] ^ (1 << bit)]) + cert_der[i + 1 :]
    with pytest.raises(CertificateError):  # any single-bit change must be caught, and only as CertificateError
        trust.verify(mutated, at=NOW)
    j = data.draw(st.integers(0, len(crl_der) - 1))
    mutated_crl = crl_der[:j] + bytes([crl_der[j] ^ (1 << bit)]) + crl_der[j + 1 :]
    with pytest.raises(CrlError):
        certs.verify_crl(mutated_crl, trust, at=NOW)


_MUTATION_CACHE: dict[str, tuple[bytes, bytes]] = {}


def _mutation_targets(inter: ThrowawayCA) -> tuple[bytes, bytes]:
    if "t" not in _MUTATION_CACHE:
        u = inter.issue_user(now=NOW)
        _MUTATION_CACHE["t"] = (u.cert_der(), inter.crl([(u, "superseded"), (99, "key_compromise")], number=3, now=NOW))
    return _MUTATION_CACHE["t"]


# ---------------------------------------------------------------- pki helpers


def test_write_credential_files(tmp_path, user: UserCredential, root: ThrowawayCA) -> None:  # type: ignore[no-untyped-def]
    cert_path, key_path = user.write(tmp_path / "out", "alice-card")
    assert cert_path.name == "alice-card.pem" and key_path.name == "alice-card.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert certs.load_certificate(cert_path.read_bytes()) == user.cert
    key = load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == user.key.public_key()
    key_path.chmod(0o644)
    user.write(tmp_path / "out", "alice-card")  # overwriting resets the mode
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["alice-card.key", "alice-card.pem"]
    ca_cert, ca_key = root.write(tmp_path, "root")
    assert TrustStore.from_pem_files([ca_cert]).verify(user.cert, at=NOW).serial == user.serial
    assert stat.S_IMODE(os.stat(ca_key).st_mode) == 0o600


def test_issue_user_options(root: ThrowawayCA) -> None:
    u = root.issue_user(serial=424242, subject_cn="pseudo-1", now=NOW)
    assert u.serial == 424242 and u.key_type == "ec-p256"
    assert u.cert.not_valid_before_utc == NOW - DAY
    assert u.cert.not_valid_after_utc == NOW + timedelta(days=5 * 365)
    a, b = root.issue_user(now=NOW), root.issue_user(now=NOW)
    assert a.cert.subject != b.cert.subject and a.serial != b.serial
    with pytest.raises(ValueError, match="unknown key type"):
        pki.generate_key("dsa")
    with pytest.raises(ValueError, match="timezone-aware"):
        root.issue_user(now=datetime(2026, 1, 1))


# ---------------------------------------------------------------- what the platform records about a certificate


def test_issuing_ca_and_issued_by(root: ThrowawayCA, inter: ThrowawayCA, trust: TrustStore) -> None:
    ca = certs.issuing_ca(inter.cert)
    assert ca == certs.issuing_ca(inter.cert_pem())  # bytes or a parsed certificate
    assert ca.issuer == root.cert.subject.rfc4514_string() and ca.subject == inter.cert.subject.rfc4514_string()
    assert ca.serial == format(inter.cert.serial_number, "x") and len(ca.key_id) == 20
    info = trust.verify(inter.issue_user(now=NOW).cert, at=NOW)
    aki = certs.authority_key_id(info)
    assert aki == ca.key_id  # the user certificate names its issuer's key
    assert certs.issued_by(info.issuer, aki, ca)
    # After a key rollover the CA keeps its name: the key identifier tells the two apart.
    rolled = certs.IssuingCa(ca.issuer, "99", ca.subject, b"\x01" * 20)
    assert not certs.issued_by(info.issuer, aki, rolled)
    # Without key identifiers on either side, the name decides.
    assert certs.issued_by(info.issuer, b"", rolled) and certs.issued_by(info.issuer, aki, ca._replace(key_id=b""))
    assert not certs.issued_by("CN=someone else", b"", ca._replace(key_id=b""))


def test_keyed_subject_digest(root: ThrowawayCA, trust: TrustStore, user: UserCredential) -> None:
    key_a, key_b = b"a" * 32, b"b" * 32
    a = trust.verify(user.cert, at=NOW)
    renewed = trust.verify(root.renew(user, now=NOW).cert, at=NOW)
    other = trust.verify(root.issue_user(now=NOW).cert, at=NOW)
    digest = certs.keyed_subject_digest(key_a, a)
    assert len(digest) == 32 and digest != a.subject_digest  # keyed: not the plain SHA-256 of the subject
    assert digest == certs.keyed_subject_digest(key_a, renewed)  # the same holder across renewals
    assert digest != certs.keyed_subject_digest(key_b, a) and digest != certs.keyed_subject_digest(key_a, other)
