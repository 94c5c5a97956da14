"""The gateway's HTTP API against a real `mykey serve` (2 workers): every response checked against
the OpenAPI document; sessions, statuses, isolation, refusals, revocation at once, the writer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mykey.client.gateway import GatewayClient, Session
from mykey.domain import events as ev
from mykey.errors import (
    AlreadyExistsError,
    GatewayProtocolError,
    GatewayRefusedError,
    NotFoundError,
    RegistrationNotAllowedError,
)
from mykey.gateway.app import MAX_BATCH, MAX_JSON_BODY
from mykey.gateway.writer import AsyncWriterClient, WriterClient
from mykey.log.backend import open_log

from tests.test_gateway_support import (
    OPENAPI,
    Api,
    bearer,
    build_dataset,
    problem_kind,
    session_body,
    start_server,
    wait_for,
)

A, B = "A0001-T0001", "A0002-T0001"


@pytest.fixture(scope="module")
def ds(tmp_path_factory, pki):
    return build_dataset(tmp_path_factory.mktemp("gw"), pki)


@pytest.fixture(scope="module")
def server(request, ds):
    return start_server(request, ds.root, ds.root.parent, "--rate-limit", "0")


@pytest.fixture
def api(server):
    client = Api(server.url)
    yield client
    client.close()


@pytest.fixture
def writer(ds):
    with WriterClient(ds.root / "run" / "writer.sock", timeout=30) as client:
        yield client


# --- operations endpoints ------------------------------------------------------------------


def test_health_ready_and_the_served_openapi_document(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["ready"] is True and ready["index_last_seq"] == ready["log_last_seq"] > 0
    assert api.get("/openapi.json").json() == OPENAPI


def test_metrics_count_requests_sessions_and_refusals(api, ds):
    api.sign_in(ds, A)
    api.get("/v1/status/M-001")  # no token: a refusal
    text = api.get("/metrics").text
    assert 'mykey_gateway_requests_total{endpoint="/v1/sessions",status="200"}' in text
    assert "mykey_gateway_request_duration_seconds_bucket" in text
    assert 'mykey_gateway_refusals_total{reason="token-missing"}' in text
    assert "mykey_gateway_index_lag_events 0.0" in text
    issued = [line for line in text.splitlines() if line.startswith("mykey_gateway_sessions_issued_total")]
    assert issued and float(issued[0].split()[-1]) >= 1


# --- sessions ----------------------------------------------------------------------------------


def test_session_token_is_bound_to_the_terminal_and_its_business(api, ds):
    before = int(time.time())
    resp = api.post("/v1/sessions", json=session_body(A, ds.key(A)))
    doc = resp.json()
    assert doc["business_id"] == "A0001"
    assert before + 300 <= doc["expires_at"] <= int(time.time()) + 300
    assert resp.headers["cache-control"] == "no-store"
    for sid in ("M-001", "M-002", "M-003", "SHARED", "NOPE"):
        got = api.get(f"/v1/status/{sid}", headers=bearer(doc["token"])).json()
        assert (got.pop("idx") is None) == (ds.expected[("A0001", sid)] == "unknown")  # its status list position
        assert got == {"service_id": sid, "status": ds.expected[("A0001", sid)]}


def test_sign_in_refusals(api, ds):
    key = ds.key(A)

    def sign_in(body, **kw):
        return api.post("/v1/sessions", json=body, **kw)

    wrong_key = session_body(A, ds.key(B))
    assert problem_kind(sign_in(wrong_key)) == "terminal-auth-failed"
    assert sign_in(wrong_key).status_code == 401
    assert problem_kind(sign_in(session_body("A0001-T0999", key))) == "terminal-auth-failed"
    stale = session_body(A, key, when=int(time.time()) - 3600)
    assert problem_kind(sign_in(stale)) == "terminal-auth-failed"
    once = session_body(A, key)
    assert sign_in(once).status_code == 200
    replay = sign_in(once)  # the same nonce again (maybe on the other worker): refused
    assert replay.status_code == 401 and "replay" in replay.json()["detail"]
    assert problem_kind(sign_in({**session_body(A, key), "nonce": "***"})) == "malformed-request"
    assert problem_kind(sign_in({**session_body(A, key), "nonce": "AAAA"})) == "malformed-request"  # 3 bytes
    assert problem_kind(sign_in({k: v for k, v in session_body(A, key).items() if k != "time"})) == "malformed-request"
    assert problem_kind(sign_in({**session_body(A, key), "extra": 1})) == "malformed-request"
    assert problem_kind(sign_in({**session_body(A, key), "time": "now"})) == "malformed-request"
    assert problem_kind(sign_in({**session_body(A, key), "terminal_id": "../etc"})) == "malformed-request"
    assert problem_kind(api.post("/v1/sessions", content=b"{not json", headers={"content-type": "application/json"})) \
        == "malformed-request"
    assert problem_kind(api.post("/v1/sessions", content=json.dumps(session_body(A, key)))) == "unsupported-media-type"


def test_oversized_bodies_are_refused_413(api, ds):
    big = json.dumps({"service_ids": ["x" * 30] * 3000}).encode()
    assert len(big) > MAX_JSON_BODY
    token = api.sign_in(ds, A)
    headers = {**bearer(token), "content-type": "application/json"}
    resp = api.post("/v1/status", content=big, headers=headers)
    assert resp.status_code == 413 and problem_kind(resp) == "body-too-large"

    def chunks():  # no Content-Length: refused while streaming
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    resp = api.post("/v1/status", content=chunks(), headers=headers)
    assert resp.status_code == 413 and problem_kind(resp) == "body-too-large"
    assert api.get("/healthz").status_code == 200


# --- tokens ---------------------------------------------------------------------------------------


def test_token_refusals(api, ds):
    resp = api.get("/v1/status/M-001")
    assert resp.status_code == 401 and problem_kind(resp) == "token-missing"
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert problem_kind(api.get("/v1/status/M-001", headers={"authorization": "Basic abc"})) == "token-missing"
    assert problem_kind(api.get("/v1/status/M-001", headers=bearer("garbage"))) == "token-invalid"
    token = api.sign_in(ds, B)
    version, terminal, _business, expires, mac = token.split(".")
    forged = ".".join([version, terminal, "A0001", expires, mac])  # B's token made to name A's business
    resp = api.get("/v1/status/M-001", headers=bearer(forged))
    assert resp.status_code == 401 and problem_kind(resp) == "token-invalid"
    longer = ".".join([version, terminal, _business, str(int(expires) + 3600), mac])
    assert problem_kind(api.get("/v1/status/M-001", headers=bearer(longer))) == "token-invalid"
    latin1 = {"authorization": f"Bearer {token}é".encode("latin-1")}  # a byte that is not ASCII
    assert problem_kind(api.get("/v1/status/M-001", headers=latin1)) in ("token-invalid", "token-missing")


# --- statuses and isolation -----------------------------------------------------------------------


def test_batch_answers_in_input_order(api, ds):
    token = api.sign_in(ds, A)
    ids = ["NOPE", "M-003", "M-001", "M-002", "M-001", "B-100", "SHARED"]
    resp = api.post("/v1/status", json={"service_ids": ids}, headers=bearer(token))
    got = [{k: v for k, v in item.items() if k != "idx"} for item in resp.json()["statuses"]]
    assert got == [{"service_id": s, "status": ds.expected[("A0001", s)]} for s in ids]
    full = [f"X{i}" for i in range(MAX_BATCH)]
    statuses = api.post("/v1/status", json={"service_ids": full}, headers=bearer(token)).json()["statuses"]
    assert [s["service_id"] for s in statuses] == full and {s["status"] for s in statuses} == {"unknown"}


@pytest.mark.parametrize(
    "body, words",
    [
        ({"service_ids": []}, "1-1000"),
        ({"service_ids": [f"X{i}" for i in range(MAX_BATCH + 1)]}, "1-1000"),
        ({"service_ids": ["ok", "has space"]}, "service_ids[1]"),
        ({"service_ids": ["ok", "x" * 33]}, "service_ids[1]"),
        ({"service_ids": ["ok", 5]}, "service_ids"),
        ({"service_ids": "M-001"}, "service_ids"),
        ({"ids": ["M-001"]}, "`ids`"),
        ({}, "service_ids"),
        ([1, 2], "object"),
    ],
)
def test_malformed_batches_are_400(api, ds, body, words):
    token = api.sign_in(ds, A)
    resp = api.post("/v1/status", json=body, headers=bearer(token))
    assert resp.status_code == 400 and problem_kind(resp) == "malformed-request"
    assert words in resp.json()["detail"]


def test_a_business_never_sees_another_business_s_ids(api, ds):
    for terminal, business in ((A, "A0001"), (B, "A0002")):
        token = api.sign_in(ds, terminal)
        for sid in ("SHARED", "B-100", "M-001", "C-1"):
            want = ds.expected.get((business, sid), "unknown")
            assert api.get(f"/v1/status/{sid}", headers=bearer(token)).json()["status"] == want
        batch = api.post("/v1/status", json={"service_ids": ["SHARED", "B-100", "M-001", "C-1"]}, headers=bearer(token))
        assert [s["status"] for s in batch.json()["statuses"]] == [
            ds.expected.get((business, sid), "unknown") for sid in ("SHARED", "B-100", "M-001", "C-1")
        ]


def test_path_service_ids_are_checked(api, ds):
    token = api.sign_in(ds, A)
    for path in ("/v1/status/", "/v1/status/has%20space", "/v1/status/" + "x" * 33, "/v1/status/%C3%A9"):
        resp = api.get(path, headers=bearer(token))
        assert resp.status_code == 400 and problem_kind(resp) == "malformed-request", path


def test_unknown_paths_and_methods(api, ds):
    resp = api.get("/nothing/here")
    assert resp.status_code == 404 and problem_kind(resp) == "not-found"
    resp = api.get("/v1/status")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST" and problem_kind(resp) == "method-not-allowed"
    resp = api.request("DELETE", "/v1/status/M-001")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET"
    for path in ("/v1/challenges", "/v1/identify", "/v1/links", "/v1/service-ids"):
        resp = api.post(path, json={})  # a terminal's endpoint without a token
        assert resp.status_code == 401 and problem_kind(resp) == "token-missing"
    resp = api.get("/v1/people/history")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"


# --- revocation and deactivation act at once ---------------------------------------------------------


def test_revoking_a_terminal_stops_its_token_at_once(api, ds, writer):
    terminal = "A0001-T0002"
    token = api.sign_in(ds, terminal)
    assert api.get("/v1/status/M-001", headers=bearer(token)).status_code == 200
    writer.call("revoke_terminal", terminal_id=terminal, reason="stolen")
    resp = api.get("/v1/status/M-001", headers=bearer(token))
    assert resp.status_code == 403 and problem_kind(resp) == "terminal-revoked"
    resp = api.post("/v1/sessions", json=session_body(terminal, ds.key(terminal)))
    assert resp.status_code == 403 and problem_kind(resp) == "terminal-revoked"
    resp = api.post("/v1/sessions", json=session_body(terminal, ds.key(A)))  # someone without its key
    assert resp.status_code == 401 and problem_kind(resp) == "terminal-auth-failed"


def test_deactivating_a_business_stops_its_terminals_at_once(api, ds, writer):
    terminal = "A0003-T0001"
    token = api.sign_in(ds, terminal)
    assert api.get("/v1/status/C-1", headers=bearer(token)).json()["status"] == "valid"
    writer.call("deactivate_business", business_id="A0003", reason="closed")
    resp = api.post("/v1/status", json={"service_ids": ["C-1"]}, headers=bearer(token))
    assert resp.status_code == 403 and problem_kind(resp) == "business-deactivated"
    resp = api.post("/v1/sessions", json=session_body(terminal, ds.key(terminal)))
    assert resp.status_code == 403 and problem_kind(resp) == "business-deactivated"


# --- the writer ----------------------------------------------------------------------------------


def test_writes_are_forwarded_to_the_single_writer(api, ds, writer):
    with pytest.raises(RegistrationNotAllowedError, match="may not register"):  # not enrolled --can-register
        writer.call("register_service_ids", actor=ev.Actor("terminal", A), business_id="A0001", rows=[["W-0", None]])
    actor = ev.Actor("terminal", "A0001-T0004")
    assert writer.call("register_service_ids", actor=actor, business_id="A0001",
                       rows=[["W-1", "cust-1"], ["W-2", None]]) == 2
    assert writer.call("service_status", business_id="A0001", service_id="W-1") == {
        "status": "unlinked", "customer_id": "cust-1"}
    token = api.sign_in(ds, A)
    assert api.get("/v1/status/W-2", headers=bearer(token)).json()["status"] == "unlinked"  # a worker sees it
    with pytest.raises(AlreadyExistsError, match="already registered"):
        writer.call("register_service_ids", business_id="A0001", rows=[["W-1", None]])
    with pytest.raises(NotFoundError):
        writer.call("revoke_terminal", terminal_id="A0001-T0999")
    with pytest.raises(GatewayProtocolError, match="no operation"):
        writer.call("drop_everything")
    last = writer.call("last_seq")
    with open_log(ds.root, readonly=True) as log:
        registered = [e for e in log.read(1) if isinstance(e.body, ev.ServiceIdRegistered) and e.body.service_id == "W-1"]
        assert log.last_seq == last
    assert registered[0].actor == actor  # recorded as the terminal's doing

    async def from_a_worker_loop():
        client = AsyncWriterClient(writer.socket_path)
        try:
            results = await asyncio.gather(*(
                client.call("register_service_ids", business_id="A0001", rows=[[f"W-async-{i}", None]])
                for i in range(5)
            ))
            status = await client.call("service_status", business_id="A0001", service_id="W-async-4")
        finally:
            client.close()
        return results, status

    results, status = asyncio.run(from_a_worker_loop())
    assert results == [1] * 5 and status["status"] == "unlinked"


def test_writer_refuses_a_second_gateway_on_the_same_data(ds, server, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mykey.gateway.writer", "--data", str(ds.root)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1 and "another gateway" in r.stderr


# --- the reference client ---------------------------------------------------------------------


def test_reference_client_status_lines(server, ds):
    cmd = [sys.executable, "-m", "mykey", "client", "--gateway", server.url, "--terminal", A,
           "--key", str(ds.keys[A]), "status"]
    r = subprocess.run([*cmd, "M-001"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "M-001 valid\n", r.stderr
    r = subprocess.run([*cmd, "M-002", "NOPE", "M-003"], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == ["M-002 suspended", "NOPE unknown", "M-003 unlinked"]
    r = subprocess.run([sys.executable, "-m", "mykey", "--json", *cmd[3:], "M-001"], capture_output=True,
                       text=True, timeout=60)
    answer = json.loads(r.stdout)  # with its position in the business's status list
    assert answer == {"service_id": "M-001", "status": "valid", "idx": answer["idx"]} and answer["idx"] >= 0
    r = subprocess.run([sys.executable, "-m", "mykey", "--json", *cmd[3:], "M-001", "NOPE"], capture_output=True,
                       text=True, timeout=60)
    both = [json.loads(line) for line in r.stdout.splitlines()]
    assert both == [answer, {"service_id": "NOPE", "status": "unknown", "idx": None}], r.stdout
    r = subprocess.run([*cmd[:9], str(ds.keys[B]), "status", "M-001"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "401" in r.stderr and not r.stdout


def test_client_escapes_url_syntax_in_service_ids(server, ds, writer):
    odd = ["a/b", "x%2Fy", "q?r", "h#i", "..", ".", "-_~.", "50%"]
    writer.call("register_service_ids", business_id="A0001", rows=[[sid, None] for sid in odd])
    with GatewayClient(server.url, A, ds.keys[A]) as gw:
        assert [gw.status(sid) for sid in odd] == ["unlinked"] * len(odd)
        assert gw.status("a") == "unknown"
        assert gw.statuses(odd) == [(sid, "unlinked") for sid in odd]


def test_client_signs_in_again_when_the_token_expired(server, ds):
    with GatewayClient(server.url, A, ds.keys[A]) as gw:
        assert gw.status("M-001") == "valid" and gw.sign_ins == 1
        assert gw.status("M-002") == "suspended" and gw.sign_ins == 1  # the token is kept
        good = gw.session
        gw.session = Session(good.token[:-2] + "AA", good.business_id, good.expires_at)  # the gateway refuses it
        assert gw.statuses(["M-001", "M-003"]) == [("M-001", "valid"), ("M-003", "unlinked")]
        assert gw.sign_ins == 2
        many = [f"Z{i}" for i in range(2500)]
        assert [s for _, s in gw.statuses(many)] == ["unknown"] * 2500  # three batches


def test_client_raises_the_gateway_s_refusal(server, ds):
    with GatewayClient(server.url, A, ds.keys[B]) as gw, pytest.raises(GatewayRefusedError) as exc:
        gw.status("M-001")
    assert exc.value.status == 401 and exc.value.problem["type"].endswith("terminal-auth-failed")


def test_many_concurrent_keep_alive_requests_all_succeed(server, ds, api):
    token = api.sign_in(ds, A)

    async def hammer():
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            async def one(i):
                sid = ("M-001", "M-002", "M-003", "NOPE")[i % 4]
                r = await http.get(f"/v1/status/{sid}", headers=bearer(token))
                return r.status_code, r.json()["status"], sid
            return await asyncio.gather(*(one(i) for i in range(400)))

    for code, status, sid in asyncio.run(hammer()):
        assert code == 200 and status == ds.expected[("A0001", sid)]


def test_every_problem_kind_is_in_the_document():
    from mykey.gateway.problems import KINDS, TYPE_PREFIX

    documented = set(OPENAPI["components"]["schemas"]["Problem"]["properties"]["type"]["enum"])
    assert documented == {TYPE_PREFIX + kind for kind in KINDS}


def test_every_route_is_in_the_document():
    from mykey.gateway.app import EXACT_ROUTES, STATUS_ROUTE

    served = {(path, method.lower()) for path, (_, methods) in EXACT_ROUTES.items() for method in methods}
    served |= {(STATUS_ROUTE[0], m.lower()) for m in STATUS_ROUTE[1]}
    documented = {(path, method) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert served == documented


def test_server_log_has_no_tracebacks(server):
    wait_for(lambda: Path(server.log_path).exists(), 5, "the log")
    assert "Traceback" not in server.log()
