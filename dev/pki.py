"""A throwaway PKI for tests and the demo: root/intermediate CAs, card-like user credentials, CRLs.

Nothing here is for production keys: private keys live in memory and are written unencrypted.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mykey.domain.certs import sign_challenge
from mykey.fs import write_atomic

__all__ = ["KEY_TYPES", "PrivateKey", "ThrowawayCA", "UserCredential", "generate_key", "key_type_of"]

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
# "ed25519" is offered for CA keys only; card (user) keys are "rsa" or "ec-p256".
KEY_TYPES = ("ec-p256", "rsa", "ed25519")
REASONS = tuple(x509.ReasonFlags.__members__)

_SHA256 = hashes.SHA256()
_CLIENT_AUTH = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
_USER_BC = x509.BasicConstraints(ca=False, path_length=None)
_KU_SIGN = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)
_KU_NO_SIGN = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=True, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)
_KU_CA = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)


def generate_key(key_type: str = "ec-p256") -> PrivateKey:
    """A fresh private key: "ec-p256", "rsa" (2048, e=65537), or "ed25519" (CAs only)."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")


def key_type_of(key: PrivateKey | object) -> str:
    """The key-type string ("rsa", "ec-p256", "ed25519") of a private or public key."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(key.curve, ec.SECP256R1):
        return "ec-p256"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    raise ValueError(f"unsupported key {type(key).__name__}; use one of {', '.join(KEY_TYPES)}")


def _sign_alg(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else _SHA256


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}; pass datetime.now(timezone.utc)")
    return now


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


class _CertAndKey:
    """Export helpers for anything holding ``cert`` and ``key``."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    def key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM of the private key (throwaway keys only)."""
        return _private_pem(self.key)

    def write(self, directory: Path | str, stem: str) -> tuple[Path, Path]:
        """Write ``stem.pem`` (certificate) and ``stem.key`` (private key, mode 0600)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        write_atomic(key_path, self.key_pem(), mode=0o600)  # never readable by others, even briefly
        write_atomic(cert_path, self.cert_pem(), mode=0o644)
        return cert_path, key_path


@dataclass
class UserCredential(_CertAndKey):
    """A user certificate plus its private key: what the ID card holds."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def key_type(self) -> str:
        return key_type_of(self.key)

    def sign(self, challenge: bytes) -> bytes:
        """Sign like the card: RSA PKCS#1 v1.5 or ECDSA (DER), both over SHA-256(challenge)."""
        return sign_challenge(self.key, challenge)

RevokeItem = Union[
    tuple[Union[int, UserCredential, x509.Certificate], str],
    tuple[Union[int, UserCredential, x509.Certificate], str, datetime],
]


class ThrowawayCA(_CertAndKey):
    """A CA (root or intermediate) with its key in memory; issues users, renewals and CRLs."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.key = key
        self._alg = _sign_alg(key)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())  # type: ignore[arg-type]

    @classmethod
    def create(
        cls,
        name: str = "mykey throwaway root",
        *,
        key_type: str = "ec-p256",
        valid_days: int = 3650,
        path_length: int | None = None,
        now: datetime | None = None,
        key: PrivateKey | None = None,
    ) -> ThrowawayCA:
        """A self-signed root CA named ``CN=name``."""
        now = _now(now)
        key = key or generate_key(key_type)
        subject = _cn(name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_KU_CA, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _sign_alg(key))
        )
        return cls(cert, key)

    @property
    def name(self) -> str:
        return self.cert.subject.rfc4514_string()

    def intermediate(
        self,
        name: str,
        *,
        key_type: str = "ec-p256",
        valid_days: int = 1825,
        path_length: int | None = 0,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_cert_sign: bool = True,
        now: datetime | None = None,
    ) -> ThrowawayCA:
        """A subordinate CA signed by this one (BasicConstraints ca=True, pathlen 0 by default)."""
        now = _now(now)
        key = generate_key(key_type)
        ku = _KU_CA if key_cert_sign else _KU_SIGN
        nb = not_before or now - timedelta(days=1)
        na = not_after or min(now + timedelta(days=valid_days), self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_cn(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(ku, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self.key, self._alg)
        )
        return ThrowawayCA(cert, key)

    def issue_user(
        self,
        *,
        serial: int | None = None,
        subject_cn: str | None = None,
        subject: x509.Name | None = None,
        key_type: str = "ec-p256",
        key: PrivateKey | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_usage_digital_signature: bool = True,
        now: datetime | None = None,
    ) -> UserCredential:
        """A card-like user certificate; the subject is a random pseudonym unless given."""
        now = _now(now)
        key = key or generate_key(key_type)
        if subject is None:
            subject = _cn(subject_cn or f"mykey-user-{secrets.token_hex(12)}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(days=1))
            .not_valid_after(not_after or now + timedelta(days=5 * 365))
            .add_extension(_USER_BC, critical=True)
            .add_extension(_KU_SIGN if key_usage_digital_signature else _KU_NO_SIGN, critical=True)
            .add_extension(_CLIENT_AUTH, critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self.key, self._alg)
        )
        return UserCredential(cert, key)

    def renew(self, old: UserCredential, *, key_type: str | None = None, now: datetime | None = None) -> UserCredential:
        """Re-issue for the same subject with a new key and a new serial."""
        return self.issue_user(subject=old.cert.subject, key_type=key_type or old.key_type, now=now)

    def crl(
        self,
        revoked: Sequence[RevokeItem],
        *,
        number: int = 1,
        this_update: datetime | None = None,
        next_update: datetime | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """A DER CRL; items are ``(serial | credential | cert, reason[, revoked_at])``."""
        now = _now(now)
        this_update = this_update or now
        next_update = next_update or this_update + timedelta(days=7)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(self._aki, critical=False)
        )
        for item in revoked:
            target, reason = item[0], item[1]
            revoked_at = item[2] if len(item) > 2 else this_update  # type: ignore[misc]
            if isinstance(target, UserCredential):
                serial = target.cert.serial_number
            elif isinstance(target, x509.Certificate):
                serial = target.serial_number
            else:
                serial = int(target)
            if reason not in REASONS:
                raise ValueError(f"unknown revocation reason {reason!r}; use one of {', '.join(REASONS)}")
            rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
            if reason != "unspecified":  # RFC 5280: omit reasonCode rather than use unspecified
                rb = rb.add_extension(x509.CRLReason(x509.ReasonFlags[reason]), critical=False)
            builder = builder.add_revoked_certificate(rb.build())
        return builder.sign(self.key, self._alg).public_bytes(Encoding.DER)
