"""Verification of ID-card user certificates, challenge signatures and CRLs.

Pure logic over ``cryptography``: callers pass bytes and times, nothing here touches
the network, and the only file access is the explicit ``TrustStore.from_pem_files``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from ..errors import (
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    ChallengeSignatureError,
    CrlError,
    KeyUsageError,
    UnsupportedKeyError,
    UntrustedCertificateError,
    ValidationError,
)

__all__ = [
    "CertInfo",
    "CertificateError",
    "CertificateExpiredError",
    "CertificateNotYetValidError",
    "CertificateRevokedError",
    "ChallengeSignatureError",
    "CrlError",
    "CrlInfo",
    "IssuingCa",
    "KeyUsageError",
    "RevokedEntry",
    "TrustStore",
    "UnsupportedKeyError",
    "UntrustedCertificateError",
    "authority_key_id",
    "issued_by",
    "issuing_ca",
    "keyed_subject_digest",
    "load_certificate",
    "load_certificates",
    "same_subject",
    "verify_challenge_signature",
    "verify_crl",
]

# Longest path (leaf + intermediates + anchor) the builder will try.
MAX_PATH_LENGTH = 8
# Smallest RSA modulus accepted for a user (card) key.
MIN_RSA_BITS = 2048
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)

# Everything cryptography raises on malformed ASN.1, bad versions or odd extensions.
_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    CryptographyDeprecationWarning,  # raised, not warned, when warnings are turned into errors
)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CertInfo:
    """What mykey keeps about a verified user certificate: no names, only digests."""

    issuer: str
    serial: int
    fingerprint: bytes
    subject_digest: bytes
    not_before: datetime
    not_after: datetime
    key_type: str
    der: bytes = field(repr=False)  # holds the subject name: keep it out of logs and reprs


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked serial number from a CRL, with its reason (lower snake case)."""

    serial: int
    reason: str = "unspecified"
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class CrlInfo:
    """A verified CRL: its issuer, number, validity window, fingerprint and entries."""

    issuer: str
    number: int | None
    this_update: datetime
    next_update: datetime | None
    fingerprint: bytes
    entries: tuple[RevokedEntry, ...]


# --------------------------------------------------------------------------- helpers


def _as_bytes(data: object, what: str, error: type[CertificateError]) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise error(f"{what} must be bytes (PEM or DER), got {type(data).__name__}; read the file in binary mode")


def _is_pem(data: bytes) -> bool:
    return data.lstrip()[:10] == b"-----BEGIN"


def _require_aware(at: datetime) -> None:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValidationError(f"check time must be a timezone-aware datetime, got {at!r}; pass datetime.now(timezone.utc)")


def _describe(cert: x509.Certificate) -> str:
    """Issuer and serial: identifies a certificate without printing the subject name."""
    try:
        issuer = cert.issuer.rfc4514_string()
    except _PARSE_ERRORS:
        issuer = "<unparseable issuer>"
    return f"certificate serial {cert.serial_number:#x} from issuer {issuer!r}"


def _describe_ca(cert: x509.Certificate) -> str:
    """CA certificates are public; naming their subject is fine and helpful."""
    try:
        return f"CA certificate {cert.subject.rfc4514_string()!r}"
    except _PARSE_ERRORS:
        return _describe(cert)


def _key_type(cert: x509.Certificate) -> str:
    try:
        key = cert.public_key()
    except _PARSE_ERRORS as exc:
        raise UnsupportedKeyError(f"{_describe(cert)}: public key cannot be read ({exc}); the card certificate is unusable") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise UnsupportedKeyError(
                f"{_describe(cert)}: RSA key is {key.key_size} bits; at least {MIN_RSA_BITS} is required, renew the card certificate"
            )
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ec-p256"
    name = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
    raise UnsupportedKeyError(f"{_describe(cert)}: key type {name} is not supported; use an RSA (>= 2048) or ECDSA P-256 card certificate")


