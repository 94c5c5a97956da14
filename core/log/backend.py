"""Which log backend a data directory uses: the one place a log location is turned into a LogStore.

The location, in order: the ``url`` a caller passes, else the one set for the process
(``set_log_location``: the CLI's global ``--log``), else $MYKEY_LOG. Without any, the
embedded file log in DATA/log is used. ``nats://HOST:PORT[,...][?stream=...]`` opens
the replicated log on a NATS JetStream cluster (mykey.log.jetstream), ``file:///path``
a file log elsewhere. Callers above the log (the index, the audit trail, the engine,
the CLI) open logs only through ``open_log`` and talk to them only through the
LogStore interface.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..datadir import DataDir
from ..errors import ValidationError
from .jetstream import NatsLocation, is_nats_location
from .store import LogStore

ENV_VAR = "MYKEY_LOG"

_process_location: str | None = None


def set_log_location(url: str | None) -> None:
    """Set the log location for every open_log of this process that names none (None: back to $MYKEY_LOG)."""
    global _process_location
    _process_location = url or None


def log_location(url: str | None = None) -> str | None:
    """The log location asked for: url, else the process's (set_log_location), else $MYKEY_LOG, else None."""
    return url or _process_location or os.environ.get(ENV_VAR) or None


def log_initialized(data: DataDir | str | os.PathLike[str], *, url: str | None = None) -> bool:
    """Whether the data directory has a log to open (`mykey init` made it).

    The embedded file log: its directory exists. Any other location: the data
    directory exists (a NATS stream is checked when it is opened).
    """
    data = data if isinstance(data, DataDir) else DataDir(Path(data))
    location = log_location(url)
    if location is None:
        return data.log.is_dir()
    if is_nats_location(location):
        return data.root.is_dir()
    return file_log_dir(data, url=url).is_dir()


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
    if is_nats_location(location):
        NatsLocation.parse(location)  # a malformed one is "not understood"
        raise ValidationError(
            f"the log is the NATS stream at {location}, not files: the file-log tools do not apply to it; "
            "check it with `mykey audit verify`"
        )
    raise ValidationError(
        f"log location {location!r} is not understood; leave --log and {ENV_VAR} unset for the "
        "embedded file log in DATA/log, or give nats://HOST:PORT[,nats://HOST:PORT][?stream=NAME] or "
        "file:///path/to/log"
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
    covered by a signed checkpoint); a backend's recovery never discards them (a
    JetStream stream never discards anything: fsync and recovery are the servers').
    """
    location = log_location(url)
    if location is not None and is_nats_location(location):
        from .jetstream import JetStreamLog

        return JetStreamLog.open(location, readonly=readonly)
    from .filelog import FileLog

    directory = file_log_dir(data, url=url)
    return FileLog.open(directory, readonly=readonly, fsync=fsync, keep_through=keep_through)
