"""Which log backend a data directory uses: the one place a log location is turned into a LogStore.

Without a location (no ``--log``, no MYKEY_LOG) the embedded file log in DATA/log is
used. Callers above the log (the index, the audit trail, the engine, the CLI) open
logs only through ``open_log`` and talk to them only through the LogStore interface.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..datadir import DataDir
from ..errors import ValidationError
from .store import LogStore

ENV_VAR = "MYKEY_LOG"


def log_location(url: str | None = None) -> str | None:
    """The log location asked for: url, else $MYKEY_LOG, else None (the embedded file log)."""
    return url or os.environ.get(ENV_VAR) or None


def file_log_dir(data: DataDir | str | os.PathLike[str], *, url: str | None = None) -> Path:
    """The directory of the embedded file log at the log location (see open_log).

    ValidationError for a location that is not a file log (file-log tools such as
    `mykey log verify` and `mykey log repair` work on the files themselves).
    """
    data = data if isinstance(data, DataDir) else DataDir(Path(data))
    location = log_location(url)
    if location is None:
        return data.log
    if location.startswith("file:"):
        return Path(location.removeprefix("file://").removeprefix("file:"))
    raise ValidationError(
        f"log location {location!r} is not understood; leave --log and {ENV_VAR} unset for the "
        "embedded file log in DATA/log, or give file:///path/to/log"
    )


def open_log(
    data: DataDir | str | os.PathLike[str],
    *,
    url: str | None = None,
    readonly: bool = False,
    fsync: str = "always",
    keep_through: int = 0,
) -> LogStore:
    """Open the data directory's log as the writer (default) or a reader.

    keep_through: sequences known to be acknowledged elsewhere (applied by the index,
    covered by a signed checkpoint); a backend's recovery never discards them.
    """
    from .filelog import FileLog

    directory = file_log_dir(data, url=url)
    return FileLog.open(directory, readonly=readonly, fsync=fsync, keep_through=keep_through)