def _cert_info(cert: x509.Certificate) -> CertInfo:
    der = cert.public_bytes(Encoding.DER)
    return CertInfo(
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        fingerprint=hashlib.sha256(der).digest(),
        subject_digest=hashlib.sha256(cert.subject.public_bytes()).digest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=_key_type(cert),
        der=der,
    )


def _extension(cert: x509.Certificate, ext_type: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None
    except _PARSE_ERRORS as exc:
        raise UntrustedCertificateError(f"{_describe(cert)}: malformed extensions ({exc}); the certificate cannot be trusted") from exc


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``issuer``'s subject matches ``cert``'s issuer and its key made the signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, *_PARSE_ERRORS):
        return False
    return True


def _check_validity(cert: x509.Certificate, at: datetime, role: str) -> None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    who = _describe(cert) if role == "user" else _describe_ca(cert)
    if at < nb:
        raise CertificateNotYetValidError(
            f"{role} {who} is not valid until {nb.isoformat()} (checked at {at.isoformat()}); check the clock or wait"
        )
    if at > na:
        advice = "renew the card certificate" if role == "user" else "update the trust configuration"
        raise CertificateExpiredError(f"{role} {who} expired at {na.isoformat()} (checked at {at.isoformat()}); {advice}")


def _check_ca(cert: x509.Certificate, below: int, role: str) -> None:
    """``cert`` issued the next certificate down; ``below`` intermediates sit between it and the leaf."""
    bc = _extension(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise UntrustedCertificateError(
            f"{_describe(cert)} signed another certificate but is not a CA (BasicConstraints ca=True missing); the chain is invalid"
        )
    if bc.path_length is not None and below > bc.path_length:
        raise UntrustedCertificateError(
            f"{role} {_describe_ca(cert)} allows {bc.path_length} intermediate CA(s) below it but the chain has {below}; the chain is invalid"
        )
    ku = _extension(cert, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        raise UntrustedCertificateError(f"{role} {_describe_ca(cert)} may not sign certificates (KeyUsage lacks keyCertSign); the chain is invalid")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _signature_is_canonical(der: bytes, signature: bytes) -> bool:
    """The outer signature BIT STRING must declare 0 unused bits (else one cert has many encodings)."""
    return der.endswith(b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature)


def _check_encoding(cert: x509.Certificate) -> None:
    if cert.serial_number <= 0:
        raise UntrustedCertificateError(f"{_describe(cert)}: serial number is not positive (RFC 5280); the issuer must re-issue it")
    if not _signature_is_canonical(cert.public_bytes(Encoding.DER), cert.signature):
        raise UntrustedCertificateError(f"{_describe(cert)}: signature is not DER-encoded canonically; the certificate was altered")


def _check_signature_hash(cert: x509.Certificate) -> None:
    try:
        alg = cert.signature_hash_algorithm
    except _PARSE_ERRORS as exc:
        raise UntrustedCertificateError(f"{_describe(cert)}: unsupported signature algorithm ({exc}); the chain cannot be verified") from exc
    if isinstance(alg, _WEAK_HASHES):
        raise UntrustedCertificateError(f"{_describe(cert)} is signed with {alg.name}, which is too weak; the issuer must re-issue it with SHA-256")


# --------------------------------------------------------------------------- loading


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one certificate from PEM or DER bytes; CertificateError if it is not one."""
    data = _as_bytes(data, "certificate", CertificateError)
    try:
        if _is_pem(data):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"not a valid X.509 certificate in PEM or DER ({exc}); export the card certificate again") from exc


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse a PEM bundle (one or more certificates) or a single DER certificate."""
    data = _as_bytes(data, "certificate bundle", CertificateError)
    if not _is_pem(data):
        return [load_certificate(data)]
    try:
        certs = x509.load_pem_x509_certificates(data)
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"not a valid PEM certificate bundle ({exc}); check the file holds only CERTIFICATE blocks") from exc
    if not certs:
        raise CertificateError("the PEM bundle holds no certificates; check the file holds CERTIFICATE blocks")
    return certs


def _to_cert(cert: x509.Certificate | bytes) -> x509.Certificate:
    return cert if isinstance(cert, x509.Certificate) else load_certificate(cert)


# --------------------------------------------------------------------------- trust store

Revoked = Callable[[str, int], bool]


class TrustStore:
    """Trust anchors plus known intermediate CAs; verifies user certificate paths exactly."""

    def __init__(self, anchors: Sequence[x509.Certificate], intermediates: Iterable[x509.Certificate] = ()) -> None:
        self.anchors: tuple[x509.Certificate, ...] = tuple(anchors)
        self.intermediates: tuple[x509.Certificate, ...] = tuple(intermediates)
        if not self.anchors:
            raise CertificateError("a trust store needs at least one trust anchor; configure the issuing root CA certificate")
        for c in (*self.anchors, *self.intermediates):
            if not isinstance(c, x509.Certificate):
                raise CertificateError(f"trust store entries must be x509.Certificate, got {type(c).__name__}; load them with load_certificates()")
        for a in self.anchors:
            bc = _extension(a, x509.BasicConstraints)
            if bc is None or not bc.ca:
                raise CertificateError(f"trust anchor {_describe_ca(a)} is not a CA certificate; configure the root CA certificate instead")
        self._anchor_ders = frozenset(a.public_bytes(Encoding.DER) for a in self.anchors)
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for c in (*self.anchors, *self.intermediates):
            self._by_subject.setdefault(c.subject, []).append(c)

    @classmethod
    def from_bytes(cls, anchors: bytes | Iterable[bytes], intermediates: bytes | Iterable[bytes] = ()) -> TrustStore:
        """Build from PEM bundles / DER blobs (one bytes value or several)."""
        def load(blobs: bytes | Iterable[bytes]) -> list[x509.Certificate]:
            if isinstance(blobs, (bytes, bytearray, memoryview)):
                blobs = [blobs]
            return [c for b in blobs for c in load_certificates(b)]

        return cls(load(anchors), load(intermediates))

    @classmethod
    def from_pem_files(
        cls, anchors: Iterable[str | PathLike[str]], intermediates: Iterable[str | PathLike[str]] = ()
    ) -> TrustStore:
        """Read PEM/DER files named by the caller and build a store (the module's only I/O)."""
        if isinstance(anchors, (str, PathLike)):
            anchors = [anchors]
        if isinstance(intermediates, (str, PathLike)):
            intermediates = [intermediates]
        return cls.from_bytes([Path(p).read_bytes() for p in anchors], [Path(p).read_bytes() for p in intermediates])

    # -- path building

    def _is_anchor(self, cert: x509.Certificate) -> bool:
        return cert.public_bytes(Encoding.DER) in self._anchor_ders

    def _issuers(self, name: x509.Name, extra: Sequence[x509.Certificate]) -> list[x509.Certificate]:
        return [*self._by_subject.get(name, ()), *(c for c in extra if c.subject == name)]

    def _paths(self, cert: x509.Certificate, extra: Sequence[x509.Certificate]) -> list[list[x509.Certificate]]:
        """Signature-valid paths ``[cert, ..., anchor]`` (depth-first, at most a few)."""
        found: list[list[x509.Certificate]] = []

        def walk(path: list[x509.Certificate]) -> None:
            if len(path) >= MAX_PATH_LENGTH or len(found) >= 4:
                return
            tip = path[-1]
            for cand in self._issuers(tip.issuer, extra):
                if any(cand == p for p in path):
                    continue
                if not _signed_by(tip, cand):
                    continue
                if self._is_anchor(cand):
                    found.append([*path, cand])
                else:
                    walk([*path, cand])

        walk([cert])
        return found

    def _check_path(self, path: list[x509.Certificate], at: datetime, revoked: Revoked | None, leaf_role: str) -> None:
        """Everything beyond signatures: algorithms, CA flags, pathlen, validity, revocation."""
        for c in path[:-1]:
            _check_encoding(c)
            _check_signature_hash(c)
        for i, ca in enumerate(path[1:], start=1):
            role = "trust anchor" if i == len(path) - 1 else "intermediate"
            _check_ca(ca, below=i - 1, role=role)
        for i, c in enumerate(path):
            role = leaf_role if i == 0 else ("trust anchor" if i == len(path) - 1 else "intermediate")
            _check_validity(c, at, role)
        if leaf_role == "user":
            leaf = path[0]
            bc = _extension(leaf, x509.BasicConstraints)
            if bc is not None and bc.ca:
                raise KeyUsageError(f"{_describe(leaf)} is a CA certificate, not a user certificate; present the card's user certificate")
            ku = _extension(leaf, x509.KeyUsage)
            if ku is not None and not ku.digital_signature:
                raise KeyUsageError(
                    f"{_describe(leaf)} does not allow digitalSignature (KeyUsage); use the card's user-authentication certificate"
                )
        if revoked is not None:
            for i, c in enumerate(path[:-1]):
                issuer = c.issuer.rfc4514_string()
                if revoked(issuer, c.serial_number):
                    user = i == 0 and leaf_role == "user"
                    raise CertificateRevokedError(
                        f"{'user' if user else 'intermediate CA'} certificate serial {c.serial_number:#x} from issuer {issuer!r} "
                        "has been revoked; " + ("renew the card certificate" if user else "the issuing CA is no longer trusted")
                    )

    def _verify_path(
        self, cert: x509.Certificate, at: datetime, revoked: Revoked | None, extra: Iterable[x509.Certificate], leaf_role: str
    ) -> list[x509.Certificate]:
        _require_aware(at)
        extra_certs = [_to_cert(c) for c in extra]
        try:
            paths = self._paths(cert, extra_certs)
        except _PARSE_ERRORS as exc:
            raise UntrustedCertificateError(f"{_describe(cert)}: malformed certificate ({exc}); it cannot be trusted") from exc
        if not paths:
            raise UntrustedCertificateError(
                f"{_describe(cert)} does not chain to a configured trust anchor (unknown issuer or bad signature); "
                "check it was issued by a trusted CA and supply any missing intermediate"
            )
        first_error: CertificateError | None = None
        for path in paths:
            try:
                self._check_path(path, at, revoked, leaf_role)
            except CertificateError as exc:
                first_error = first_error or exc
                continue
            except _PARSE_ERRORS as exc:
                first_error = first_error or UntrustedCertificateError(f"{_describe(cert)}: malformed certificate in chain ({exc})")
                continue
            return path
        assert first_error is not None
        raise first_error

    def verify(
        self,
        cert: x509.Certificate | bytes,
        *,
        at: datetime,
        revoked: Revoked | None = None,
        extra_intermediates: Iterable[x509.Certificate | bytes] = (),
    ) -> CertInfo:
        """Verify a user certificate's path to an anchor at ``at``; return its privacy-safe CertInfo."""
        cert = _to_cert(cert)
        self._verify_path(cert, at, revoked, extra_intermediates, leaf_role="user")
        try:
            return _cert_info(cert)
        except _PARSE_ERRORS as exc:
            raise CertificateError(f"{_describe(cert)}: cannot be encoded ({exc})") from exc

    def verify_ca(self, ca: x509.Certificate | bytes, *, at: datetime) -> None:
        """Check that an intermediate CA certificate chains to a trust anchor at ``at``."""
        self._verify_path(_to_cert(ca), at, None, (), leaf_role="intermediate")

    def _verify_crl_issuer(self, ca: x509.Certificate, at: datetime, revoked: Revoked | None) -> None:
        if self._is_anchor(ca):
            _check_validity(ca, at, "trust anchor")
        else:
            self._verify_path(ca, at, revoked, (), leaf_role="intermediate")
        ku = _extension(ca, x509.KeyUsage)
        if ku is not None and not ku.crl_sign:
            raise CrlError(f"{_describe_ca(ca)} may not sign CRLs (KeyUsage lacks cRLSign); fetch the CRL from the proper CA")


# --------------------------------------------------------------------------- challenge


def verify_challenge_signature(cert: x509.Certificate | CertInfo | bytes, challenge: bytes, signature: bytes) -> None:
    """Check proof of possession: RSA PKCS#1 v1.5 or ECDSA P-256 (DER) over SHA-256(challenge)."""
    cert = load_certificate(cert.der) if isinstance(cert, CertInfo) else _to_cert(cert)
    if not isinstance(challenge, (bytes, bytearray)) or not challenge:
        raise ChallengeSignatureError("the challenge must be non-empty bytes; issue a fresh challenge nonce")
    if not isinstance(signature, (bytes, bytearray)) or not signature:
        raise ChallengeSignatureError("the challenge signature is empty; ask the card to sign the challenge again")
    key_type = _key_type(cert)
    key = cert.public_key()
    try:
        if key_type == "rsa":
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(bytes(signature), bytes(challenge), padding.PKCS1v15(), hashes.SHA256())
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(bytes(signature), bytes(challenge), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise ChallengeSignatureError(
            f"the signature over the challenge does not match the key of {_describe(cert)}; "
            "the card may be a different one or the challenge changed — request a new challenge and sign again"
        ) from exc


def sign_challenge(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, challenge: bytes) -> bytes:
    """What a card does for proof of possession: RSA PKCS#1 v1.5 or ECDSA (DER) over SHA-256(challenge).

    The platform never holds a card key; this is for terminals, the reference client and tests
    that simulate the card with a key file. The counterpart of verify_challenge_signature.
    """
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(challenge, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(challenge, ec.ECDSA(hashes.SHA256()))
    raise UnsupportedKeyError(
        f"a card key is RSA or ECDSA P-256, not {type(key).__name__}; use the card's user-authentication key"
    )


def same_subject(a: CertInfo, b: CertInfo) -> bool:
    """True if both certificates carry the same subject (compared by digest only)."""
    return hmac.compare_digest(a.subject_digest, b.subject_digest)


# --------------------------------------------------------------------------- what is recorded about a certificate


def keyed_subject_digest(key: bytes, info: CertInfo) -> bytes:
    """HMAC-SHA256 of the certificate subject under the platform's secret key.

    Keyed, so a stored digest cannot be matched against guessed subjects; equal for the
    same holder across renewals (the key lives in DATA/keys/subject.key).
    """
    return hmac.new(key, load_certificate(info.der).subject.public_bytes(), hashlib.sha256).digest()


def authority_key_id(info: CertInfo) -> bytes:
    """The issuing CA's key identifier named in the certificate (its AKI), or b\"\"."""
    aki = _extension(load_certificate(info.der), x509.AuthorityKeyIdentifier)
    return (aki.key_identifier or b"") if isinstance(aki, x509.AuthorityKeyIdentifier) else b""


class IssuingCa(NamedTuple):
    """A trusted intermediate CA as revocation sees it: who issued it, and whom it issues as."""

    issuer: str  # the CA above it (whose CRL can revoke it)
    serial: str  # its serial, lower-case hex
    subject: str  # the name it issues certificates under
    key_id: bytes  # its subject key identifier, or b""


def issuing_ca(cert: x509.Certificate | bytes) -> IssuingCa:
    """The IssuingCa facts of a CA certificate (DER or PEM bytes, or a parsed certificate)."""
    cert = _to_cert(cert)
    ski = _extension(cert, x509.SubjectKeyIdentifier)
    return IssuingCa(
        cert.issuer.rfc4514_string(),
        format(cert.serial_number, "x"),
        cert.subject.rfc4514_string(),
        ski.digest if isinstance(ski, x509.SubjectKeyIdentifier) else b"",
    )


def issued_by(cert_issuer: str, issuer_key_id: bytes, ca: IssuingCa) -> bool:
    """Was a certificate (its issuer name and AKI key identifier) issued by this CA?

    By key identifier when both sides have one (a CA's key rollover keeps its name), else by name.
    """
    if issuer_key_id and ca.key_id:
        return issuer_key_id == ca.key_id and cert_issuer == ca.subject
    return cert_issuer == ca.subject


# --------------------------------------------------------------------------- CRLs


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    data = _as_bytes(data, "CRL", CrlError)
    try:
        if _is_pem(data):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except _PARSE_ERRORS as exc:
        raise CrlError(f"not a valid CRL in PEM or DER ({exc}); download the CRL again") from exc


def _crl_entries(crl: x509.CertificateRevocationList) -> tuple[RevokedEntry, ...]:
    out: list[RevokedEntry] = []
    for rc in crl:
        exts = rc.extensions
        reason = "unspecified"
        for ext in exts:
            if isinstance(ext.value, x509.CRLReason):
                reason = ext.value.reason.name
            elif isinstance(ext.value, x509.CertificateIssuer):
                raise CrlError("indirect CRLs (entries for another issuer) are not supported; use the issuing CA's own CRL")
            elif ext.critical:
                raise CrlError(f"CRL entry for serial {rc.serial_number:#x} has an unsupported critical extension {ext.oid.dotted_string}")
        out.append(RevokedEntry(serial=rc.serial_number, reason=reason, revoked_at=rc.revocation_date_utc))
    return tuple(out)


def verify_crl(data: bytes, trust: TrustStore, *, at: datetime, revoked: Revoked | None = None) -> CrlInfo:
    """Parse and verify a CRL (PEM or DER) issued by a trusted CA and current at ``at``."""
    _require_aware(at)
    crl = _load_crl(data)
    try:
        issuer = crl.issuer
        issuer_str = issuer.rfc4514_string()
        candidates = [c for c in (*trust.anchors, *trust.intermediates) if c.subject == issuer]
        if not candidates:
            raise CrlError(f"CRL issuer {issuer_str!r} is not a configured trust anchor or intermediate; fetch the CRL from a trusted CA")
        signer = next((c for c in candidates if crl.is_signature_valid(c.public_key())), None)
        if signer is None:
            raise CrlError(f"CRL signature from {issuer_str!r} is invalid (tampered or wrong key); download the CRL again")
        if not _signature_is_canonical(crl.public_bytes(Encoding.DER), crl.signature):
            raise CrlError(f"CRL signature from {issuer_str!r} is not DER-encoded canonically (altered CRL); download the CRL again")
        alg = crl.signature_hash_algorithm
        if isinstance(alg, _WEAK_HASHES):
            raise CrlError(f"CRL from {issuer_str!r} is signed with {alg.name}, which is too weak; the CA must sign with SHA-256")
        try:
            trust._verify_crl_issuer(signer, at, revoked)
        except CrlError:
            raise
        except CertificateError as exc:
            raise CrlError(f"CRL issuer {issuer_str!r} is not trusted at {at.isoformat()}: {exc}") from exc

        this_update, next_update = crl.last_update_utc, crl.next_update_utc
        if at < this_update:
            raise CrlError(f"CRL from {issuer_str!r} is not valid until {this_update.isoformat()}; check the clock")
        if next_update is not None and at > next_update:
            raise CrlError(f"CRL from {issuer_str!r} expired at {next_update.isoformat()}; fetch a fresh CRL")

        number: int | None = None
        for ext in crl.extensions:
            if isinstance(ext.value, x509.CRLNumber):
                number = ext.value.crl_number
            elif isinstance(ext.value, x509.DeltaCRLIndicator):
                raise CrlError(f"CRL from {issuer_str!r} is a delta CRL, which is not supported; fetch the full CRL")
            elif isinstance(ext.value, x509.IssuingDistributionPoint) and ext.value.indirect_crl:
                raise CrlError(f"CRL from {issuer_str!r} is an indirect CRL, which is not supported; use the issuing CA's own CRL")
            elif ext.critical and not isinstance(ext.value, x509.IssuingDistributionPoint):
                raise CrlError(f"CRL from {issuer_str!r} has an unsupported critical extension {ext.oid.dotted_string}")
        entries = _crl_entries(crl)
        der = crl.public_bytes(Encoding.DER)
    except CrlError:
        raise
    except (CertificateError, *_PARSE_ERRORS) as exc:
        raise CrlError(f"malformed CRL ({exc}); download the CRL again") from exc
    return CrlInfo(
        issuer=issuer_str,
        number=number,
        this_update=this_update,
        next_update=next_update,
        fingerprint=hashlib.sha256(der).digest(),
        entries=entries,
    )
