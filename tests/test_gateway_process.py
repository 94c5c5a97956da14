"""The gateway as processes: a SIGKILLed worker is replaced, SIGTERM / Ctrl-C / SIGKILL of the server
leave no process behind, /readyz follows the log, token expiry and the per-terminal rate limit."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from mykey.domain import events as ev
from mykey.errors import LockHeldError, WriterUnavailableError
from mykey.gateway.writer import WriterClient
from mykey.log.backend import open_log

from tests.test_gateway_support import (
    Api,
    bearer,
    build_dataset,
    group_members,
    problem_kind,
    start_server,
    wait_for,
)

A = "A0001-T0001"


@pytest.fixture(scope="module")
def ds(tmp_path_factory, pki):
    return build_dataset(tmp_path_factory.mktemp("gwp"), pki)


def test_a_sigkilled_worker_is_replaced_and_no_request_fails(request, ds):
    server = start_server(request, ds.root, ds.root.parent, "--rate-limit", "0", workers=2)
    api = Api(server.url)
    token = api.sign_in(ds, A)
    before = wait_for(lambda: len(server.workers()) == 2 and server.workers(), 20, "two workers")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (w := server.workers()) and len(w) == 2 and victim not in w and w, 20,
                     "the killed worker's replacement")
    assert len(after - before) == 1
    wait_for(lambda: api.get("/readyz").status_code == 200, 20, "readiness")
    # After the replacement: fresh connections and keep-alive ones, spread over both workers.
    with httpx.Client(base_url=server.url, timeout=10, headers={"connection": "close"}) as fresh:
        for i in range(200):  # a new connection each time: the kernel spreads them over the workers
            assert fresh.get("/v1/status/M-001", headers=bearer(token)).json()["status"] == "valid", i
            assert api.get("/v1/status/M-002", headers=bearer(token)).json()["status"] == "suspended", i
    assert server.proc.poll() is None
    assert "Respawning worker" in server.log()
    api.close()


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_stop_leaves_no_process_and_no_files(request, ds, how):
    server = start_server(request, ds.root, ds.root.parent, workers=2)
    api = Api(server.url)
    token = api.sign_in(ds, A)
    assert api.get("/v1/status/M-001", headers=bearer(token)).status_code == 200
    members = group_members(server.pgid)
    assert len(members) == 4  # server, writer, two workers
    if how == "sigterm":
        server.signal(signal.SIGTERM)
    else:  # Ctrl-C: the terminal sends SIGINT to every process of the foreground group
        os.killpg(server.pgid, signal.SIGINT)
    assert server.wait_exit() == 0
    server.wait_group_empty()
    assert not (ds.root / "run" / "writer.sock").exists()
    assert list(server.tmp.iterdir()) == []  # the metrics directory is gone
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)
    assert "Traceback" not in server.log()
    api.close()


def test_sigterm_with_a_client_connected_to_the_writer_logs_no_traceback(request, ds):
    """A connection to the writer's socket that is open when the writer stops ends quietly."""
    import socket

    server = start_server(request, ds.root, ds.root.parent, workers=1)
    sock_path = ds.root / "run" / "writer.sock"
    wait_for(sock_path.exists, 20, "the writer's socket")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(sock_path))
        client.sendall(b"\0")  # the writer is now reading a message from this connection
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        server.wait_group_empty()
    finally:
        client.close()
    assert "Traceback" not in server.log() and "CancelledError" not in server.log()


def test_sigkill_of_the_server_leaves_no_orphans(request, ds):
    server = start_server(request, ds.root, ds.root.parent, workers=2)
    assert len(group_members(server.pgid)) == 4
    server.signal(signal.SIGKILL)
    server.wait_exit()
    server.wait_group_empty()  # workers and writer got SIGTERM from the kernel (parent death signal)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)


def test_readyz_reports_an_index_behind_the_log(request, ds):
    server = start_server(request, ds.root, ds.root.parent, "--writer-idle", "0.2", workers=1)
    api = Api(server.url)
    assert api.get("/readyz").status_code == 200

    def log_free():  # the writer lets go of the log when idle
        try:
            return open_log(ds.root)
        except LockHeldError:
            return None

    log = wait_for(log_free, 20, "the writer to let go of the log")
    try:  # an event in the log that no index has applied (as if a projector were behind)
        log.append([ev.BusinessRegistered("Z0001", "Appended behind the index", "131016")],
                   ev.Actor("operator", "test"))
        last = log.last_seq
    finally:
        log.close()
    resp = api.get("/readyz")
    assert resp.status_code == 503 and problem_kind(resp) == "not-ready"
    assert resp.json()["log_last_seq"] == last and resp.json()["index_last_seq"] == last - 1
    assert "mykey_gateway_index_lag_events 1.0" in api.get("/metrics").text
    with WriterClient(ds.root / "run" / "writer.sock") as writer:
        assert writer.call("last_seq") == last  # opening the Engine applies what the index lacks
    assert api.get("/readyz").json() == {"ready": True, "index_last_seq": last, "log_last_seq": last}
    api.close()


def test_tokens_expire(request, ds):
    server = start_server(request, ds.root, ds.root.parent, "--token-ttl", "1", workers=1)
    api = Api(server.url)
    token = api.sign_in(ds, A)
    issued = time.time()
    first = api.get("/v1/status/M-001", headers=bearer(token))
    if time.time() - issued < 0.5:  # (a loaded machine may take longer than the lifetime)
        assert first.status_code == 200
    resp = wait_for(lambda: (r := api.get("/v1/status/M-001", headers=bearer(token))).status_code == 401 and r,
                    10, "the token to expire", interval=0.2)
    assert problem_kind(resp) == "token-expired" and 'error="invalid_token"' in resp.headers["www-authenticate"]
    api.close()


def test_a_terminal_over_its_rate_limit_gets_429(request, ds):
    server = start_server(request, ds.root, ds.root.parent, "--rate-limit", "0.5", "--burst", "3", workers=1)
    api = Api(server.url)
    token = api.sign_in(ds, A)
    codes = [api.get("/v1/status/M-001", headers=bearer(token)).status_code for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    resp = api.get("/v1/status/M-001", headers=bearer(token))
    assert resp.status_code == 429 and problem_kind(resp) == "rate-limited"
    assert int(resp.headers["retry-after"]) >= 1
    other = api.sign_in(ds, "A0002-T0001")  # another terminal has its own bucket
    assert api.get("/v1/status/B-100", headers=bearer(other)).status_code == 200
    assert 'mykey_gateway_refusals_total{reason="rate-limited"}' in api.get("/metrics").text
    api.close()


def test_a_writer_that_dies_is_started_again(request, ds):
    server = start_server(request, ds.root, ds.root.parent, workers=1)
    first = wait_for(server.writer_pid, 10, "the writer")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (pid := server.writer_pid()) not in (None, first) and pid, 20, "a new writer")

    def answers():
        try:
            with WriterClient(ds.root / "run" / "writer.sock") as writer:
                return writer.call("ping")["pid"] == second
        except WriterUnavailableError:
            return False

    wait_for(answers, 30, "the new writer to answer")
    assert "starting it again" in server.log()
