"""The replicated LogStore: mykey's event log as a NATS JetStream stream.

Location (``--log`` / MYKEY_LOG)::

    nats://HOST:PORT[,nats://HOST:PORT...][?stream=NAME&subject=SUBJ&replicas=N&timeout=S&max_msg_bytes=B]

``stream`` defaults to MYKEY_LOG, ``subject`` to ``mykey.log.<stream>``, ``replicas`` to 3
(``replicas=1`` for a single development server), ``timeout`` (30 s) is how long an
append keeps trying through a failover before it gives up.

Layout: one mykey batch is one JetStream atomic batch (``allow_atomic``) of 1..n
messages, each carrying many events as a frame of mykey.log.framing
(mykey.log.nats_records has the details). Event sequence numbers stay mykey's own;
the frame header of each message names its first one, so a reader finds the message
holding any event by binary search over stream sequence numbers.

Exactly one writer: every append is conditional on the stream's last sequence number
as this writer knows it (``Nats-Expected-Last-Sequence`` on the batch's first message).
If anything else was appended in between (a second writer, or one that won a race
during a failover), the server refuses the batch, nothing of it is stored, and this
handle raises LogFencedError and appends nothing more: two writers' batches never
interleave. The fence is the stream itself, so it holds across machines.

Ambiguous outcomes: when a commit times out (a leader died or hung) the batch may or
may not be stored. The writer then retries the same batch with the same condition: if
the retry is stored, the first attempt never was (it would fail the condition now); if
the condition fails, the writer reads the stream at that position from the leader and
compares the batch ID and digest there. Its own batch means it landed (acknowledged
once); anything else means another writer (LogFencedError). It never appends blindly
twice. If the servers do not answer within ``timeout``, the handle stops
(LogUnavailableError): reopening finds out from the stream what happened.

Reading: any replica answers (``DIRECT.GET`` batches, so readers and followers ride
through a leader election); a handle reads at least up to what it knows was committed,
asking again when a lagging replica answers short. Every message is checked on the way
(mykey.log.nats_records): stream and event numbering without gaps, CRCs, whole batches,
digests. Only whole batches are ever returned.

Durability comes from the servers: streams are created R3 with file storage, and the
servers must run with ``jetstream { sync_interval: always }``: an acknowledged batch is
then written and fsynced on a majority of the replicas before the ack. Survived, with
no acknowledged batch lost or duplicated and no half batch visible (tests and
bench/nats_failover.py): the crash (SIGKILL) or hang (SIGSTOP) of any one node, the
stream leader included, with appends stalling for the election (~4-8 s measured
here); a node restarted with its disk; every node killed at once and restarted with
its disk; the writer dying mid-batch; a lost ack; a second writer (fenced). Losing a
majority of the nodes stops appends (LogUnavailableError after ``timeout``) until a
majority is back; losing the disks of a majority loses acknowledged batches, which the
writer reports (CorruptLogError: the stream is behind what was acknowledged) and
`mykey audit verify` shows against the signed checkpoints. An R1 stream survives the
crash and restart of its one server, nothing more.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..domain.events import (
    SYSTEM,
    Actor,
    Envelope,
    Event,
    check_event,
    encode_envelope,
    now_us,
)
from ..errors import (
    ConcurrencyError,
    CorruptLogError,
    LogError,
    LogFencedError,
    LogUnavailableError,
    ValidationError,
)
from .accel import framing_module
from .filelog import FileLog
from .nats_client import CONNECT_TIMEOUT, NatsClient, acquire, release
from .nats_records import (
    H_BATCH,
    H_WRITER,
    BatchAssembler,
    StreamMessage,
    batch_digest,
    decode_message,
    message_headers,
    pack_frames,
    parse_part,
)
from .store import LogStore, should_stop

__all__ = ["DEFAULT_STREAM", "JetStreamLog", "NatsLocation", "is_nats_location"]

log = logging.getLogger("mykey.log.nats")

DEFAULT_STREAM = "MYKEY_LOG"
SCHEMES = ("nats", "tls")
API = "$JS.API"
REQUEST_TIMEOUT = 5.0  # one JetStream API request
HEADER_ROOM = 4096  # of max_payload, kept for message headers
MAX_MSG_BYTES = 8 * 1024 * 1024  # a message's data never exceeds this, whatever max_payload allows
BATCH_LIMIT = 1000  # messages in one atomic batch (the server's limits.batch.max_msgs default)
READ_MSGS = 256  # messages per direct-get batch request (at most)
READ_BYTES = 16 * 1024 * 1024  # bytes per direct-get batch request (at most; one message always comes)
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

# JetStream API error codes mykey acts on
WRONG_LAST_SEQUENCE = 10071
STREAM_NOT_FOUND = 10059
NO_MESSAGE_FOUND = 10037
STREAM_NAME_IN_USE = 10058
REPLICAS_NOT_SUPPORTED = 10074
INSUFFICIENT_RESOURCES = 10023
SUBJECTS_OVERLAP = 10065
BATCH_INCOMPLETE = 10176
BATCH_DUPLICATE_MSG_ID = 10201
TOO_MANY_INFLIGHT = 10210
RETRYABLE = {BATCH_INCOMPLETE, TOO_MANY_INFLIGHT}  # nothing was stored: send the batch again


def is_nats_location(location: str) -> bool:
    """Whether a log location names NATS servers (nats:// or tls://)."""
    return location.split("://", 1)[0].lower() in SCHEMES and "://" in location


@dataclass(frozen=True)
class NatsLocation:
    """A parsed nats:// log location: servers, stream and how the log uses it."""

    servers: tuple[str, ...]
    stream: str = DEFAULT_STREAM
    subject: str = ""
    replicas: int = 3
    timeout: float = 30.0
    max_msg_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.subject:
            object.__setattr__(self, "subject", f"mykey.log.{self.stream}")

    @classmethod
    def parse(cls, url: str) -> NatsLocation:
        """Parse ``nats://h:p[,nats://h:p...][?stream=..&subject=..&replicas=..&timeout=..&max_msg_bytes=..]``."""
        base, _, query = url.strip().partition("?")
        servers = []
        for part in base.split(","):
            part = part.strip()
            if not part:
                continue
            if "://" not in part:
                part = "nats://" + part
            u = urlsplit(part)
            try:
                port = u.port
            except ValueError:
                port = None
            if u.scheme.lower() not in SCHEMES or not u.hostname or not port or u.path not in ("", "/"):
                raise ValidationError(
                    f"log location {url!r} is not understood: {part!r} is not a NATS server URL; give "
                    "nats://HOST:PORT[,nats://HOST:PORT][?stream=NAME]"
                )
            servers.append(f"{u.scheme.lower()}://{u.netloc}")
        if not servers:
            raise ValidationError("the log location names no NATS server; give nats://HOST:PORT")
        fields: dict[str, Any] = {}
        try:
            for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
                if key == "stream":
                    fields["stream"] = value
                elif key == "subject":
                    fields["subject"] = value
                elif key == "replicas":
                    fields["replicas"] = int(value)
                elif key == "timeout":
                    fields["timeout"] = float(value)
                elif key == "max_msg_bytes":
                    fields["max_msg_bytes"] = int(value)
                else:
                    raise ValidationError(
                        f"unknown log location parameter {key!r}; known: stream, subject, replicas, timeout, "
                        "max_msg_bytes"
                    )
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError(f"bad log location parameters {query!r}: {exc}") from None
        loc = cls(tuple(servers), **fields)
        loc.check()
        return loc

    def check(self) -> None:
        if not _STREAM_NAME.match(self.stream):
            raise ValidationError(f"stream name {self.stream!r}: use 1-64 letters, digits, '-' or '_'")
        if not _SUBJECT.match(self.subject):
            raise ValidationError(f"subject {self.subject!r}: use dot-separated tokens of letters, digits, '-', '_'")
        if not 1 <= self.replicas <= 5:
            raise ValidationError(f"replicas must be 1 to 5 (3 for a cluster), not {self.replicas}")
        if self.timeout <= 0:
            raise ValidationError("timeout must be a positive number of seconds")
        if self.max_msg_bytes is not None and self.max_msg_bytes < 1024:
            raise ValidationError("max_msg_bytes must be at least 1024")

    @property
    def url(self) -> str:
        """The location as a URL (parse(url) gives it back)."""
        q = f"stream={self.stream}&subject={self.subject}&replicas={self.replicas}&timeout={self.timeout:g}"
        if self.max_msg_bytes is not None:
            q += f"&max_msg_bytes={self.max_msg_bytes}"
        return ",".join(self.servers) + "?" + q


# --- JetStream API, on the client's event loop ----------------------------------------------------


class _ApiError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        self.code = int(error.get("code") or 0)
        self.err_code = int(error.get("err_code") or 0)
        self.description = str(error.get("description") or "")
        super().__init__(f"{self.description} (JetStream error {self.err_code})")


def _parse_headers(raw: bytes) -> dict[str, str]:
    """Headers of a stored message from the STREAM.MSG.GET form ("NATS/1.0\\r\\nKey: value\\r\\n...")."""
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


async def _api(nc, subject: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body).encode() if body is not None else b"", timeout=timeout)
    resp = json.loads(reply.data)
    if resp.get("error"):
        raise _ApiError(resp["error"])
    return resp


