"""A gateway node on a replicated log: its local index follows the stream; one node at a time is the writer.

With a NATS log (``mykey serve --log nats://... --data LOCAL_DIR``) the gateway's writer
process is a *node process* (``python -m mykey.gateway.node``): the same Unix-socket
protocol towards the node's workers (writer.py), with two roles.

**Standby** (every node at first). A follower thread applies the stream's batches to
the local index (DATA/index): whole batches, each in one LMDB transaction together with
the last applied sequence number, so a restarted node resumes exactly where it was
(exactly once). A second thread keeps the local Merkle trail (DATA/merkle) in step, so a
takeover need not hash the whole log. Write requests from the node's workers are
forwarded to the active writer over NATS request/reply on ``mykey.writer.<stream>``;
once the answer is in, the node waits (up to READ_YOUR_WRITES seconds) for its own index
to hold the write, so a terminal reads what it just wrote on the node it wrote through.

**Active** (the node holding the writer lease, mykey.log.lease). It stops following,
opens the Engine (which catches the index up to the stream's end), appends a fence
batch (JetStreamLog.fence: a deposed writer's next append is now refused), subscribes
to the writer subject (queue group, so a request reaches one writer), and applies
commands one at a time, from its own workers and forwarded from other nodes. It renews
the lease every second (at once again when a renewal fails); every command first checks
that the lease is held.

Takeover. When the active node dies, hangs or loses the cluster, its lease runs out
after ``ttl`` seconds (the server's clock) and a standby whose index is within
``max_lag`` events of the stream's end takes it. Two writers never interleave: the
fence and the conditional append (``Nats-Expected-Last-Sequence``) refuse any batch
from a writer that has not seen everything before it. A writer refused that way
(LogFencedError) asks the lease: if it still holds it (an operator's command appended
meanwhile), it reopens (catching up), fences, and runs the command again once; if not,
it steps down to standby and the request is answered 503 (the client retries and
reaches the new writer). On SIGTERM the active node finishes the command in hand,
closes the Engine and releases the lease at once, so a standby takes over without
waiting for the TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from ..datadir import DataDir
from ..domain.events import decode_envelope
from ..errors import (
    CorruptLogError,
    GatewayProtocolError,
    LockHeldError,
    LogError,
    LogFencedError,
    LogUnavailableError,
    MykeyError,
    WriterUnavailableError,
)
from ..fs import private_dir
from ..index.store import Index
from ..log.backend import open_log, set_log_location
from ..log.jetstream import NatsLocation, _transient
from ..log.lease import DEFAULT_TTL, Lease
from .procs import die_with_parent
from .writer import DEFAULT_LOCK_WAIT, Writer, decode_message, take_writer_lock

STANDBY, ACTIVE = "standby", "active"
DEFAULT_MAX_LAG = 1000  # events a node's index may be behind the stream and still be ready (and take over)
FORWARD_TIMEOUT = 55.0  # seconds a forwarded command may take (an append rides through a failover: 30 s)
HEARTBEAT = 1.0  # seconds between the writer's "still working on it" messages for a forwarded command
SILENCE = 5.0  # seconds without a word from the writer after which a forwarded command counts as lost
READ_YOUR_WRITES = 5.0  # seconds a node waits for its index to hold a write it forwarded
TICK = 0.25  # seconds between checks of the lease and the stream
RENEW_EVERY = 1.0  # seconds between renewals of the writer lease (retried at once when one fails)
RENEW_TIMEOUT = 2.0  # seconds one renewal may take
TAIL_CHECK_EVERY = 5.0  # seconds between checks that no other writer appended
QUEUE = "mykey-writer"
_encode = msgspec.msgpack.Encoder().encode
_log = logging.getLogger("mykey.gateway.node")


def writer_subject(location: NatsLocation) -> str:
    """The NATS subject the active writer of a log stream answers commands on."""
    return f"mykey.writer.{location.stream}"


def default_node_name() -> str:
    return socket.gethostname().split(".")[0] or "node"


def _error(request_id: Any, exc: MykeyError) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": type(exc).__name__, "message": str(exc)}


class Follower:
    """The standby's projector: a thread applying the stream's batches to the local index, another
    keeping the Merkle trail in step. Opened and started on the engine thread, stopped there."""

    def __init__(self, data: DataDir, url: str) -> None:
        self.data = data
        self.url = url
        self.index = Index.open(data)
        try:
            self.log = open_log(data, url=url, readonly=True)
        except BaseException:
            self.index.close()
            raise
        self.error: BaseException | None = None  # why following stopped (CorruptLogError: an operator must look)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def last_seq(self) -> int:
        return self.index.last_seq

    def catch_up(self) -> int:
        """Apply everything the stream holds now (on the calling thread)."""
        return self.index.catch_up(self.log)

    def start(self) -> None:
        for target, name in ((self._follow, "mykey-node-follower"), (self._trail, "mykey-node-trail")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for _first, payloads in self.log.follow_batches(
                    self.index.last_seq + 1, poll_interval=0.02, stop=self._stop
                ):
                    self.index.apply([decode_envelope(p) for p in payloads])
                return
            except CorruptLogError as exc:  # never skipped: the node stays behind and says why
                self.error = exc
                _log.error("the follower stopped: %s", exc)
                return
            except LogError as exc:  # the cluster did not answer for a while: keep trying
                _log.warning("following the stream: %s; retrying", exc)
                self._stop.wait(1.0)

    def _trail(self) -> None:
        from ..audit.trail import AuditTrail

        while not self._stop.is_set():
            try:
                with open_log(self.data, url=self.url, readonly=True) as log, AuditTrail.open(self.data, log) as trail:
                    while not self._stop.wait(0.5):
                        trail.catch_up()
                return
            except MykeyError as exc:  # tried again; the engine catches the trail up if this node takes over first
                _log.warning("keeping the Merkle trail in step: %s; retrying", exc)
                self._stop.wait(2.0)

    def stop(self) -> None:
        """Stop both threads (the batch in hand is finished) and close the index and the log."""
        self._stop.set()
        for t in self._threads:
            t.join()
        try:
            self.log.close()
        finally:
            self.index.close()


class NodeWriter(Writer):
    """The writer process of a node on a NATS log: standby follower or active writer (see the module docstring)."""

    def __init__(
        self,
        data: DataDir,
        location: NatsLocation,
        *,
        node: str | None = None,
        lease_ttl: float = DEFAULT_TTL,
        max_lag: int = DEFAULT_MAX_LAG,
        may_write: bool = True,
        lock_wait: float = DEFAULT_LOCK_WAIT,
        engine_factory=None,
    ) -> None:
        super().__init__(data, lock_wait=lock_wait, engine_factory=engine_factory or self._open_engine)
        self.location = location
        self.node = node or default_node_name()
        self.lease_ttl = lease_ttl
        self.max_lag = max_lag
        self.may_write = may_write
        self.subject = writer_subject(location)
        self.role = STANDBY
        self.stream_last_seq = 0  # the stream's last event seq, as last seen
        self.takeovers = 0
        self._follower: Follower | None = None
        self._nc = None
        self._lease: Lease | None = None
        self._sub = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 1
        self._next_tail_check = 0.0
        self._forwarded_tasks: set[asyncio.Task] = set()
        self._next_renew_warning = 0.0

    # --- engine thread: the index is the follower's or the engine's, never both -------------------

    def open(self) -> None:
        """Open the follower and catch the index up with the stream before serving (on the engine thread)."""
        self._pool.submit(self._start_follower).result()

    def _start_follower(self) -> None:
        if self._follower is None:
            follower = Follower(self.data, self.location.url)
            try:
                follower.catch_up()
                self.stream_last_seq = max(self.stream_last_seq, follower.log.last_seq)
                follower.start()
            except BaseException:
                follower.stop()
                raise
            self._follower = follower

    def _stop_follower(self) -> None:
        if self._follower is not None:
            follower, self._follower = self._follower, None
            follower.stop()

    def _open_engine(self, data: DataDir):
        from ..engine import Engine

        return Engine.open(data.root, log=self.location.url, checkpoint_on_close=True)

    def _held(self) -> bool:
        return self._lease is not None and self._lease.held

    def _open_fenced(self):
        """Open the Engine (catching up to the stream's end) and fence the stream; a few tries."""
        for _attempt in range(3):
            engine = self._engine_factory(self.data)
            try:
                if not self._held():
                    raise WriterUnavailableError("this node's writer lease ran out while it was taking over")
                engine.log.fence()
                return engine
            except LogFencedError:  # another writer appended after we read the end: read it again
                engine.close()
            except BaseException:
                engine.close()
                raise
        raise WriterUnavailableError("other writers kept appending while this node took over; it stays standby")

    def _activate(self) -> None:
        self._stop_follower()
        try:
            self._engine = self._open_fenced()
        except BaseException:
            self._restart_follower()
            raise

    def _restart_follower(self) -> None:
        """Start following again; when the cluster does not answer, the next standby tick tries again."""
        try:
            self._start_follower()
        except MykeyError as exc:
            _log.warning("node %s cannot follow the stream now (%s); trying again", self.node, exc)

    def _deactivate(self) -> None:
        self.close_engine()
        self._restart_follower()

    def _engine_now(self):
        if self.role != ACTIVE or not self._held():
            raise WriterUnavailableError(
                f"node {self.node} does not hold the writer role (any more); retry: the request goes to the node "
                "that does"
            )
        if self._engine is None:
            self._engine = self._open_fenced()
        return self._engine

    def run(self, op: str, args: dict[str, Any], actor) -> Any:
        try:
            return super().run(op, args, actor)
        except LogFencedError as exc:
            # Another writer appended: nothing of this command was stored. Still ours (an operator's
            # command appended)? Then catch up, fence and run it again, once.
            self.close_engine()
            if self._renew_from_engine_thread():
                _log.warning("node %s: %s; caught up and running the command again", self.node, exc)
                return super().run(op, args, actor)
            self._schedule(self._step_down("another writer took over"))
            raise WriterUnavailableError(f"node {self.node} is no longer the writer ({exc}); retry") from None
        except LogUnavailableError as exc:  # no answer in time (opening, appending, or the audit trail after it)
            raise WriterUnavailableError(
                f"the log did not answer in time ({exc}); the command may or may not have been applied: read the "
                "state back before retrying"
            ) from None
        except LogError as exc:  # the log handle stopped (an outcome it could not find out): reopen next time
            self.close_engine()
            raise WriterUnavailableError(
                f"the writer had to reopen the log ({exc}); the command may or may not have been applied: read the "
                "state back before retrying"
            ) from None

    def _reply_with_seq(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = self._reply(request)
        engine = self._engine
        reply["log_seq"] = engine.log.last_seq if engine is not None else 0
        return reply

    # --- event loop: lease, roles, forwarding ----------------------------------------------------

    def _schedule(self, coro) -> None:
        """Run coro on the event loop (from the engine thread)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(coro, self._loop)
        else:
            coro.close()

    def _renew_from_engine_thread(self) -> bool:
        if self._loop is None or self._lease is None:
            return False
        try:
            return asyncio.run_coroutine_threadsafe(self._lease.renew(), self._loop).result(10.0) and self._held()
        except Exception as exc:
            _log.warning("node %s: renewing the lease failed: %s", self.node, exc)
            return False

    async def serve(self) -> None:
        """Connect to the cluster, then serve the socket (writer.Writer.serve) until SIGTERM; release the lease."""
        import nats

        self._loop = asyncio.get_running_loop()

        async def quiet(exc: Exception) -> None:
            _log.debug("nats: %s", exc)

        self._nc = await nats.connect(
            servers=list(self.location.servers), name=f"mykey-node-{self.node}", connect_timeout=2,
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.25, ping_interval=1,
            max_outstanding_pings=2, error_cb=quiet,
        )
        self._lease = Lease(self._nc, self.location.stream, self.node, ttl=self.lease_ttl,
                            replicas=self.location.replicas)
        try:
            await super().serve()
        finally:
            try:
                if self._lease.revision:
                    await asyncio.wait_for(self._lease.release(), 5.0)
                    _log.info("node %s released the writer lease", self.node)
            except Exception as exc:
                _log.warning("node %s: releasing the lease failed (it runs out in %g s): %s",
                             self.node, self.lease_ttl, exc)
            await self._nc.close()

    async def _idle_loop(self) -> None:
        """The node's background work (in place of the plain writer's idle close): lease and roles."""
        assert self._lease is not None
        set_up = False
        next_renew = 0.0
        try:
            while True:
                try:
                    if not set_up:
                        await self._lease.setup()
                        set_up = True
                    if self.role == STANDBY:
                        await self._standby_tick()
                    elif time.monotonic() >= next_renew:
                        renewed = await self._active_tick()
                        next_renew = time.monotonic() + (RENEW_EVERY if renewed else 0.0)  # failed: again at once
                except asyncio.CancelledError:
                    raise
                except (LogUnavailableError, *_transient()) as exc:  # a leader election: the next tick tries again
                    _log.info("node %s: the cluster did not answer (%s)", self.node, exc or type(exc).__name__)
                except Exception as exc:
                    _log.warning("node %s: %s", self.node, exc, exc_info=not isinstance(exc, MykeyError))
                await asyncio.sleep(TICK)
        finally:
            if self._sub is not None:
                sub, self._sub = self._sub, None
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass
            self.role = STANDBY  # commands still queued are refused; serve() closes the engine next

    async def _standby_tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._follower is None:  # it could not start (the cluster did not answer): try again
            await loop.run_in_executor(self._pool, self._restart_follower)
        follower = self._follower
        if follower is None:
            return
        self.stream_last_seq = await loop.run_in_executor(None, follower.log.refresh)
        assert self._lease is not None
        if not self.may_write or follower.error is not None or self.lag() > self.max_lag:
            await self._lease.holder()  # who the writer is (a forwarded command waits only while it lives)
            return
        if await self._lease.acquire():
            await self._take_over()

    async def _take_over(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            await loop.run_in_executor(self._pool, self._activate)
        except Exception as exc:
            _log.error("node %s took the writer lease but could not become the writer: %s", self.node, exc)
            assert self._lease is not None
            await self._lease.release()
            return
        self.role = ACTIVE
        self.takeovers += 1
        self._sub = await self._nc.subscribe(self.subject, queue=QUEUE, cb=self._on_forwarded)
        _log.info("node %s is the writer (took over in %.2f s, log at %d)", self.node, time.monotonic() - t0,
                  self._engine.log.last_seq if self._engine is not None else -1)

    async def _active_tick(self) -> bool:
        """Renew the lease (True when that worked); step down when it is no longer ours."""
        assert self._lease is not None
        try:
            renewed = await asyncio.wait_for(self._lease.renew(), RENEW_TIMEOUT)
        except Exception as exc:  # no answer: ours until it runs out here
            if time.monotonic() >= self._next_renew_warning:
                self._next_renew_warning = time.monotonic() + 5.0
                _log.warning("node %s: could not renew the writer lease (%s); it stays this node's for %.1f s more",
                             self.node, exc or type(exc).__name__, self._lease.remaining)
            if not self._lease.held:
                await self._step_down("the writer lease ran out while the cluster did not answer")
            return False
        if not renewed:
            await self._step_down("the writer lease was lost")
            return False
        if time.monotonic() >= self._next_tail_check:
            self._next_tail_check = time.monotonic() + TAIL_CHECK_EVERY
            await self._check_tail()
        return True

    async def _check_tail(self) -> None:
        """Another writer (an operator's command) appended: catch up and fence now, not at the next command.

        The stream is asked off the engine thread (it may take seconds during an election);
        only a stream that holds more than this writer knows makes it reopen.
        """
        loop = asyncio.get_running_loop()
        engine = self._engine
        if engine is None:
            return
        try:
            info = await loop.run_in_executor(None, engine.log.info)
        except LogError:
            return  # no answer now: the next command finds out
        last = int((info.get("state") or {}).get("last_seq", 0))
        if last > engine.log.stream_last:
            await loop.run_in_executor(self._pool, self._reopen_if_behind, engine, last)

    def _reopen_if_behind(self, engine, last: int) -> None:
        if engine is self._engine and last > engine.log.stream_last and self.role == ACTIVE and self._held():
            _log.info("node %s: the stream moved to %d without this writer; catching up", self.node, last)
            self.close_engine()
            self._engine = self._open_fenced()

    async def _step_down(self, why: str) -> None:
        if self.role != ACTIVE:
            return
        _log.warning("node %s steps down to standby: %s", self.node, why)
        self.role = STANDBY
        if self._lease is not None:
            self._lease.drop()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
        await asyncio.get_running_loop().run_in_executor(self._pool, self._deactivate)

    def lag(self) -> int:
        """Events the local index is behind the stream's end as last seen (0 for the writer)."""
        if self.role == ACTIVE:
            return 0
        follower = self._follower
        return max(0, self.stream_last_seq - follower.last_seq) if follower is not None else self.stream_last_seq

    def status(self) -> dict[str, Any]:
        follower, engine = self._follower, self._engine
        index_last = follower.last_seq if follower is not None else (engine.index.last_seq if engine else 0)
        return {
            "pid": os.getpid(), "engine_open": engine is not None, "node": self.node, "role": self.role,
            "index_last_seq": index_last, "stream_last_seq": max(self.stream_last_seq, index_last), "lag": self.lag(),
            "takeovers": self.takeovers,
            "follower_error": str(follower.error) if follower is not None and follower.error else None,
        }

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """A request from this node's workers: ping here, commands run here (active) or forwarded (standby)."""
        if request.get("op") == "ping":
            return {"id": request.get("id"), "ok": True, "result": self.status()}
        if self.role == ACTIVE:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._reply, request)
        return await self._forward(request)

    async def _forward(self, request: dict[str, Any]) -> dict[str, Any]:
        import nats.errors

        request_id = request.get("id")
        body = _encode({**request, "id": self._next_id})
        self._next_id += 1
        if len(body) > self._nc.max_payload:
            return _error(request_id, GatewayProtocolError(
                f"the command is {len(body)} bytes, over the {self._nc.max_payload} bytes one NATS message may carry "
                "to the writer on another node; split it, or send it to the node holding the writer role"))
        try:
            msg = await self._request_while_writer_lives(body)
        except nats.errors.NoRespondersError:
            return _error(request_id, WriterUnavailableError(
                f"no node holds the writer role of {self.location.stream} right now (a takeover takes up to "
                f"{self.lease_ttl:g} s after a writer fails); retry shortly"))
        except (nats.errors.TimeoutError, TimeoutError, nats.errors.ConnectionClosedError) as exc:
            return _error(request_id, WriterUnavailableError(
                f"the writer on another node did not answer ({type(exc).__name__}); the command may or may not have "
                "been applied: read the state back before retrying"))
        try:
            reply = decode_message(msg.data)
        except GatewayProtocolError as exc:
            return _error(request_id, exc)
        await self._wait_for_index(int(reply.get("log_seq") or 0))
        reply["id"] = request_id
        return reply

    def _writer_term(self):
        """The writer as this node last saw it (the lease holder; None: nobody, or this node)."""
        if self.role == ACTIVE or self._lease is None or self._lease.seen is None:
            return None
        return self._lease.seen.term

    async def _request_while_writer_lives(self, body: bytes):
        """The writer's answer to a forwarded command.

        The writer says "still working" every HEARTBEAT seconds until it answers; TimeoutError
        as soon as it has been silent for SILENCE seconds (the request or the answer was lost
        with a server or a connection that died), or the writer lost its lease (it died),
        or after FORWARD_TIMEOUT in all. NoRespondersError when no writer listens.
        """
        import nats.errors

        term = self._writer_term()
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        try:
            await self._nc.publish(self.subject, body, reply=inbox)
            deadline = time.monotonic() + FORWARD_TIMEOUT
            heard = time.monotonic()
            while True:
                try:
                    msg = await sub.next_msg(timeout=TICK)
                except nats.errors.TimeoutError:
                    now = time.monotonic()
                    if term is not None and self._writer_term() != term:
                        raise TimeoutError("the writer lost its lease while the command was with it") from None
                    if now - heard > SILENCE or now > deadline:
                        raise TimeoutError(f"the writer was silent for {now - heard:.1f} s") from None
                    continue
                heard = time.monotonic()
                status = (msg.headers or {}).get("Status")
                if status == "503":
                    raise nats.errors.NoRespondersError
                if msg.data:  # an empty message: still working on it
                    return msg
        finally:
            await sub.unsubscribe()

    async def _wait_for_index(self, seq: int) -> None:
        """Read your writes: wait (a little) until this node's index holds event seq."""
        deadline = time.monotonic() + READ_YOUR_WRITES
        while time.monotonic() < deadline:
            follower = self._follower
            if follower is None or follower.last_seq >= seq:
                return
            await asyncio.sleep(0.005)

    async def _on_forwarded(self, msg) -> None:
        """A command another node forwarded to this, the active writer: queued for the engine thread at
        once (commands run one at a time, in order), the asking node told "still working" meanwhile."""
        task = asyncio.ensure_future(self._forwarded(msg))
        self._forwarded_tasks.add(task)
        task.add_done_callback(self._forwarded_tasks.discard)

    async def _forwarded(self, msg) -> None:
        beat = asyncio.ensure_future(self._heartbeat(msg.reply))
        try:
            await self._answer_forwarded(msg)
        finally:
            beat.cancel()

    async def _heartbeat(self, reply: str) -> None:
        while True:
            try:
                await self._nc.publish(reply, b"")
            except Exception:  # the connection is being re-established: the asking node may give up
                pass
            await asyncio.sleep(HEARTBEAT)

    async def _answer_forwarded(self, msg) -> None:
        try:
            request = decode_message(msg.data)
        except GatewayProtocolError as exc:
            reply = _error(None, exc)
        else:
            if self.role == ACTIVE:
                reply = await asyncio.get_running_loop().run_in_executor(self._pool, self._reply_with_seq, request)
            else:
                reply = _error(request.get("id"), WriterUnavailableError(
                    f"node {self.node} is no longer the writer; retry"))
        try:
            await msg.respond(_encode(reply))
        except Exception as exc:  # the asking node gave up (its timeout): it says so to its client
            _log.warning("node %s: answering a forwarded command failed: %s", self.node, exc)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mykey.gateway.node", description="a gateway node's writer process")
    parser.add_argument("--data", required=True)
    parser.add_argument("--log", required=True, help="the nats:// log location")
    parser.add_argument("--node", default=None, help="this node's name (default: the host name)")
    parser.add_argument("--lease-ttl", type=float, default=DEFAULT_TTL)
    parser.add_argument("--max-lag", type=int, default=DEFAULT_MAX_LAG)
    parser.add_argument("--standby-only", action="store_true", help="never take the writer role")
    parser.add_argument("--parent", type=int, default=None, help="stop when this process (the server) dies")
    parser.add_argument("--lock-wait", type=float, default=DEFAULT_LOCK_WAIT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] mykey-node: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack to the log
    if args.parent is not None:
        die_with_parent(args.parent)
    set_log_location(args.log)
    data = DataDir(Path(args.data))
    try:
        location = NatsLocation.parse(args.log)
        private_dir(data.root)
        lock = take_writer_lock(data)
    except (LockHeldError, MykeyError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    try:
        writer = NodeWriter(data, location, node=args.node, lease_ttl=args.lease_ttl, max_lag=args.max_lag,
                            may_write=not args.standby_only, lock_wait=args.lock_wait)
        writer.open()
        try:
            asyncio.run(writer.serve())  # closes the engine at its end
        finally:
            writer._stop_follower()
    except MykeyError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
