"""Status lists: a business's service IDs' statuses as one signed, compressed array (pure, no I/O).

The format is the IETF OAuth Token Status List's (draft-ietf-oauth-status-list):
``bits`` = 2, entry ``idx`` lives in byte ``idx // 4`` at bit offset ``(idx % 4) * 2``
(least-significant bits first), the byte array is DEFLATE-compressed in the ZLIB container
and base64url-encoded without padding as ``lst``; the claims go into a JWT of type
``statuslist+jwt`` signed with Ed25519. The keys are passed in: this module reads no file.

Each registered service ID has a position (its ``idx``) drawn at random by the writer
(see ``capacity``); a terminal reads only the positions it was given with service IDs,
so the zeros of unused positions never make an unknown service ID look valid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ..errors import (
    StatusListExpiredError,
    StatusListFormatError,
    StatusListSignatureError,
)
from .status import Status

BITS = 2
PER_BYTE = 8 // BITS
MASK = (1 << BITS) - 1
#: The draft's status types as mykey uses them (3 is the application-specific value).
VALID, INVALID, SUSPENDED, UNLINKED = 0, 1, 2, 3
#: The one table from an index Status to its 2-bit list value. UNKNOWN has no entry in a list
#: (an unregistered service ID has no position); unused positions hold 0.
LIST_VALUE: Mapping[Status, int] = {
    Status.VALID: VALID,
    Status.INVALID: INVALID,
    Status.SUSPENDED: SUSPENDED,
    Status.UNLINKED: UNLINKED,
}
#: The same, indexed by the Status code byte (UNKNOWN -> 0, as an unused position).
VALUE_OF_CODE: bytes = bytes(LIST_VALUE.get(s, 0) for s in Status)
#: A list value back to the Status it stands for.
STATUS_OF_VALUE: tuple[Status, ...] = (Status.VALID, Status.INVALID, Status.SUSPENDED, Status.UNLINKED)

#: Herd privacy (W3C Bitstring Status List): no list is shorter than 2^17 entries, so its
#: length does not tell how many members a small business has.
MIN_ENTRIES = 131_072
TYP = "statuslist+jwt"
MEDIA_TYPE = "application/statuslist+jwt"
ALG = "Ed25519"  # EdDSA over Ed25519 (RFC 9864 name)
#: zlib level: 6, not the draft's recommended 9. Measured (bench/status_list.py, 2-bit lists of
#: 1M entries): 1% set, 19.1 KiB in 0.03 s at 6 against 15.5 KiB in 0.14 s at 9; 10% set, 91 KiB
#: in 0.03 s against 87 KiB in 1.5 s; level 9 grows to seconds at 10M. A list is rebuilt when it is
#: asked for (a terminal waits) as often as every REFRESH seconds, so 6.
ZLIB_LEVEL = 6
#: The largest decompressed list a reader accepts (2^28 entries at 2 bits): a zip bomb stops here.
MAX_LIST_BYTES = 64 * 1024 * 1024
#: The largest token a reader accepts, before any parsing.
MAX_TOKEN_BYTES = 64 * 1024 * 1024


def capacity(count: int) -> int:
    """The list length for a business with `count` positions given: the next power of two at
    least twice the count (so a random draw hits a free position with probability >= 1/2), and
    at least MIN_ENTRIES. It only grows with the count, so every position given stays inside."""
    n = MIN_ENTRIES
    while n < 2 * count:
        n *= 2
    return n


def list_uri(business_id: str) -> str:
    """The list's name (the token's ``sub``): the same on every node and offline."""
    return f"urn:mykey:status-list:{business_id}"


# --- the byte array -----------------------------------------------------------------------


def new_array(entries: int) -> bytearray:
    """An all-zero packed array for `entries` positions (a multiple of 4)."""
    return bytearray((entries + PER_BYTE - 1) // PER_BYTE)


def put(array: bytearray, idx: int, value: int) -> None:
    """Set position idx of a packed array to value (0-3)."""
    byte, shift = idx >> 2, (idx & 3) << 1
    array[byte] = (array[byte] & ~(MASK << shift) & 0xFF) | (value << shift)


def get(array: bytes | bytearray, idx: int) -> int:
    """The value at position idx; StatusListFormatError if the list has no such position."""
    if not 0 <= idx < len(array) * PER_BYTE:
        raise StatusListFormatError(f"position {idx} is outside the list of {len(array) * PER_BYTE} entries")
    return (array[idx >> 2] >> ((idx & 3) << 1)) & MASK


def pack(entries: int, values: Iterable[tuple[int, int]]) -> bytearray:
    """A packed array of `entries` positions holding (idx, value) pairs (others 0)."""
    array = new_array(entries)
    for idx, value in values:
        if value:
            byte, shift = idx >> 2, (idx & 3) << 1
            array[byte] |= value << shift
    return array


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise StatusListFormatError("lst is not base64url text without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise StatusListFormatError("lst is not base64url text") from None


def compress(array: bytes | bytearray, level: int = ZLIB_LEVEL) -> bytes:
    return zlib.compress(bytes(array), level)


def decompress(data: bytes, max_bytes: int = MAX_LIST_BYTES) -> bytes:
    """Inflate a ZLIB stream, refusing one that would grow past max_bytes (a zip bomb) or is damaged."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, max_bytes)
    except zlib.error as exc:
        raise StatusListFormatError(f"lst is not a ZLIB stream ({exc})") from None
    if d.unconsumed_tail or (not d.eof and d.decompress(b"", 1)):
        raise StatusListFormatError(f"the list inflates to more than {max_bytes} bytes: refused")
    if not d.eof:
        raise StatusListFormatError("lst is a truncated ZLIB stream")
    return out


