"""The LogStore interface: an append-only, gap-free sequence of event envelopes.

Backend-neutral: the embedded segmented file log implements it today; a NATS
JetStream stream can implement it later (expected_last_seq maps to
Nats-Expected-Last-Sequence). mykey.log.contract is the test suite every backend
must pass (its test module subclasses LogStoreContract).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterator, Sequence

from ..domain.events import SYSTEM, Actor, Envelope, Event, decode_envelope

FSYNC_MODES = ("always", "interval", "never")


class LogStore(abc.ABC):
    """Append-only event log with global sequence numbers 1, 2, 3, ... and no gaps."""

    @property
    @abc.abstractmethod
    def last_seq(self) -> int:
        """Sequence number of the newest event this handle has seen (0 when empty)."""

    @abc.abstractmethod
    def append(
        self,
        events: Sequence[Event],
        actor: Actor = SYSTEM,
        *,
        expected_last_seq: int | None = None,
        ts: int | None = None,
    ) -> list[Envelope]:
        """Atomically append a batch; all events are stored or none. Returns the envelopes.

        Sequence numbers run on from last_seq without gaps; the batch shares one
        timestamp (ts, default now, in microseconds since the epoch, UTC).
        expected_last_seq makes the append conditional (optimistic concurrency):
        ConcurrencyError if the log's last sequence number differs. Invalid events or
        actor raise ValidationError, a read-only or closed handle raises LogError; in
        every refusal nothing is written and no sequence number is used up.
        """

    @abc.abstractmethod
    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Yield (seq, stored record bytes) for committed events in [from_seq, to_seq]."""

    @abc.abstractmethod
    def read_batches(self, from_seq: int = 1) -> Iterator[tuple[int, list[bytes]]]:
        """Yield whole committed batches (first_seq, record bytes) from the one holding from_seq.

        Projections apply whole batches so that a command's events become visible together.
        """

    @abc.abstractmethod
    def follow_batches(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, list[bytes]]]:
        """Whole batches from the one holding from_seq on, waiting at the tail until stop.

        stop (an Event or a callable) is checked while waiting at the tail: the
        iterator ends soon after it becomes true.
        """

    def read(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Envelope]:
        """Yield decoded envelopes (upcast to today's schema) in [from_seq, to_seq]."""
        for _seq, payload in self.read_raw(from_seq, to_seq):
            yield decode_envelope(payload)

    @abc.abstractmethod
    def follow_raw(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Like read_raw, but waits for new events at the tail until stop is set."""

    def follow(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[Envelope]:
        """Decoded envelopes from from_seq on, following the tail as it grows."""
        for _seq, payload in self.follow_raw(from_seq, poll_interval=poll_interval, stop=stop):
            yield decode_envelope(payload)

    @abc.abstractmethod
    def refresh(self) -> int:
        """Re-read the committed tail (for readers); returns the new last_seq."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make every appended event durable now, whatever the fsync mode."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush, release the writer lock and close files. Idempotent."""

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def should_stop(stop: threading.Event | Callable[[], bool] | None) -> bool:
    """Evaluate a follow() stop condition."""
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())
