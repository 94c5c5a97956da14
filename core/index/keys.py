"""The LMDB index's databases and their key and value encodings (pure functions, no I/O).

The service key is the business ID (always 5 ASCII bytes) followed by the
service ID, so one business's keys are contiguous and a key never collides
across businesses. The hot database (svc) maps a service key to its answer and
nothing else: one Status byte, so a page holds as many keys as LMDB can fit and
the hot path reads only what it answers with. What else the write side knows
about a service ID lives under the same key in svcrec (a ServiceRecord).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, NamedTuple

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

    svc: int  # business_id + service_id -> one Status byte (all that resolve reads)
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
    svcrec: int  # business_id + service_id -> ServiceRecord (the rest of what svc's key carries)
    mkstate: int  # mykey_id -> state (1 byte) + ref (u64 BE): what a link reads of the MyKey record
    # Status list positions: business_id + idx (u32 BE) -> service key (a position is never given
    # twice; the list is built by a range scan in position order); business_id -> u64 BE how many
    # positions the business has given (its list's length follows from it)
    slidx: int
    # mykey_id + municipality (5 digits) -> u32 BE: how many of the MyKey ID's linked service IDs
    # are at businesses of that municipality (absent: none); the municipality feed reads it
    mkmuni: int


#: Names of the named databases inside the index environment, in Dbs's order.
DB_NAMES: tuple[bytes, ...] = tuple(f.name.encode("ascii") for f in fields(Dbs))
#: max_dbs to open an index environment with (room for two more databases).
MAX_DBS = len(DB_NAMES) + 2

#: Version of the index layout; an index of another version is refused ("run `mykey rebuild`").
#: 2: feed consumers and the per-municipality feed.
#: 3: svc holds only the status byte; ref, registration seq and customer ID moved to svcrec;
#:    mkstate beside the MyKey records.
#: 4: status list positions (slidx; ServiceRecord.idx).
#: 5: links counted per MyKey ID and municipality (mkmuni), so the feed reads counts, not links.
INDEX_SCHEMA = 5

_U64 = struct.Struct(">Q")
_STATE_REF = struct.Struct(">BQ")
#: svc's value for each Status: one byte.
STATUS_VALUES: tuple[bytes, ...] = tuple(bytes([s]) for s in Status)


def service_key(business_id: str, service_id: str) -> bytes:
    """business_id (5 bytes) + service_id."""
    return (business_id + service_id).encode("ascii")


def split_service_key(key: bytes) -> tuple[str, str]:
    k = key.decode("ascii")
    return k[:5], k[5:]


def svc_value(status: Status, ref: int = 0, reg_seq: int = 0, customer_id: str | None = None) -> bytes:
    """svc's value: the status byte alone (the other arguments belong to svcrec; kept for callers)."""
    return STATUS_VALUES[status]


def with_status(value: bytes, status: Status, ref: int | None = None) -> bytes:
    """svc's value with a new status (the old value is all status, so only the new one counts)."""
    return STATUS_VALUES[status]


class ServiceRecord(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True, gc=False):
    """svcrec's value: what the write side knows of a service ID besides its status.

    New fields go at the end, with defaults, so records written before them still decode.
    """

    reg_seq: int  # seq of the registration event
    ref: int = 0  # the linked MyKey ID's reference (its creation seq); 0 when unlinked
    customer_id: str | None = None
    idx: int | None = None  # the position in the business's status list (None: not given yet)


class SvcValue(NamedTuple):
    """A service ID as the write side sees it: svc's status and svcrec's record."""

    status: Status
    ref: int  # the linked MyKey ID's reference (its creation seq); 0 when unlinked
    reg_seq: int  # seq of the registration event
    customer_id: str | None
    idx: int | None = None  # the position in the business's status list (None: not given yet)

    @property
    def linked(self) -> bool:
        return self.ref != 0


def parse_svc_value(status: bytes, record: bytes) -> SvcValue:
    """svc's status byte and svcrec's record of one service key, as a SvcValue."""
    rec = decode(ServiceRecord, record)
    return SvcValue(Status(status[0]) if status else Status.UNKNOWN, rec.ref, rec.reg_seq, rec.customer_id, rec.idx)


#: An unsigned integer as 8 bytes, big-endian (so keys sort in number order).
u64: Callable[[int], bytes] = _U64.pack


def parse_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


@lru_cache(maxsize=256)
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


def mykey_state(state: MyKeyState, ref: int) -> bytes:
    """mkstate's value: a MyKey ID's state and reference, the part of its record a link needs
    (a small database beside the records, so that linking reads pages full of them)."""
    return _STATE_REF.pack(state, ref)


_MYKEY_STATES = {int(s): s for s in MyKeyState}  # a dict lookup: MyKeyState(n) costs ten times more


def parse_mykey_state(value: bytes) -> tuple[MyKeyState, int]:
    state, ref = _STATE_REF.unpack(value)
    return _MYKEY_STATES[state], ref


def mykey_state_status(value: bytes) -> int:
    """The state byte of an mkstate value (a Status code: MyKeyState's values are Status's)."""
    return value[0]


def mykey_state_ref(value: bytes) -> int:
    """The ref of an mkstate value."""
    return int.from_bytes(value[1:9], "big")


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


def decoder(cls: type) -> Callable[[bytes], Any]:
    """The decode function for records of cls (one Decoder per type, kept)."""
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = msgspec.msgpack.Decoder(cls)
    return dec.decode


def decode(cls: type, data: bytes):
    return decoder(cls)(data)


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


_U32 = struct.Struct(">I")


def slidx_key(business_id: str, idx: int) -> bytes:
    """slidx: a business's status list position (business ID + u32 BE) -> the service key holding it."""
    return business_id.encode("ascii") + _U32.pack(idx)


def slidx_count_key(business_id: str) -> bytes:
    """slidx: business ID alone -> u64 BE, how many positions the business has given (sorts first)."""
    return business_id.encode("ascii")


def mkmuni_key(mykey: bytes, municipality: str) -> bytes:
    """mkmuni: a MyKey ID (ASCII) + a municipality (5 digits) -> u32 BE count of its links there."""
    return mykey + municipality.encode("ascii")


def u32(n: int) -> bytes:
    return _U32.pack(n)


def parse_u32(b: bytes) -> int:
    return _U32.unpack(b)[0]


def parse_slidx_key(key: bytes) -> int:
    """The position of an slidx position key (business ID + u32 BE)."""
    return _U32.unpack_from(key, 5)[0]
