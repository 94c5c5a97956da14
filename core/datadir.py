"""Where things live inside a data directory (`--data DIR`, env MYKEY_DATA, default ./mykey-data), and its own secrets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import KeyFileError
from .fs import ensure_secret

DEFAULT_DATA = "./mykey-data"


def default_data_dir() -> Path:
    """The data directory from MYKEY_DATA, else ./mykey-data."""
    return Path(os.environ.get("MYKEY_DATA") or DEFAULT_DATA)


@dataclass(frozen=True)
class DataDir:
    """Paths of one mykey data directory."""

    root: Path

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def index(self) -> Path:
        """The live LMDB index: a symlink to the current index generation."""
        return self.root / "index"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def merkle(self) -> Path:
        return self.root / "merkle"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"


SUBJECT_KEY_BYTES = 32


def subject_key_path(data: DataDir) -> Path:
    return data.keys / "subject.key"


def ensure_subject_key(data: DataDir, *, in_use: bool = False) -> bytes:
    """The platform's secret for keyed subject digests (DATA/keys/subject.key, mode 0600); made once.

    in_use: records already hold digests made with the key (the log has MyKey events), so
    a missing key is an error: a new one would silently make every renewal fail.
    """
    path = subject_key_path(data)
    if in_use and not path.exists():
        raise KeyFileError(
            f"{path} is missing, but the log holds MyKey IDs whose holders were recorded with it; "
            "without it no renewal can be matched to its holder. Restore DATA/keys/subject.key from "
            "your backup of DATA/keys (mykey makes a new one only while no MyKey ID exists)"
        )
    return ensure_secret(path, SUBJECT_KEY_BYTES, what="the subject digest key")
