"""Signed tree heads as C2SP tlog-checkpoints inside C2SP signed notes, with Ed25519 keys.

A signed checkpoint looks like this (https://c2sp.org/tlog-checkpoint,
https://c2sp.org/signed-note)::

    mykey.example/log
    1000000
    <base64 of the 32-byte RFC 9162 root hash>
    time 1764150000
    <blank line>
    — mykey.example/log <base64(4-byte key ID ‖ 64-byte Ed25519 signature)>

The note *text* (origin, decimal tree size, base64 root, one extension line
``time <unix seconds UTC>``, each ending in a newline) is what Ed25519 signs. The
key ID is SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4]. Verifier keys
use the signed-note "vkey" text form ``<name>+<8 hex key ID>+<base64(0x01 ‖ public key)>``.

Signature lines from other keys (witness cosignatures, rotated keys) are ignored, as the
signed-note spec requires; a signature by the expected key that fails to verify rejects
the whole note. The note format is checked against the reference vector of
golang.org/x/mod/sumdb/note in the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .. import fs
from ..errors import CheckpointError

__all__ = [
    "Checkpoint",
    "VerifierKey",
    "ALG_ED25519",
    "key_id",
    "sign_note",
    "open_note",
    "format_checkpoint_text",
    "parse_checkpoint_text",
    "peek_checkpoint",
    "sign_checkpoint",
    "parse_signed_checkpoint",
    "generate_signing_key",
    "save_private_key",
    "load_private_key",
    "public_key_text",
    "load_public_key_text",
    "verifier_key",
    "parse_vkey",
]

ALG_ED25519 = 0x01
"""Signed-note signature type byte for Ed25519."""

_EM_DASH = "\u2014"
_SIG_PREFIX = _EM_DASH + " "
_MAX_SIGNATURES = 100  # spec: verifiers MUST accept at least 16
_MAX_NOTE_BYTES = 1 << 20
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_MAX_U64 = (1 << 64) - 1
_MAX_TIME = (1 << 63) - 1


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: log origin, tree size, RFC 9162 root hash, signing time (unix seconds UTC)."""

    origin: str
    size: int
    root_hash: bytes
    timestamp: int


