"""Keys usable once before they expire, shared by every node of a platform: a JetStream key-value bucket.

The backend mykey.auth.onetime selects when the log is a NATS stream (``nats://``): a
terminal's signed message accepted by one gateway node is refused by every other, and a
challenge issued by one node is used once whichever node sees it. Same operations as
the machine-local LMDB store (OneTimeKeys):

- ``add(key, expiry, now)``: create-if-absent (``Nats-Expected-Last-Subject-Sequence: 0``)
  with a per-key TTL; of any number of nodes adding one key at once, exactly one wins.
  An entry that expired but is not removed yet (the server removes it within about a
  second), or one used up, is replaced by compare-and-set on its revision.
- ``take(key, now)``: read the entry from the bucket's leader, then mark it used by
  compare-and-set on that revision; of any number of takers exactly one gets it. The
  used entry keeps the remaining TTL, so the bucket holds no tombstones.

Keys are stored hex-encoded; values are the expiry (unix seconds, float64) and a state
byte. One bucket per purpose and log stream (``<stream>_nonces``, ``<stream>_challenges``),
replicated like the log. If the cluster does not answer, the operation raises
LogUnavailableError: authentication then fails closed (ReplayProtectionError), and no
challenge is issued or used.
"""

from __future__ import annotations

import struct

from ..errors import MykeyError
from ..log.jetstream import NatsLocation
from ..log.nats_client import acquire as acquire_client
from ..log.nats_client import release as release_client
from ..log.nats_kv import KvBucket, bucket_name
from .onetime import release, share

__all__ = ["KvOneTimeKeys", "acquire", "release"]

MAX_AGE = 3600.0  # seconds: no entry outlives this, whatever its TTL
_VALUE = struct.Struct(">dc")  # expiry, state
_OPEN, _USED = b"o", b"u"
_RETRIES = 5  # compare-and-set rounds against concurrent writers of one key


class KvOneTimeKeys:
    """Keys with an expiry in a JetStream key-value bucket; the interface of onetime.OneTimeKeys."""

    def __init__(self, location: NatsLocation, name: bytes) -> None:
        self.name = name
        self.location = location
        bucket = bucket_name(location.stream, name.decode("ascii"))
        self.path = f"NATS key-value bucket {bucket}"  # named in error messages
        self._client = acquire_client(list(location.servers))
        try:
            self._bucket = KvBucket(self._client, bucket, replicas=location.replicas, max_age=MAX_AGE)
        except BaseException:
            release_client(self._client)
            raise
        self._users = 0
        self._closed = False

    def _kv(self) -> KvBucket:
        if self._closed:
            raise MykeyError(f"the single-use store {self.path} is closed; open it again")
        return self._bucket

    def add(self, key: bytes, expiry: float, now: float) -> bool:
        """Record key until expiry; False (nothing changed) if it is recorded and not expired at now."""
        kv, k = self._kv(), key.hex()
        value = _VALUE.pack(expiry, _OPEN)
        ttl = expiry - now
        for _ in range(_RETRIES):
            if kv.create(k, value, ttl=ttl) is not None:
                return True
            entry = kv.get(k)
            if entry is None:
                continue  # expired and removed meanwhile: create again
            old_expiry, state = _decode(entry.value)
            if state == _OPEN and old_expiry >= now:
                return False
            if kv.update(k, value, last=entry.revision, ttl=ttl) is not None:
                return True
        return False  # others keep writing this key: treat it as taken

    def take(self, key: bytes, now: float) -> float | None:
        """Mark key used; its expiry if it was recorded and unused (expired or not), None if not."""
        kv, k = self._kv(), key.hex()
        entry = kv.get(k)
        if entry is None:
            return None
        expiry, state = _decode(entry.value)
        if state != _OPEN:
            return None
        if kv.update(k, _VALUE.pack(expiry, _USED), last=entry.revision, ttl=expiry - now) is None:
            return None  # another node took it (or it changed) first
        return expiry

    def __len__(self) -> int:
        """How many keys the bucket holds (used and expired ones until the server removes them)."""
        return self._kv().count()

    def prune(self, now: float) -> int:
        """Nothing to do: the server removes expired entries itself."""
        self._kv()
        return 0

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            release_client(self._client)


def _decode(value: bytes) -> tuple[float, bytes]:
    try:
        return _VALUE.unpack(value)
    except struct.error:
        return 0.0, _USED  # not ours: never usable


def acquire(location: NatsLocation, name: bytes) -> KvOneTimeKeys:
    """This process's store for name on the log's cluster (one per location and name); release() it."""
    return share((location.url, name), lambda: KvOneTimeKeys(location, name))
