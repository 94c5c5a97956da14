"""The sync feed for linked systems (7): scoped to a municipality, under pairwise pseudonyms.

Who may read it. A linked system (a municipal points system, say) is registered as a
consumer with its municipality (``mykey consumer add NAME --municipality CODE``; the
``ConsumerRegistered`` event records which operator did it). An unregistered name gets
nothing: reading the feed and acknowledging positions are refused.

What it sees. A consumer sees a MyKey ID only while the MyKey ID is *visible* to its
municipality: while it has at least one service ID linked at a business registered
in that municipality (the first five digits of the local government code; a sixth is
a check digit). A MyKey ID never linked there never appears, and nothing before its
first link there or after its last one does. The items, in log order:

- ``joined`` (with the current state): its first link at one of the municipality's
  businesses; from here on the consumer sees its changes;
- ``suspended`` / ``resumed`` / ``invalidated`` (with the new state) and ``renewed``
  (a new card certificate; the state is unchanged): MyKey-level changes while visible;
- ``left``: its last link there was removed; the consumer hears nothing more about it
  unless it joins again.

A consumer that replays its feed from position 0 learns exactly who is visible to it
now and in which state; one that follows it keeps that table current. Creations,
certificates, service IDs and other municipalities' links are never in it.

Under which name. Instead of the MyKey ID the consumer sees a pairwise pseudonym:
HMAC-SHA256 under the platform's feed key (DATA/keys/feed.key, 32 random bytes, mode
0600, made when the engine first opens the data directory) over the length-prefixed
consumer name and MyKey ID, truncated to 120 bits and written as 24 lower-case base32
characters. The same person has the same pseudonym in one consumer's feed for ever
(joined, left and joined again included), and unrelated pseudonyms in two consumers'
feeds, so two consumers cannot join their feeds, and neither learns the MyKey ID. A
consumer keys its own records (points balances) by the pseudonym. Losing the feed key
would change every pseudonym: it is refused to make a new one once consumers exist;
restore it from the backup of DATA/keys.

Positions. Acknowledged positions are log sequence numbers (``FeedAcked``), so a
consumer resumes after the last one it acknowledged. The feed is materialised in the
index (per municipality, by the projection) and rebuilt with it from the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..datadir import DataDir
from ..domain import events as ev
from ..domain import ids
from ..errors import (
    AlreadyExistsError,
    FeedPositionError,
    NotFoundError,
    ValidationError,
)
from ..fs import ensure_secret
from ..index.keys import ConsumerRecord, FeedEntry
from ..index.readmodel import ReadModel, Snapshot
from .base import EngineCore

FEED_KEY_FILE = "feed.key"
FEED_KEY_BYTES = 32
PSEUDONYM_BYTES = 15  # 120 bits: 24 base32 characters, no padding
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class FeedItem:
    """A change one consumer sees about one person, named by that consumer's pseudonym."""

    seq: int
    time: datetime
    change: str  # joined | left | suspended | resumed | invalidated | renewed
    pseudonym: str
    state: str | None  # the state after the change; None for left and renewed


