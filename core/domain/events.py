"""Event types: immutable msgspec Structs in one tagged union, plus the envelope.

Pure logic, no I/O. Each event type has a schema VERSION; a record written by an
older schema is upcast on read (see ``upcasters``). An event, once written, is never
changed: evolve by adding a version and an upcaster. New fields get defaults.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Literal, NamedTuple, Union

import msgspec

from ..errors import RecordDecodeError, ValidationError
from . import ids

MAX_REASON = 256
MAX_NAME = 128
MAX_ISSUER = 1024
MAX_SERIAL_HEX = 40  # RFC 5280: serials are at most 20 octets
MAX_CERT_DER = 16 * 1024

ActorKind = Literal["operator", "user", "terminal", "system"]


class Actor(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Who caused an event: an operator, a user (by MyKey ID), a terminal or the system."""

    kind: ActorKind
    id: str

    def check(self) -> None:
        if self.kind not in ("operator", "user", "terminal", "system"):
            raise ValidationError(f"actor kind {self.kind!r} is not one of operator, user, terminal, system")
        ids.check_actor_id(self.id)


SYSTEM = Actor("system", "mykey")


class _Event(msgspec.Struct, frozen=True, array_like=True, gc=False, tag_field="t"):
    """Base of every event body. Subclasses set tag and VERSION and implement check()."""

    VERSION: ClassVar[int] = 1

    def check(self) -> None:  # pragma: no cover - every subclass overrides
        raise ValidationError(f"{type(self).__name__} has no validation")


def _fp(value: bytes, field: str) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValidationError(f"{field} must be a 32-byte SHA-256 digest")


def _key_id(value: bytes) -> None:
    if len(value) > 64:
        raise ValidationError("issuer_key_id must be at most 64 bytes (a key identifier)")


def _serial(value: str, field: str = "serial") -> None:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_SERIAL_HEX
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise ValidationError(f"{field} {value!r} must be 1-{MAX_SERIAL_HEX} lower-case hex digits")


def _issuer(value: str) -> None:
    ids.check_text(value, "certificate issuer", MAX_ISSUER, allow_empty=False)


MAX_PATH = 6  # certificates in a recorded path: the leaf, at most 4 intermediates, the trust anchor


class CertRef(NamedTuple):
    """One certificate of a recorded path, without its subject name: who issued it (the issuer DN),
    its serial, its key identifier (SHA-1 of its public key), the authority key identifier it
    names (b"" if none) and its SHA-256 fingerprint. (A tuple, so it is stored as an array and
    prints as plain JSON.)"""

    issuer: str
    serial: str
    key_id: bytes
    authority_key_id: bytes
    fingerprint: bytes

    def check(self) -> None:
        _issuer(self.issuer)
        _serial(self.serial, "path certificate serial")
        for value in (self.key_id, self.authority_key_id, self.fingerprint):
            if not isinstance(value, bytes):
                raise ValidationError("path key identifiers and fingerprints must be bytes")
        _key_id(self.key_id)
        _key_id(self.authority_key_id)
        _fp(self.fingerprint, "path certificate fingerprint")


def _path(path: tuple[CertRef, ...]) -> None:
    if not isinstance(path, tuple) or len(path) > MAX_PATH or not all(type(c) is CertRef for c in path):
        raise ValidationError(f"a certificate path is a tuple of at most {MAX_PATH} CertRef")
    for c in path:
        c.check()


# Who allowed a renewal (CertificateRenewed.authority): the old certificate was revoked by an
# applied CRL (or a CA on its path was), it expired, a CA on its path was removed from the trust
# store, or an operator approved it.
RENEWAL_AUTHORITIES = ("revoked", "expired", "untrusted", "operator")


# --- MyKey lifecycle -------------------------------------------------------


class MyKeyCreated(_Event, tag="mk.created"):
    """A user proved possession of their card certificate and got a MyKey ID.

    v2: the serial is lower-case hex text (v1 stored an int, which overflows for
    20-octet serials); the subject is kept only as a keyed digest (HMAC-SHA256 under DATA/keys/subject.key).
    v3: the whole verified certificate path, leaf first, trust anchor last (empty before v3).
    """

    VERSION: ClassVar[int] = 3
    mykey_id: str
    cert_issuer: str
    cert_serial: str
    cert_fingerprint: bytes
    subject_digest: bytes = b""
    cert_not_after: int = 0  # unix seconds
    issuer_key_id: bytes = b""  # the issuing CA's key identifier (from the certificate's AKI)
    path: tuple[CertRef, ...] = ()

    def check(self) -> None:
        _key_id(self.issuer_key_id)
        _path(self.path)
        ids.check_mykey_id(self.mykey_id)
        _issuer(self.cert_issuer)
        _serial(self.cert_serial, "cert_serial")
        _fp(self.cert_fingerprint, "cert_fingerprint")
        if self.subject_digest:
            _fp(self.subject_digest, "subject_digest")


