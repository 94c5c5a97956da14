"""Bulk registration over HTTP (POST /v1/service-ids) against a real `mykey serve` with one worker: all or
nothing, the first bad line named, only for terminals enrolled --can-register, and streamed: a 1,000,000-row
body never sits in the worker's memory (its peak RSS grows by far less than the body)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from mykey.client.gateway import GatewayClient
from mykey.errors import GatewayRefusedError
from mykey.gateway.app import MAX_CSV_BODY
from mykey.gateway.writer import WriterClient

from tests.test_gateway_support import (
    Api,
    bearer,
    build_dataset,
    check_against_openapi,
    problem_kind,
    start_server,
)

A, REG = "A0001-T0001", "A0001-T0004"  # REG was enrolled --can-register
HEADER = b"service_id,customer_id\n"


@pytest.fixture(scope="module")
def ds(tmp_path_factory, pki):
    return build_dataset(tmp_path_factory.mktemp("gwcsv"), pki)


@pytest.fixture(scope="module")
def server(request, ds):
    return start_server(request, ds.root, ds.root.parent, "--rate-limit", "0", workers=1)


@pytest.fixture
def api(server):
    client = Api(server.url)
    yield client
    client.close()


def upload(api, token, body: bytes, ctype="text/csv"):
    return api.post("/v1/service-ids", content=body, headers={**bearer(token), "content-type": ctype})


def uploads_left(ds) -> list:
    return sorted((ds.root / "run").glob("upload-*"))


def test_a_registering_terminal_registers_a_csv(api, ds):
    token = api.sign_in(ds, REG)
    resp = upload(api, token, HEADER + b"R-1,cust-1\nR-2,\n\nR-3,cust-3\r\n")
    assert resp.status_code == 201 and resp.json() == {"registered": 3}
    statuses = api.post("/v1/status", json={"service_ids": ["R-1", "R-2", "R-3"]}, headers=bearer(token)).json()
    assert {s["status"] for s in statuses["statuses"]} == {"unlinked"}
    with WriterClient(ds.root / "run" / "writer.sock", timeout=30) as writer:
        assert writer.call("service_status", business_id="A0001", service_id="R-1")["customer_id"] == "cust-1"
    assert uploads_left(ds) == []


@pytest.mark.parametrize(
    "rows, status, kind, line",
    [
        (b"OK-1,\nbad id,\nOK-2,\n", 400, "malformed-request", 3),
        (b"OK-1,\nOK-2,\nOK-1,\n", 409, "conflict", 4),  # twice in the file
        (b"OK-1,\nM-001,\n", 409, "conflict", 3),  # already registered
        (b"OK-1,\nOK-2,x,y\n", 400, "malformed-request", 3),
        (b"OK-1,\nOK-2,\nOK-3,caf\xc3\xa9\n", 400, "malformed-request", 4),  # not ASCII
        (b"OK-1,\n" + b"x" * 40 + b",\n", 400, "malformed-request", 3),  # too long
    ],
)
def test_a_bad_line_refuses_the_whole_file_and_is_named(api, ds, rows, status, kind, line):
    token = api.sign_in(ds, REG)
    resp = upload(api, token, HEADER + rows)
    assert resp.status_code == status and problem_kind(resp) == kind, resp.text
    assert resp.json()["line"] == line and f"line {line}" in resp.json()["detail"]
    assert str(ds.root) not in resp.text  # the upload's file name never shows
    assert api.get("/v1/status/OK-1", headers=bearer(token)).json()["status"] == "unknown"  # all or nothing
    assert uploads_left(ds) == []


def test_bulk_registration_refusals(api, ds, server):
    token = api.sign_in(ds, A)
    resp = upload(api, token, HEADER + b"X-1,\n")
    assert resp.status_code == 403 and problem_kind(resp) == "registration-not-allowed"
    reg = api.sign_in(ds, REG)
    resp = upload(api, reg, HEADER + b"X-1,\n", ctype="application/json")
    assert resp.status_code == 415 and problem_kind(resp) == "unsupported-media-type"
    resp = upload(api, reg, b"")
    assert resp.status_code == 400 and "empty" in resp.json()["detail"]
    resp = upload(api, reg, b"id,customer\nX-1,\n")
    assert resp.status_code == 400 and resp.json()["line"] == 1
    resp = api.post("/v1/service-ids", content=HEADER, headers={"content-type": "text/csv"})
    assert resp.status_code == 401 and problem_kind(resp) == "token-missing"
    # A Content-Length over the limit is refused before any of the body is read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            f"POST /v1/service-ids HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reg}\r\n"
            f"Content-Type: text/csv\r\nContent-Length: {MAX_CSV_BODY + 1}\r\n\r\n".encode()
        )
        answer = s.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413") and "body-too-large" in answer
    assert api.get("/healthz").status_code == 200 and uploads_left(ds) == []


def test_reference_client_registers_a_file(server, ds, tmp_path):
    path = tmp_path / "members.csv"
    path.write_bytes(HEADER + b"".join(b"CLI-%d,c%d\n" % (i, i) for i in range(50)))
    cmd = [sys.executable, "-m", "mykey", "client", "--gateway", server.url, "--terminal", REG,
           "--key", str(ds.keys[REG]), "register", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "registered 50 service IDs for A0001\n", r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "409" in r.stderr and "line 2" in r.stderr
    with GatewayClient(server.url, A, ds.keys[A]) as gw, pytest.raises(GatewayRefusedError) as exc:
        gw.register_service_ids(path)
    assert exc.value.status == 403


ROWS = 1_000_000


def test_a_million_rows_are_streamed_not_held(api, ds, server):
    """The worker copies the body to a file chunk by chunk: its peak RSS grows by far less than the body."""
    (worker,) = server.workers()
    proc = psutil.Process(worker)

    def peak() -> int:  # VmHWM: the worker's peak resident set since it started
        return proc.memory_full_info().rss if sys.platform != "linux" else _vmhwm(worker)

    token = api.sign_in(ds, REG)
    for i in range(3):  # warm the request path (allocator pools, imports) before the baseline
        assert upload(api, token, HEADER + b"WARM-%d,\n" % i).status_code == 201
    before = peak()
    size = len(HEADER) + ROWS * len(b"S0000000,C0000000\n")
    chunk_rows = 20_000

    def body():
        for start in range(0, ROWS, chunk_rows):
            if start == 0:
                yield HEADER
            yield b"".join(b"S%07d,C%07d\n" % (i, i) for i in range(start, start + chunk_rows))

    t = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=120) as http:  # the writer takes seconds on a loaded machine
        resp = http.post("/v1/service-ids", content=body(),
                         headers={**bearer(token), "content-type": "text/csv", "content-length": str(size)})
    took = time.monotonic() - t
    check_against_openapi(resp)
    assert resp.status_code == 201 and resp.json() == {"registered": ROWS}, resp.text
    grew = peak() - before
    assert grew < size / 4, f"the worker's peak RSS grew by {grew} bytes for a {size}-byte body"
    assert took < 60
    got = api.post("/v1/status", json={"service_ids": ["S0000000", "S0999999", "S1000000"]}, headers=bearer(token))
    assert [s["status"] for s in got.json()["statuses"]] == ["unlinked", "unlinked", "unknown"]
    assert uploads_left(ds) == []


def _vmhwm(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")