def pseudonym(feed_key: bytes, consumer: str, mykey_id: str) -> str:
    """The consumer's pseudonym of a MyKey ID: HMAC-SHA256 over length-prefixed inputs, 24 base32 characters."""
    msg = b"".join(_LEN.pack(len(part)) + part for part in (consumer.encode("ascii"), mykey_id.encode("ascii")))
    digest = hmac.new(feed_key, msg, hashlib.sha256).digest()[:PSEUDONYM_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def feed_key_path(data: DataDir) -> Path:
    return data.keys / FEED_KEY_FILE


def load_feed_key(data: DataDir) -> bytes:
    """The platform's feed key (KeyFileError if it is missing or damaged)."""
    return ensure_secret(feed_key_path(data), FEED_KEY_BYTES, create=False, what="the sync feed's pseudonym key")


def require_consumer(state: Snapshot, consumer: str) -> ConsumerRecord:
    ids.check_actor_id(consumer, "consumer")
    rec = state.consumer(consumer)
    if rec is None:
        raise NotFoundError(
            f"feed consumer {consumer} is not registered; register it with "
            f"`mykey consumer add {consumer} --municipality CODE`"
        )
    return rec


def _item(feed_key: bytes, consumer: str, seq: int, entry: FeedEntry) -> FeedItem:
    return FeedItem(
        seq,
        datetime.fromtimestamp(entry.ts / 1_000_000, tz=timezone.utc),
        entry.change,
        pseudonym(feed_key, consumer, entry.mykey_id),
        None if entry.state is None else entry.state.label,
    )


def read_feed(
    state: Snapshot, feed_key: bytes, consumer: str, after: int | None = None, limit: int | None = None
) -> list[FeedItem]:
    """The consumer's items after `after` (default: its acknowledged position), from one snapshot."""
    rec = require_consumer(state, consumer)
    start = state.feed_position(consumer) if after is None else after
    if type(start) is not int or start < 0:
        raise ValidationError(f"feed position {start!r} must be a sequence number (0 or more)")
    return [_item(feed_key, consumer, seq, e) for seq, e in state.feed_entries(rec.municipality_code, start, limit)]


def read_live_feed(data: DataDir, consumer: str, after: int | None = None) -> tuple[list[FeedItem], int]:
    """The consumer's items from the live index, read-only (no writer lock), and the sequence they reach.

    For a process that does not hold the index open otherwise (`mykey feed`).
    """
    model = ReadModel.open_live(data)
    if model is None:
        raise NotFoundError(f"no index in {data.root}; run `mykey init` first")
    with model, model.snapshot() as state:
        require_consumer(state, consumer)
        return read_feed(state, load_feed_key(data), consumer, after), state.last_seq


class FeedCommands(EngineCore):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The feed key is made with the data directory, never again once consumers know pseudonyms.
        with self._read() as state:
            has_consumers = state.has_consumers()
        self._feed_key = ensure_secret(
            feed_key_path(self.data), FEED_KEY_BYTES, create=not has_consumers, what="the sync feed's pseudonym key"
        )

    def register_consumer(self, consumer: str, municipality_code: str, *, actor: ev.Actor | None = None) -> None:
        """Register a linked system that reads the feed of one municipality (attributed to the operator)."""
        ids.check_actor_id(consumer, "consumer")
        ids.check_municipality(municipality_code)
        with self._read() as state:
            rec = state.consumer(consumer)
        if rec is not None:
            raise AlreadyExistsError(
                f"feed consumer {consumer} is registered already (municipality {rec.municipality_code})"
            )
        self._commit([ev.ConsumerRegistered(consumer, municipality_code)], actor or self.operator)

    def feed_position(self, consumer: str) -> int:
        """The last sequence number the consumer acknowledged (0 if none)."""
        with self._read() as state:
            require_consumer(state, consumer)
            return state.feed_position(consumer)

    def feed(self, consumer: str, after: int | None = None, *, limit: int | None = None) -> list[FeedItem]:
        """The consumer's items in order after `after` (default: its acknowledged position)."""
        with self._read() as state:
            return read_feed(state, self._feed_key, consumer, after, limit)

    def feed_pseudonym(self, consumer: str, mykey_id: str) -> str:
        """The pseudonym a registered consumer knows a MyKey ID by (for the platform's own use)."""
        ids.check_mykey_id(mykey_id)
        with self._read() as state:
            require_consumer(state, consumer)
        return pseudonym(self._feed_key, consumer, mykey_id)

    def ack(self, consumer: str, seq: int) -> None:
        """Durably store that consumer processed everything up to seq."""
        with self._read() as state:
            require_consumer(state, consumer)
            position = state.feed_position(consumer)
        if not 0 <= seq <= self.index.last_seq:
            raise ValidationError(f"feed position {seq} is beyond the log's last sequence {self.index.last_seq}")
        if seq < position:
            raise FeedPositionError(
                f"consumer {consumer} already acknowledged past {seq}; positions only move forward"
            )
        self._commit([ev.FeedAcked(consumer, seq)], ev.Actor("system", consumer))
