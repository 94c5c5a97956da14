"""A synchronous NATS connection for the log: nats-py's asyncio client on an event-loop thread of its own.

mykey's LogStore API is synchronous; nats-py is asyncio. A ``NatsClient`` owns one
connection and one daemon thread running its event loop; ``run(coro, timeout)``
submits a coroutine and waits for its result. Handles in one process share a client
per server list (``acquire`` / ``release``, reference-counted), so a process holds one
connection and one loop thread per cluster however many logs it opens.

Fork safety: after ``os.fork`` the child has no loop thread, so a client inherited
from the parent can never be used there. ``run`` refuses it (``ForkedClientError``)
and the registry forgets, without closing, every client it held; a log handle that
sees a new pid simply acquires a fresh client (the child reconnects). The parent's
connection is untouched.

nats-py is imported lazily: the runtime package works without the [nats] extra until
a ``nats://`` log is opened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any

from ..errors import LogError, LogUnavailableError

__all__ = ["ForkedClientError", "NatsClient", "acquire", "release"]

log = logging.getLogger("mykey.log.nats")

CONNECT_TIMEOUT = 5.0  # seconds to reach one of the servers at open


class ForkedClientError(LogError):
    """A client was used in a process it was not created in (after fork)."""


def _nats():
    try:
        import nats
    except ImportError:  # pragma: no cover - the [nats] extra is installed by make setup
        raise LogError(
            "a nats:// log needs nats-py: install mykey with the [nats] extra (pip install 'mykey[nats]')"
        ) from None
    return nats


class NatsClient:
    """One connection to a NATS cluster, driven by its own event-loop thread."""

    def __init__(self, servers: list[str], *, connect_timeout: float = CONNECT_TIMEOUT, name: str = "mykey") -> None:
        nats = _nats()
        self.servers = list(servers)
        self.pid = os.getpid()
        self.refs = 0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mykey-nats-loop", daemon=True)
        self._thread.start()

        async def quiet(exc: Exception) -> None:  # nats-py would print a traceback for every reconnect attempt
            log.debug("nats: %s", exc)

        async def connect():
            return await nats.connect(
                servers=self.servers,
                name=name,
                connect_timeout=min(2.0, connect_timeout),
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # ride through failovers; every request has its own timeout
                reconnect_time_wait=0.25,
                ping_interval=1,  # notice a hung server within ~3 s (the default is 2 minutes)
                max_outstanding_pings=2,
                error_cb=quiet,
            )

        try:
            self.nc = self.run(asyncio.wait_for(connect(), connect_timeout), connect_timeout + 1)
        except LogUnavailableError:
            self._stop_loop()
            raise LogUnavailableError(
                f"no NATS server answered at {', '.join(self.servers)} within {connect_timeout:g} s; start the "
                "cluster (for development: `mykey nats up --nodes 3 --dir DIR`) or fix the --log / MYKEY_LOG URL"
            ) from None
        except Exception as exc:  # refused credentials, a TLS mismatch, ...
            self._stop_loop()
            if isinstance(exc, LogError):
                raise
            raise LogError(f"cannot connect to the NATS servers at {', '.join(self.servers)}: {exc!r}") from exc
        except BaseException:
            self._stop_loop()
            raise

    @property
    def max_payload(self) -> int:
        """The largest message (headers and data) the connected server accepts."""
        return int(self.nc.max_payload)

    @property
    def server_info(self) -> dict[str, Any]:
        return dict(getattr(self.nc, "_server_info", {}) or {})

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run coro on the loop thread and return its result; LogUnavailableError after timeout seconds.

        The timeout is a backstop: the coroutine's own NATS timeouts should fire first.
        """
        if os.getpid() != self.pid:
            coro.close()
            raise ForkedClientError("a NATS connection was used after fork; open the log again in this process")
        if self._closed:
            coro.close()
            raise LogError("the NATS connection is closed; open the log again")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:  # the backstop, or a NATS timeout inside coro (all TimeoutError since 3.11)
            fut.cancel()
            raise LogUnavailableError(f"the NATS servers did not answer within {timeout:.1f} s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Drain and close the connection, then stop the loop thread (never in a forked child)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self.pid:
            return  # the parent's socket and loop: leave them alone
        try:
            asyncio.run_coroutine_threadsafe(self.nc.close(), self._loop).result(timeout)
        except Exception as exc:  # pragma: no cover - closing a broken connection
            log.debug("closing the NATS connection: %s", exc)
        self._stop_loop(timeout)

    def _stop_loop(self, timeout: float = 5.0) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


# --- one shared client per server list and process -----------------------------------------------

_clients: dict[tuple[str, ...], NatsClient] = {}
_registry_lock = threading.Lock()


def acquire(servers: list[str], *, connect_timeout: float = CONNECT_TIMEOUT) -> NatsClient:
    """The process's client for servers (connecting on first use); pair every call with release."""
    key = tuple(servers)
    with _registry_lock:
        client = _clients.get(key)
        if client is None or client.pid != os.getpid() or client._closed:
            client = NatsClient(servers, connect_timeout=connect_timeout)
            _clients[key] = client
        client.refs += 1
        return client


def release(client: NatsClient) -> None:
    """Give back a client from acquire; the last release closes it."""
    if client.pid != os.getpid():
        return
    with _registry_lock:
        client.refs -= 1
        if client.refs > 0:
            return
        key = tuple(client.servers)
        if _clients.get(key) is client:
            del _clients[key]
    client.close()


def _forget_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # the parent may have held it at fork time
    _clients.clear()  # inherited clients are unusable here; never close the parent's sockets


os.register_at_fork(after_in_child=_forget_after_fork)
