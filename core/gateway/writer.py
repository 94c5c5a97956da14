"""The single writer: one process holds the Engine; the gateway's workers forward writes to it.

Why a process of its own: the log and the index each have one writer (OS locks), and an
Engine is used from one thread. The HTTP workers are many processes, so none of them may
open the Engine; they send each write to the writer, which applies commands one at a
time, in the order they arrive, on one engine thread. Two writers never hold the log:
the OS locks forbid it, and DATA/run/writer.lock allows one writer process (one
gateway) per data directory.

Protocol (local only). A Unix stream socket, DATA/run/writer.sock, in a directory only
the owner can enter (0700); the writer also refuses peers running as another user
(SO_PEERCRED). Every message is a 4-byte big-endian length and a MessagePack map::

    request  {"id": 7, "op": "register_service_ids", "args": {...}, "actor": ["terminal", "A0001-T0001"]}
    reply    {"id": 7, "ok": true, "result": ...}
             {"id": 7, "ok": false, "error": "AlreadyExistsError", "message": "..."}

``actor`` may be null (the writer's operator). A connection carries one request at a
time: the client waits for the reply before it sends the next. The operations are the
entries of ``OPS`` (a fixed list, never "call any method"); a refused command comes back
as the name of its mykey error type and its message, and the clients raise that type.

Holding the log. The writer opens the Engine when a command arrives and closes it after
``idle`` seconds without one (signing an audit checkpoint if events were appended, as the
CLI does). Between bursts of writes the log is therefore free for an operator's
``mykey`` commands, ``mykey rebuild`` included. When one of those holds the log, the
writer waits up to ``lock_wait`` seconds for it, then refuses with WriterUnavailableError
(the gateway answers 503, and the terminal retries).

Lifecycle. ``mykey serve`` starts it as ``python -m mykey.gateway.writer`` before the
workers: it takes the writer lock, opens the Engine once (replaying whatever the index
lacks, so the index is caught up before any worker answers), then listens; the server
waits for a ``ping``. SIGTERM stops it: no new connections, the command in hand is
finished, the Engine is closed. SIGINT is ignored (Ctrl-C reaches every process of the
terminal's process group; the server decides when the writer stops), and the writer
also stops when the server process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from .. import errors
from ..datadir import DataDir
from ..domain import events as ev
from ..errors import (
    EngineHaltedError,
    GatewayError,
    GatewayProtocolError,
    LockHeldError,
    MykeyError,
    WriterUnavailableError,
)
from ..fs import OwnerLock
from .procs import die_with_parent, run_dir, writer_socket_path

MAX_MESSAGE = 16 * 1024 * 1024  # bytes in one message (a bulk registration of ~300,000 rows)
DEFAULT_IDLE = 2.0  # seconds without a command before the writer lets go of the log
DEFAULT_LOCK_WAIT = 5.0  # seconds a command waits for an operator command holding the log
_HEADER = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_log = logging.getLogger("mykey.gateway.writer")


# --- the operations --------------------------------------------------------------

Op = Callable[[Any, dict[str, Any], ev.Actor | None], Any]
OPS: dict[str, Op] = {}


def _op(name: str) -> Callable[[Op], Op]:
    def register(func: Op) -> Op:
        OPS[name] = func
        return func

    return register


@_op("last_seq")
def _last_seq(engine, args: dict[str, Any], actor: ev.Actor | None) -> int:
    """The log's last sequence number (everything up to it is applied to the index)."""
    return engine.log.last_seq


@_op("register_service_ids")
def _register_service_ids(engine, args: dict[str, Any], actor: ev.Actor | None) -> int:
    """Register [[service_id, customer_id | null], ...] for a business, unlinked; all or nothing."""
    rows = [(str(sid), None if cid is None else str(cid)) for sid, cid in args["rows"]]
    return engine.register_service_ids(args["business_id"], rows, actor=actor)


@_op("service_status")
def _service_status(engine, args: dict[str, Any], actor: ev.Actor | None) -> dict[str, Any]:
    """What the business may know about its service ID, read from the writer's own read model."""
    status, customer_id = engine.service_status(args["business_id"], args["service_id"])
    return {"status": status.label, "customer_id": customer_id}