def status_list_claim(array: bytes | bytearray, level: int = ZLIB_LEVEL) -> dict[str, Any]:
    """The ``status_list`` claim: bits and the compressed, base64url array."""
    return {"bits": BITS, "lst": b64u(compress(array, level))}


def claims(business_id: str, array: bytes | bytearray, *, iat: int, ttl: int, valid_for: int) -> dict[str, Any]:
    """Every claim of a business's list token."""
    return {
        "sub": list_uri(business_id),
        "iat": iat,
        "exp": iat + valid_for,
        "ttl": ttl,
        "status_list": status_list_claim(array),
    }


# --- the signed token (joserfc; keys passed in) --------------------------------------------


def sign(claims_: Mapping[str, Any], key: Any) -> str:
    """The compact JWT of the claims, signed with the Ed25519 key (a joserfc OKPKey with a kid)."""
    from joserfc import jwt

    header = {"alg": ALG, "typ": TYP, "kid": key.kid}
    return jwt.encode(header, dict(claims_), key, algorithms=[ALG])


def etag(token: str | bytes) -> str:
    """A strong ETag for the token's bytes."""
    raw = token.encode("ascii") if isinstance(token, str) else token
    return '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


def _registry():
    """joserfc's JWS rules with room for big lists (its default payload limit is 128,000 bytes)."""
    from joserfc.jws import JWSRegistry

    registry = JWSRegistry(algorithms=[ALG])
    registry.max_payload_length = MAX_TOKEN_BYTES
    return registry


class VerifiedList(NamedTuple):
    """A status list whose token verified: its claims and its inflated byte array."""

    sub: str
    iat: int
    exp: int
    ttl: int | None
    kid: str | None
    array: bytes

    @property
    def entries(self) -> int:
        return len(self.array) * PER_BYTE

    def value(self, idx: int) -> int:
        return get(self.array, idx)

    def status(self, idx: int) -> Status:
        return STATUS_OF_VALUE[get(self.array, idx)]


def verify(token: str | bytes, jwks: Mapping[str, Any], *, now: float, sub: str | None = None,
           max_bytes: int = MAX_LIST_BYTES) -> VerifiedList:
    """Verify a status list token against a JWKS and read it.

    Refuses (StatusListSignatureError) a token no key of the set signed; (StatusListFormatError)
    one of another typ or algorithm, without iat, exp or sub, naming another list than `sub`, or
    whose list is malformed or inflates past max_bytes; (StatusListExpiredError) one past exp.
    """
    from joserfc import jwt
    from joserfc.errors import BadSignatureError, JoseError
    from joserfc.jwk import KeySet

    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise StatusListFormatError("the status list token is not ASCII text") from None
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise StatusListFormatError(f"the status list token is over {MAX_TOKEN_BYTES} bytes: refused")
    try:
        keys = KeySet.import_key_set(dict(jwks))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise StatusListFormatError(f"the JWKS is not a set of public keys ({exc})") from None
    try:
        tok = jwt.decode(token, keys, algorithms=[ALG], registry=_registry())
    except BadSignatureError:
        raise StatusListSignatureError(
            "the status list's signature does not verify under the published key: it was changed or signed "
            "by another key; fetch the list and the JWKS again"
        ) from None
    except JoseError as exc:
        # joserfc says which: an unknown kid is a list signed by a key we do not trust
        if "key" in str(exc).lower() or "kid" in str(exc).lower():
            raise StatusListSignatureError(f"no published key verifies the status list ({exc})") from None
        raise StatusListFormatError(f"not a status list token ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise StatusListFormatError(f"not a status list token ({exc})") from None
    header, c = tok.header, tok.claims
    if header.get("typ") != TYP:
        raise StatusListFormatError(f"the token's typ is {header.get('typ')!r}, not {TYP!r}: not a status list")
    for name in ("sub", "iat", "exp"):
        if name not in c:
            raise StatusListFormatError(f"the status list token has no {name} claim")
    if not isinstance(c["iat"], int) or not isinstance(c["exp"], int) or not isinstance(c["sub"], str):
        raise StatusListFormatError("the status list token's iat, exp and sub are not integers and a string")
    if sub is not None and c["sub"] != sub:
        raise StatusListFormatError(f"the status list is {c['sub']!r}, not the expected {sub!r}")
    if c["exp"] <= now:
        raise StatusListExpiredError(
            f"the status list expired at {c['exp']} (it is now {int(now)}); fetch a fresh one before answering"
        )
    sl = c.get("status_list")
    if not isinstance(sl, dict) or sl.get("bits") != BITS or not isinstance(sl.get("lst"), str):
        raise StatusListFormatError(f"the status_list claim is not {{bits: {BITS}, lst: <text>}}")
    ttl = c.get("ttl")
    return VerifiedList(c["sub"], c["iat"], c["exp"], ttl if isinstance(ttl, int) else None, header.get("kid"),
                        decompress(unb64u(sl["lst"]), max_bytes))
