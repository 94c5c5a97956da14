"""The writer lease: which node may append to a replicated log, held in a JetStream key-value bucket.

One key per log stream (bucket ``<stream>_writer``, key ``lease``). The node holding it
is the active writer; it renews the lease every second or so by compare-and-set on the
revision it holds, each write carrying a TTL of ``ttl`` seconds. When the
holder's machine dies (or hangs, or loses the cluster), nothing renews it and the
server removes the key once the TTL runs out; a standby's create-if-absent then
succeeds, and exactly one standby wins.

The lease decides who *tries* to write; it is not what keeps two writers apart. Expiry
is judged by the server's clock and a deposed holder learns of it late (it may be
frozen, or cut off), so the fence is the log's conditional append: a new holder
catches its index up to the stream's end and appends a fence batch
(JetStreamLog.fence) before anything else, and a deposed writer's next append then
fails its condition (LogFencedError). A holder also stops using the lease on its own
``ttl`` seconds after the start of its last successful renewal (``held``), which the
server's expiry can only come after.

Coroutines run on the nats-py connection given to the Lease (mykey.gateway.node runs
them on its event loop).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from .nats_kv import KvEntry, bucket_name, ensure_bucket, kv_get, kv_put

__all__ = ["DEFAULT_TTL", "Lease", "LeaseHolder"]

DEFAULT_TTL = 15.0  # seconds: well above a stream leader election (4-8 s measured), so a failover keeps the holder
KEY = "lease"
_RELEASED = b"{}"  # what a holder leaves on a clean stop: free at once


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease: the node's name, its writer process and since when (unix seconds)."""

    node: str
    pid: int
    host: str
    since: float
    revision: int

    @classmethod
    def parse(cls, entry: KvEntry) -> LeaseHolder | None:
        if entry.deleted or entry.value == _RELEASED:
            return None
        try:
            d: dict[str, Any] = json.loads(entry.value)
            return cls(str(d["node"]), int(d["pid"]), str(d["host"]), float(d["since"]), entry.revision)
        except (ValueError, KeyError, TypeError):
            return None  # not a lease value: treated as free (and replaced by compare-and-set)

    @property
    def term(self) -> tuple[str, int, str, float]:
        """What stays the same while one holder renews (the revision changes at every renewal)."""
        return (self.node, self.pid, self.host, self.since)

    def describe(self) -> str:
        return f"node {self.node} (pid {self.pid} on {self.host}, since {time.strftime('%H:%M:%S', time.localtime(self.since))})"


class Lease:
    """One node's handle on the writer lease of a stream."""

    def __init__(self, nc, stream: str, node: str, *, ttl: float = DEFAULT_TTL, replicas: int = 3) -> None:
        if ttl < 2.0:
            raise ValueError("the lease TTL must be at least 2 seconds")
        self.nc = nc
        self.bucket = bucket_name(stream, "writer")
        self.node = node
        self.ttl = ttl
        self.replicas = replicas
        self.revision = 0  # the revision we hold; 0: not held
        self.seen: LeaseHolder | None = None  # the holder the last acquire() or holder() found (None: nobody)
        self._valid_until = 0.0  # monotonic: we stop believing we hold it then
        self._value = json.dumps(
            {"node": node, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        ).encode()

    async def setup(self) -> None:
        await ensure_bucket(self.nc, self.bucket, replicas=self.replicas)

    @property
    def held(self) -> bool:
        """Whether this node may act as the writer now (it holds the lease and it has not run out here)."""
        return self.revision > 0 and time.monotonic() < self._valid_until

    @property
    def remaining(self) -> float:
        """Seconds this node may still act as the writer without renewing (0 when not held)."""
        return max(0.0, self._valid_until - time.monotonic()) if self.revision else 0.0

    async def holder(self) -> LeaseHolder | None:
        """Who holds the lease now (None: nobody)."""
        entry = await kv_get(self.nc, self.bucket, KEY)
        self.seen = None if entry is None else LeaseHolder.parse(entry)
        return self.seen

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this node now holds it."""
        start = time.monotonic()
        rev = await kv_put(self.nc, self.bucket, KEY, self._value, last=0, ttl=self.ttl)
        if rev is None:
            entry = await kv_get(self.nc, self.bucket, KEY)
            self.seen = None if entry is None else LeaseHolder.parse(entry)
            if entry is None:
                return False  # it expired just now: the next attempt creates it
            if self.seen is not None:
                return False  # held by a live node (or by us under an older revision: it must run out)
            rev = await kv_put(self.nc, self.bucket, KEY, self._value, last=entry.revision, ttl=self.ttl)
            if rev is None:
                return False
        self.revision, self._valid_until = rev, start + self.ttl
        self.seen = None
        return True

    async def renew(self) -> bool:
        """Extend the lease we hold; False when it is no longer ours (it ran out and someone else, or
        nobody, has it now). Connection errors propagate: the lease stays ours until ``held`` says not."""
        if self.revision == 0:
            return False
        start = time.monotonic()
        rev = await kv_put(self.nc, self.bucket, KEY, self._value, last=self.revision, ttl=self.ttl)
        if rev is None:
            self.revision, self._valid_until = 0, 0.0
            return False
        self.revision, self._valid_until = rev, start + self.ttl
        return True

    async def release(self) -> None:
        """Give the lease up at once (a clean stop): a standby takes it without waiting for the TTL."""
        rev, self.revision, self._valid_until = self.revision, 0, 0.0
        if rev:
            await kv_put(self.nc, self.bucket, KEY, _RELEASED, last=rev, ttl=self.ttl)

    def drop(self) -> None:
        """Forget the lease without telling the server (it runs out by itself)."""
        self.revision, self._valid_until = 0, 0.0
