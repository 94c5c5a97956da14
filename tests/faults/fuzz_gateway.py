"""The ``gateway`` fuzz target: request bodies through the gateway's own RSGI application, in process.

An input is ``METHOD PATH [CONTENT-TYPE]`` on its first line and the body after it (see
tests/faults/corpus/gateway/). The target hands it to ``Gateway.__rsgi__`` exactly as
granian would (a scope with the method, the path, the headers and a peer address; a
protocol object yielding the body in chunks and taking the response), with a valid
bearer token of an enrolled terminal, against a real data directory whose index the
application opens itself and a real writer process (``python -m mykey.gateway.writer``)
taking first-use links and bulk registrations. So every JSON body the API accepts
(sessions, status batches, challenges, identify, links, a person's history) and the CSV
body of a bulk registration is decoded and checked by the application's own code, and
what passes goes on to the index, the challenge store, the card checks and the writer.

Placeholders make the deep paths reachable for a mutation fuzzer: ``$CERT`` becomes the
PEM chain of a card the platform knows, ``$CHALLENGE`` a challenge just issued for the
endpoint (a link's names the body's service ID) and ``$SIG`` the card's signature over it.

The answer must be one response: a 2xx JSON document, or problem JSON (RFC 9457) with a
4xx status whose type names a mykey problem; never a 500 (the application logs the
exception, which the crash report carries), never a 503 (the writer must not die).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

BUSINESS = "A0001"
TOKEN_KEY = b"k" * 32
TOKEN_REFRESH = 120.0  # seconds; the tokens live 300
_SERVICE_ID = re.compile(rb'"service_id"\s*:\s*"([^"\\]{0,64})"')
_PURPOSE = {"/v1/identify": "identify", "/v1/links": "link", "/v1/people/history": "history"}


class Headers(dict):
    """Header names lower-case, as granian gives them."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]] if name in self else []


class Scope:
    def __init__(self, method: str, path: str, headers: Headers) -> None:
        self.method, self.path, self.headers = method, path, headers
        self.client = "192.0.2.7:50000"
        self.proto, self.http_version, self.scheme = "http", "1.1", "http"
        self.query_string = ""


class Proto:
    """granian's HTTP protocol object for one request: the body as chunks in, the response out."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.responses: list[tuple[int, tuple, bytes]] = []

    def __aiter__(self):
        async def gen():
            for c in self.chunks:
                yield c

        return gen()

    async def __call__(self) -> bytes:
        return b"".join(self.chunks)

    def response_bytes(self, status, headers, body) -> None:
        self.responses.append((status, tuple(headers), bytes(body)))


class _Logged(logging.Handler):
    """What the application logged with a traceback (a 500 names its exception here)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = self.format(record)


