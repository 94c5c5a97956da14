"""Verification of ID-card user certificates, challenge signatures and CRLs.

Pure logic over ``cryptography``: callers pass bytes and times, nothing here touches
the network, and the only file access is the explicit ``TrustStore.from_pem_files``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ..errors import (
    CertificateBundleError,
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    ChallengeSignatureError,
    CrlError,
    KeyUsageError,
    StaleRevocationError,
    UnsupportedKeyError,
    UntrustedCertificateError,
    ValidationError,
)
from .events import CertRef

__all__ = [
    "AppliedCrl",
    "CertInfo",
    "CertRef",
    "CertificateBundleError",
    "CertificateError",
    "CertificateExpiredError",
    "CertificateNotYetValidError",
    "CertificateRevokedError",
    "ChallengeSignatureError",
    "CrlError",
    "CrlInfo",
    "CrlPolicy",
    "IssuingCa",
    "KeyUsageError",
    "LeafProfile",
    "RevokedEntry",
    "StaleRevocationError",
    "TrustStore",
    "UnsupportedKeyError",
    "UntrustedCertificateError",
    "authority_key_id",
    "cert_ref",
    "issued_by",
    "issuing_ca",
    "is_ca",
    "key_id",
    "keyed_subject_digest",
    "load_bundle",
    "load_certificate",
    "load_certificates",
    "same_subject",
    "verify_challenge_signature",
    "verify_crl",
    "verify_presented",
]

# Intermediate CAs allowed between a leaf and its trust anchor (JPKI leaves have none).
MAX_INTERMEDIATES = 3
# A presented bundle: at most this many bytes, and this many CA certificates after the leaf.
MAX_BUNDLE_BYTES = 32 * 1024
MAX_EXTRA_CERTS = 4
# Smallest RSA modulus accepted for a user (card) key and for a CA key.
MIN_RSA_BITS = 2048
_CA_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
# The certificate policy of the JPKI user-authentication certificate (利用者証明用電子証明書).
JPKI_AUTH_POLICY_OID = "1.2.392.200149.8.5.1.3.30"
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
    path: tuple[CertRef, ...] = ()  # the verified path, leaf first, trust anchor last


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
    issuer_key_id: bytes = b""  # key identifier of the CA key that signed it


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


def _cert_info(cert: x509.Certificate, path: tuple[CertRef, ...] = ()) -> CertInfo:
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
        path=path,
    )


def _extension(cert: x509.Certificate, ext_type: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None
    except _PARSE_ERRORS as exc:
        raise UntrustedCertificateError(f"{_describe(cert)}: malformed extensions ({exc}); the certificate cannot be trusted") from exc


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
# SHA-256 fingerprint of a CA certificate -> True if it was removed from the trust store.
Distrusted = Callable[[bytes], bool]
# (issuer DN, key identifier of the issuing CA's key) -> that CA's latest applied CRL, or None.
CrlLookup = Callable[[str, bytes], "AppliedCrl | None"]


class AppliedCrl(NamedTuple):
    """The latest CRL applied for one CA key: when it was issued and when the next one is due."""

    this_update: datetime
    next_update: datetime | None


def _span(td: timedelta) -> str:
    """A duration the way the CLI takes it: 7d, 6h, 30m or 90s."""
    seconds = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class CrlPolicy:
    """When a CA's revocation data is too old to rely on (checked for every issuer on a path).

    refuse_stale: refuse a certificate whose issuer's latest applied CRL is past its nextUpdate
    (or, for a CRL without nextUpdate, older than max_age); False accepts it (soft-fail).
    require_crl: also refuse when no CRL of the issuer was ever applied (fail closed).
    """

    refuse_stale: bool = True
    max_age: timedelta = timedelta(days=7)
    require_crl: bool = False

    def stale_reason(self, latest: AppliedCrl | None, at: datetime) -> str | None:
        """Why the revocation data of one CA is not fresh enough at ``at``, or None if it is."""
        if latest is None:
            return "no CRL of it has been applied" if self.require_crl else None
        if not self.refuse_stale:
            return None
        if latest.next_update is not None:
            if at > latest.next_update:
                return f"its latest applied CRL expired at {latest.next_update.isoformat()}"
            return None
        if at > latest.this_update + self.max_age:
            return (
                f"its latest applied CRL (issued {latest.this_update.isoformat()}, no nextUpdate) is older "
                f"than the accepted {_span(self.max_age)}"
            )
        return None


@dataclass(frozen=True)
class LeafProfile:
    """What a user (card) certificate must allow, beyond what path validation checks.

    keyUsage must be present with digitalSignature; and either extendedKeyUsage includes
    clientAuth, or (without an extendedKeyUsage extension) certificatePolicies names one of
    policy_oids. The default accepts the JPKI user-authentication certificate policy.
    """

    policy_oids: frozenset[str] = frozenset({JPKI_AUTH_POLICY_OID})

    def problem(self, cert: x509.Certificate) -> str | None:
        """Why the certificate may not be used for authentication here, or None."""
        ku = _extension(cert, x509.KeyUsage)
        if not isinstance(ku, x509.KeyUsage) or not ku.digital_signature:
            return "does not allow digitalSignature (KeyUsage); use the card's user-authentication certificate"
        eku = _extension(cert, x509.ExtendedKeyUsage)
        if isinstance(eku, x509.ExtendedKeyUsage):
            if ExtendedKeyUsageOID.CLIENT_AUTH in eku:
                return None
            return "is not for client authentication (ExtendedKeyUsage lacks clientAuth); use the card's user-authentication certificate"
        cp = _extension(cert, x509.CertificatePolicies)
        named = {pi.policy_identifier.dotted_string for pi in cp} if isinstance(cp, x509.CertificatePolicies) else set()
        if named & self.policy_oids:
            return None
        return (
            "names neither ExtendedKeyUsage clientAuth nor an accepted certificate policy "
            f"({', '.join(sorted(self.policy_oids)) or 'none configured'}); use the card's user-authentication certificate"
        )


# Extensions the end-entity policy accounts for; any other critical extension refuses the leaf.
_KNOWN_LEAF_EXTENSIONS = frozenset(
    e.oid
    for e in (
        x509.BasicConstraints, x509.KeyUsage, x509.ExtendedKeyUsage, x509.SubjectAlternativeName,
        x509.CertificatePolicies, x509.AuthorityKeyIdentifier, x509.AuthorityInformationAccess,
    )
)


def _policies(profile: LeafProfile) -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, end-entity policy) for the path validator: the WebPKI defaults, adapted to ID cards."""

    def leaf_usage(_policy: object, cert: x509.Certificate, _value: object) -> None:
        problem = profile.problem(cert)
        if problem is not None:
            raise ValueError(problem)

    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(x509.CertificatePolicies, Criticality.AGNOSTIC, None)
    ee = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)  # ID cards carry no SAN
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, leaf_usage)
        # Registering EKU replaces the validator's own "must contain clientAuth": leaf_usage decides.
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, leaf_usage)
        .may_be_present(x509.CertificatePolicies, Criticality.AGNOSTIC, None)
    )
    return ca, ee