class MyKeySuspended(_Event, tag="mk.suspended"):
    """A MyKey ID was suspended: on request, or (by_crl) because a CRL revoked its certificate."""

    mykey_id: str
    reason: str
    by_crl: bool = False

    def check(self) -> None:
        ids.check_mykey_id(self.mykey_id)
        ids.check_text(self.reason, "reason", MAX_REASON)


class MyKeyResumed(_Event, tag="mk.resumed"):
    """A suspended MyKey ID became valid again."""

    mykey_id: str

    def check(self) -> None:
        ids.check_mykey_id(self.mykey_id)


class MyKeyInvalidated(_Event, tag="mk.invalidated"):
    """A MyKey ID was invalidated for good."""

    mykey_id: str
    reason: str

    def check(self) -> None:
        ids.check_mykey_id(self.mykey_id)
        ids.check_text(self.reason, "reason", MAX_REASON)


class CertificateRenewed(_Event, tag="cert.renewed"):
    """The MyKey ID moved from an old certificate to a new one (same subject).

    v2: the new certificate's whole path, and who allowed the renewal: authority is one of
    RENEWAL_AUTHORITIES; approved_by and approval_reason name the operator who approved it;
    via_successor is set when the new issuing CA is a designated successor of the old one.
    """

    VERSION: ClassVar[int] = 2
    mykey_id: str
    old_fingerprint: bytes
    new_issuer: str
    new_serial: str
    new_fingerprint: bytes
    subject_digest: bytes = b""
    new_not_after: int = 0
    issuer_key_id: bytes = b""  # the new certificate's issuing CA key identifier
    path: tuple[CertRef, ...] = ()
    authority: str = ""
    approved_by: str = ""
    approval_reason: str = ""
    via_successor: bool = False

    def check(self) -> None:
        _key_id(self.issuer_key_id)
        _path(self.path)
        if self.authority and self.authority not in RENEWAL_AUTHORITIES:
            raise ValidationError(f"renewal authority {self.authority!r} is not one of {', '.join(RENEWAL_AUTHORITIES)}")
        if self.approved_by:
            ids.check_actor_id(self.approved_by, "approving operator")
        ids.check_text(self.approval_reason, "approval reason", MAX_REASON)
        if (self.authority == "operator") != bool(self.approved_by and self.approval_reason.strip()):
            raise ValidationError("an operator-approved renewal names the operator and the reason (and only it does)")
        ids.check_mykey_id(self.mykey_id)
        _fp(self.old_fingerprint, "old_fingerprint")
        _issuer(self.new_issuer)
        _serial(self.new_serial, "new_serial")
        _fp(self.new_fingerprint, "new_fingerprint")
        if self.subject_digest:
            _fp(self.subject_digest, "subject_digest")


class CertificateRevoked(_Event, tag="cert.revoked"):
    """A CRL listed this certificate (issuer + serial) as revoked."""

    issuer: str
    serial: str
    reason: str
    revoked_at: int  # unix seconds
    crl_fingerprint: bytes

    def check(self) -> None:
        _issuer(self.issuer)
        _serial(self.serial)
        ids.check_text(self.reason, "reason", MAX_REASON)
        _fp(self.crl_fingerprint, "crl_fingerprint")


class CrlApplied(_Event, tag="crl.applied"):
    """A verified CRL was applied (makes apply_crl idempotent and auditable).

    v2: next_update (unix seconds, 0 when the CRL has none) and the key identifier of the CA
    key that signed it, so freshness is judged per CA key (CA generations share names).
    """

    VERSION: ClassVar[int] = 2
    issuer: str
    number: int
    crl_fingerprint: bytes
    this_update: int
    entries: int
    next_update: int = 0
    issuer_key_id: bytes = b""

    def check(self) -> None:
        _issuer(self.issuer)
        _key_id(self.issuer_key_id)
        _fp(self.crl_fingerprint, "crl_fingerprint")


