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
from ..log.filelog import FileLog
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
    """Catch the index up with the log (and keep following with follow=True); returns the last seq applied."""
    log = FileLog.open(data.log, readonly=True)
    with Index.open(data, binding=binding) as index:
        index.catch_up(log, progress=progress, max_events_per_txn=max_events_per_txn)
        if follow:
            for _first, payloads in log.follow_batches(index.last_seq + 1, poll_interval=poll_interval, stop=stop):
                n = len(payloads)
                index.apply([decode_envelope(p) for p in payloads])
                if progress:
                    progress(n)
        return index.last_seq
