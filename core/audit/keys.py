"""The data directory's checkpoint signing key: DATA/keys/checkpoint.key and checkpoint.vkey.

``checkpoint.key`` is the Ed25519 private key (PEM PKCS#8, 0600); ``checkpoint.vkey`` is
its signed-note verifier key, whose name is the log's origin. The two must match, and the
origin never changes once checkpoints were signed with it. The key and vkey formats are
in ``mykey.audit.checkpoint``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .. import fs
from ..datadir import DataDir
from ..errors import CheckpointError, SigningKeyError
from .checkpoint import (
    VerifierKey,
    generate_signing_key,
    load_private_key,
    load_public_key_text,
    parse_vkey,
    peek_checkpoint,
    save_private_key,
    verifier_key,
)
from .checkpoints import list_checkpoints

__all__ = ["KEY_FILE", "VKEY_FILE", "ensure_signing_key", "load_verifier_key", "load_signer", "public_key_arg"]

KEY_FILE = "checkpoint.key"
VKEY_FILE = "checkpoint.vkey"


def _write_vkey(path: Path, vkey: str) -> None:
    fs.write_atomic(path, (vkey + "\n").encode("ascii"))  # public, but in DATA: copy it out to publish it


def ensure_signing_key(data: DataDir, origin: str | None = None) -> None:
    """Create DATA/keys/checkpoint.key (Ed25519, 0600) and checkpoint.vkey unless present; idempotent.

    The vkey's name is the log origin (default ``mykey/<16 random hex>``).
    """
    fs.private_dir(data.keys)
    key_path, vkey_path = data.keys / KEY_FILE, data.keys / VKEY_FILE
    if key_path.exists():
        key = load_private_key(key_path)
        if vkey_path.exists():
            vk = load_verifier_key(data)
            if origin is not None and vk.name != origin:
                raise SigningKeyError(
                    f"{data.root} already signs as {vk.name!r}, not {origin!r}; the origin of a log cannot change "
                    "(omit --origin, or use a new data directory)"
                )
            _check_pair(key, vk, key_path)
            return
        # The key survived but its vkey did not: keep the origin earlier checkpoints were signed with.
        names = {peek_checkpoint(p.read_text("utf-8")).origin for _, p in list_checkpoints(data)[-1:]}
        name = names.pop() if names else origin or _default_origin()
        if origin is not None and name != origin:
            raise SigningKeyError(f"checkpoints in {data.checkpoints} were signed as {name!r}, not {origin!r}")
        _write_vkey(vkey_path, verifier_key(name, key))
        return
    if vkey_path.exists():
        raise SigningKeyError(
            f"{vkey_path} exists but the private key {key_path} is missing; restore it from a backup "
            "(a new key would not match checkpoints already published)"
        )
    name = origin or _default_origin()
    key = generate_signing_key()
    vkey = verifier_key(name, key)  # validates the name before anything is written
    save_private_key(key, key_path)
    _write_vkey(vkey_path, vkey)


def _default_origin() -> str:
    return f"mykey/{secrets.token_hex(8)}"


def _check_pair(key: Ed25519PrivateKey, vk: VerifierKey, key_path: Path) -> None:
    if verifier_key(vk.name, key) != str(vk):
        raise SigningKeyError(
            f"{key_path} does not match the verifier key {vk.name}+{vk.key_id.hex()}; restore the matching pair"
        )


def load_verifier_key(data: DataDir) -> VerifierKey:
    """The data directory's own verifier key (DATA/keys/checkpoint.vkey)."""
    path = data.keys / VKEY_FILE
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"cannot read the verifier key {path} ({exc}); run `mykey init` to create it") from None
    try:
        return parse_vkey(text)
    except CheckpointError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None


def load_signer(data: DataDir) -> tuple[str, Ed25519PrivateKey]:
    """(key name = log origin, private key) for signing checkpoints; the pair is checked to match."""
    key_path = data.keys / KEY_FILE
    if not key_path.exists():
        raise SigningKeyError(f"no checkpoint signing key at {key_path}; run `mykey init` to create it")
    key = load_private_key(key_path)
    vk = load_verifier_key(data)
    _check_pair(key, vk, key_path)
    return vk.name, key


def public_key_arg(text: str) -> VerifierKey | Ed25519PublicKey:
    """A vkey string, a PEM public key, or the path of a file holding either."""
    text = text.strip()
    try:
        if "\n" not in text and not text.startswith("-----") and Path(text).is_file():
            text = Path(text).read_text("utf-8").strip()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the key file {text}: {exc.strerror}") from None
    try:
        if text.startswith("-----BEGIN"):
            return load_public_key_text(text)
        return parse_vkey(text)
    except CheckpointError as exc:
        raise SigningKeyError(
            f"not a verifier key: {exc}. Pass the vkey text (name+id+key), a PEM public key, or a file holding one"
        ) from None
