"""The sync feed for linked systems (7): MyKey-level changes in log order, and acknowledged positions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from ..domain import events as ev
from ..domain import ids
from ..domain.transitions import feed_change
from ..errors import FeedPositionError, ValidationError
from .base import EngineCore


@dataclass(frozen=True)
class FeedItem:
    """A MyKey-level change for linked systems (no certificates, no service IDs)."""

    seq: int
    time: datetime
    change: str  # created | suspended | resumed | invalidated | renewed
    mykey_id: str
    state: str | None  # the state after the change; None for a renewal (state unchanged)


def feed_items(envs: Iterable[ev.Envelope]) -> Iterator[FeedItem]:
    """The feed's view of envelopes: MyKey-level changes only (see mykey.domain.transitions.FEED_CHANGES)."""
    for env in envs:
        change = feed_change(env.body)
        if change is not None:
            state = None if change.state is None else change.state.label
            yield FeedItem(env.seq, env.time, change.change, env.body.mykey_id, state)


class FeedCommands(EngineCore):
    def feed_position(self, consumer: str) -> int:
        """The last sequence number the consumer acknowledged (0 if none)."""
        ids.check_actor_id(consumer, "consumer")
        with self._read() as state:
            return state.feed_position(consumer)

    def feed(self, consumer: str, after: int | None = None) -> Iterator[FeedItem]:
        """MyKey-level changes in order after `after` (default: the consumer's acknowledged position)."""
        start = (self.feed_position(consumer) if after is None else after) + 1
        return feed_items(self.log.read(start, self.index.last_seq))

    def ack(self, consumer: str, seq: int) -> None:
        """Durably store that consumer processed everything up to seq."""
        ids.check_actor_id(consumer, "consumer")
        if not 0 <= seq <= self.index.last_seq:
            raise ValidationError(f"feed position {seq} is beyond the log's last sequence {self.index.last_seq}")
        if seq < self.feed_position(consumer):
            raise FeedPositionError(
                f"consumer {consumer} already acknowledged past {seq}; positions only move forward"
            )
        self._commit([ev.FeedAcked(consumer, seq)], ev.Actor("system", consumer))
