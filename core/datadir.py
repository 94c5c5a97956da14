"""Where things live inside a data directory (`--data DIR`, env MYKEY_DATA, default ./mykey-data), and its own secrets."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import KeyFileError
from .fs import private_dir, write_exclusive

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

    @property
    def terminal_keys(self) -> Path:
        return self.root / "terminal-keys"


SUBJECT_KEY_BYTES = 32


def ensure_subject_key(data: DataDir) -> bytes:
    """The platform's secret for keyed subject digests (DATA/keys/subject.key, mode 0600); made once."""
    path = data.keys / "subject.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        private_dir(data.keys)
        key = secrets.token_bytes(SUBJECT_KEY_BYTES)
        try:
            write_exclusive(path, key)
        except FileExistsError:  # another process made it first: use theirs
            key = path.read_bytes()
    if len(key) != SUBJECT_KEY_BYTES:
        raise KeyFileError(
            f"{path} is damaged (not {SUBJECT_KEY_BYTES} bytes); restore it from your backup of DATA/keys"
        )
    return key
