"""The projector as its own process: follow the log's tail and apply whole batches to the index.

Used where the index is fed from a log written elsewhere (a gateway node, or a
replica). In the writer process the Engine applies right after each append instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType

from ..datadir import DataDir
from ..domain.events import decode_envelope
from ..log.backend import open_log
from .store import Index


def run_projector(
    data: DataDir,
    *,
    follow: bool = False,
    poll_interval: float = 0.05,
    stop: threading.Event | Callable[[], bool] | None = None,
    binding: ModuleType | None = None,
    progress: Callable[[int], None] | None = None,
    max_events_per_txn: int = 50_000,
) -> int:
    """Catch the index up with the log (and keep following with follow=True); returns the last seq applied.

    The log is whichever backend the data directory uses (see mykey.log.backend), opened as a reader.
    """
    with open_log(data, readonly=True) as log, Index.open(data, binding=binding) as index:
        index.catch_up(log, progress=progress, max_events_per_txn=max_events_per_txn)
        if follow:
            for _first, payloads in log.follow_batches(index.last_seq + 1, poll_interval=poll_interval, stop=stop):
                index.apply([decode_envelope(p) for p in payloads])
                if progress:
                    progress(len(payloads))
        return index.last_seq