class GatewayTarget:
    """A data directory, its writer process and one in-process Gateway application."""

    def __init__(self, root: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        from mykey.datadir import DataDir
        from mykey.engine import Engine
        from mykey.gateway.app import Gateway, GatewayConfig
        from mykey.gateway.metrics import use_directory
        from mykey.gateway.server import ServeOptions, WriterProcess
        from mykey_dev.pki import ThrowawayCA

        self.root = root
        data = root / "data"
        ca = ThrowawayCA.create("gateway fuzz root")
        inter = ca.intermediate("gateway fuzz users")
        self.card = inter.issue_user()
        self.chain = self.card.cert_pem() + inter.cert_pem()
        self.terminal_key = Ed25519PrivateKey.generate()
        public = self.terminal_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        with Engine.open(data) as engine:
            engine.add_trust_anchor(ca.cert_pem())
            engine.add_trust_anchor(inter.cert_pem(), intermediate=True)
            engine.register_business("Fuzz library", "131016")
            self.terminal = engine.enrol_terminal(BUSINESS, public, can_register=True)
            engine.register_service_ids(BUSINESS, [("M-001", None), ("M-002", "c2"), ("M-003", None)])
            ch = engine.new_challenge()
            mk = engine.create_mykey(self.chain, self.card.sign(ch), ch)
            engine.link_in_person(BUSINESS, "M-001", mk, "seen in person")
        (root / "metrics").mkdir()
        use_directory(root / "metrics")
        self.writer = WriterProcess(DataDir(data), ServeOptions(writer_idle=2.0, lock_wait=5.0))
        self.writer_log = root / "writer.log"
        saved = os.dup(2)
        try:  # the writer's log goes to a file (a crash report quotes it), not among the figures
            with open(self.writer_log, "ab") as f:
                os.dup2(f.fileno(), 2)
                self.writer.start()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        self.writer.wait_ready()
        self.loop = asyncio.new_event_loop()
        self.app = Gateway(GatewayConfig(
            data_dir=data, token_key=TOKEN_KEY, rate=0, people_rate=0, writer_socket=str(self.writer.socket_path),
        ))
        self.app.__rsgi_init__(self.loop)
        assert self.app.resolver is not None, "the gateway did not open the index"
        self.logged = _Logged()
        logging.getLogger("mykey.gateway").addHandler(self.logged)
        self._token, self._token_at = "", 0.0
        self.seen: dict[int, int] = {}  # answers by status code

    def token(self) -> str:
        now = time.time()
        if now - self._token_at > TOKEN_REFRESH:
            self._token, _ = self.app.signer.issue(self.terminal, BUSINESS, now)
            self._token_at = now
        return self._token

    def close(self) -> None:
        logging.getLogger("mykey.gateway").removeHandler(self.logged)
        try:
            self.app.__rsgi_del__(self.loop)
            self.loop.run_until_complete(asyncio.sleep(0.01))  # let the writer connections close
            self.loop.close()
        finally:
            self.writer.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    # --- one input --------------------------------------------------------------------------

    def _fill(self, path: str, body: bytes) -> bytes:
        if b"$CERT" in body:
            body = body.replace(b"$CERT", json.dumps(self.chain.decode("ascii"))[1:-1].encode())
        if b"$CHALLENGE" in body:
            from mykey.errors import MykeyError

            purpose = _PURPOSE.get(path, "identify")
            service = _SERVICE_ID.search(body)
            sid = service.group(1).decode("latin-1") if service else "M-002"
            try:
                if purpose == "history":
                    raw, _ = self.app._challenge_store().issue_expiring("history")
                else:
                    raw, _ = self.app._challenge_store().issue_expiring(
                        purpose, business_id=BUSINESS, terminal_id=self.terminal,
                        service_id=sid if purpose == "link" else None)
            except MykeyError:  # a fuzzed service ID no challenge can name: keep the placeholder
                raw = b"$CHALLENGE"
            body = body.replace(b"$CHALLENGE", raw)
            if b"$SIG" in body:
                body = body.replace(b"$SIG", base64.b64encode(self.card.sign(raw)))
        if b"$SESSION" in body:
            from mykey.auth.terminals import terminal_auth_message

            nonce = os.urandom(16)
            when = int(time.time())
            sig = self.terminal_key.sign(terminal_auth_message(self.terminal, when, nonce))
            body = body.replace(b"$SESSION", json.dumps({
                "terminal_id": self.terminal, "time": when, "nonce": base64.b64encode(nonce).decode(),
                "signature": base64.b64encode(sig).decode()}).encode())
        return body

    def __call__(self, data: bytes) -> None:
        from .fuzz import Crash

        head, _, body = data.partition(b"\n")
        parts = head.decode("latin-1").split(" ")
        method = parts[0] or "POST"
        path = parts[1] if len(parts) > 1 else "/v1/status"
        ctype = parts[2] if len(parts) > 2 else ("text/csv" if path == "/v1/service-ids" else "application/json")
        body = self._fill(path, body)
        headers = Headers({"content-type": ctype, "authorization": f"Bearer {self.token()}",
                           "host": "localhost", "content-length": str(len(body))})
        if len(parts) > 3:  # a fourth word: the body is sent chunked (no Content-Length)
            del headers["content-length"]
        cut = sorted({0, len(body), len(body) // 3, (2 * len(body)) // 3})
        chunks = [body[a:b] for a, b in zip(cut, cut[1:]) if b > a]
        proto = Proto(chunks)
        self.logged.last = ""
        self.loop.run_until_complete(self.app.__rsgi__(Scope(method, path, headers), proto))
        if len(proto.responses) != 1:
            raise Crash(f"gateway: {len(proto.responses)} responses to one request {data[:200]!r}")
        status, hdrs, out = proto.responses[0]
        self.seen[status] = self.seen.get(status, 0) + 1
        ctypes = [v for k, v in hdrs if k == "content-type"]
        if status >= 400:
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
            kind = doc.get("type", "") if isinstance(doc, dict) else ""
            if (status >= 500 and not (status == 503 and kind.endswith(":not-ready"))) or ctypes != [
                    "application/problem+json"] or not kind.startswith("urn:mykey:problem:") or doc.get("status") != status:
                raise Crash(f"gateway: {status} {out[:300]!r} to {data[:300]!r}\n{self.logged.last[-3000:]}\n"
                            f"the writer's log ends: {self.writer_log.read_text(errors='replace')[-2000:]}")
        elif not 200 <= status < 300:
            raise Crash(f"gateway: status {status} to {data[:200]!r}")
        elif ctypes == ["application/json"]:
            json.loads(out)


_TARGET: list[GatewayTarget] = []


def t_gateway(data: bytes) -> None:
    if not _TARGET:
        base = os.environ.get("MYKEY_FUZZ_SCRATCH") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        _TARGET.append(GatewayTarget(Path(tempfile.mkdtemp(prefix="mykey-fuzz-gateway-", dir=base))))
    _TARGET[0](data)


def close() -> None:
    """Stop the writer and remove the data directory (the next input sets them up again)."""
    while _TARGET:
        _TARGET.pop().close()


SEEDS = {
    "session.txt": b"POST /v1/sessions\n$SESSION",
    "session-bad.txt": b'POST /v1/sessions\n{"terminal_id":"A0001-T0001","time":1764000000,'
                       b'"nonce":"AAAAAAAAAAAAAAAAAAAAAA==","signature":"' + b"A" * 86 + b'=="}',
    "status.txt": b'POST /v1/status\n{"service_ids":["M-001","M-002","M-003","NOPE"]}',
    "status-one.txt": b"GET /v1/status/M-001\n",
    "challenge-identify.txt": b'POST /v1/challenges\n{"purpose":"identify"}',
    "challenge-link.txt": b'POST /v1/challenges\n{"purpose":"link","service_id":"M-002"}',
    "identify.txt": b'POST /v1/identify\n{"certificate":"$CERT","signature":"$SIG","challenge":"$CHALLENGE"}',
    "identify-stale.txt": b'POST /v1/identify\n{"certificate":"$CERT","signature":"AAAA",'
                          b'"challenge":"mykey:identify:A0001:A0001-T0001:00"}',
    "link.txt": b'POST /v1/links\n{"certificate":"$CERT","signature":"$SIG","challenge":"$CHALLENGE",'
                b'"service_id":"M-002"}',
    "link-new.txt": b'POST /v1/links\n{"certificate":"$CERT","signature":"$SIG","challenge":"$CHALLENGE",'
                    b'"service_id":"NEW-7"}',
    "history.txt": b'POST /v1/people/history\n{"certificate":"$CERT","signature":"$SIG","challenge":"$CHALLENGE"}',
    "people-challenge.txt": b"POST /v1/people/challenges\n",
    "csv.txt": b"POST /v1/service-ids text/csv\nservice_id,customer_id\nR-1,c1\nR-2,\n",
    "csv-chunked.txt": b"POST /v1/service-ids text/csv chunked\nservice_id,customer_id\nR-3,\n",
    "ready.txt": b"GET /readyz\n",
    "status-list.txt": b"GET /v1/status-list\n",
    "jwks.txt": b"GET /.well-known/jwks.json\n",
}


def write_seeds(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    for name, data in SEEDS.items():
        (directory / name).write_bytes(data)
