"""JetStream key-value buckets as mykey uses them: per-key TTLs, create-if-absent and compare-and-set.

State shared by every node beside the log (the writer lease, accepted terminal nonces,
open challenges) lives in small JetStream key-value buckets on the log's cluster. They
are used through raw JetStream API requests, not nats-py's KeyValue class, because
mykey needs what it does not offer together: a per-key TTL on a conditional update
(``Nats-TTL`` with ``Nats-Expected-Last-Subject-Sequence``) and reads from the stream
leader only (a replica may lag, and a single-use key read stale could be used twice
or refused when it was just issued).

A bucket is the stream ``KV_<bucket>`` on subjects ``$KV.<bucket>.>``, one message kept
per key (``max_msgs_per_subject: 1``), per-message TTLs allowed, file storage, as many
replicas as the log has. A key's revision is the stream sequence of its newest message.

- ``create``: store only if the key has no entry (``Nats-Expected-Last-Subject-Sequence: 0``);
  exactly one of any number of concurrent creates wins.
- ``update``: store only if the key's newest revision is ``last`` (compare-and-set).
- TTLs are whole milliseconds, at least one second (the server refuses less); the
  server removes the entry when it expires (measured: within about a second).

Every coroutine runs on the nats-py connection it is given; ``KvBucket`` wraps them for
synchronous callers on a NatsClient (mykey.log.nats_client).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from ..errors import LogError, LogUnavailableError, ValidationError
from .jetstream import (
    API,
    STREAM_NOT_FOUND,
    WRONG_LAST_SEQUENCE,
    _api,
    _ApiError,
    _parse_headers,
    _transient,
)
from .nats_client import NatsClient

__all__ = ["KvBucket", "KvEntry", "bucket_name", "ensure_bucket", "kv_count", "kv_get", "kv_put", "ttl_header"]

NO_MESSAGE_FOUND = 10037
STREAM_NAME_IN_USE = 10058
WRONG_LAST_SEQUENCE_CONSTANT = 10164  # the same refusal, as some servers word it for a subject's sequence
KV_OP = "KV-Operation"
MIN_TTL = 1.0  # seconds: the server refuses a shorter per-message TTL
_BUCKET = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_KEY = re.compile(r"^[-/_=.A-Za-z0-9]{1,1024}$")


def bucket_name(stream: str, purpose: str) -> str:
    """The bucket holding purpose's keys for the log stream (one set of buckets per mykey log)."""
    name = f"{stream}_{purpose}"
    if not _BUCKET.match(name):
        raise ValidationError(f"{name!r} is not a key-value bucket name")
    return name


def ttl_header(seconds: float) -> str:
    """A Nats-TTL value: whole milliseconds, at least MIN_TTL seconds."""
    return f"{max(int(MIN_TTL * 1000), math.ceil(seconds * 1000))}ms"


@dataclass(frozen=True)
class KvEntry:
    """The newest message of a key: its value, revision (stream sequence) and whether it is a delete marker."""

    key: str
    value: bytes
    revision: int
    deleted: bool = False


def _check_key(key: str) -> None:
    if not _KEY.match(key):
        raise ValidationError(f"{key[:40]!r} is not a key-value key (letters, digits, - / _ = .)")


NO_SUITABLE_PEERS = 10005  # JetStream: "no suitable peers for placement" (a peer offline or not current)
PLACEMENT_WAIT = 20.0  # seconds a bucket's creation is retried while peers are missing


async def ensure_bucket(nc, bucket: str, *, replicas: int, max_age: float = 0.0) -> None:
    """Create the bucket's stream unless it exists (idempotent; concurrent creators are fine)."""
    config = {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "new",
        "max_msgs_per_subject": 1,
        "max_age": int(max_age * 1e9),
        "allow_msg_ttl": True,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_direct": False,
    }
    try:
        await _api(nc, f"{API}.STREAM.INFO.KV_{bucket}")
        return
    except _ApiError as exc:
        if exc.err_code != STREAM_NOT_FOUND:
            raise LogError(f"key-value bucket {bucket}: {exc}") from None
    deadline = time.monotonic() + PLACEMENT_WAIT
    while True:
        try:
            await _api(nc, f"{API}.STREAM.CREATE.KV_{bucket}", config)
            return
        except _ApiError as exc:
            if exc.err_code == STREAM_NAME_IN_USE:  # created meanwhile by another node
                return
            if exc.err_code == NO_SUITABLE_PEERS and time.monotonic() < deadline:
                await asyncio.sleep(0.25)  # a server of a cluster that just started is not current yet
                continue
            raise LogError(f"cannot create key-value bucket {bucket}: {exc}") from None