async def _leader_get(nc, stream: str, seq: int) -> StreamMessage | None:
    """Message seq as the stream leader has it (None when there is none)."""
    try:
        resp = await _api(nc, f"{API}.STREAM.MSG.GET.{stream}", {"seq": seq})
    except _ApiError as exc:
        if exc.err_code == NO_MESSAGE_FOUND:
            return None
        raise
    m = resp["message"]
    headers = _parse_headers(base64.b64decode(m["hdrs"])) if m.get("hdrs") else {}
    return StreamMessage(int(m["seq"]), headers, base64.b64decode(m.get("data") or ""))


def _status(headers: dict | None) -> str | None:
    return str(headers.get("Status")) if headers and headers.get("Status") else None


async def _direct_batch(nc, stream: str, seq: int, batch: int, max_bytes: int) -> tuple[list[StreamMessage], int]:
    """Up to batch messages from seq on, from any replica (DIRECT.GET); also how many follow them there."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        body = {"seq": seq, "batch": batch, "max_bytes": max_bytes}
        await nc.publish(f"{API}.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=inbox)
        out: list[StreamMessage] = []
        while True:
            m = await sub.next_msg(timeout=REQUEST_TIMEOUT)
            status = _status(m.headers)
            if status is None:
                h = dict(m.headers or {})
                out.append(StreamMessage(int(h["Nats-Sequence"]), h, m.data))
                continue
            if status == "404":
                return out, 0
            if status == "204":  # end of batch
                return out, int((m.headers or {}).get("Nats-Num-Pending") or 0)
            if status == "503":
                import nats.errors

                raise nats.errors.NoRespondersError
            raise _ApiError({"code": int(status), "err_code": 0, "description": f"direct get answered {status}"})
    finally:
        await sub.unsubscribe()


async def _publish_batch(nc, subject: str, msgs: list[tuple[dict[str, str], bytes]], timeout: float) -> dict:
    """Send a batch: every message but the last without a reply, the last as the request carrying the ack."""
    for headers, data in msgs[:-1]:
        await nc.publish(subject, data, headers=headers)
    headers, data = msgs[-1]
    reply = await nc.request(subject, data, headers=headers, timeout=timeout)
    return json.loads(reply.data)


def _transient() -> tuple[type[BaseException], ...]:
    """nats-py errors that mean "no answer now" (a failover, a reconnect): retry, or report unavailable."""
    import nats.errors

    return (
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.StaleConnectionError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.ConnectionDrainingError,
        TimeoutError,
        ConnectionError,
    )


# --- the log -----------------------------------------------------------------------------------------


class JetStreamLog(LogStore):
    """A LogStore on a JetStream stream. Open with JetStreamLog.open(location); see the module docstring."""

    def __init__(self, location: NatsLocation, *, readonly: bool, framing_impl: str | None = None) -> None:
        self.location = location
        self.readonly = readonly
        self._frames = framing_module(framing_impl)
        self._client: NatsClient | None = None
        self._pid = os.getpid()
        self._writer_id = self._new_writer_id()
        self._last_seq = 0  # last event seq this handle knows
        self._stream_last = 0  # stream seq of the last message of that event's batch
        self._closed = False
        self._fenced: str | None = None  # why appends stopped (another writer appended)
        self._fenced_by = "another writer"
        self._failed: str | None = None  # why appends stopped (an outcome could not be found out)
        self._mutex = threading.RLock()
        self._probes: OrderedDict[int, tuple[int, int, int, int]] = OrderedDict()  # stream seq -> (first, count, k, n)
        self._probe_lock = threading.Lock()
        self.max_msg_bytes = 0

    @staticmethod
    def _new_writer_id() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | NatsLocation,
        *,
        readonly: bool = False,
        create: bool = True,
        framing_impl: str | None = None,
    ) -> JetStreamLog:
        """Connect and open the stream as the writer (default; creating it if missing) or as a reader.

        LogUnavailableError when no server answers; LogError when the stream is missing
        (for a reader, or create=False) or not configured as mykey needs.
        """
        loc = NatsLocation.parse(location) if isinstance(location, str) else location
        loc.check()
        self = cls(loc, readonly=readonly, framing_impl=framing_impl)
        try:
            self._client = acquire(list(loc.servers), connect_timeout=min(CONNECT_TIMEOUT, loc.timeout))
            payload = self._client.max_payload - HEADER_ROOM
            self.max_msg_bytes = min(loc.max_msg_bytes or MAX_MSG_BYTES, payload, MAX_MSG_BYTES)
            info = self._stream_info()
            if info is None:
                if readonly or not create:
                    raise LogError(
                        f"no log stream {loc.stream} on {', '.join(loc.servers)}; open the log as the writer once "
                        "(for example `mykey init --log URL`) to create it"
                    )
                info = self._create_stream()
            self._check_stream(info)
            self._load_tail(info)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def client(self) -> NatsClient:
        """This process's connection to the log's servers (``run(coro, timeout)``, ``nc``: the nats-py client),
        for other JetStream state kept beside the log (a key-value bucket, say)."""
        return self._client_now()

    @property
    def where(self) -> str:
        return f"log stream {self.location.stream}"

    def _client_now(self) -> NatsClient:
        """The client for this process: a forked child gets a new connection of its own."""
        if self._closed:
            raise LogError("the log is closed; open it again")
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._mutex, self._probe_lock = threading.RLock(), threading.Lock()  # a parent's thread may hold them
            self._writer_id = self._new_writer_id()
            self._client = acquire(list(self.location.servers))  # the inherited one belongs to the parent
        assert self._client is not None
        return self._client

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = REQUEST_TIMEOUT) -> Any:
        """Run a coroutine on the client's loop; no answer (a failover, a dead cluster) is LogUnavailableError."""
        try:
            client = self._client_now()
        except BaseException:
            coro.close()
            raise
        try:
            return client.run(coro, timeout + 1.0)
        except _transient() as exc:
            raise LogUnavailableError(
                f"the NATS servers of {self.where} did not answer ({type(exc).__name__}); they may be electing a "
                "leader: try again, or check the cluster"
            ) from exc

    def _stream_info(self) -> dict[str, Any] | None:
        try:
            return self._call(_api(self._client_now().nc, f"{API}.STREAM.INFO.{self.location.stream}"))
        except _ApiError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return None
            raise LogError(f"{self.where}: {exc}") from None

    def _create_stream(self) -> dict[str, Any]:
        loc = self.location
        config = {
            "name": loc.stream,
            "subjects": [loc.subject],
            "retention": "limits",
            "storage": "file",
            "num_replicas": loc.replicas,
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "allow_atomic": True,
            "allow_direct": True,
            "deny_delete": True,
            "deny_purge": True,
        }
        try:
            return self._call(_api(self._client_now().nc, f"{API}.STREAM.CREATE.{loc.stream}", config))
        except _ApiError as exc:
            if exc.err_code == STREAM_NAME_IN_USE:  # created meanwhile by another writer
                info = self._stream_info()
                if info is not None:
                    return info
            if exc.err_code in (REPLICAS_NOT_SUPPORTED, INSUFFICIENT_RESOURCES):
                raise LogError(
                    f"cannot create {self.where} with {loc.replicas} replicas: {exc.description}. Start a cluster "
                    "of at least that many servers (for development: `mykey nats up --nodes 3 --dir DIR`), or add "
                    "?replicas=1 to the log URL for a single server (no replication)"
                ) from None
            if exc.err_code == SUBJECTS_OVERLAP:
                raise LogError(
                    f"cannot create {self.where}: its subject {loc.subject} overlaps another stream's; choose another "
                    "with ?subject= in the log URL"
                ) from None
            raise LogError(f"cannot create {self.where}: {exc}") from None

    def _check_stream(self, info: dict[str, Any]) -> None:
        """Refuse a stream that cannot hold a mykey log safely (settings) or has lost messages (state)."""
        cfg, state = info.get("config") or {}, info.get("state") or {}
        loc = self.location
        wrong = []
        if cfg.get("storage") != "file":
            wrong.append("storage must be file")
        if not cfg.get("allow_atomic"):
            wrong.append("allow_atomic must be true")
        if not cfg.get("allow_direct"):
            wrong.append("allow_direct must be true")
        if loc.subject not in (cfg.get("subjects") or []):
            wrong.append(f"its subjects {cfg.get('subjects')} must include {loc.subject}")
        if cfg.get("retention", "limits") != "limits":
            wrong.append("retention must be limits")
        for key in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
            if int(cfg.get(key, -1)) > 0:
                wrong.append(f"{key} must be unlimited")
        if int(cfg.get("max_age", 0)) > 0:
            wrong.append("max_age must be unlimited")
        if int(cfg.get("num_replicas", 1)) < loc.replicas:
            wrong.append(
                f"it has {cfg.get('num_replicas')} replica(s), the log URL asks for {loc.replicas} "
                "(add ?replicas=N to the URL to accept fewer)"
            )
        if wrong:
            raise LogError(f"{self.where} is not set up as mykey needs: {'; '.join(wrong)}")
        first, last, count = int(state.get("first_seq", 0)), int(state.get("last_seq", 0)), int(state.get("messages", 0))
        if count != last or (last and first != 1):
            raise CorruptLogError(
                f"{self.where} holds {count} messages in sequence {first}..{last}: messages were deleted or purged "
                "from it. The log must never lose messages: restore it from a backup"
            )

    def _load_tail(self, info: dict[str, Any]) -> None:
        """Set last_seq from the stream's newest message (the end of a whole batch).

        The writer refuses a stream whose newest message is not the intact end of a
        batch. A reader settles on the newest one that is (looking back at most one
        batch's worth of messages), so that it can still read, and report, what lies
        before the damage: reading on raises CorruptLogError at the damage itself.
        """
        last = int((info.get("state") or {}).get("last_seq", 0))
        seq = last
        while seq > 0:
            msg = self._get(seq, leader=True)
            if msg is None:
                raise LogUnavailableError(f"{self.where}: message {seq} could not be read; try again")
            try:
                first, count, k, n = self._summary(msg)
                if k != n:
                    raise CorruptLogError(
                        f"{self.where}: message {seq} is part {k} of {n} of a batch but the last one; a batch is "
                        "atomic, so the server stored half of one. Run `mykey audit verify`"
                    )
            except CorruptLogError:
                if not self.readonly or last - seq >= BATCH_LIMIT:
                    raise
                log.warning("%s: message %d is damaged; reading up to the batch before it", self.where, seq)
                seq -= 1
                continue
            self._stream_last, self._last_seq = seq, first + count - 1
            return
        self._stream_last, self._last_seq = 0, 0

    # --- appending ----------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def stream_last(self) -> int:
        """Stream sequence number of the newest message this handle knows (the end of batch last_seq)."""
        return self._stream_last

    @property
    def writer_id(self) -> str:
        """Who this handle writes as (host:pid:token, in the Mykey-Writer header of its batches)."""
        return self._writer_id

    def append(
        self,
        events: Sequence[Event],
        actor: Actor = SYSTEM,
        *,
        expected_last_seq: int | None = None,
        ts: int | None = None,
    ) -> list[Envelope]:
        """Atomically append a batch; see LogStore.append. Also LogFencedError, LogUnavailableError (above)."""
        if self.readonly:
            raise LogError("this log handle is read-only; open it without readonly=True to append")
        self._client_now()  # closed? forked?
        if not events:
            return []
        actor.check()
        for ev in events:
            check_event(ev)
        ts = now_us() if ts is None else ts
        with self._mutex:
            if self._fenced:
                raise LogFencedError(self._fenced)
            if self._failed:
                raise LogError(self._failed)
            if expected_last_seq is not None and expected_last_seq != self._last_seq:
                raise ConcurrencyError(
                    f"expected last sequence {expected_last_seq} but the log is at {self._last_seq}; "
                    "re-read the state and retry the command"
                )
            first = self._last_seq + 1
            envs = [Envelope(first + i, ts, actor, ev.VERSION, ev) for i, ev in enumerate(events)]
            payloads = [encode_envelope(e) for e in envs]
            # pack_frames refuses a record larger than one message (always less than framing.MAX_RECORD)
            frames = pack_frames(self._frames, first, payloads, self.max_msg_bytes)
            if len(frames) > BATCH_LIMIT:
                raise ValidationError(
                    f"the batch of {len(events)} events needs {len(frames)} messages of up to {self.max_msg_bytes} "
                    f"bytes, over JetStream's limit of {BATCH_LIMIT} messages per atomic batch; nothing was "
                    "appended. Split it, or raise the servers' max_payload"
                )
            self._stream_last = self._commit(frames)
            self._last_seq = first + len(envs) - 1
        return envs

    def _commit(self, frames: list[bytes]) -> int:
        """Store frames as one atomic batch after stream message self._stream_last; returns the new last one.

        Retries through failovers (same condition, new attempt ID) until location.timeout;
        resolves every ambiguous outcome by reading the stream (see the module docstring).
        """
        expected, n = self._stream_last, len(frames)
        batch_id, digest = uuid.uuid4().hex, batch_digest(frames)
        nbytes = sum(map(len, frames))
        # One attempt may take this long (large batches take longer to store); all of them, location.timeout.
        request_timeout = min(REQUEST_TIMEOUT, self.location.timeout) + nbytes / (20 * 1024 * 1024)
        deadline = time.monotonic() + max(self.location.timeout, request_timeout)
        uncertain = False  # an attempt may have been stored without its ack reaching us
        outcome = ""
        delay = 0.05
        while True:
            msgs = self._batch_messages(frames, batch_id, digest, expected)
            try:
                resp = self._send(msgs, request_timeout)
            except LogUnavailableError as exc:
                uncertain, outcome = True, str(exc.__cause__ or exc)
            else:
                landed, outcome = self._outcome(resp, expected, n, batch_id, digest)
                if landed:
                    return expected + n
            if time.monotonic() + delay > deadline:
                what = "may or may not have been stored" if uncertain else "was not stored"
                self._failed = (
                    f"{self.where} did not answer within {self.location.timeout:g} s ({outcome}); the batch {what}. "
                    "This handle stopped appending: reopen the log (which reads what the stream holds) once the "
                    "cluster answers again"
                )
                raise LogUnavailableError(self._failed)
            log.info("%s: append not acknowledged (%s); retrying", self.where, outcome)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _send(self, msgs: list[tuple[dict[str, str], bytes]], timeout: float) -> dict[str, Any]:
        """One attempt: publish the messages, return the server's answer to the last (LogUnavailableError: none)."""
        return self._call(_publish_batch(self._client_now().nc, self.location.subject, msgs, timeout), timeout)

    def _outcome(self, resp: dict[str, Any], expected: int, n: int, batch_id: str, digest: str) -> tuple[bool, str]:
        """(stored, why not) from the server's answer to one attempt; raises when the writer must stop."""
        err = resp.get("error")
        if not err and not resp.get("duplicate"):
            seq = int(resp.get("seq") or 0)
            if seq != expected + n:
                self._failed = f"{self.where}: the server acknowledged the batch at {seq}, not at {expected + n}"
                raise CorruptLogError(self._failed + "; reopen the log and run `mykey audit verify`")
            return True, ""
        e = _ApiError(err or {"description": "an earlier attempt was stored (duplicate message ID)"})
        if err and e.err_code not in (WRONG_LAST_SEQUENCE, BATCH_DUPLICATE_MSG_ID):
            if e.err_code in RETRYABLE or e.code in (408, 429, 503):
                return False, str(e)  # nothing was stored: try again
            raise LogError(f"{self.where} refused the batch: {e}; nothing was appended")
        # Something is stored after `expected`: an earlier attempt of this batch, or another writer's.
        self._check_not_behind(e, expected)
        try:
            if self._resolve(expected, n, batch_id, digest):
                return True, ""
        except LogUnavailableError as exc:
            return False, str(exc)
        raise self._fence(expected)

    def _batch_messages(
        self, frames: list[bytes], batch_id: str, digest: str, expected: int
    ) -> list[tuple[dict[str, str], bytes]]:
        """The messages of one attempt: mykey headers plus the atomic-batch and condition headers."""
        n = len(frames)
        attempt = uuid.uuid4().hex
        msgs = []
        for k, frame in enumerate(frames, 1):
            h = message_headers(batch_id, k, n, digest, self._writer_id)
            if k == 1:
                h["Nats-Expected-Last-Sequence"] = str(expected)
                h["Nats-Msg-Id"] = batch_id  # a retry helper only: the condition and the digest decide
            if n > 1:
                h["Nats-Batch-Id"] = attempt
                h["Nats-Batch-Sequence"] = str(k)
                if k == n:
                    h["Nats-Batch-Commit"] = "1"
            msgs.append((h, frame))
        return msgs

    def _check_not_behind(self, e: _ApiError, expected: int) -> None:
        """The stream's last sequence (in the error) below what this writer had acknowledged: it lost messages."""
        m = re.search(r"wrong last sequence: (\d+)", e.description)
        if m and int(m.group(1)) < expected:
            self._failed = (
                f"{self.where} ends at message {m.group(1)} but message {expected} was acknowledged to this writer: "
                "the servers lost acknowledged data (check sync_interval: always and the replicas). Stop writing and "
                "run `mykey audit verify`"
            )
            raise CorruptLogError(self._failed)

    def _resolve(self, expected: int, n: int, batch_id: str, digest: str) -> bool:
        """Whether messages expected+1.. hold our batch (True), or another writer's (False). Reads the leader."""
        first = self._get(expected + 1, leader=True)
        if first is None:
            raise LogUnavailableError(f"{self.where}: message {expected + 1} is not readable yet")
        if first.headers.get(H_BATCH) != batch_id:
            self._fenced_by = first.headers.get(H_WRITER, "a writer that is not mykey")
            return False
        msgs = [first]
        for seq in range(expected + 2, expected + n + 1):
            m = self._get(seq, leader=True)
            if m is None:
                raise CorruptLogError(f"{self.where}: batch {batch_id} is stored only up to message {seq - 1}")
            msgs.append(m)
        parts = [parse_part(m.headers) for m in msgs]
        ok = all(m.headers.get(H_BATCH) == batch_id for m in msgs) and parts == [(k, n) for k in range(1, n + 1)]
        if not ok or batch_digest([m.data for m in msgs]) != digest:
            self._failed = f"{self.where}: batch {batch_id} is stored at {expected + 1} but differs from what was sent"
            raise CorruptLogError(self._failed + "; run `mykey audit verify`")
        log.info("%s: batch %s had been stored before its ack was lost; acknowledged once", self.where, batch_id)
        return True

    def _fence(self, expected: int) -> LogFencedError:
        self._fenced = (
            f"another writer ({self._fenced_by}) appended to {self.where} after message {expected}, which this writer "
            f"({self._writer_id}) last knew; this handle stopped appending so that two writers never interleave. "
            "Make sure one writer runs, then reopen the log"
        )
        return LogFencedError(self._fenced)

    # --- reading ----------------------------------------------------------------------------------------

    def _get(self, seq: int, *, leader: bool = False) -> StreamMessage | None:
        """Message seq: from any replica (direct), or from the leader (also when a replica lacks it yet)."""
        nc = self._client_now().nc
        if not leader:
            msgs, _ = self._call(_direct_batch(nc, self.location.stream, seq, 1, READ_BYTES))
            if msgs and msgs[0].stream_seq == seq:
                return msgs[0]
        try:
            return self._call(_leader_get(nc, self.location.stream, seq))
        except _ApiError as exc:
            raise LogError(f"{self.where}: reading message {seq}: {exc}") from None

    def _summary(self, msg: StreamMessage) -> tuple[int, int, int, int]:
        """(first event seq, events, part k, of n) of a message; CorruptLogError if it is not a mykey message."""
        part = parse_part(msg.headers)
        if part is None:
            raise CorruptLogError(f"{self.where}: message {msg.stream_seq} is not a mykey log message")
        first, payloads = decode_message(self._frames, msg, self.where)
        return first, len(payloads), part[0], part[1]

    def _probe(self, stream_seq: int) -> tuple[int, int, int, int]:
        """_summary of message stream_seq (cached: messages never change)."""
        with self._probe_lock:
            hit = self._probes.get(stream_seq)
        if hit is not None:
            return hit
        msg = self._get(stream_seq)
        if msg is None:
            raise LogUnavailableError(f"{self.where}: message {stream_seq} is not readable; try again")
        summary = self._summary(msg)
        with self._probe_lock:
            self._probes[stream_seq] = summary
            while len(self._probes) > 256:
                self._probes.popitem(last=False)
        return summary

    def position(self, seq: int, *, batch_start: bool = True) -> tuple[int, int]:
        """(stream seq, its first event seq) of the first message of the batch holding event seq.

        batch_start=False: of the message holding event seq itself. For an event after
        last_seq: where the next batch will start. Binary search over stream messages
        (each probe reads one message; recent probes are cached).
        """
        if seq < 1:
            raise ValidationError("sequence numbers start at 1")
        stream_last, last = self._stream_last, self._last_seq
        if seq > last or stream_last == 0:
            return stream_last + 1, last + 1
        lo, hi = 1, stream_last
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._probe(mid)[0] <= seq:
                lo = mid
            else:
                hi = mid - 1
        first, _count, k, _n = self._probe(lo)
        if k == 1 or not batch_start:
            return lo, first
        return lo - (k - 1), self._probe(lo - (k - 1))[0]

    def refresh(self) -> int:
        """Readers: find the stream's newest whole batch (asks the leader); the writer knows its own."""
        if not self.readonly:
            return self._last_seq
        with self._mutex:
            info = self._stream_info()
            if info is None:
                raise LogError(f"{self.where} no longer exists on {', '.join(self.location.servers)}")
            if int((info.get("state") or {}).get("last_seq", 0)) != self._stream_last:
                self._check_stream(info)
                self._load_tail(info)
            return self._last_seq

    def _fetch(self, seq: int, batch: int, max_bytes: int) -> tuple[list[StreamMessage], int]:
        return self._call(_direct_batch(self._client_now().nc, self.location.stream, seq, batch, max_bytes))

    def _messages(
        self,
        start: int,
        *,
        follow: bool,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[StreamMessage]:
        """Stream messages from start on: up to the end (at least to what this handle knows), or following."""
        seq, batch, max_bytes = start, 8, 1024 * 1024
        known = self._stream_last
        patience = time.monotonic() + self.location.timeout
        delay = 0.02
        while True:
            try:
                msgs, pending = self._fetch(seq, batch, max_bytes)
            except LogUnavailableError:
                if not follow and time.monotonic() > patience:
                    raise
                if should_stop(stop):
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            delay = 0.02
            for m in msgs:
                if m.stream_seq != seq:
                    raise CorruptLogError(f"{self.where}: message {m.stream_seq} came where {seq} was expected")
                yield m
                seq += 1
            if msgs:
                batch, max_bytes = min(batch * 2, READ_MSGS), min(max_bytes * 2, READ_BYTES)
                patience = time.monotonic() + self.location.timeout
                if pending > 0:
                    continue
            if seq <= known:  # the replica that answered lags behind what this handle knows: ask again
                if not follow and time.monotonic() > patience:
                    raise LogUnavailableError(f"{self.where}: no replica serves messages {seq}..{known} yet")
                time.sleep(0.01)
                continue
            if not follow or should_stop(stop):
                return
            time.sleep(poll_interval)
            if should_stop(stop):
                return

    def _batches(
        self,
        from_seq: int,
        follow: bool,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
        *,
        whole: bool = True,
    ) -> Iterator[tuple[int, list[bytes]]]:
        """Whole batches from the one holding from_seq; whole=False: each message's records from the one holding it.

        Either way every message passes every check (BatchAssembler); a record reader
        starts at the message holding from_seq and stops as early as its caller does.
        """
        if from_seq < 1:
            raise ValidationError("sequence numbers start at 1")
        start, first_event = self.position(from_seq, batch_start=whole)
        assembler = BatchAssembler(self._frames, self.where, start, first_event, mid_batch=not whole)
        feed = assembler.feed if whole else assembler.feed_records
        for msg in self._messages(start, follow=follow, poll_interval=poll_interval, stop=stop):
            batch = feed(msg)
            if batch is not None and batch[0] + len(batch[1]) > from_seq:
                yield batch

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Committed (seq, record bytes) in [from_seq, to_seq]; see LogStore.read_raw."""
        return FileLog._records(self._batches(from_seq, False, whole=False), from_seq, to_seq)

    def follow_raw(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Committed records from from_seq on, waiting at the tail until stop."""
        return FileLog._records(self._batches(from_seq, True, poll_interval, stop, whole=False), from_seq, None)

    def read_batches(self, from_seq: int = 1) -> Iterator[tuple[int, list[bytes]]]:
        """Whole committed batches (first_seq, payloads) from the one holding from_seq."""
        return self._batches(from_seq, False)

    def follow_batches(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, list[bytes]]]:
        """Whole committed batches from the one holding from_seq, waiting at the tail until stop.

        Rides through failovers: reads are answered by any replica, and a follower
        that gets no answer keeps asking until stop.
        """
        return self._batches(from_seq, True, poll_interval, stop)

    # --- the rest of LogStore ------------------------------------------------------------------------------

    def sync(self) -> None:
        """Nothing to do: append returns once the stream's replicas stored the batch (fsynced: sync_interval)."""

    def info(self) -> dict[str, Any]:
        """The stream as the leader reports it: config, state, cluster (leader and replicas)."""
        info = self._stream_info()
        if info is None:
            raise LogError(f"{self.where} does not exist")
        return info

    def close(self) -> None:
        """Give back the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None and self._client.pid == os.getpid():
            release(self._client)
        self._client = None
