"""The gateway's parts on their own: tokens and the gateway key, the rate limiter, the writer's
framing and error mapping, problem JSON, the catch-all that keeps a worker up, the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from mykey.datadir import DataDir
from mykey.errors import (
    AlreadyExistsError,
    GatewayError,
    GatewayProtocolError,
    HttpProblem,
    KeyFileError,
    WriterUnavailableError,
)
from mykey.gateway import writer as w
from mykey.gateway.problems import KINDS, problem, problem_body
from mykey.gateway.ratelimit import MAX_BUCKETS, RateLimiter, retry_after_header
from mykey.gateway.tokens import TokenSigner, ensure_gateway_key

from tests.test_gateway_support import OPENAPI

KEY = bytes(range(32))


# --- tokens ------------------------------------------------------------------------------------


def test_a_token_verifies_until_it_expires():
    signer = TokenSigner(KEY, ttl=300)
    token, expires_at = signer.issue("A0001-T0001", "A0001", 1_000.5)
    assert expires_at == 1_300
    assert signer.verify(token, 1_299.9) == ("A0001-T0001", "A0001")
    with pytest.raises(HttpProblem) as exc:
        signer.verify(token, 1_300)
    assert exc.value.status == 401 and exc.value.kind == "token-expired"


def test_a_token_from_another_key_is_refused():
    token, _ = TokenSigner(KEY).issue("A0001-T0001", "A0001", 1_000)
    with pytest.raises(HttpProblem) as exc:
        TokenSigner(bytes(32)).verify(token, 1_000)
    assert exc.value.kind == "token-invalid"


@given(st.integers(min_value=0), st.characters(codec="utf-8"))
def test_any_change_to_a_token_is_refused(position, char):
    signer = TokenSigner(KEY)
    token, _ = signer.issue("A0001-T0001", "A0001", 1_000)
    i = position % len(token)
    changed = token[:i] + char + token[i + 1 :]
    if changed == token:
        return
    with pytest.raises(HttpProblem) as exc:
        signer.verify(changed, 1_000)
    assert exc.value.status == 401


@pytest.mark.parametrize("token", ["", ".", "v1....", "v2.A0001-T0001.A0001.99999999999.x", "a.b.c.d.e.f"])
def test_malformed_tokens_are_refused(token):
    with pytest.raises(HttpProblem) as exc:
        TokenSigner(KEY).verify(token, 0)
    assert exc.value.kind == "token-invalid"


def test_the_gateway_key_is_made_once_owner_only(tmp_path):
    data = DataDir(tmp_path / "data")
    key = ensure_gateway_key(data)
    path = data.keys / "gateway.key"
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_gateway_key(data) == key
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="damaged"):
        ensure_gateway_key(data)


# --- the rate limiter --------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_the_rate():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.check("t", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("t", 0.0) == pytest.approx(0.5)
    assert limiter.check("other", 0.0) == 0.0
    assert limiter.check("t", 0.5) == 0.0  # one token back after 1/rate seconds
    assert limiter.check("t", 0.5) > 0
    assert [limiter.check("t", 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # never more than the burst
    assert limiter.check("t", 10.0) > 0


def test_rate_zero_turns_the_limit_off():
    limiter = RateLimiter(rate=0, burst=1)
    assert not limiter.enabled and all(limiter.check("t", 0.0) == 0.0 for _ in range(1000))


def test_the_bucket_table_stays_bounded():
    limiter = RateLimiter(rate=1000.0, burst=1)
    for i in range(MAX_BUCKETS + 10):
        limiter.check(f"t{i}", i / 1000)
    assert len(limiter._buckets) <= MAX_BUCKETS
    assert retry_after_header(0.01) == ("retry-after", "1") and retry_after_header(2.2) == ("retry-after", "3")


# --- the writer's protocol ---------------------------------------------------------------------


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.integers(-10, 10), st.text(max_size=20)), max_size=5))
def test_messages_round_trip(message):
    framed = w.encode_message(message)
    assert w._message_length(framed[:4]) == len(framed) - 4
    assert w.decode_message(framed[4:]) == message


def test_oversized_and_garbled_messages_are_refused():
    with pytest.raises(GatewayProtocolError):
        w._message_length((w.MAX_MESSAGE + 1).to_bytes(4, "big"))
    with pytest.raises(GatewayProtocolError):
        w.decode_message(b"\xc1")
    with pytest.raises(GatewayProtocolError):
        w.decode_message(w.encode_message([1, 2])[4:])  # type: ignore[arg-type]


def test_a_refusal_comes_back_as_its_error_type():
    exc = w._error_from_reply({"id": 1, "ok": False, "error": "AlreadyExistsError", "message": "taken"})
    assert type(exc) is AlreadyExistsError and str(exc) == "taken"
    assert type(w._error_from_reply({"error": "HttpProblem", "message": "x"})) is GatewayError
    assert type(w._error_from_reply({"error": "os.system", "message": "x"})) is GatewayError
    with pytest.raises(GatewayProtocolError, match="answered request"):
        w._result({"id": 2, "ok": True, "result": None}, 1)


def test_the_client_says_when_no_writer_listens(tmp_path):
    with pytest.raises(WriterUnavailableError, match="not reachable"):
        w.WriterClient(tmp_path / "none.sock").call("ping")

    async def call():
        await w.AsyncWriterClient(tmp_path / "none.sock").call("ping")

    with pytest.raises(WriterUnavailableError):
        asyncio.run(call())


def test_a_writer_socket_path_too_long_is_refused_clearly(tmp_path):
    from mykey.gateway.procs import writer_socket_path

    with pytest.raises(GatewayError, match="shorter path"):
        writer_socket_path(DataDir(tmp_path / ("d" * 120)))


# --- problem JSON and the catch-all ----------------------------------------------------------------


def test_problem_json_has_the_rfc_9457_members():
    body = json.loads(problem_body(problem("not-ready", "behind", extra={"index_last_seq": 1, "type": "x"})))
    assert body == {"type": "urn:mykey:problem:not-ready", "title": "Not ready", "status": 503,
                    "detail": "behind", "index_last_seq": 1}
    assert all(400 <= status <= 599 for status, _ in KINDS.values())


class _Headers(dict):
    def get_all(self, name):
        return [self[name]] if name in self else []


class _Scope:
    def __init__(self, method: str, path: str, headers: dict | None = None) -> None:
        self.method, self.path, self.headers = method, path, _Headers(headers or {})


class _Proto:
    """Records what the application answers (granian's protocol object, for one request)."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, tuple, bytes]] = []

    def response_bytes(self, status, headers, body) -> None:
        self.responses.append((status, tuple(headers), body))

    def __aiter__(self):
        async def empty():
            return
            yield

        return empty()


def _app(tmp_path):
    from mykey.gateway.app import Gateway, GatewayConfig

    return Gateway(GatewayConfig(data_dir=tmp_path, token_key=KEY))


def test_an_unexpected_error_is_a_500_problem_and_the_worker_goes_on(tmp_path, monkeypatch, caplog):
    from mykey.gateway import app as app_module

    app = _app(tmp_path)

    async def broken(self, scope, proto, arg):
        raise RuntimeError("a bug")

    monkeypatch.setitem(app_module.EXACT_ROUTES, "/healthz", ("/healthz", {"GET": broken}))
    proto = _Proto()
    asyncio.run(app.__rsgi__(_Scope("GET", "/healthz"), proto))
    (status, headers, body), = proto.responses
    assert status == 500 and ("content-type", "application/problem+json") in headers
    assert json.loads(body)["type"] == "urn:mykey:problem:internal-error"
    assert "a bug" in caplog.text
    monkeypatch.undo()
    proto = _Proto()
    asyncio.run(app.__rsgi__(_Scope("GET", "/healthz"), proto))
    assert proto.responses[0][0] == 200


def test_a_worker_without_an_index_says_not_ready(tmp_path):
    app = _app(tmp_path)  # no data directory at all
    app._open_index()
    proto = _Proto()
    asyncio.run(app.__rsgi__(_Scope("GET", "/readyz"), proto))
    assert proto.responses[0][0] == 503 and b"not-ready" in proto.responses[0][2]


# --- the OpenAPI document -------------------------------------------------------------------------


def test_the_openapi_document_is_well_formed():
    assert OPENAPI["openapi"].startswith("3.1")
    for schema in OPENAPI["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in set(refs(OPENAPI)):
        node = OPENAPI
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # KeyError: a dangling reference
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            assert op["responses"], f"{method} {path} documents no response"
            assert any(code.startswith("2") for code in op["responses"]), f"{method} {path} has no success"


def test_a_replicated_log_that_does_not_answer_is_a_503_to_retry_not_a_500(tmp_path, monkeypatch):
    from mykey.errors import LogUnavailableError
    from mykey.gateway import app as app_module

    app = _app(tmp_path)

    async def slow_log(self, scope, proto, arg):
        raise LogUnavailableError("the NATS servers did not answer within 6.0 s")

    monkeypatch.setitem(app_module.EXACT_ROUTES, "/healthz", ("/healthz", {"GET": slow_log}))
    proto = _Proto()
    asyncio.run(app.__rsgi__(_Scope("GET", "/healthz"), proto))
    (status, headers, body), = proto.responses
    assert status == 503 and ("retry-after", "1") in headers
    assert json.loads(body)["type"] == "urn:mykey:problem:not-ready" and "retry shortly" in json.loads(body)["detail"]