async def kv_get(nc, bucket: str, key: str) -> KvEntry | None:
    """The key's newest entry as the bucket's leader has it (None: no entry, or it expired)."""
    _check_key(key)
    try:
        resp = await _api(nc, f"{API}.STREAM.MSG.GET.KV_{bucket}", {"last_by_subj": f"$KV.{bucket}.{key}"})
    except _ApiError as exc:
        if exc.err_code == NO_MESSAGE_FOUND:
            return None
        raise LogError(f"key-value bucket {bucket}: reading {key}: {exc}") from None
    m = resp["message"]
    headers = _parse_headers(base64.b64decode(m["hdrs"])) if m.get("hdrs") else {}
    value = base64.b64decode(m.get("data") or "")
    return KvEntry(key, value, int(m["seq"]), headers.get(KV_OP) in ("DEL", "PURGE"))


async def kv_put(
    nc, bucket: str, key: str, value: bytes, *, last: int | None, ttl: float | None, timeout: float = 5.0
) -> int | None:
    """Store value under key; its revision, or None when the condition failed.

    last: None stores unconditionally, 0 only if the key has no entry (create), n only
    if the key's newest revision is n (compare-and-set). ttl: seconds until the server
    removes the entry (None: the bucket's max_age).
    """
    _check_key(key)
    headers: dict[str, str] = {}
    if last is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
    if ttl is not None:
        headers["Nats-TTL"] = ttl_header(ttl)
    reply = await nc.request(f"$KV.{bucket}.{key}", value, headers=headers or None, timeout=timeout)
    resp: dict[str, Any] = json.loads(reply.data)
    err = resp.get("error")
    if err:
        e = _ApiError(err)
        if e.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_CONSTANT):
            return None
        raise LogError(f"key-value bucket {bucket}: writing {key}: {e}")
    return int(resp["seq"])


async def kv_count(nc, bucket: str) -> int:
    """Messages in the bucket (live keys, plus expired ones the server has not removed yet)."""
    resp = await _api(nc, f"{API}.STREAM.INFO.KV_{bucket}")
    return int((resp.get("state") or {}).get("messages", 0))


class KvBucket:
    """A bucket used from synchronous code through a NatsClient (its connection and loop thread).

    No answer from the servers (a failover, a dead cluster) is LogUnavailableError.
    """

    def __init__(self, client: NatsClient, bucket: str, *, replicas: int, max_age: float = 0.0) -> None:
        self.client = client
        self.bucket = bucket
        self._call(ensure_bucket(client.nc, bucket, replicas=replicas, max_age=max_age))

    def _call(self, coro, timeout: float = 5.0) -> Any:
        try:
            return self.client.run(coro, timeout + 1.0)
        except _transient() as exc:
            raise LogUnavailableError(
                f"the NATS servers holding key-value bucket {self.bucket} did not answer ({type(exc).__name__}); "
                "they may be electing a leader: try again"
            ) from exc

    def get(self, key: str) -> KvEntry | None:
        return self._call(kv_get(self.client.nc, self.bucket, key))

    def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int | None:
        """Store value only if key has no entry; its revision, or None when it has one."""
        return self._call(kv_put(self.client.nc, self.bucket, key, value, last=0, ttl=ttl))

    def update(self, key: str, value: bytes, *, last: int, ttl: float | None = None) -> int | None:
        """Store value only if key's newest revision is last; its revision, or None."""
        return self._call(kv_put(self.client.nc, self.bucket, key, value, last=last, ttl=ttl))

    def count(self) -> int:
        return self._call(kv_count(self.client.nc, self.bucket))