class TrustAnchorAdded(_Event, tag="trust.added"):
    """A CA certificate became trusted: a root (anchor) or an intermediate that chains to one."""

    fingerprint: bytes
    der: bytes
    intermediate: bool = False

    def check(self) -> None:
        _fp(self.fingerprint, "fingerprint")
        if not isinstance(self.der, bytes) or not 0 < len(self.der) <= MAX_CERT_DER:
            raise ValidationError(f"trust anchor certificate must be 1-{MAX_CERT_DER} bytes of DER")


class TrustAnchorRemoved(_Event, tag="trust.removed"):
    """A CA certificate is no longer trusted; MyKey IDs whose path holds it are handled as under a revoked CA."""

    fingerprint: bytes
    intermediate: bool
    reason: str

    def check(self) -> None:
        _fp(self.fingerprint, "fingerprint")
        ids.check_text(self.reason, "reason", MAX_REASON, allow_empty=False)


class CaSuccessorDesignated(_Event, tag="trust.successor"):
    """An operator designated a CA (by key identifier) as the successor of another for renewals."""

    old_key_id: bytes
    new_key_id: bytes
    reason: str

    def check(self) -> None:
        for value in (self.old_key_id, self.new_key_id):
            if not value:
                raise ValidationError("a CA key identifier must not be empty")
            _key_id(value)
        if self.old_key_id == self.new_key_id:
            raise ValidationError("a CA cannot be its own successor")
        ids.check_text(self.reason, "reason", MAX_REASON, allow_empty=False)


# --- businesses and terminals ----------------------------------------------


class BusinessRegistered(_Event, tag="biz.registered"):
    """A business (facility) got its business ID.

    numeric_service_ids declares, attributably, that the business's own service
    IDs are 12-digit numbers that may pass the Individual Number check digit.

    v2: first_use_registration says whether a service ID the business has not
    registered may be registered when a person links it at first use (v1: yes).
    """

    VERSION: ClassVar[int] = 2
    business_id: str
    name: str
    municipality_code: str
    numeric_service_ids: bool = False
    first_use_registration: bool = True

    def check(self) -> None:
        ids.check_business_id(self.business_id)
        ids.check_text(self.name, "business name", MAX_NAME, allow_empty=False)
        ids.check_municipality(self.municipality_code)


class BusinessDeactivated(_Event, tag="biz.deactivated"):
    """A business was deactivated; its terminals no longer authenticate."""

    business_id: str
    reason: str

    def check(self) -> None:
        ids.check_business_id(self.business_id)
        ids.check_text(self.reason, "reason", MAX_REASON)


class TerminalEnrolled(_Event, tag="term.enrolled"):
    """A terminal of a business was enrolled with its Ed25519 public key (made on the terminal).

    v2: can_register marks a terminal allowed to bulk-register its business's service IDs.
    """

    VERSION: ClassVar[int] = 2
    terminal_id: str
    business_id: str
    public_key: bytes
    can_register: bool = False

    def check(self) -> None:
        ids.check_terminal_id(self.terminal_id)
        ids.check_business_id(self.business_id)
        if not self.terminal_id.startswith(self.business_id):
            raise ValidationError(f"terminal {self.terminal_id} does not belong to business {self.business_id}")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise ValidationError("terminal public_key must be a 32-byte raw Ed25519 public key")


class TerminalRevoked(_Event, tag="term.revoked"):
    """A terminal's credential was revoked; it no longer authenticates."""

    terminal_id: str
    reason: str

    def check(self) -> None:
        ids.check_terminal_id(self.terminal_id)
        ids.check_text(self.reason, "reason", MAX_REASON)


# --- service IDs -------------------------------------------------------------


class ServiceIdRegistered(_Event, tag="svc.registered"):
    """A business registered one of its service IDs, not yet linked to a MyKey ID.

    numeric_declared is set only when the business declared 12-digit service IDs.

    v2: status_idx, the service ID's position in its business's status list, drawn at random
    by the writer among the positions never given (None: registered before v2; such service IDs
    get theirs later with ServiceStatusIdxAssigned).
    """

    VERSION: ClassVar[int] = 2
    business_id: str
    service_id: str
    customer_id: str | None = None
    numeric_declared: bool = False
    status_idx: int | None = None

    def check(self) -> None:
        ids.check_business_id(self.business_id)
        ids.check_service_id(self.service_id, numeric_declared=self.numeric_declared)
        ids.check_customer_id(self.customer_id)
        if self.status_idx is not None:
            _status_idx(self.status_idx)