@_op("revoke_terminal")
def _revoke_terminal(engine, args: dict[str, Any], actor: ev.Actor | None) -> None:
    engine.revoke_terminal(args["terminal_id"], args.get("reason") or "revoked", actor=actor)


@_op("deactivate_business")
def _deactivate_business(engine, args: dict[str, Any], actor: ev.Actor | None) -> None:
    engine.deactivate_business(args["business_id"], args["reason"], actor=actor)


@_op("link_with_card")
def _link_with_card(engine, args: dict[str, Any], actor: ev.Actor | None) -> str:
    """Link a service ID to the person whose card signed a link challenge, relayed by actor (the terminal)."""
    status = engine.link_with_card(
        args["business_id"], args["service_id"], bytes(args["certificate"]), bytes(args["signature"]),
        bytes(args["challenge"]), actor=actor,
    )
    return status.label


@_op("import_service_ids_csv")
def _import_service_ids_csv(engine, args: dict[str, Any], actor: ev.Actor | None) -> int:
    """Register the rows of a CSV file a worker streamed into DATA/run (all or nothing); how many."""
    path = Path(args["path"])
    if path.parent != run_dir(engine.data) or path.is_symlink() or not path.is_file():
        raise GatewayProtocolError(f"{path} is not an upload in {run_dir(engine.data)}")
    return engine.import_service_ids_csv(args["business_id"], path, actor=actor, name=args.get("name"))


# --- framing (shared by the writer and both clients) --------------------------------


def encode_message(message: dict[str, Any]) -> bytes:
    body = _encoder.encode(message)
    if len(body) > MAX_MESSAGE:
        raise GatewayProtocolError(f"a writer message of {len(body)} bytes is over the limit of {MAX_MESSAGE}")
    return _HEADER.pack(len(body)) + body


def _message_length(header: bytes) -> int:
    (n,) = _HEADER.unpack(header)
    if n > MAX_MESSAGE:
        raise GatewayProtocolError(f"a writer message of {n} bytes is over the limit of {MAX_MESSAGE}")
    return n


def decode_message(body: bytes) -> dict[str, Any]:
    try:
        message = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise GatewayProtocolError(f"a writer message is not MessagePack: {exc}") from None
    if not isinstance(message, dict):
        raise GatewayProtocolError("a writer message is not a map")
    return message


def _error_from_reply(reply: dict[str, Any]) -> MykeyError:
    """The mykey error a refusal reply names (GatewayError for a name that is not one)."""
    name, message = str(reply.get("error")), str(reply.get("message"))
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, MykeyError):
        try:
            return cls(message)
        except TypeError:  # an error type with more constructor arguments
            pass
    return GatewayError(f"{name}: {message}")


def _result(reply: dict[str, Any], request_id: int) -> Any:
    if reply.get("id") != request_id:
        raise GatewayProtocolError(f"the writer answered request {reply.get('id')!r}, not {request_id}")
    if reply.get("ok") is True:
        return reply.get("result")
    raise _error_from_reply(reply)


def _request(request_id: int, op: str, args: dict[str, Any], actor: ev.Actor | None) -> bytes:
    return encode_message(
        {"id": request_id, "op": op, "args": args, "actor": None if actor is None else [actor.kind, actor.id]}
    )


# --- clients -------------------------------------------------------------------------


def _lost(exc: BaseException) -> WriterUnavailableError:
    return WriterUnavailableError(
        f"the connection to the gateway's writer was lost ({exc}); the command may or may not have been "
        "applied: read the state back before retrying"
    )


