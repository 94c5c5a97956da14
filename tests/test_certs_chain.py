"""Path validation by cryptography's verifier: bounded work on hostile bundles, the leaf profile
as its extension policy, and the checks that stay ours (leaf key size, messages, revocation)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mykey.domain import certs
from mykey.domain.certs import (
    CertificateBundleError,
    CertificateExpiredError,
    ChallengeSignatureError,
    KeyUsageError,
    LeafProfile,
    TrustStore,
    UnsupportedKeyError,
    UntrustedCertificateError,
)
from mykey_dev.pki import ThrowawayCA, UserCredential

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
CHALLENGE = b"mykey:create:" + b"ab" * 32
ROOT_NAME = "mykey chain root"


@pytest.fixture(scope="module")
def root() -> ThrowawayCA:
    return ThrowawayCA.create(ROOT_NAME, now=NOW)


def _name(**attrs: str) -> x509.Name:
    oids = {"C": NameOID.COUNTRY_NAME, "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


def _ku(digital_signature: bool = True, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


CLIENT_AUTH = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
JPKI_POLICY = x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(certs.JPKI_AUTH_POLICY_OID), None)])


def leaf(
    issuer: ThrowawayCA,
    *,
    key=None,
    subject: x509.Name | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
) -> UserCredential:
    """A user certificate with exactly the extensions given (default: KU digitalSignature + EKU clientAuth)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    if extensions is None:
        extensions = [(_ku(), True), (CLIENT_AUTH, False)]
    b = (
        x509.CertificateBuilder()
        .subject_name(subject or _name(C="JP", CN="997794E9AGCIEG13221003A"))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    return UserCredential(b.sign(issuer.key, hashes.SHA256()), key)


def hostile_bundle(n: int, name: x509.Name) -> tuple[UserCredential, list[x509.Certificate]]:
    """A leaf plus n self-issued CA certificates, all named alike and all with one key, so that
    every one verifies every other's signature: n**depth candidate paths for a naive builder."""
    key = ec.generate_private_key(ec.SECP256R1())
    cas = []
    for _ in range(n):
        cas.append(
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ku(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
    fake = ThrowawayCA(cas[0], key)
    return leaf(fake), cas


# --------------------------------------------------------------------------- item 1: bounded work


@pytest.mark.parametrize("n", [8, 12, 20])
def test_a_hostile_bundle_is_refused_within_milliseconds(root: ThrowawayCA, n: int) -> None:
    user, cas = hostile_bundle(n, root.cert.subject)  # named like the trusted root
    bundle = user.cert_pem() + b"".join(c.public_bytes(Encoding.PEM) for c in cas)
    ts = TrustStore([root.cert])
    t0 = time.perf_counter()
    with pytest.raises(CertificateBundleError, match="at most"):
        ts.verify(user.cert, at=NOW, extra_intermediates=cas)
    with pytest.raises(CertificateBundleError, match="at most"):
        certs.verify_presented(ts, bundle, CHALLENGE, user.sign(CHALLENGE), at=NOW)
    assert time.perf_counter() - t0 < 0.5


def test_the_most_a_bundle_may_carry_is_still_cheap(root: ThrowawayCA) -> None:
    # At the cap, every ordering of the look-alike CAs is a candidate path: the validator's
    # budget of signature checks and the depth limit end it at once.
    user, cas = hostile_bundle(certs.MAX_EXTRA_CERTS, root.cert.subject)
    t0 = time.perf_counter()
    for _ in range(5):
        with pytest.raises(UntrustedCertificateError):
            TrustStore([root.cert]).verify(user.cert, at=NOW, extra_intermediates=cas)
    assert time.perf_counter() - t0 < 0.5


def test_duplicates_are_dropped_before_counting(root: ThrowawayCA) -> None:
    inter = root.intermediate("dup inter", now=NOW)
    u = inter.issue_user(now=NOW)
    bundle = u.cert_pem() + inter.cert_pem() * 10 + u.cert_pem()
    leaf_cert, extra = certs.load_bundle(bundle)
    assert leaf_cert == u.cert and extra == [inter.cert]
    info = certs.verify_presented(TrustStore([root.cert]), bundle, CHALLENGE, u.sign(CHALLENGE), at=NOW)
    assert info.serial == u.serial


def test_bundle_size_is_capped_before_parsing(root: ThrowawayCA) -> None:
    with pytest.raises(CertificateBundleError, match="bytes"):
        certs.load_bundle(b"-----BEGIN CERTIFICATE-----\n" + b"A" * certs.MAX_BUNDLE_BYTES)


def test_proof_of_possession_comes_before_any_path_search(root: ThrowawayCA, monkeypatch) -> None:
    user, cas = hostile_bundle(certs.MAX_EXTRA_CERTS, root.cert.subject)
    bundle = user.cert_pem() + b"".join(c.public_bytes(Encoding.PEM) for c in cas)
    searched = []
    monkeypatch.setattr(TrustStore, "_build", lambda *a, **kw: searched.append(a))
    wrong = ec.generate_private_key(ec.SECP256R1()).sign(CHALLENGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ChallengeSignatureError):
        certs.verify_presented(TrustStore([root.cert]), bundle, CHALLENGE, wrong, at=NOW)
    assert searched == []


def test_root_generations_with_one_name(root: ThrowawayCA) -> None:
    # JPKI publishes root generations with the same name and different keys: each verifies its own leaves.
    gens = [ThrowawayCA.create("JPKI gen", key_type="rsa", now=NOW) for _ in range(3)]
    ts = TrustStore([g.cert for g in gens])
    for g in gens:
        info = ts.verify(leaf(g, extensions=[(_ku(), True), (JPKI_POLICY, True)]).cert, at=NOW)
        assert info.path[-1].fingerprint == certs.cert_ref(g.cert).fingerprint
        assert info.path[-1].key_id == certs.key_id(g.cert) and len(info.path) == 2


def test_expired_anchor_and_intermediate_are_expired(root: ThrowawayCA) -> None:
    old = root.intermediate("short-lived ca", not_before=NOW - 30 * DAY, not_after=NOW - DAY, now=NOW)
    u = old.issue_user(not_before=NOW - 10 * DAY, now=NOW)
    with pytest.raises(CertificateExpiredError, match="intermediate CA or trust anchor"):
        TrustStore([root.cert], [old.cert]).verify(u.cert, at=NOW)


# --------------------------------------------------------------------------- item 11: the leaf profile


def test_unknown_critical_extension_is_refused(root: ThrowawayCA) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    u = leaf(root, extensions=[(_ku(), True), (CLIENT_AUTH, False), (odd, True)])
    with pytest.raises(UntrustedCertificateError, match="critical extension"):
        TrustStore([root.cert]).verify(u.cert, at=NOW)
    ok = leaf(root, extensions=[(_ku(), True), (CLIENT_AUTH, False), (odd, False)])  # non-critical: ignored
    assert TrustStore([root.cert]).verify(ok.cert, at=NOW)


@pytest.mark.parametrize(
    "extensions, match",
    [
        ([(CLIENT_AUTH, False)], "digitalSignature"),  # no keyUsage at all
        ([(_ku(False), True), (CLIENT_AUTH, False)], "digitalSignature"),
        ([(_ku(), True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)], "clientAuth"),
        ([(_ku(), True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), False)], "clientAuth"),
        ([(_ku(), True)], "neither"),  # no EKU and no accepted policy
    ],
)
def test_leaf_profile_refusals(root: ThrowawayCA, extensions, match) -> None:
    u = leaf(root, extensions=extensions)
    with pytest.raises(KeyUsageError, match=match):
        TrustStore([root.cert]).verify(u.cert, at=NOW)


def test_profile_is_also_the_validators_extension_policy(root: ThrowawayCA) -> None:
    # Were our own pre-check skipped, the path validator refuses the same leaves.
    ts = TrustStore([root.cert])
    for ext in ([(_ku(), True)], [(_ku(), True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)]):
        with pytest.raises(UntrustedCertificateError, match="extension validator failed"):
            ts._build(leaf(root, extensions=ext).cert, NOW, (), ca=False)


def test_jpki_shaped_leaf_without_eku_or_san(root: ThrowawayCA) -> None:
    rsa_root = ThrowawayCA.create("JPKI-like root", key_type="rsa", now=NOW)
    u = leaf(rsa_root, key=rsa.generate_private_key(65537, 2048), extensions=[(_ku(), True), (JPKI_POLICY, True)])
    info = TrustStore([rsa_root.cert]).verify(u.cert, at=NOW)
    assert info.key_type == "rsa" and [c.serial for c in info.path] == [
        format(u.serial, "x"), format(rsa_root.cert.serial_number, "x")]
    # Another configured policy OID: the JPKI one is no longer enough.
    with pytest.raises(KeyUsageError, match="1.2.3.4"):
        TrustStore([rsa_root.cert], profile=LeafProfile(frozenset({"1.2.3.4"}))).verify(u.cert, at=NOW)


def test_weak_rsa_leaf_is_refused_though_the_validator_accepts_it(root: ThrowawayCA) -> None:
    u = leaf(root, key=rsa.generate_private_key(65537, 1024))
    with pytest.raises(UnsupportedKeyError, match="1024 bits"):
        TrustStore([root.cert]).verify(u.cert, at=NOW)


def test_name_constraints_on_san_are_honoured(root: ThrowawayCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    nc = x509.NameConstraints(permitted_subtrees=[x509.RFC822Name("example.jp")], excluded_subtrees=None)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CN="constrained ca")).issuer_name(root.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - DAY).not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ku(cert_sign=True), critical=True)
        .add_extension(nc, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    ca = ThrowawayCA(ca_cert, key)
    ts = TrustStore([root.cert], [ca.cert])
    good = leaf(ca, extensions=[(_ku(), True), (CLIENT_AUTH, False),
                                (x509.SubjectAlternativeName([x509.RFC822Name("a@example.jp")]), False)])
    assert ts.verify(good.cert, at=NOW)
    bad = leaf(ca, extensions=[(_ku(), True), (CLIENT_AUTH, False),
                               (x509.SubjectAlternativeName([x509.RFC822Name("a@evil.example")]), False)])
    with pytest.raises(UntrustedCertificateError, match="name constraint"):
        ts.verify(bad.cert, at=NOW)


def test_the_subject_name_stays_out_of_refusals(root: ThrowawayCA) -> None:
    other = ThrowawayCA.create("not trusted", now=NOW)
    u = leaf(other, subject=_name(C="JP", CN="SECRETCN0001"))
    with pytest.raises(UntrustedCertificateError) as exc:
        TrustStore([root.cert]).verify(u.cert, at=NOW)
    assert "SECRETCN0001" not in str(exc.value)


def test_recorded_path_holds_no_subject_names(root: ThrowawayCA) -> None:
    inter = root.intermediate("path inter", now=NOW)
    u = leaf(inter, subject=_name(C="JP", CN="SECRETCN0002"))
    info = TrustStore([root.cert], [inter.cert]).verify(u.cert, at=NOW)
    assert [c.issuer for c in info.path] == ["CN=path inter", f"CN={ROOT_NAME}", f"CN={ROOT_NAME}"]
    assert info.path[0].authority_key_id == info.path[1].key_id == certs.key_id(inter.cert)
    assert info.path[1].authority_key_id == info.path[2].key_id
    assert "SECRETCN0002" not in repr(info.path)
