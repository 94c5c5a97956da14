"""The platform's status-list signing key: DATA/keys/status-list.key and status-list.jwks.json.

``status-list.key`` is the Ed25519 private key (PEM PKCS#8, 0600), made once; its key ID
is the key's JWK thumbprint (RFC 7638). ``status-list.jwks.json`` is the public JWKS a
terminal verifies lists with (the gateway also serves it at ``/.well-known/jwks.json``);
it is rewritten from the private key whenever it does not match it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import fs
from ..datadir import DataDir
from ..errors import StatusListKeyError

__all__ = ["KEY_FILE", "JWKS_FILE", "ensure_status_list_key", "load_status_list_key", "status_list_jwks"]

KEY_FILE = "status-list.key"
JWKS_FILE = "status-list.jwks.json"


def _import(pem: bytes, path: Path):
    from joserfc.jwk import OKPKey

    try:
        key = OKPKey.import_key(pem)
    except Exception as exc:  # joserfc/cryptography raise several types for a damaged file
        raise StatusListKeyError(f"{path} is not an Ed25519 private key ({exc}); restore it from your backup") from None
    if not key.is_private or key.as_dict().get("crv") != "Ed25519":
        raise StatusListKeyError(f"{path} is not an Ed25519 private key; restore it from your backup")
    return OKPKey.import_key(pem, parameters={"kid": key.thumbprint()})


def status_list_jwks(key) -> dict[str, Any]:
    """The public JWKS of the key (what terminals verify lists with)."""
    from joserfc.jwk import KeySet

    jwks = KeySet([key]).as_dict(private=False)
    for k in jwks["keys"]:
        k.update({"use": "sig", "alg": "Ed25519"})
    return jwks


def ensure_status_list_key(data: DataDir, *, create: bool = True):
    """The signing key (a joserfc OKPKey whose kid is its thumbprint), made first if missing and create.

    A concurrent maker wins and its key is used. DATA/keys/status-list.jwks.json is (re)written to match.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = data.keys / KEY_FILE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise StatusListKeyError(
                f"no status-list signing key at {path}; `mykey status-list build` makes one"
            ) from None
        fs.private_dir(data.keys)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fs.write_exclusive(path, pem)
        except FileExistsError:  # another process made it first: use theirs
            pem = path.read_bytes()
    key = _import(pem, path)
    jwks = status_list_jwks(key)
    jwks_path = data.keys / JWKS_FILE
    try:
        current = json.loads(jwks_path.read_text("utf-8"))
    except (OSError, ValueError):
        current = None
    if current != jwks:
        try:
            fs.write_atomic(jwks_path, (json.dumps(jwks, indent=2) + "\n").encode("utf-8"), mode=0o644)
        except OSError as exc:
            if create:
                raise StatusListKeyError(f"cannot write {jwks_path}: {exc.strerror}") from None
    return key


def load_status_list_key(data: DataDir):
    """The signing key, which must exist already (readers that may not create it)."""
    return ensure_status_list_key(data, create=False)