def key_id(cert: x509.Certificate) -> bytes:
    """The certificate's key identifier, computed from its public key (SHA-1, RFC 5280 method 1)."""
    try:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]
    except _PARSE_ERRORS as exc:
        raise UntrustedCertificateError(f"{_describe(cert)}: public key cannot be read ({exc})") from exc


def cert_ref(cert: x509.Certificate) -> CertRef:
    """What a recorded path keeps about one certificate: issuer, serial, key identifiers, fingerprint."""
    aki = _extension(cert, x509.AuthorityKeyIdentifier)
    return CertRef(
        cert.issuer.rfc4514_string(),
        format(cert.serial_number, "x"),
        key_id(cert),
        (aki.key_identifier or b"") if isinstance(aki, x509.AuthorityKeyIdentifier) else b"",
        hashlib.sha256(cert.public_bytes(Encoding.DER)).digest(),
    )


def is_ca(cert: x509.Certificate) -> bool:
    """True if the certificate says it is a CA (BasicConstraints ca=True)."""
    bc = _extension(cert, x509.BasicConstraints)
    return isinstance(bc, x509.BasicConstraints) and bc.ca


def _check_ca_key(cert: x509.Certificate) -> None:
    """The path validator verifies RSA (>= 2048) and ECDSA issuers only."""
    try:
        key = cert.public_key()
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"{_describe_ca(cert)}: public key cannot be read ({exc})") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CA_CURVES):
        return
    name = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
    raise CertificateError(
        f"{_describe_ca(cert)} has an unsupported key ({name}); CA certificates must have an RSA "
        f"(>= {MIN_RSA_BITS} bits) or ECDSA P-256/P-384/P-521 key"
    )