@dataclass(frozen=True)
class VerifierKey:
    """A parsed signed-note verifier key: name, 4-byte key ID and Ed25519 public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    def __str__(self) -> str:
        return verifier_key(self.name, self.public_key)


# ----------------------------------------------------------------------- helpers


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding, canonical only (re-encoding must give the same text)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CheckpointError(f"{what} is not valid base64: {text[:60]!r}") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError(f"{what} is not canonical base64: {text[:60]!r}")
    return raw


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise CheckpointError("key name must be a non-empty string, e.g. 'mykey.example/log'")
    if any(c.isspace() or c == "+" or ord(c) < 0x20 for c in name):
        raise CheckpointError(
            f"key name {name!r} may not contain spaces, '+' or control characters; use e.g. 'mykey.example/log'"
        )


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _as_public(key: Ed25519PublicKey | Ed25519PrivateKey) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key
    raise CheckpointError(f"expected an Ed25519 key, got {type(key).__name__}")


def key_id(key_name: str, public_key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """Signed-note key ID: SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4]."""
    _check_key_name(key_name)
    raw = _raw_public(_as_public(public_key))
    return hashlib.sha256(key_name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + raw).digest()[:4]


# -------------------------------------------------------------------- signed note


def _check_note_chars(text: str, what: str) -> None:
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise CheckpointError(f"{what} contains control character {c!r}; signed notes allow only newlines")


def sign_note(text: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign note ``text`` (non-empty, newline-terminated) with Ed25519; return the signed note."""
    _check_key_name(key_name)
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    _check_note_chars(text, "note text")
    if not isinstance(private_key, Ed25519PrivateKey):
        raise CheckpointError(
            f"signing needs an Ed25519 private key, got {type(private_key).__name__}; "
            "create one with generate_signing_key()"
        )
    sig = private_key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key_id(key_name, private_key) + sig).decode("ascii")
    return f"{text}\n{_SIG_PREFIX}{key_name} {blob}\n"


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and (key name, key ID, signature) tuples; check syntax."""
    if isinstance(note, bytes):
        if len(note) > _MAX_NOTE_BYTES:
            raise CheckpointError(f"signed note is larger than {_MAX_NOTE_BYTES} bytes")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("signed note is not valid UTF-8") from None
    if not isinstance(note, str):
        raise CheckpointError(f"signed note must be text, got {type(note).__name__}")
    if len(note) > _MAX_NOTE_BYTES:
        raise CheckpointError(f"signed note is larger than {_MAX_NOTE_BYTES} bytes")
    _check_note_chars(note, "signed note")
    if not note.endswith("\n"):
        raise CheckpointError("signed note must end with a newline after its last signature line")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("signed note has no blank line separating the text from the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = sig_block.split("\n")[:-1]
    if not lines:
        raise CheckpointError("signed note has no signature lines after the blank line")
    if len(lines) > _MAX_SIGNATURES:
        raise CheckpointError(f"signed note has {len(lines)} signatures; at most {_MAX_SIGNATURES} are accepted")
    sigs = []
    for n, line in enumerate(lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError(
                f"signature line {n} does not start with an em dash (U+2014) and a space: {line[:60]!r}"
            )
        parts = line[len(_SIG_PREFIX) :].split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise CheckpointError(f"signature line {n} is not '— <key name> <base64 signature>': {line[:60]!r}")
        name, blob = parts
        if any(c.isspace() or c == "+" for c in name):
            raise CheckpointError(f"signature line {n} has an invalid key name {name!r}")
        raw = _b64decode_strict(blob, f"signature line {n}")
        if len(raw) < 5:
            raise CheckpointError(f"signature line {n} is too short to hold a key ID and a signature")
        sigs.append((name, raw[:4], raw[4:]))
    return text, sigs


def open_note(note: str | bytes, key_name: str, public_key: Ed25519PublicKey) -> str:
    """Verify ``note`` carries a valid signature by (key_name, public_key); return the note text."""
    _check_key_name(key_name)
    public_key = _as_public(public_key)
    text, sigs = _split_note(note)
    want_id = key_id(key_name, public_key)
    verified = False
    for name, kid, sig in sigs:
        if name != key_name or kid != want_id:
            continue  # unknown key: the spec says to ignore it
        try:
            public_key.verify(sig, text.encode("utf-8"))
        except InvalidSignature:
            raise CheckpointError(
                f"the signature by {key_name} (key ID {want_id.hex()}) does not verify: the note text "
                "or signature was altered, or it was signed by a different key with the same name and ID"
            ) from None
        verified = True
    if not verified:
        seen = ", ".join(f"{n}+{k.hex()}" for n, k, _ in sigs)
        raise CheckpointError(
            f"no signature from the trusted key {key_name}+{want_id.hex()}; the note is signed by: {seen}. "
            "Check you are using the log's verifier key"
        )
    return text


# --------------------------------------------------------------------- checkpoint


def format_checkpoint_text(cp: Checkpoint) -> str:
    """The checkpoint note text: origin, size, base64 root, ``time <t>``, each newline-terminated."""
    if not isinstance(cp.origin, str) or not cp.origin:
        raise CheckpointError("checkpoint origin must be a non-empty string, e.g. 'mykey.example/log'")
    if "\n" in cp.origin or any(ord(c) < 0x20 for c in cp.origin):
        raise CheckpointError(f"checkpoint origin {cp.origin!r} may not contain newlines or control characters")
    if not isinstance(cp.size, int) or isinstance(cp.size, bool) or not 0 <= cp.size <= _MAX_U64:
        raise CheckpointError(f"checkpoint size must be an integer from 0 to 2^64-1, got {cp.size!r}")
    if not isinstance(cp.root_hash, (bytes, bytearray)) or len(cp.root_hash) != 32:
        raise CheckpointError("checkpoint root_hash must be 32 bytes (an RFC 9162 SHA-256 root)")
    if not isinstance(cp.timestamp, int) or isinstance(cp.timestamp, bool) or not 0 <= cp.timestamp <= _MAX_TIME:
        raise CheckpointError(f"checkpoint timestamp must be unix seconds from 0 to 2^63-1, got {cp.timestamp!r}")
    root = base64.b64encode(bytes(cp.root_hash)).decode("ascii")
    return f"{cp.origin}\n{cp.size}\n{root}\ntime {cp.timestamp}\n"


def parse_checkpoint_text(text: str) -> Checkpoint:
    """Parse (without verifying) checkpoint note text as produced by ``format_checkpoint_text``."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(
            f"checkpoint text has {len(lines)} lines; it needs origin, tree size and root hash lines"
        )
    origin, size_s, root_s, *ext = lines
    if not origin:
        raise CheckpointError("checkpoint origin line is empty")
    if len(size_s) > 20 or not _DECIMAL.fullmatch(size_s) or int(size_s) > _MAX_U64:
        raise CheckpointError(
            f"checkpoint tree size {size_s[:30]!r} is not a decimal number without leading zeroes"
        )
    root = _b64decode_strict(root_s, "checkpoint root hash")
    if len(root) != 32:
        raise CheckpointError(f"checkpoint root hash is {len(root)} bytes, expected 32")
    if any(not line for line in ext):
        raise CheckpointError("checkpoint has an empty extension line")
    if len(ext) != 1 or not ext[0].startswith("time "):
        raise CheckpointError(
            "checkpoint must carry exactly one extension line 'time <unix seconds>' after the root hash, "
            f"found {ext!r}"
        )
    t = ext[0][len("time ") :]
    if len(t) > 19 or not _DECIMAL.fullmatch(t) or int(t) > _MAX_TIME:
        raise CheckpointError(f"checkpoint time {t[:30]!r} is not a decimal number of unix seconds")
    return Checkpoint(origin=origin, size=int(size_s), root_hash=root, timestamp=int(t))


