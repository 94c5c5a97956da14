"""The LMDB index's databases and their key and value encodings (pure functions, no I/O).

The service key is the business ID (always 5 ASCII bytes) followed by the
service ID, so one business's keys are contiguous and a key never collides
across businesses. A service value starts with its final answer (a Status byte)
so the hot path reads one byte per lookup.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, fields
from typing import NamedTuple

import msgspec

from ..domain.events import CertRef
from ..domain.status import MyKeyState, Status


@dataclass(frozen=True, slots=True)
class Dbs:
    """The index's named databases, one field each: the field's name is the database's
    name, its comment what the database holds, its value the integer handle of that
    database in an open environment (see ``mykey.index.store.open_dbs``).

    This is the one list of the index's databases; ``DB_NAMES`` is derived from it.
    """

    svc: int  # business_id + service_id -> SvcValue
    mykey: int  # mykey_id -> MyKeyRecord
    mkref: int  # ref (u64 BE) -> mykey_id
    mksvc: int  # mykey_id + service key -> b""
    mkevents: int  # mykey_id + seq (u64 BE) -> b"" (every event about the MyKey ID)
    # b"f" + fingerprint | b"s" + issuer digest + serial -> mykey_id (current certificate);
    # b"o" + issuer digest + serial -> mykey_id (a former certificate, replaced by renewal)
    cert: int
    revoked: int  # issuer digest + serial -> RevokedRecord
    # crl also holds b"t" + issuer digest + CA key id -> CrlFreshness (that CA key's latest applied CRL)
    crl: int  # b"f" + CRL fingerprint -> number | b"i" + issuer digest -> highest number
    business: int  # business_id -> BusinessRecord
    terminal: int  # terminal_id -> TerminalRecord
    trust: int  # b"a" (anchor) | b"i" (intermediate) + fingerprint -> certificate DER
    feed: int  # consumer -> u64 BE position
    meta: int  # b"last_seq" -> u64 BE, b"schema" -> u64 BE
    # Certificate paths and CA facts: b"m" + mykey_id -> its current recorded path (CertRef tuple);
    # b"s" + issuer digest + serial + b"/" + mykey_id and b"f" + CA fingerprint + mykey_id -> b""
    # (a CA certificate on that MyKey ID's current path); b"x" + CA fingerprint -> b"" (trust removed);
    # b"n" + len + old CA key id + new CA key id -> b"" (a designated successor CA)
    cas: int
    consumer: int  # feed consumer name -> ConsumerRecord
    # municipality (5 digits) + seq (u64 BE) -> FeedEntry: what that municipality's consumers see
    mfeed: int


#: Names of the named databases inside the index environment, in Dbs's order.
DB_NAMES: tuple[bytes, ...] = tuple(f.name.encode("ascii") for f in fields(Dbs))
#: max_dbs to open an index environment with (room for two more databases).
MAX_DBS = len(DB_NAMES) + 2

INDEX_SCHEMA = 2  # 2: feed consumers and the per-municipality feed

_SVC = struct.Struct(">BQQ")  # status, mykey ref (0 = unlinked), seq of the registration
_U64 = struct.Struct(">Q")


def service_key(business_id: str, service_id: str) -> bytes:
    """business_id (5 bytes) + service_id."""
    return (business_id + service_id).encode("ascii")


def split_service_key(key: bytes) -> tuple[str, str]:
    k = key.decode("ascii")
    return k[:5], k[5:]


def svc_value(status: Status, ref: int, reg_seq: int, customer_id: str | None) -> bytes:
    """Service value: status byte first (the hot path reads only that)."""
    return _SVC.pack(status, ref, reg_seq) + (customer_id.encode("ascii") if customer_id else b"")


class SvcValue(NamedTuple):
    """A service key's value, decoded."""

    status: Status
    ref: int  # the linked MyKey ID's reference (its creation seq); 0 when unlinked
    reg_seq: int  # seq of the registration event
    customer_id: str | None

    @property
    def linked(self) -> bool:
        return self.ref != 0


def parse_svc_value(value: bytes) -> SvcValue:
    status, ref, reg_seq = _SVC.unpack_from(value)
    customer = value[_SVC.size :].decode("ascii") or None
    return SvcValue(Status(status), ref, reg_seq, customer)


def with_status(value: bytes, status: Status, ref: int | None = None) -> bytes:
    """The same service value with a new status (and ref)."""
    _, old_ref, reg_seq = _SVC.unpack_from(value)
    return _SVC.pack(status, old_ref if ref is None else ref, reg_seq) + value[_SVC.size :]