def _chain_failure(cert: x509.Certificate, exc: Exception, at: datetime) -> CertificateError:
    """One clear refusal for a path the validator rejected (the leaf itself was checked before)."""
    text = re.sub(r"\s*\(encountered processing <Certificate\(.*\)>\)", "", str(exc))  # no subject names
    text = text.removeprefix("validation failed: ")[:240]
    if "signature check limit" in text:
        return CertificateBundleError(
            f"{_describe(cert)}: the bundle offers too many candidate CA certificates; send the card "
            "certificate and only its own intermediate CA certificate(s)"
        )
    if "not valid at validation time" in text:
        return CertificateExpiredError(
            f"{_describe(cert)}: an intermediate CA or trust anchor on its path is expired or not yet valid "
            f"at {at.isoformat()}; update the trust configuration or the intermediate certificates"
        )
    return UntrustedCertificateError(
        f"{_describe(cert)} does not chain to a configured trust anchor ({text}); "
        "check it was issued by a trusted CA and supply any missing intermediate"
    )


def _precheck_leaf(cert: x509.Certificate, at: datetime, profile: LeafProfile) -> None:
    """Refusals decided from the leaf alone, each with its own message, before any path search."""
    _check_encoding(cert)
    _check_signature_hash(cert)
    _key_type(cert)  # RSA size / curve: the validator does not check the leaf's key
    _check_validity(cert, at, "user")
    bc = _extension(cert, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise KeyUsageError(f"{_describe(cert)} is a CA certificate, not a user certificate; present the card's user certificate")
    problem = profile.problem(cert)
    if problem is not None:
        raise KeyUsageError(f"{_describe(cert)} {problem}")
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_LEAF_EXTENSIONS:
            raise UntrustedCertificateError(
                f"{_describe(cert)} carries a critical extension this platform does not understand "
                f"({ext.oid.dotted_string}); it cannot be used here"
            )


def _unique(certs: Iterable[x509.Certificate], skip: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates in order, without duplicates and without any of skip (compared by DER)."""
    seen = {c.public_bytes(Encoding.DER) for c in skip}
    out = []
    for c in certs:
        der = c.public_bytes(Encoding.DER)
        if der not in seen:
            seen.add(der)
            out.append(c)
    return out


class TrustStore:
    """Trust anchors plus known intermediate CAs; verifies user certificate paths.

    Path building is cryptography's (``cryptography.x509.verification``: bounded to 128
    signature checks per verification); this class adds what it does not do: the leaf
    profile's messages, the leaf's key size, bundle limits, revocation and CRL freshness.
    """

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        intermediates: Iterable[x509.Certificate] = (),
        *,
        profile: LeafProfile | None = None,
        max_intermediates: int = MAX_INTERMEDIATES,
    ) -> None:
        self.anchors: tuple[x509.Certificate, ...] = tuple(anchors)
        self.intermediates: tuple[x509.Certificate, ...] = tuple(intermediates)
        self.profile = profile or LeafProfile()
        self.max_intermediates = max_intermediates
        if not self.anchors:
            raise CertificateError("a trust store needs at least one trust anchor; configure the issuing root CA certificate")
        for c in (*self.anchors, *self.intermediates):
            if not isinstance(c, x509.Certificate):
                raise CertificateError(f"trust store entries must be x509.Certificate, got {type(c).__name__}; load them with load_certificates()")
        for a in self.anchors:
            bc = _extension(a, x509.BasicConstraints)
            if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
                raise CertificateError(f"trust anchor {_describe_ca(a)} is not a CA certificate; configure the root CA certificate instead")
        for c in (*self.anchors, *self.intermediates):
            _check_ca_key(c)
        self._anchor_ders = frozenset(a.public_bytes(Encoding.DER) for a in self.anchors)
        self._store = Store(list(self.anchors))
        self._ca_policy, self._ee_policy = _policies(self.profile)

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

    # -- path validation

    def _is_anchor(self, cert: x509.Certificate) -> bool:
        return cert.public_bytes(Encoding.DER) in self._anchor_ders

    def _build(self, cert: x509.Certificate, at: datetime, extra: Iterable[x509.Certificate | bytes], *, ca: bool) -> list[x509.Certificate]:
        """cryptography's path validation: [cert, intermediates..., anchor] or the refusal saying why."""
        extra_certs = _unique((_to_cert(c) for c in extra), (cert, *self.anchors, *self.intermediates))
        if len(extra_certs) > MAX_EXTRA_CERTS:
            raise CertificateBundleError(
                f"{_describe(cert)}: {len(extra_certs)} extra CA certificates were sent with it; at most "
                f"{MAX_EXTRA_CERTS} are accepted (send only the card's own intermediate CA certificates)"
            )
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .max_chain_depth(self.max_intermediates)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ca_policy if ca else self._ee_policy)
            .build_client_verifier()
        )
        try:
            return list(verifier.verify(cert, [*self.intermediates, *extra_certs]).chain)
        except VerificationError as exc:
            raise _chain_failure(cert, exc, at) from None

    @staticmethod
    def _check_chain(chain: list[x509.Certificate], at: datetime, revoked: Revoked | None,
                     crl_lookup: CrlLookup | None, crl_policy: CrlPolicy | None, leaf_role: str,
                     distrusted: Distrusted | None = None) -> None:
        """What path validation leaves to us: canonical encodings, removed CAs, revocation, CRL freshness."""
        for c in chain[1:-1]:
            _check_encoding(c)
            _check_signature_hash(c)
        if distrusted is not None:
            for c in chain[1:]:
                if distrusted(hashlib.sha256(c.public_bytes(Encoding.DER)).digest()):
                    raise UntrustedCertificateError(
                        f"{_describe(chain[0])}: {_describe_ca(c)} on its path was removed from the trust store; "
                        "present a certificate from a trusted CA"
                    )
        if revoked is not None:
            for i, c in enumerate(chain[:-1]):
                issuer = c.issuer.rfc4514_string()
                if revoked(issuer, c.serial_number):
                    user = i == 0 and leaf_role == "user"
                    raise CertificateRevokedError(
                        f"{'user' if user else 'intermediate CA'} certificate serial {c.serial_number:#x} from issuer {issuer!r} "
                        "has been revoked; " + ("renew the card certificate" if user else "the issuing CA is no longer trusted")
                    )
        if crl_lookup is not None:
            policy = crl_policy or CrlPolicy()
            for issuer in chain[1:]:
                latest = crl_lookup(issuer.subject.rfc4514_string(), key_id(issuer))
                why = policy.stale_reason(latest, at)
                if why is not None:
                    raise StaleRevocationError(
                        f"cannot check revocation of {_describe(chain[0])}: for {_describe_ca(issuer)}, {why}; "
                        "apply a current CRL (`mykey crl sync` or `mykey crl apply`) and try again"
                    )

    def verify(
        self,
        cert: x509.Certificate | bytes,
        *,
        at: datetime,
        revoked: Revoked | None = None,
        extra_intermediates: Iterable[x509.Certificate | bytes] = (),
        crl_lookup: CrlLookup | None = None,
        crl_policy: CrlPolicy | None = None,
        distrusted: Distrusted | None = None,
    ) -> CertInfo:
        """Verify a user certificate's path to an anchor at ``at``; return its privacy-safe CertInfo.

        The leaf is checked on its own first (encoding, key, validity, profile), then the path is
        built by cryptography's validator, then revocation (``revoked``) and, with ``crl_lookup``,
        the freshness of every issuer's latest applied CRL (``crl_policy``, default CrlPolicy()).
        ``distrusted`` refuses paths through a CA removed from the trust store (which its issuer may
        still vouch for when the caller sends it). CertInfo.path records the verified path, leaf first.
        """
        _require_aware(at)
        cert = _to_cert(cert)
        try:
            _precheck_leaf(cert, at, self.profile)
            chain = self._build(cert, at, extra_intermediates, ca=False)
            self._check_chain(chain, at, revoked, crl_lookup, crl_policy, "user", distrusted)
            return _cert_info(cert, tuple(cert_ref(c) for c in chain))
        except CertificateError:
            raise
        except _PARSE_ERRORS as exc:
            raise UntrustedCertificateError(f"{_describe(cert)}: malformed certificate ({exc}); it cannot be trusted") from exc

    def _verify_ca_path(self, ca: x509.Certificate, at: datetime, revoked: Revoked | None) -> list[x509.Certificate]:
        bc = _extension(ca, x509.BasicConstraints)
        if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
            raise UntrustedCertificateError(f"{_describe(ca)} is not a CA certificate (BasicConstraints ca=True missing)")
        _check_ca_key(ca)
        try:
            chain = self._build(ca, at, (), ca=True)
            self._check_chain(chain, at, revoked, None, None, "intermediate")
        except CertificateError:
            raise
        except _PARSE_ERRORS as exc:
            raise UntrustedCertificateError(f"{_describe_ca(ca)}: malformed certificate ({exc})") from exc
        return chain

    def verify_ca(self, ca: x509.Certificate | bytes, *, at: datetime) -> None:
        """Check that an intermediate CA certificate chains to a trust anchor at ``at``."""
        _require_aware(at)
        self._verify_ca_path(_to_cert(ca), at, None)

    def _verify_crl_issuer(self, ca: x509.Certificate, at: datetime, revoked: Revoked | None) -> None:
        if self._is_anchor(ca):
            _check_validity(ca, at, "trust anchor")
        else:
            self._verify_ca_path(ca, at, revoked)
        ku = _extension(ca, x509.KeyUsage)
        if ku is not None and not ku.crl_sign:
            raise CrlError(f"{_describe_ca(ca)} may not sign CRLs (KeyUsage lacks cRLSign); fetch the CRL from the proper CA")