def peek_checkpoint(note: str | bytes) -> Checkpoint:
    """Parse a signed checkpoint WITHOUT verifying any signature (routing and diagnostics only)."""
    text, _ = _split_note(note)
    return parse_checkpoint_text(text)


def sign_checkpoint(cp: Checkpoint, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """Return the signed-note text of ``cp`` signed by ``private_key`` under ``key_name``."""
    return sign_note(format_checkpoint_text(cp), key_name, private_key)


def parse_signed_checkpoint(
    text: str | bytes,
    key_name: str,
    public_key: Ed25519PublicKey,
    *,
    expected_origin: str | None = None,
) -> Checkpoint:
    """Verify the signature by (key_name, public_key) and parse the checkpoint; raise CheckpointError."""
    body = open_note(text, key_name, public_key)
    cp = parse_checkpoint_text(body)
    if expected_origin is not None and cp.origin != expected_origin:
        raise CheckpointError(
            f"checkpoint is for log {cp.origin!r}, expected {expected_origin!r}; it belongs to another log"
        )
    return cp


# ------------------------------------------------------------------------- keys


def generate_signing_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key for signing checkpoints."""
    return Ed25519PrivateKey.generate()


def save_private_key(
    private_key: Ed25519PrivateKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write the key as unencrypted PEM PKCS#8 with mode 0600; refuse to replace a file unless ``overwrite``.

    The file is created whole or not at all (and fsynced with its directory); ``overwrite``
    replaces an existing key atomically.
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise CheckpointError(f"expected an Ed25519 private key, got {type(private_key).__name__}")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if overwrite:
        fs.write_atomic(path, pem, mode=0o600)
        return
    try:
        fs.write_exclusive(path, pem, mode=0o600)
    except FileExistsError:
        raise CheckpointError(
            f"{path} already exists; refusing to overwrite a signing key (pass overwrite=True to replace it)"
        ) from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an Ed25519 private key written by ``save_private_key`` (PEM PKCS#8)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is not an unencrypted PEM PKCS#8 private key ({exc}); create one with generate_signing_key()"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} holds a {type(key).__name__}, but checkpoints are signed with Ed25519")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as PEM SubjectPublicKeyInfo text (for key files; see ``verifier_key`` for vkeys)."""
    return (
        _as_public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def load_public_key_text(text: str | bytes) -> Ed25519PublicKey:
    """Parse PEM SubjectPublicKeyInfo text from ``public_key_text``."""
    data = text.encode("ascii") if isinstance(text, str) else text
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise CheckpointError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def verifier_key(key_name: str, key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The signed-note vkey ``<name>+<8 hex key ID>+<base64(0x01 ‖ public key)>``."""
    pub = _as_public(key)
    material = base64.b64encode(bytes([ALG_ED25519]) + _raw_public(pub)).decode("ascii")
    return f"{key_name}+{key_id(key_name, pub).hex()}+{material}"


def parse_vkey(text: str) -> VerifierKey:
    """Parse a vkey string; the key ID must match the one computed from the name and key."""
    if not isinstance(text, str):
        raise CheckpointError(f"verifier key must be text, got {type(text).__name__}")
    text = text.strip()
    parts = text.split("+", 2)  # the base64 part may itself contain '+'
    if len(parts) != 3:
        raise CheckpointError(
            "verifier key must look like '<name>+<8 hex digits>+<base64 key>', e.g. from verifier_key()"
        )
    name, hex_id, material = parts
    _check_key_name(name)
    if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
        raise CheckpointError(f"verifier key ID {hex_id!r} must be 8 hex digits")
    raw = _b64decode_strict(material, "verifier key material")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise CheckpointError(
            "verifier key material must be 0x01 followed by a 32-byte Ed25519 public key "
            f"(got {len(raw)} bytes, type byte {raw[:1].hex() or 'none'})"
        )
    pub = Ed25519PublicKey.from_public_bytes(raw[1:])
    kid = key_id(name, pub)
    if kid.hex() != hex_id.lower():
        raise CheckpointError(
            f"verifier key ID {hex_id} does not match its name and key (expected {kid.hex()}); the vkey was altered"
        )
    return VerifierKey(name=name, key_id=kid, public_key=pub)
