"""Where things live inside a data directory (`--data DIR`, env MYKEY_DATA, default ./mykey-data)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
