"""Files named on the command line: bounded reads, the card key, new output files, all-or-nothing init.

Every problem with such a file is a MykeyError with one clear line (the CLI exits 1),
never a traceback from the library that parsed it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
    x448,
    x25519,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    load_der_private_key,
    load_pem_private_key,
)

from ..datadir import DataDir
from ..domain import certs
from ..errors import CertificateError, InputFileError, LockHeldError, OutputFileError
from ..fs import write_exclusive

MAX_KEY_FILE = 64 * 1024  # a PEM RSA-16384 key is ~13 KB
CardKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_KEY_KINDS = (
    (ed25519.Ed25519PrivateKey, "Ed25519"),
    (ed448.Ed448PrivateKey, "Ed448"),
    (x25519.X25519PrivateKey, "X25519"),
    (x448.X448PrivateKey, "X448"),
    (dsa.DSAPrivateKey, "DSA"),
)


def read_input(path: str | Path, what: str, *, limit: int) -> bytes:
    """The bytes of a file named on the command line ("-": standard input); InputFileError beyond limit bytes."""
    if str(path) == "-":
        return read_bounded(getattr(sys.stdin, "buffer", sys.stdin), "standard input", what, limit=limit)
    with open(path, "rb") as f:
        return read_bounded(f, str(path), what, limit=limit)


def read_bounded(f: BinaryIO, name: str, what: str, *, limit: int) -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise InputFileError(f"{name} holds more than {limit} bytes, too many for a {what}; check what you passed")
    return data


def load_card_key(path: str | Path) -> CardKey:
    """The private key standing in for a card: unencrypted PEM or DER, RSA or ECDSA."""
    raw = read_input(path, "private key file", limit=MAX_KEY_FILE)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            key = load_pem_private_key(raw, None)
        else:
            key = load_der_private_key(raw, None)
    except TypeError:  # how cryptography says "encrypted, and no password was given"
        raise InputFileError(
            f"{path}: the private key is encrypted (password-protected); give the key file unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputFileError(
            f"{path} is not a private key file: expected an unencrypted RSA or ECDSA private key, PEM or DER"
        ) from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        kind = next((name for cls, name in _KEY_KINDS if isinstance(key, cls)), type(key).__name__)
        raise InputFileError(f"{path} holds an {kind} key; a card's key is RSA or ECDSA P-256")
    return key


def trust_anchor_bundle(paths: Sequence[str | Path]) -> bytes:
    """Every certificate of the files as one PEM bundle (duplicates dropped), each checked to be a CA.

    Reads and checks all files before anything is created or recorded.
    """
    seen: dict[bytes, bytes] = {}
    for path in paths:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            cas = certs.load_certificates(raw)
            certs.TrustStore(cas)  # refuses a certificate that is not a CA certificate
        except CertificateError as exc:
            raise CertificateError(f"{path}: {exc}") from None
        for ca in cas:
            pem = ca.public_bytes(Encoding.PEM)
            seen.setdefault(hashlib.sha256(pem).digest(), pem)
    return b"".join(seen.values())


@contextmanager
def created_or_removed(root: Path) -> Iterator[None]:
    """Remove whatever the block created under root (root too, if it did not exist) when the block fails.

    Not when another process holds a lock: what is there is then that process's.
    """
    existed = root.exists()
    before = set(os.listdir(root)) if existed and root.is_dir() else set()
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, LockHeldError):
            if not existed:
                shutil.rmtree(root, ignore_errors=True)
            elif root.is_dir():
                for name in set(os.listdir(root)) - before:
                    entry = root / name
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        raise


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def write_new_output(path: str | Path, data: bytes, data_dir: DataDir) -> None:
    """Create a new file (0600) with data: never over an existing file or symlink, never inside the data directory.

    The path is checked both as written and with symlinks resolved, so a link into the
    data directory (DATA/keys holds the signing keys) is refused too.
    """
    path = Path(path)
    written = Path(os.path.normpath(os.path.abspath(path)))
    resolved = path.resolve()
    protected = {Path(os.path.normpath(os.path.abspath(data_dir.root))), data_dir.root.resolve(), data_dir.keys.resolve()}
    if any(_inside(p, d) for p in (written, resolved) for d in protected):
        raise OutputFileError(f"{path} is inside the data directory {data_dir.root}; write the file somewhere else")
    try:
        write_exclusive(path, data)
    except FileExistsError:
        raise OutputFileError(f"{path} already exists; mykey never replaces a file: name a new one") from None