def _check_link(e: ServiceIdLinked | ServiceIdUnlinked) -> None:
    ids.check_business_id(e.business_id)
    ids.check_service_id(e.service_id, numeric_declared=e.numeric_declared)
    ids.check_mykey_id(e.mykey_id)


LINK_AUTHORITIES = ("card", "in-person", "unrecorded")


class ServiceIdLinked(_Event, tag="svc.linked"):
    """A service ID of a business was linked to a MyKey ID.

    v2: what authorised the link. "card": the person's card signed a challenge naming
    the business and the service ID (cert_fingerprint: that certificate; relayed_by:
    the terminal or operator that passed the proof on; the event's actor is the
    person). "in-person": an operator checked the person in person (reason says how;
    the actor is the operator). "unrecorded": a v1 record, written before either was kept.
    """

    VERSION: ClassVar[int] = 2
    business_id: str
    service_id: str
    mykey_id: str
    numeric_declared: bool = False
    authority: str = "unrecorded"  # one of LINK_AUTHORITIES
    reason: str = ""
    cert_fingerprint: bytes = b""
    relayed_by: str = ""  # "terminal:<terminal ID>" or "operator:<name>" (card links only)

    def check(self) -> None:
        _check_link(self)
        ids.check_text(self.reason, "reason", MAX_REASON)
        if self.relayed_by:
            kind, _, who = self.relayed_by.partition(":")
            if kind not in ("terminal", "operator"):
                raise ValidationError(f"relayed_by {self.relayed_by!r} must be terminal:<ID> or operator:<name>")
            Actor(kind, who).check()
        if self.authority == "card":
            _fp(self.cert_fingerprint, "cert_fingerprint")
            if self.reason:
                raise ValidationError("a link by card carries no reason: the card's signature is the authority")
            if not self.relayed_by:
                raise ValidationError("a link by card names who relayed the card's proof (relayed_by)")
        elif self.authority == "in-person":
            if not self.reason.strip():
                raise ValidationError("a link after an in-person check needs a reason (how the person was checked)")
            if self.cert_fingerprint or self.relayed_by:
                raise ValidationError("a link after an in-person check names no certificate and no relay")
        elif self.authority == "unrecorded":
            if self.reason or self.cert_fingerprint or self.relayed_by:
                raise ValidationError("a link of unrecorded authority carries no reason, certificate or relay")
        else:
            raise ValidationError(f"link authority {self.authority!r} is not one of card, in-person, unrecorded")


class ServiceIdUnlinked(_Event, tag="svc.unlinked"):
    """A service ID of a business was unlinked from its MyKey ID."""

    business_id: str
    service_id: str
    mykey_id: str
    numeric_declared: bool = False

    def check(self) -> None:
        _check_link(self)


MAX_STATUS_IDX = 2**32 - 1  # a position in a status list is stored as 4 bytes
MAX_IDX_BATCH = 10_000  # positions in one ServiceStatusIdxAssigned


def _status_idx(value: int) -> None:
    if not 0 <= value <= MAX_STATUS_IDX:
        raise ValidationError(f"status list position {value} must be 0-{MAX_STATUS_IDX}")


class ServiceStatusIdxAssigned(_Event, tag="svc.idx_assigned"):
    """Service IDs registered before status lists (ServiceIdRegistered v1) got their positions.

    service_ids[i] gets position idxs[i] in the business's status list, drawn at random by the
    writer among the positions never given; written once, by the system, the first time the
    writer is asked to (`mykey status-list assign`). numeric_declared: the business declared
    12-digit service IDs.
    """

    business_id: str
    service_ids: tuple[str, ...]
    idxs: tuple[int, ...]
    numeric_declared: bool = False

    def check(self) -> None:
        ids.check_business_id(self.business_id)
        if not 1 <= len(self.service_ids) <= MAX_IDX_BATCH or len(self.idxs) != len(self.service_ids):
            raise ValidationError(f"an assignment names 1-{MAX_IDX_BATCH} service IDs, each with one position")
        if len(set(self.idxs)) != len(self.idxs) or len(set(self.service_ids)) != len(self.service_ids):
            raise ValidationError("an assignment gives each position and each service ID once")
        for sid, idx in zip(self.service_ids, self.idxs, strict=True):
            if type(sid) is not str or type(idx) is not int:
                raise ValidationError("an assignment pairs service IDs (text) with positions (integers)")
            ids.check_service_id(sid, numeric_declared=self.numeric_declared)
            _status_idx(idx)


