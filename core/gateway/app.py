"""The RSGI application every gateway worker runs: routing, the handlers, problem JSON.

The server builds one ``Gateway`` before it forks the workers (nothing is opened then).
In each worker, ``__rsgi_init__`` opens that worker's own Resolver, its
TerminalAuthenticator (sharing DATA/auth-nonces with the other workers), its share of the
machine's challenge store (DATA/challenges), a reader of the log (for ``/readyz`` and a
person's history) and its metrics; ``__rsgi_del__`` closes them on a graceful stop.
Identify and the history read the index through ``Resolver.snapshot()``: LMDB allows one
open of the index per process, so a worker never opens a second read model beside it.

A request goes: route (exact paths, and ``/v1/status/`` plus the service ID), then for
the ``/v1`` lookups the bearer token (an HMAC, tokens.py), the terminal's and its
business's records (two LMDB reads, so revocation and deactivation act at once), the
terminal's rate limit, and the handler. Reads are answered here (statuses, challenges,
identify, a person's history); a write (a first-use link, a bulk registration) is sent to
the writer process (``self.writer().call(op, ...)``, see writer.py) and its refusal comes
back as the mykey error it raised. The person's endpoints take no token: they are limited
per client address (``client_address``: X-Forwarded-For only from a trusted proxy). Every refusal is an HttpProblem answered as problem JSON
(WriterUnavailableError as 503 writer-unavailable, LogUnavailableError as 503 not-ready); any other exception is logged and answered 500, so no
request can stop a worker.

Service IDs are taken from the path as granian gives it, percent-decoded (``%2F`` is
``/``): everything after ``/v1/status/`` is the service ID, so IDs holding ``/`` or
``%`` work when the client percent-encodes them (the reference client does).
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import logging
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..audit.history import history_from, jsonable
from ..auth.challenges import LmdbChallengeStore, open_challenge_store
from ..auth.terminals import TerminalAuthenticator, terminal_auth_message
from ..datadir import DataDir
from ..domain import events as ev
from ..domain import ids
from ..domain.ids import OPAQUE_ID_RE, TERMINAL_ID_RE
from ..domain.status import Status
from ..domain.statuslist import MEDIA_TYPE as STATUS_LIST_MEDIA_TYPE
from ..engine.identify import CardReader
from ..engine.statuslists import StatusListStore
from ..errors import (
    AlreadyExistsError,
    CertificateError,
    ChallengeError,
    GatewayError,
    HttpProblem,
    InactiveError,
    LogUnavailableError,
    MykeyError,
    NotFoundError,
    RegistrationNotAllowedError,
    SuspendedMyKeyError,
    TerminalAuthError,
    UnknownCardError,
    ValidationError,
    WriterUnavailableError,
)
from ..index.resolver import Resolver
from ..log.backend import open_log
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from .problems import problem, problem_body
from .procs import die_with_parent, run_dir
from .ratelimit import RateLimiter, retry_after_header
from .tokens import TokenSigner
from .writer import AsyncWriterClient

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_BATCH = 1000  # service IDs in one POST /v1/status
MAX_JSON_BODY = 64 * 1024  # bytes in a JSON request body (a full batch of the longest IDs fits)
MAX_CSV_BODY = 128 * 1024 * 1024  # bytes in a bulk registration (1,000,000 rows of the longest IDs: ~66 MB)
CSV_WRITER_TIMEOUT = 600.0  # seconds a bulk registration may take in the writer
UPLOAD_PREFIX = "upload-"  # DATA/run/upload-<worker pid>-<random>.csv: a CSV body on its way to the writer
_CSV_LINE = re.compile(r"\bline (\d+)\b")
INDEX_RETRY_SECONDS = 1.0  # how often a worker without an index tries to open it again
_LABELS = tuple(s.label for s in Status)
_log = logging.getLogger("mykey.gateway")

JSON_HEADERS = (("content-type", "application/json"), ("cache-control", "no-store"))
PROBLEM_HEADERS = (("content-type", PROBLEM_CONTENT_TYPE), ("cache-control", "no-store"))
BEARER = (("www-authenticate", 'Bearer realm="mykey"'),)
BEARER_INVALID = (("www-authenticate", 'Bearer realm="mykey", error="invalid_token"'),)


@dataclass(frozen=True)
class GatewayConfig:
    """What every worker needs; built by the server before the fork (plain data, nothing open)."""

    data_dir: Path
    token_key: bytes
    token_ttl: int = 300
    rate: float = 50.0  # requests a second per terminal, per worker (0: no limits at all)
    burst: float = 100.0
    session_rate: float = 1.0  # POST /v1/sessions a second per terminal ID, per worker
    session_burst: float = 10.0
    server_pid: int | None = None  # workers stop when this process dies
    writer_socket: str | None = None
    max_lag: int = 0  # events the index may be behind the log while /readyz answers ready (many nodes)
    people_rate: float = 1.0  # person endpoints: requests a second per client address, per worker (0: no limit)
    people_burst: float = 10.0
    trusted_proxies: frozenset[str] = frozenset()  # peers whose X-Forwarded-For names the client


class SessionRequest(msgspec.Struct, forbid_unknown_fields=True):
    terminal_id: str
    time: int
    nonce: str
    signature: str


class StatusQuery(msgspec.Struct, forbid_unknown_fields=True):
    service_ids: list[str]


class ChallengeRequest(msgspec.Struct, forbid_unknown_fields=True):
    purpose: Literal["identify", "link"]
    service_id: str | None = None


class CardProof(msgspec.Struct, forbid_unknown_fields=True):
    certificate: str
    signature: str
    challenge: str


class LinkRequest(msgspec.Struct, forbid_unknown_fields=True):
    certificate: str
    signature: str
    challenge: str
    service_id: str


Response = tuple[int, tuple[tuple[str, str], ...], bytes]
Handler = Callable[["Gateway", Any, Any, str], Awaitable[Response]]
_encode = msgspec.json.Encoder().encode
_decoders: dict[type, msgspec.json.Decoder] = {}


def _json(status: int, obj: Any) -> Response:
    return status, JSON_HEADERS, _encode(obj)


def _b64(value: str, field: str) -> bytes:
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise problem("malformed-request", f"{field} is not base64 (RFC 4648, with padding)") from None


def _check_service_id(value: str, where: str) -> None:
    if not OPAQUE_ID_RE.match(value):
        raise problem(
            "malformed-request",
            f"{where} {value[:40]!r} is not a service ID: 1-32 printable ASCII characters without spaces",
        )


def _ascii(value: str, field: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise problem("malformed-request", f"{field} must be ASCII text") from None


def _card_proof(req: CardProof | LinkRequest) -> tuple[bytes, bytes, bytes]:
    """(certificate, signature, challenge) bytes of a card proof in a request body."""
    return _ascii(req.certificate, "certificate"), _b64(req.signature, "signature"), _ascii(req.challenge, "challenge")


def _card_refusal(exc: MykeyError) -> HttpProblem | None:
    """The problem answering a refused card flow (None: not a refusal of the card flow).

    The engine's refusals name only the business's own IDs and the card's certificate,
    never a MyKey ID or another business, so their messages go back as the detail.
    """
    detail = str(exc)
    if isinstance(exc, ChallengeError):
        return problem("challenge-invalid", detail)
    if isinstance(exc, SuspendedMyKeyError):
        return problem("mykey-not-valid", detail)
    if isinstance(exc, (CertificateError, UnknownCardError)):
        return problem("card-refused", detail)
    if isinstance(exc, RegistrationNotAllowedError):
        return problem("registration-not-allowed", detail)
    if isinstance(exc, AlreadyExistsError):
        return problem("conflict", detail)
    if isinstance(exc, ValidationError):
        return problem("malformed-request", detail)
    return None


def _csv_refusal(exc: MykeyError) -> HttpProblem | None:
    """A refused bulk registration, with the line the refusal names (problem member `line`)."""
    found = _card_refusal(exc)
    if found is not None and found.kind in ("malformed-request", "conflict"):
        match = _CSV_LINE.search(found.detail)
        if match:
            found.extra = {"line": int(match.group(1))}
    return found


def client_address(scope, trusted_proxies: frozenset[str]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, what X-Forwarded-For says.

    The rightmost address in X-Forwarded-For that is not itself a trusted proxy is the
    client (each proxy appends the address it saw); a header from any other peer is ignored.
    """
    peer = _host(scope.client or "")
    if peer not in trusted_proxies:
        return peer
    hops = [
        hop.strip()
        for name, value in scope.headers.items()
        if name.lower() == "x-forwarded-for"
        for hop in value.split(",")
    ]
    client = peer
    for hop in reversed([h for h in hops if h]):
        client = _host(hop)
        if client not in trusted_proxies:
            break
    return client[:64]