class WriterClient:
    """A blocking client (tests, tools); one request at a time. Use from one thread."""

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._next_id = 1

    def _connect(self) -> socket.socket:
        sock = self._sock
        if sock is not None and select.select([sock], [], [], 0)[0]:
            sock.close()  # readable while idle: the writer closed it (it was restarted)
            sock = self._sock = None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                raise WriterUnavailableError(
                    f"the gateway's writer is not reachable at {self.socket_path} ({exc.strerror or exc}); "
                    "is `mykey serve` running?"
                ) from None
            self._sock = sock
        return sock

    def call(self, op: str, *, actor: ev.Actor | None = None, **args: Any) -> Any:
        """Run one operation in the writer; returns its result or raises the error it was refused with."""
        sock = self._connect()
        request_id, self._next_id = self._next_id, self._next_id + 1
        try:
            sock.sendall(_request(request_id, op, args, actor))
            reply = decode_message(self._read_exactly(sock, _message_length(self._read_exactly(sock, 4))))
        except (OSError, EOFError) as exc:
            self.close()
            raise _lost(exc) from None
        return _result(reply, request_id)

    @staticmethod
    def _read_exactly(sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("the writer closed the connection")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> WriterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWriterClient:
    """The client a worker uses from its event loop: one connection, requests queued on a lock."""

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock: asyncio.Lock | None = None
        self._next_id = 1

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        streams = self._streams
        if streams is not None and (streams[0].at_eof() or streams[1].is_closing()):
            streams[1].close()  # the writer closed it (it was restarted)
            streams = self._streams = None
        if streams is None:
            try:
                streams = await asyncio.open_unix_connection(self.socket_path, limit=MAX_MESSAGE + 4)
            except OSError as exc:
                raise WriterUnavailableError(
                    f"the gateway's writer is not reachable at {self.socket_path} ({exc.strerror or exc})"
                ) from None
            self._streams = streams
        return streams

    async def call(self, op: str, *, actor: ev.Actor | None = None, **args: Any) -> Any:
        """Run one operation in the writer (waits for the requests queued before it)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            reader, writer = await self._connect()
            request_id, self._next_id = self._next_id, self._next_id + 1
            try:
                writer.write(_request(request_id, op, args, actor))
                await writer.drain()
                async with asyncio.timeout(self.timeout):
                    n = _message_length(await reader.readexactly(4))
                    reply = decode_message(await reader.readexactly(n))
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.close()
                raise _lost(exc) from None
        return _result(reply, request_id)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


# --- the writer process ------------------------------------------------------------


class Writer:
    """Serves OPS over the socket, running them one at a time on one engine thread."""

    def __init__(
        self,
        data: DataDir,
        *,
        idle: float = DEFAULT_IDLE,
        lock_wait: float = DEFAULT_LOCK_WAIT,
        engine_factory: Callable[[DataDir], Any] | None = None,
    ) -> None:
        self.data = data
        self.idle = idle
        self.lock_wait = lock_wait
        self.socket_path = writer_socket_path(data)
        self._engine_factory = engine_factory or _open_engine
        self._engine = None
        self._last_used = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mykey-writer-engine")
        self._stop: asyncio.Event | None = None

    # engine thread -----------------------------------------------------------

    def _engine_now(self):
        """The open Engine, opening it if needed (waiting up to lock_wait for an operator's command)."""
        if self._engine is not None:
            return self._engine
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                self._engine = self._engine_factory(self.data)
                return self._engine
            except LockHeldError as exc:
                if time.monotonic() >= deadline:
                    raise WriterUnavailableError(
                        f"another process holds the log or the index ({exc}); waited {self.lock_wait:g} s. "
                        "Retry when the operator's command has finished"
                    ) from None
                time.sleep(0.05)

    def run(self, op: str, args: dict[str, Any], actor: ev.Actor | None) -> Any:
        """Apply one operation (on the engine thread)."""
        func = OPS.get(op)
        if func is None:
            raise GatewayProtocolError(f"the writer has no operation {op!r}; it knows {', '.join(sorted(OPS))}")
        if actor is not None:
            actor.check()
        engine = self._engine_now()
        self._last_used = time.monotonic()
        try:
            return func(engine, args, actor)
        except EngineHaltedError:
            self.close_engine()  # reopening replays what the log has and the index lacks
            raise
        finally:
            self._last_used = time.monotonic()

    def close_engine(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            try:
                engine.close()
            except Exception:
                _log.exception("closing the engine failed; the next open recovers")

    def _close_if_idle(self) -> None:
        if self._engine is not None and time.monotonic() - self._last_used >= self.idle:
            self.close_engine()

    # event loop --------------------------------------------------------------

    def open(self) -> None:
        """Open the Engine once before listening: replays what the index lacks (on this thread)."""
        self._pool.submit(self._engine_now).result()
        self._last_used = time.monotonic()

    async def serve(self) -> None:
        """Listen until SIGTERM (or stop()); then finish the command in hand and close the Engine."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        Path(self.socket_path).unlink(missing_ok=True)  # ours: the writer lock is held
        server = await asyncio.start_unix_server(self._connection, path=self.socket_path, limit=MAX_MESSAGE + 4)
        os.chmod(self.socket_path, 0o600)
        _log.info("writer %d listening on %s", os.getpid(), self.socket_path)
        idle_task = asyncio.create_task(self._idle_loop())
        try:
            await self._stop.wait()
        finally:
            idle_task.cancel()
            server.close()
            Path(self.socket_path).unlink(missing_ok=True)
            # The pool runs in order: this waits for commands already handed to it.
            await loop.run_in_executor(self._pool, self.close_engine)
            self._pool.shutdown()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _idle_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(0.25, self.idle / 2))
            await loop.run_in_executor(self._pool, self._close_if_idle)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != os.getuid():
                _log.warning("refused a connection from uid %d", uid)
                return
            while not (self._stop and self._stop.is_set()):
                try:
                    n = _message_length(await reader.readexactly(4))
                    request = decode_message(await reader.readexactly(n))
                except asyncio.IncompleteReadError:
                    return  # the client went away
                reply = await self._dispatch(request)
                writer.write(encode_message(reply))
                await writer.drain()
        except GatewayProtocolError as exc:
            _log.warning("dropped a connection: %s", exc)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # the writer is stopping with a client still connected
            return  # the connection ends here (the task ends with it), without a traceback in the log
        finally:
            writer.close()

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request from the socket (a node on a replicated log may forward it: node.py)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._reply, request)

    def _reply(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request (on the engine thread); never raises."""
        request_id = request.get("id")
        try:
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise GatewayProtocolError("args must be a map")
            actor = request.get("actor")
            actor = None if actor is None else ev.Actor(str(actor[0]), str(actor[1]))
            op = str(request.get("op"))
            if op == "ping":
                result: Any = {"pid": os.getpid(), "engine_open": self._engine is not None}
            else:
                result = self.run(op, args, actor)
            return {"id": request_id, "ok": True, "result": result}
        except MykeyError as exc:
            return {"id": request_id, "ok": False, "error": type(exc).__name__, "message": str(exc)}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            return {"id": request_id, "ok": False, "error": "GatewayProtocolError",
                    "message": f"malformed arguments for {request.get('op')!r}: {exc!r}"}
        except Exception as exc:
            _log.exception("operation %r failed", request.get("op"))
            return {"id": request_id, "ok": False, "error": "GatewayError", "message": f"the writer failed: {exc}"}


def _open_engine(data: DataDir):
    from ..engine import Engine

    return Engine.open(data.root, checkpoint_on_close=True)


def take_writer_lock(data: DataDir) -> OwnerLock:
    """DATA/run/writer.lock: one gateway writer per data directory, for the writer's lifetime."""

    def held_by(holder: str) -> LockHeldError:
        return LockHeldError(
            f"another gateway (writer pid {holder}) is running on {data.root}; stop that `mykey serve` first"
        )

    return OwnerLock.acquire(run_dir(data) / "writer.lock", held_by=held_by)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mykey.gateway.writer", description="the gateway's writer")
    parser.add_argument("--data", required=True)
    parser.add_argument("--parent", type=int, default=None, help="stop when this process (the server) dies")
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE)
    parser.add_argument("--lock-wait", type=float, default=DEFAULT_LOCK_WAIT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] mykey-writer: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.parent is not None:
        die_with_parent(args.parent)
    data = DataDir(Path(args.data))
    try:
        lock = take_writer_lock(data)
    except LockHeldError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    try:
        writer = Writer(data, idle=args.idle, lock_wait=args.lock_wait)
        writer.open()
        asyncio.run(writer.serve())
    except MykeyError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