# --- linked systems ------------------------------------------------------------


class FeedAcked(_Event, tag="feed.acked"):
    """A linked system's sync-feed consumer confirmed it processed events up to seq."""

    consumer: str
    seq: int

    def check(self) -> None:
        ids.check_actor_id(self.consumer, "consumer")
        if not isinstance(self.seq, int) or self.seq < 0:
            raise ValidationError("feed position must be a non-negative sequence number")


class ConsumerRegistered(_Event, tag="feed.consumer"):
    """A linked system (e.g. a municipal points system) may read the sync feed of its municipality.

    It sees only the MyKey IDs linked at a business of that municipality, each under a
    pseudonym of its own (see mykey.engine.feed).
    """

    consumer: str
    municipality_code: str

    def check(self) -> None:
        ids.check_actor_id(self.consumer, "consumer")
        ids.check_municipality(self.municipality_code)


Event = Union[
    MyKeyCreated,
    MyKeySuspended,
    MyKeyResumed,
    MyKeyInvalidated,
    CertificateRenewed,
    CertificateRevoked,
    CrlApplied,
    TrustAnchorAdded,
    BusinessRegistered,
    BusinessDeactivated,
    TerminalEnrolled,
    TerminalRevoked,
    ServiceIdRegistered,
    ServiceIdLinked,
    ServiceIdUnlinked,
    FeedAcked,
    TrustAnchorRemoved,
    CaSuccessorDesignated,
    ConsumerRegistered,
    ServiceStatusIdxAssigned,
]
EVENT_TYPES: tuple[type, ...] = Event.__args__  # type: ignore[attr-defined]
TAGS: dict[str, type] = {t.__struct_config__.tag: t for t in EVENT_TYPES}


class Envelope(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One log record: sequence number, UTC time (µs), actor, schema version, body."""

    seq: int
    ts: int
    actor: Actor
    v: int
    body: Event

    @property
    def time(self) -> datetime:
        """The event's UTC timestamp as an aware datetime."""
        return datetime.fromtimestamp(self.ts / 1_000_000, tz=timezone.utc)


# --- encoding and upcasting ------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_env_decoder = msgspec.msgpack.Decoder(Envelope)
encode_envelope: Callable[[Envelope], bytes] = _encoder.encode

Upcaster = Callable[[list[Any]], list[Any]]
# (tag, from_version) -> function turning a body's fields (without the tag) into the next version's.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(tag: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that lifts a body of `tag` from `from_version` to the next version."""

    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(tag, from_version)] = fn
        return fn

    return register


@upcaster("mk.created", 1)
def _mykey_created_v1(fields: list[Any]) -> list[Any]:
    # v1: [mykey_id, cert_issuer, cert_serial:int, cert_fingerprint]
    out = list(fields)
    if isinstance(out[2], int):
        out[2] = format(out[2], "x")
    return out


@upcaster("svc.linked", 1)
def _service_id_linked_v1(fields: list[Any]) -> list[Any]:
    # v1: [business_id, service_id, mykey_id, numeric_declared]; nobody recorded what authorised it.
    out = list(fields)
    if len(out) < 4:
        out.append(False)
    return [*out, "unrecorded", "", b"", ""]


@upcaster("mk.created", 2)
def _mykey_created_v2(fields: list[Any]) -> list[Any]:
    return list(fields)  # v3 adds the path, which defaults to empty


@upcaster("cert.renewed", 1)
def _certificate_renewed_v1(fields: list[Any]) -> list[Any]:
    return list(fields)  # v2 adds the path and the renewal's authority, which default to empty


@upcaster("crl.applied", 1)
def _crl_applied_v1(fields: list[Any]) -> list[Any]:
    return list(fields)  # v2 adds next_update and the signer's key identifier, which default to none


@upcaster("term.enrolled", 1)
def _terminal_enrolled_v1(fields: list[Any]) -> list[Any]:
    # v1: [terminal_id, business_id, public_key]; every v1 terminal may not register service IDs
    return [*fields[:3], False]


@upcaster("biz.registered", 1)
def _business_registered_v1(fields: list[Any]) -> list[Any]:
    # v1: [business_id, name, municipality_code, numeric_service_ids]; first use registered then
    out = list(fields)
    if len(out) < 4:
        out.append(False)
    return [*out[:4], True]