def u64(n: int) -> bytes:
    return _U64.pack(n)


def parse_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


def issuer_digest(issuer: str) -> bytes:
    """16-byte digest of an issuer DN string, to key certificates by (issuer, serial)."""
    return hashlib.sha256(issuer.encode("utf-8")).digest()[:16]


def cert_serial_key(issuer: str, serial_hex: str) -> bytes:
    return b"s" + issuer_digest(issuer) + serial_hex.encode("ascii")


def former_cert_key(issuer: str, serial_hex: str) -> bytes:
    return b"o" + issuer_digest(issuer) + serial_hex.encode("ascii")


def cert_fp_key(fingerprint: bytes) -> bytes:
    return b"f" + fingerprint


def revoked_key(issuer: str, serial_hex: str) -> bytes:
    return issuer_digest(issuer) + serial_hex.encode("ascii")


RecordedPath = tuple[CertRef, ...]  # the value under path_key: leaf first, trust anchor last


def path_key(mykey_id: str) -> bytes:
    return b"m" + mykey_id.encode("ascii")


def ca_serial_prefix(issuer: str, serial_hex: str) -> bytes:
    """Prefix of the MyKey IDs whose current path holds the CA certificate (issuer, serial)."""
    return b"s" + issuer_digest(issuer) + serial_hex.encode("ascii") + b"/"


def ca_fp_prefix(fingerprint: bytes) -> bytes:
    """Prefix of the MyKey IDs whose current path holds the CA certificate with this fingerprint."""
    return b"f" + fingerprint


def untrusted_key(fingerprint: bytes) -> bytes:
    return b"x" + fingerprint


def successor_prefix(old_key_id: bytes) -> bytes:
    return b"n" + bytes([len(old_key_id)]) + old_key_id


def crl_fresh_key(issuer: str, key_id: bytes) -> bytes:
    """crl database: the latest applied CRL of one CA key (issuer digest + its key identifier)."""
    return b"t" + issuer_digest(issuer) + key_id


class CrlFreshness(msgspec.Struct, array_like=True, frozen=True):
    """The latest applied CRL of one CA key: its thisUpdate and nextUpdate (0: none), unix seconds."""

    this_update: int
    next_update: int


class MyKeyRecord(msgspec.Struct, array_like=True, frozen=True):
    """A MyKey ID's current state and certificate (no names)."""

    state: MyKeyState
    ref: int
    cert_issuer: str
    cert_serial: str
    cert_fingerprint: bytes
    subject_digest: bytes
    cert_not_after: int
    created_seq: int
    reason: str = ""
    suspended_by_crl: bool = False
    issuer_key_id: bytes = b""


class BusinessRecord(msgspec.Struct, array_like=True, frozen=True):
    name: str
    municipality_code: str
    numeric_service_ids: bool
    active: bool
    terminals: int  # how many terminals were ever enrolled (numbers the next one)
    first_use_registration: bool = True  # may a person's link register a new service ID


class TerminalRecord(msgspec.Struct, array_like=True, frozen=True):
    business_id: str
    public_key: bytes
    active: bool
    can_register: bool = False  # may bulk-register its business's service IDs


class RevokedRecord(msgspec.Struct, array_like=True, frozen=True):
    reason: str
    revoked_at: int
    seq: int


def encode(record: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(record)


_decoders: dict[type, msgspec.msgpack.Decoder] = {}


def decode(cls: type, data: bytes):
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = msgspec.msgpack.Decoder(cls)
    return dec.decode(data)


class ConsumerRecord(msgspec.Struct, array_like=True, frozen=True):
    """A registered sync-feed consumer: the municipality whose people it sees."""

    municipality_code: str
    registered_seq: int


class FeedEntry(msgspec.Struct, array_like=True, frozen=True):
    """One change a municipality's feed consumers see (the MyKey ID becomes a pseudonym when read)."""

    ts: int  # the event's time, µs since the epoch
    change: str  # joined | left | suspended | resumed | invalidated | renewed
    mykey_id: str
    state: MyKeyState | None  # the state after the change; None when it does not tell one


def municipality_prefix(code: str) -> bytes:
    """The feed key prefix of a local government code: its 5 digits (a 6th is only a check digit)."""
    return code[:5].encode("ascii")


def feed_entry_key(code: str, seq: int) -> bytes:
    return municipality_prefix(code) + u64(seq)