def _host(address: str) -> str:
    """The IP address in "ip", "ip:port" or "[ipv6]:port", normalised (as given if it is none of them)."""
    if address.startswith("[") and "]" in address:
        address = address[1 : address.index("]")]
    for candidate in (address, address.rpartition(":")[0]):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return address


def _remove_stale_uploads(run: Path) -> None:
    """Remove CSV bodies left by a worker that died mid-upload (their pid is gone)."""
    for path in run.glob(UPLOAD_PREFIX + "*.csv"):
        pid = path.name[len(UPLOAD_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Gateway:
    """The RSGI application (one instance per worker process, made before the fork)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.openapi = OPENAPI_PATH.read_bytes()
        self.signer = TokenSigner(config.token_key, config.token_ttl)
        self.resolver: Resolver | None = None
        self.auth: TerminalAuthenticator | None = None
        self.challenges: LmdbChallengeStore | None = None
        self.cards: CardReader | None = None
        self.log = None
        self.status_lists: StatusListStore | None = None
        self.metrics: Metrics | None = None
        self.limiter = RateLimiter(config.rate, config.burst)
        # Sign-ins cost an Ed25519 verification: limited apart (and off when the limit is off).
        self.session_limiter = RateLimiter(config.session_rate if config.rate > 0 else 0, config.session_burst)
        # People (no terminal, no token): limited per client address, apart from the terminals' limits.
        self.people_limiter = RateLimiter(config.people_rate, config.people_burst)
        self._next_index_try = 0.0
        self._writer: AsyncWriterClient | None = None
        self._log_last = 0  # the log's last seq when it last answered

    def writer(self) -> AsyncWriterClient:
        """This worker's connection to the writer (made on first use, after the fork)."""
        if self._writer is None:
            if self.config.writer_socket is None:
                raise WriterUnavailableError("this gateway has no writer")
            self._writer = AsyncWriterClient(self.config.writer_socket)
        return self._writer

    # --- per worker ------------------------------------------------------------

    def __rsgi_init__(self, loop) -> None:
        """In the worker, after the fork: arm the parent-death signal, open the index, make the metrics."""
        if self.config.server_pid is not None:
            die_with_parent(self.config.server_pid)
        self.metrics = Metrics()
        try:
            _remove_stale_uploads(run_dir(DataDir(self.config.data_dir)))
        except OSError as exc:
            _log.warning("could not look for stale uploads: %s", exc)
        self._open_index()
        _log.info("worker %d ready (index %s)", os.getpid(), "open" if self.resolver else "not open yet")

    def __rsgi_del__(self, loop) -> None:
        if self._writer is not None:
            self._writer.close()
        self._close_index()

    def _open_index(self) -> None:
        """Open this worker's resolver, authenticator, challenge store and log reader (all or none)."""
        data = DataDir(self.config.data_dir)
        resolver = auth = challenges = log = None
        try:
            resolver = Resolver.open(data.root)
            auth = TerminalAuthenticator.open(data.root, resolver, resolver.binding)
            challenges = open_challenge_store(data, resolver.binding)
            log = open_log(data, readonly=True)
        except Exception as exc:
            for thing in (log, challenges, auth, resolver):
                if thing is not None:
                    thing.close()
            self._next_index_try = time.monotonic() + INDEX_RETRY_SECONDS
            _log.warning("worker %d cannot open the index yet: %s", os.getpid(), exc)
            return
        self.resolver, self.auth, self.challenges, self.log = resolver, auth, challenges, log
        # Identify reads this worker's own index: LMDB allows one open of it per process.
        self.cards = CardReader(resolver, challenges)
        self.status_lists = StatusListStore(data, resolver, log)

    def _close_index(self) -> None:
        self.cards = None
        self.status_lists = None
        for name in ("auth", "challenges", "log", "resolver"):
            thing = getattr(self, name)
            setattr(self, name, None)
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    _log.exception("closing the %s failed", name)

    def _index(self) -> Resolver:
        resolver = self.resolver
        if resolver is None:
            if time.monotonic() >= self._next_index_try:
                self._open_index()
            resolver = self.resolver
            if resolver is None:
                raise problem("not-ready", "the gateway has not opened the index yet; retry shortly")
        return resolver

    # --- the request path -----------------------------------------------------------

    async def __rsgi__(self, scope, proto) -> None:
        start = time.perf_counter()
        endpoint = "other"
        try:
            path = scope.path
            route = EXACT_ROUTES.get(path)
            arg = ""
            if route is None and path.startswith(STATUS_PREFIX):
                route, arg = STATUS_ROUTE, path[len(STATUS_PREFIX) :]
            if route is None:
                raise problem("not-found", f"no endpoint at {path[:100]}; see /openapi.json")
            endpoint = route[0]
            handler = route[1].get(scope.method)
            if handler is None:
                allowed = ", ".join(route[1])
                raise problem(
                    "method-not-allowed", f"{path[:100]} answers {allowed}", headers=(("allow", allowed),)
                )
            status, headers, body = await handler(self, scope, proto, arg)
            proto.response_bytes(status, headers, body)
        except HttpProblem as exc:
            status = self._refuse(proto, exc)
        except WriterUnavailableError as exc:  # an operator's command holds the log, or the writer restarts
            status = self._refuse(proto, problem("writer-unavailable", str(exc), headers=(retry_after_header(1),)))
        except LogUnavailableError as exc:  # the replicated log's servers (and key-value buckets) did not answer
            _log.warning("%s %s: %s", scope.method, scope.path[:100], exc)
            status = self._refuse(proto, problem("not-ready", f"{exc}; retry shortly", headers=(retry_after_header(1),)))
        except Exception:
            _log.exception("%s %s failed", scope.method, scope.path[:100])
            status = self._refuse(proto, problem("internal-error", "the gateway failed on this request; it is logged"))
        metrics = self.metrics
        if metrics is not None:
            try:
                metrics.observe(endpoint, status, time.perf_counter() - start)
            except Exception:
                _log.exception("recording metrics failed")

    def _refuse(self, proto, exc: HttpProblem) -> int:
        headers = PROBLEM_HEADERS + tuple(exc.headers)
        try:
            proto.response_bytes(exc.status, headers, problem_body(exc))
        except Exception:
            _log.exception("answering %d failed", exc.status)
        if self.metrics is not None:
            try:
                self.metrics.refused(exc.kind)
            except Exception:
                _log.exception("recording metrics failed")
        return exc.status

    def _card_reader(self) -> CardReader:
        self._index()
        assert self.cards is not None
        return self.cards

    def _challenge_store(self) -> LmdbChallengeStore:
        self._index()
        assert self.challenges is not None
        return self.challenges

    def _check_terminal(self, terminal_id: str, business_id: str) -> None:
        """HttpProblem 401/403 unless the terminal is enrolled at business_id, active, and the business active."""
        resolver = self._index()
        term = resolver.terminal(terminal_id)
        if term is None or term.business_id != business_id:
            raise problem("token-invalid", "the token names a terminal this platform does not know; sign in again",
                          headers=BEARER_INVALID)
        if not term.active:
            raise problem("terminal-revoked", f"terminal {terminal_id} was revoked; its tokens no longer work")
        business = resolver.business(business_id)
        if business is None or not business.active:
            raise problem("business-deactivated", f"business {business_id} is deactivated; its terminals are refused")

    def _authorise(self, scope, now: float) -> tuple[str, str]:
        """(terminal_id, business_id) of the request's valid session token; HttpProblem otherwise."""
        header = scope.headers.get("authorization")
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise problem(
                "token-missing", "send Authorization: Bearer <token>; POST /v1/sessions gives a token", headers=BEARER
            )
        try:
            terminal_id, business_id = self.signer.verify(token.strip(), now)
        except HttpProblem as exc:
            exc.headers = BEARER_INVALID
            raise
        self._check_terminal(terminal_id, business_id)
        wait = self.limiter.check(terminal_id, now)
        if wait:
            raise problem(
                "rate-limited",
                f"terminal {terminal_id} is over its rate limit of {self.limiter.rate:g} requests a second",
                headers=(retry_after_header(wait),),
            )
        return terminal_id, business_id

    @staticmethod
    def _check_length(scope, limit: int) -> None:
        """400 for a Content-Length that is not a number, 413 for one over limit (chunked bodies: while read)."""
        length = scope.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise problem("malformed-request", "Content-Length is not a number")
            if int(length) > limit:
                raise problem("body-too-large", f"the body is over {limit} bytes", headers=(("connection", "close"),))

    async def _json_body(self, scope, proto, kind: type, limit: int = MAX_JSON_BODY):
        """The request's JSON body decoded as kind (a msgspec Struct): 415, 413 or 400 when it is not one."""
        ctype = (scope.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise problem("unsupported-media-type", "send the body as JSON with Content-Type: application/json")
        too_large = problem(
            "body-too-large", f"the body is over {limit} bytes", headers=(("connection", "close"),)
        )
        self._check_length(scope, limit)
        body = bytearray()
        async for chunk in proto:
            body += chunk
            if len(body) > limit:
                raise too_large
        decoder = _decoders.get(kind)
        if decoder is None:
            decoder = _decoders[kind] = msgspec.json.Decoder(kind)
        try:
            return decoder.decode(body)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise problem("malformed-request", f"the body is not what this endpoint takes: {exc}") from None

    # --- handlers ---------------------------------------------------------------------

    async def health(self, scope, proto, arg: str) -> Response:
        return 200, JSON_HEADERS, b'{"status":"ok"}'

    def _lag(self) -> tuple[int, int]:
        """(index last_seq, log last_seq): the log read first, so a caught-up index is never behind it.

        A replicated log that does not answer (a leader election) counts as it last did.
        """
        resolver = self._index()
        try:
            log_last = self.log.refresh() if self.log is not None else 0
        except LogUnavailableError:
            log_last = self._log_last
        self._log_last = log_last
        index_last = resolver.last_seq
        if self.metrics is not None:
            self.metrics.index_lag.set(max(0, log_last - index_last))
        return index_last, log_last

    async def ready(self, scope, proto, arg: str) -> Response:
        index_last, log_last = await asyncio.to_thread(self._lag)  # a replicated log is asked over the network
        if log_last - index_last > self.config.max_lag:
            raise problem(
                "not-ready",
                f"the index has applied events up to {index_last}; the log holds {log_last}",
                extra={"index_last_seq": index_last, "log_last_seq": log_last},
            )
        return _json(200, {"ready": True, "index_last_seq": index_last, "log_last_seq": log_last})

    async def metrics_text(self, scope, proto, arg: str) -> Response:
        try:
            await asyncio.to_thread(self._lag)
        except HttpProblem:
            pass  # no index yet: the other metrics still count
        return 200, (("content-type", METRICS_CONTENT_TYPE),), Metrics.render()

    async def openapi_doc(self, scope, proto, arg: str) -> Response:
        return 200, (("content-type", "application/json"),), self.openapi

    async def sessions(self, scope, proto, arg: str) -> Response:
        req: SessionRequest = await self._json_body(scope, proto, SessionRequest)
        terminal_id = req.terminal_id
        if not TERMINAL_ID_RE.match(terminal_id):
            raise problem("malformed-request", f"terminal_id {terminal_id[:40]!r} is not a terminal ID (e.g. A0001-T0001)")
        now = time.time()
        wait = self.session_limiter.check(terminal_id, now)
        if wait:
            raise problem("rate-limited", f"too many sign-ins for terminal {terminal_id}",
                          headers=(retry_after_header(wait),))
        nonce, signature = _b64(req.nonce, "nonce"), _b64(req.signature, "signature")
        try:
            message = terminal_auth_message(terminal_id, req.time, nonce)
        except ValidationError as exc:
            raise problem("malformed-request", str(exc)) from None
        self._index()
        assert self.auth is not None
        try:
            business_id = self.auth.authenticate(terminal_id, message, signature, now=now)
        except TerminalAuthError as exc:
            raise self._sign_in_refusal(terminal_id, message, signature, exc) from None
        token, expires_at = self.signer.issue(terminal_id, business_id, now)
        if self.metrics is not None:
            self.metrics.sessions.inc()
        return _json(200, {"token": token, "business_id": business_id, "expires_at": expires_at})

    def _sign_in_refusal(self, terminal_id: str, message: bytes, signature: bytes, exc: MykeyError) -> HttpProblem:
        """403 when the terminal proved itself but is revoked (or its business deactivated), else 401."""
        resolver = self._index()
        term = resolver.terminal(terminal_id)
        if term is not None:
            business = resolver.business(term.business_id)
            stopped = not term.active or business is None or not business.active
            if stopped and _signature_ok(term.public_key, signature, message):
                kind = "terminal-revoked" if not term.active else "business-deactivated"
                return problem(kind, str(exc))
        return problem("terminal-auth-failed", str(exc))

    async def status_one(self, scope, proto, service_id: str) -> Response:
        _terminal, business = self._authorise(scope, time.time())
        _check_service_id(service_id, "the path's service ID")
        resolver = self._index()
        status = resolver.resolve(business, service_id)
        return _json(200, {"service_id": service_id, "status": _LABELS[status],
                           "idx": resolver.status_idx(business, service_id)})

    async def status_batch(self, scope, proto, arg: str) -> Response:
        _terminal, business = self._authorise(scope, time.time())
        req: StatusQuery = await self._json_body(scope, proto, StatusQuery)
        service_ids = req.service_ids
        if not 1 <= len(service_ids) <= MAX_BATCH:
            raise problem("malformed-request", f"service_ids must hold 1-{MAX_BATCH} service IDs, not {len(service_ids)}")
        for i, sid in enumerate(service_ids):
            _check_service_id(sid, f"service_ids[{i}]")
        resolver = self._index()
        codes = resolver.resolve_many(business, service_ids)
        labels = _LABELS
        idxs = _positions(resolver, business, service_ids)
        return _json(200, {"statuses": [
            {"service_id": sid, "status": labels[code], "idx": idx}
            for sid, code, idx in zip(service_ids, codes, idxs, strict=True)
        ]})

    # --- the card flows: challenges, identify, first-use links ---------------------------------

    async def challenge(self, scope, proto, arg: str) -> Response:
        terminal, business = self._authorise(scope, time.time())
        req: ChallengeRequest = await self._json_body(scope, proto, ChallengeRequest)
        if req.purpose == "identify":
            if req.service_id is not None:
                raise problem("malformed-request", "an identify challenge names no service_id")
        else:
            if req.service_id is None:
                raise problem("malformed-request", "a link challenge names the service_id to link")
            _check_service_id(req.service_id, "service_id")
            rec = self._index().business(business)
            try:
                ids.check_service_id(req.service_id, numeric_declared=bool(rec and rec.numeric_service_ids))
            except ValidationError as exc:
                raise problem("malformed-request", str(exc)) from None
        try:
            raw, expires = self._challenge_store().issue_expiring(
                req.purpose, business_id=business, service_id=req.service_id, terminal_id=terminal
            )
        except ChallengeError as exc:  # too many open challenges on this machine
            raise problem("rate-limited", str(exc), headers=(retry_after_header(1),)) from None
        return _json(200, {"challenge": raw.decode("ascii"), "expires_at": int(expires)})

    async def identify(self, scope, proto, arg: str) -> Response:
        terminal, business = self._authorise(scope, time.time())
        req: CardProof = await self._json_body(scope, proto, CardProof)
        certificate, signature, challenge = _card_proof(req)
        try:
            linked = self._card_reader().identify(business, certificate, signature, challenge, terminal_id=terminal)
        except MykeyError as exc:
            raise self._refusal(exc, terminal, business) from None
        return _json(200, {"service_ids": [
            {"service_id": item.service_id, "status": item.status.label, "idx": item.idx} for item in linked
        ]})

    async def link(self, scope, proto, arg: str) -> Response:
        terminal, business = self._authorise(scope, time.time())
        req: LinkRequest = await self._json_body(scope, proto, LinkRequest)
        _check_service_id(req.service_id, "service_id")
        certificate, signature, challenge = _card_proof(req)
        try:
            status = await self.writer().call(
                "link_with_card", actor=ev.Actor("terminal", terminal), business_id=business,
                service_id=req.service_id, certificate=certificate, signature=signature, challenge=challenge,
            )
        except GatewayError:
            raise
        except MykeyError as exc:
            raise self._refusal(exc, terminal, business) from None
        return _json(201, {"service_id": req.service_id, "status": str(status)})

    def _refusal(self, exc: MykeyError, terminal: str, business: str, refusal=_card_refusal) -> HttpProblem | MykeyError:
        """The problem answering a refused card flow or registration; exc itself if it is none."""
        if isinstance(exc, (InactiveError, NotFoundError)) and not isinstance(exc, UnknownCardError):
            # The terminal or its business stopped meanwhile (the writer saw it first): say which.
            self._check_terminal(terminal, business)
        found = refusal(exc)
        return exc if found is None else found

    # --- bulk registration ---------------------------------------------------------------------

    async def register_service_ids(self, scope, proto, arg: str) -> Response:
        """Stream the CSV body into an owner-only file in DATA/run; the writer registers it, all or nothing."""
        terminal, business = self._authorise(scope, time.time())
        term = self._index().terminal(terminal)
        if term is None or not term.can_register:
            raise problem(
                "registration-not-allowed",
                f"terminal {terminal} may not register service IDs; the operator enrols a terminal for that "
                "with --can-register",
            )
        ctype = (scope.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != "text/csv":
            raise problem("unsupported-media-type", "send the rows as text/csv (header service_id,customer_id)")
        self._check_length(scope, MAX_CSV_BODY)
        run = run_dir(DataDir(self.config.data_dir))
        fd, name = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=".csv", dir=run)  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                await self._stream_csv(proto, f, MAX_CSV_BODY)
            writer = AsyncWriterClient(self.writer().socket_path, timeout=CSV_WRITER_TIMEOUT)
            try:
                registered = await writer.call(
                    "import_service_ids_csv", actor=ev.Actor("terminal", terminal), business_id=business,
                    path=name, name="the CSV body",
                )
            except GatewayError:
                raise
            except MykeyError as exc:
                raise self._refusal(exc, terminal, business, _csv_refusal) from None
            finally:
                writer.close()
        finally:
            Path(name).unlink(missing_ok=True)
        return _json(201, {"registered": int(registered)})

    @staticmethod
    async def _stream_csv(proto, f, limit: int) -> None:
        """Copy the body to f chunk by chunk (never held whole): 413 over limit, 400 at the first non-ASCII byte."""
        seen, line = 0, 1
        async for chunk in proto:
            seen += len(chunk)
            if seen > limit:
                raise problem("body-too-large", f"the body is over {limit} bytes", headers=(("connection", "close"),))
            if not chunk.isascii():
                bad = next(i for i, byte in enumerate(chunk) if byte > 127)
                line += chunk.count(b"\n", 0, bad)
                raise problem("malformed-request", f"the CSV body: line {line}: not ASCII text",
                              headers=(("connection", "close"),), extra={"line": line})
            line += chunk.count(b"\n")
            f.write(chunk)

    # --- the person's own view -------------------------------------------------------------------

    def _limit_person(self, scope) -> None:
        address = client_address(scope, self.config.trusted_proxies)
        wait = self.people_limiter.check(address, time.time())
        if wait:
            raise problem("rate-limited", f"too many requests from {address}; retry later",
                          headers=(retry_after_header(wait),))

    async def person_challenge(self, scope, proto, arg: str) -> Response:
        self._limit_person(scope)
        try:
            raw, expires = self._challenge_store().issue_expiring("history")
        except ChallengeError as exc:
            raise problem("rate-limited", str(exc), headers=(retry_after_header(1),)) from None
        return _json(200, {"challenge": raw.decode("ascii"), "expires_at": int(expires)})

    async def person_history(self, scope, proto, arg: str) -> Response:
        self._limit_person(scope)
        req: CardProof = await self._json_body(scope, proto, CardProof)
        certificate, signature, challenge = _card_proof(req)
        try:
            mykey_id = self._card_reader().own_mykey_id(certificate, signature, challenge)
        except UnknownCardError as exc:
            raise problem("not-found", str(exc)) from None
        except MykeyError as exc:
            found = _card_refusal(exc)
            if found is None:
                raise
            raise found from None
        resolver = self._index()
        assert self.log is not None
        history = history_from(resolver, self.log, DataDir(self.config.data_dir), mykey_id)
        return _json(200, jsonable(history))


def _positions(resolver: Resolver, business_id: str, service_ids: list[str]) -> list[int | None]:
    """Each service ID's position in the business's status list (None: unknown, or none yet)."""
    if not all(sid.isascii() for sid in service_ids):
        return [None] * len(service_ids)
    with resolver.snapshot() as snap:
        return snap.status_idxs(business_id, service_ids)


# --- status lists (see mykey.engine.statuslists) --------------------------------------------------

JWKS_HEADERS = (("content-type", "application/json"), ("cache-control", "public, max-age=3600"))


async def _status_list(self: Gateway, scope, proto, arg: str) -> Response:
    """The token's business's signed status list; 304 when If-None-Match names its ETag."""
    _terminal, business = self._authorise(scope, time.time())
    self._index()
    assert self.status_lists is not None
    built = self.status_lists.token(business)
    headers = (("etag", built.etag), ("cache-control", f"private, max-age={int(self.status_lists.refresh)}"))
    wanted = scope.headers.get("if-none-match") or ""
    if built.etag in (tag.strip() for tag in wanted.split(",")) or wanted.strip() == "*":
        return 304, headers, b""
    return 200, (("content-type", STATUS_LIST_MEDIA_TYPE), *headers), built.body


async def _jwks(self: Gateway, scope, proto, arg: str) -> Response:
    """The public key set status lists are signed with (no token: a terminal fetches it to verify offline)."""
    self._index()
    assert self.status_lists is not None
    return 200, JWKS_HEADERS, _encode(self.status_lists.jwks())


def _signature_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


STATUS_PREFIX = "/v1/status/"
# path -> (endpoint name for the metrics, {method: handler})
EXACT_ROUTES: dict[str, tuple[str, dict[str, Handler]]] = {
    "/healthz": ("/healthz", {"GET": Gateway.health}),
    "/readyz": ("/readyz", {"GET": Gateway.ready}),
    "/metrics": ("/metrics", {"GET": Gateway.metrics_text}),
    "/openapi.json": ("/openapi.json", {"GET": Gateway.openapi_doc}),
    "/v1/sessions": ("/v1/sessions", {"POST": Gateway.sessions}),
    "/v1/status": ("/v1/status", {"POST": Gateway.status_batch}),
    "/v1/challenges": ("/v1/challenges", {"POST": Gateway.challenge}),
    "/v1/identify": ("/v1/identify", {"POST": Gateway.identify}),
    "/v1/links": ("/v1/links", {"POST": Gateway.link}),
    "/v1/service-ids": ("/v1/service-ids", {"POST": Gateway.register_service_ids}),
    "/v1/people/challenges": ("/v1/people/challenges", {"POST": Gateway.person_challenge}),
    "/v1/people/history": ("/v1/people/history", {"POST": Gateway.person_history}),
    "/v1/status-list": ("/v1/status-list", {"GET": _status_list}),
    "/.well-known/jwks.json": ("/.well-known/jwks.json", {"GET": _jwks}),
}
STATUS_ROUTE: tuple[str, dict[str, Handler]] = ("/v1/status/{service_id}", {"GET": Gateway.status_one})