@upcaster("svc.registered", 1)
def _service_id_registered_v1(fields: list[Any]) -> list[Any]:
    return list(fields)  # v2 adds the status list position, None for these (assigned later)


def now_us() -> int:
    """Current UTC time in microseconds since the epoch."""
    return time.time_ns() // 1000


def decode_envelope(payload: bytes | memoryview) -> Envelope:
    """Decode one record into today's Envelope, upcasting older schema versions."""
    try:
        env = _env_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return _decode_upcasting(payload)
    if env.v != env.body.VERSION:
        return _decode_upcasting(payload)
    return env


def _decode_upcasting(payload: bytes | memoryview) -> Envelope:
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise RecordDecodeError(f"record is not valid MessagePack: {exc!r:.200}") from None
    if not (isinstance(raw, list) and len(raw) == 5 and isinstance(raw[4], list) and raw[4]):
        raise RecordDecodeError("record is not an event envelope [seq, ts, actor, v, body]")
    seq, ts, actor, version, body = raw
    tag = body[0]
    cls = TAGS.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise RecordDecodeError(f"record {seq!r} has unknown event type {tag!r}; upgrade mykey to read it")
    if not isinstance(version, int) or not 1 <= version <= cls.VERSION:
        raise RecordDecodeError(
            f"record {seq!r} ({tag}) has schema version {version!r}; this mykey reads up to {cls.VERSION}"
        )
    fields = body[1:]
    while version < cls.VERSION:
        step = UPCASTERS.get((tag, version))
        if step is None:
            raise RecordDecodeError(f"no upcaster for {tag} v{version}; register one in mykey.events")
        try:
            fields = step(fields)
        except Exception as exc:
            raise RecordDecodeError(f"record {seq!r} ({tag} v{version}) could not be upcast: {exc!r}") from None
        version += 1
    try:
        return msgspec.convert([seq, ts, actor, version, [tag, *fields]], Envelope)
    except msgspec.ValidationError as exc:
        raise RecordDecodeError(f"record {seq!r} ({tag}) does not match its schema: {exc}") from None


def _exact_types(annotation: Any) -> tuple[type, ...]:
    """The exact Python types a field of this annotation may hold (bool is not an int here)."""
    args = getattr(annotation, "__args__", None)
    if args is not None and type(annotation).__name__ in ("UnionType", "_UnionGenericAlias"):
        return tuple(t for a in args for t in _exact_types(a))
    if args is not None and type(annotation).__name__ == "GenericAlias":
        return (annotation.__origin__,)  # tuple[CertRef, ...]: the container here, its items in check()
    return (type(None),) if annotation is None or annotation is type(None) else (annotation,)


# msgspec does not check types when a Struct is built in Python, and a wrongly typed
# field would make a record that never decodes: each event type gets a compiled
# exact-type check (bool is not an int here).
_FIELD_TYPES: dict[type, list[tuple[str, tuple[type, ...]]]] = {
    cls: [(f.name, _exact_types(f.type)) for f in msgspec.structs.fields(cls)] for cls in EVENT_TYPES
}


def _compile_type_check(cls: type) -> Callable[[Any], bool]:
    terms = []
    env: dict[str, Any] = {}
    for i, (name, types) in enumerate(_FIELD_TYPES[cls]):
        alts = []
        for j, t in enumerate(types):
            env[f"t{i}_{j}"] = t
            alts.append(f"type(e.{name}) is t{i}_{j}")
        terms.append("(" + " or ".join(alts) + ")")
    exec(f"def ok(e):\n    return {' and '.join(terms) or 'True'}\n", env)  # noqa: S102 - our own field names
    return env["ok"]


_TYPE_OK: dict[type, Callable[[Any], bool]] = {cls: _compile_type_check(cls) for cls in EVENT_TYPES}


def check_event(event: Any) -> None:
    """Validate one event body before it is written (field types, then content); raises ValidationError."""
    type_ok = _TYPE_OK.get(type(event))
    if type_ok is None:
        raise ValidationError(f"{type(event).__name__} is not a mykey event type")
    if not type_ok(event):
        for name, types in _FIELD_TYPES[type(event)]:
            value = getattr(event, name)
            if type(value) not in types:
                want = " or ".join("None" if t is type(None) else t.__name__ for t in types)
                raise ValidationError(f"{type(event).__name__}.{name} must be {want}, not {type(value).__name__}")
    event.check()