# --------------------------------------------------------------------------- a presented certificate


def load_bundle(data: bytes) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """A presented certificate bundle: (leaf, extra CA certificates), bounded before any parsing.

    At most MAX_BUNDLE_BYTES, the leaf first, then at most MAX_EXTRA_CERTS distinct CA
    certificates (duplicates are dropped).
    """
    data = _as_bytes(data, "certificate", CertificateError)
    if len(data) > MAX_BUNDLE_BYTES:
        raise CertificateBundleError(
            f"the certificate bundle is {len(data)} bytes; at most {MAX_BUNDLE_BYTES} are accepted "
            "(send the card certificate and only its own intermediate CA certificates)"
        )
    chain = load_certificates(data)
    leaf, extra = chain[0], _unique(chain[1:], chain[:1])
    if len(extra) > MAX_EXTRA_CERTS:
        raise CertificateBundleError(
            f"{len(extra)} extra CA certificates were sent with the card certificate; at most {MAX_EXTRA_CERTS} "
            "are accepted (send only the card's own intermediate CA certificates)"
        )
    return leaf, extra


def verify_presented(
    trust: TrustStore,
    data: bytes,
    challenge: bytes,
    signature: bytes,
    *,
    at: datetime,
    revoked: Revoked | None = None,
    crl_lookup: CrlLookup | None = None,
    crl_policy: CrlPolicy | None = None,
    distrusted: Distrusted | None = None,
) -> CertInfo:
    """A certificate bundle presented with a signature over a challenge: bounded parsing, then the
    proof of possession (one signature check), and only then path validation and revocation."""
    leaf, extra = load_bundle(data)
    verify_challenge_signature(leaf, challenge, signature)
    return trust.verify(
        leaf, at=at, revoked=revoked, extra_intermediates=extra, crl_lookup=crl_lookup, crl_policy=crl_policy,
        distrusted=distrusted,
    )


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
        issuer_key_id=key_id(signer),
    )
