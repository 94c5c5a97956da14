"""A terminal's own key pair: made, stored and used on the terminal, never on the platform.

``write_key_pair(FILE)`` writes the private key to FILE (PKCS#8 PEM, mode 0600, never
replacing a file) and the public key to FILE.pub (SubjectPublicKeyInfo PEM), which is
what the operator enrols. ``authentication`` signs the message a terminal sends to
authenticate (see ``mykey.auth.terminals``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..auth.terminals import terminal_auth_message
from ..errors import TerminalKeyError
from ..fs import write_exclusive

PUBLIC_SUFFIX = ".pub"
PUBLIC_MODE = 0o644  # the public half may be read by anyone (it is sent to the operator)


def generate() -> Ed25519PrivateKey:
    """A new Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (the file is protected by its mode, 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM (what `mykey terminal enrol --public-key` reads)."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_path(path: str | os.PathLike[str]) -> Path:
    """Where the public key of the private key file at path goes: FILE.pub."""
    path = Path(path)
    return path.with_name(path.name + PUBLIC_SUFFIX)


def write_key_pair(path: str | os.PathLike[str], key: Ed25519PrivateKey | None = None) -> tuple[Path, Path]:
    """Write a new key pair: FILE (private, 0600) and FILE.pub (public); returns both paths.

    Never replaces anything: TerminalKeyError if either file (or a symlink) is there already.
    """
    path = Path(path)
    pub = public_path(path)

    def taken(p: Path) -> TerminalKeyError:
        return TerminalKeyError(f"{p} exists already; a key file is never replaced: choose another --out")

    for p in (path, pub):
        if os.path.lexists(p):
            raise taken(p)
    key = key or generate()
    try:
        write_exclusive(path, private_pem(key))
    except FileExistsError:
        raise taken(path) from None
    try:
        write_exclusive(pub, public_pem(key), mode=PUBLIC_MODE)
    except BaseException as exc:
        path.unlink(missing_ok=True)  # no private key without its public half
        if isinstance(exc, FileExistsError):
            raise taken(pub) from None
        raise
    return path, pub


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The terminal's private key from its PEM file (TerminalKeyError if it is not an Ed25519 private key)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TerminalKeyError(f"cannot read the terminal's key file {path} ({exc.strerror or exc}); make one on "
                               "the terminal with `mykey terminal keygen --out FILE` and have FILE.pub enrolled") from None
    try:
        key = serialization.load_pem_private_key(raw, None)
    except (ValueError, TypeError) as exc:
        key = exc
    if not isinstance(key, Ed25519PrivateKey):
        what = f"unreadable: {key}" if isinstance(key, Exception) else f"a {type(key).__name__}"
        raise TerminalKeyError(
            f"{path} is not an unencrypted Ed25519 private key in PEM ({what}); make one with `mykey terminal keygen`"
        )
    return key


def authentication(
    key: Ed25519PrivateKey, terminal_id: str, *, now: float | None = None, nonce: bytes | None = None
) -> tuple[bytes, bytes]:
    """(message, signature) a terminal sends to authenticate: a fresh timestamp and random nonce, signed."""
    message = terminal_auth_message(terminal_id, int(time.time() if now is None else now), nonce or os.urandom(16))
    return message, key.sign(message)
