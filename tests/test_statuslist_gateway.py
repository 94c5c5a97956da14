"""Status lists over HTTP (a real `mykey serve` on loopback) and the terminal's offline check."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from mykey.cli import main
from mykey.domain import statuslist as sl

from tests import test_gateway as gw
from tests.test_gateway_support import bearer, problem_kind

# The gateway tests' data set, server and client fixtures (module-scoped: this module gets its own).
A, B = gw.A, gw.B
ds, server, api = gw.ds, gw.server, gw.api


def _list(api, ds, terminal):
    token = api.sign_in(ds, terminal)
    resp = api.get("/v1/status-list", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    return token, resp


def test_a_terminal_gets_its_business_list_signed_and_cacheable(api, ds):
    token, resp = _list(api, ds, A)
    assert resp.headers["content-type"] == "application/statuslist+jwt"
    assert resp.headers["cache-control"].endswith("max-age=60")
    etag = resp.headers["etag"]
    assert etag == sl.etag(resp.content)
    jwks = api.get("/.well-known/jwks.json").json()  # no token needed
    assert jwks == json.loads((ds.root / "keys" / "status-list.jwks.json").read_text())
    v = sl.verify(resp.content, jwks, now=time.time(), sub=sl.list_uri("A0001"))
    assert v.entries == sl.MIN_ENTRIES and v.ttl == 60 and v.exp - v.iat == 86_400
    sids = [sid for (bid, sid) in ds.expected if bid == "A0001"]
    answers = api.post("/v1/status", json={"service_ids": sids}, headers=bearer(token)).json()["statuses"]
    for a in answers:
        if ds.expected[("A0001", a["service_id"])] == "unknown":
            assert a["idx"] is None
        else:
            assert v.status(a["idx"]).label == a["status"] == ds.expected[("A0001", a["service_id"])]
    one = api.get("/v1/status/M-002", headers=bearer(token)).json()
    assert one["idx"] == next(a["idx"] for a in answers if a["service_id"] == "M-002")
    # every worker serves the same bytes: a conditional request answers 304 whichever worker takes it
    with httpx.Client(base_url=api.http.base_url, timeout=10) as raw:
        for _ in range(6):
            again = raw.get("/v1/status-list", headers={**bearer(token), "if-none-match": etag})
            assert again.status_code == 304 and again.headers["etag"] == etag and again.content == b""


def test_business_b_cannot_get_business_as_list(api, ds):
    _token_a, resp_a = _list(api, ds, A)
    token_b, resp_b = _list(api, ds, B)
    jwks = api.get("/.well-known/jwks.json").json()
    v = sl.verify(resp_b.content, jwks, now=time.time())
    assert v.sub == sl.list_uri("A0002") and resp_b.content != resp_a.content
    with pytest.raises(Exception):
        sl.verify(resp_b.content, jwks, now=time.time(), sub=sl.list_uri("A0001"))
    # the list is the token's business's: no path or parameter names another one
    other = api.get("/v1/status-list/A0001", headers=bearer(token_b))
    assert other.status_code == 404
    assert api.get("/v1/status-list?business=A0001", headers=bearer(token_b)).content == resp_b.content
    refused = api.get("/v1/status-list")
    assert refused.status_code == 401 and problem_kind(refused) == "token-missing"


def test_the_reference_client_fetches_and_checks_offline(server, ds, tmp_path, capsys):
    out = tmp_path / "a.jwt"
    base = ["client", "--gateway", server.url, "--terminal", A, "--key", str(ds.keys[A])]
    assert main([*base, "status-list", "fetch", "--out", str(out), "M-001", "M-002", "M-003", "NOPE"]) == 0
    capsys.readouterr()
    assert main(["client", "status-list", "check", str(out), "M-001", "M-002", "M-003", "NOPE"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["M-001", "valid"], ["M-002", "suspended"], ["M-003", "unlinked"], ["NOPE", "unknown"]
    ]
    idx = json.loads(out.with_name("a.jwt.idx.json").read_text())["idx"]
    assert set(idx) == {"M-001", "M-002", "M-003"}
    assert main(["client", "--json", "status-list", "check", str(out), f"X={idx['M-002']}"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "suspended"
    # a tampered list is refused with its own error and exit 1
    h, p, s = out.read_text().split(".")
    claims = json.loads(sl.unb64u(p))
    claims["status_list"]["lst"] = sl.b64u(sl.compress(bytes(sl.MIN_ENTRIES // 4)))
    out.write_text(".".join([h, sl.b64u(json.dumps(claims).encode()), s]))
    assert main(["client", "--json", "status-list", "check", str(out), "M-002"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "StatusListSignatureError"


def test_status_list_build_offline_matches_the_served_list(server, ds, tmp_path, capsys):
    out = tmp_path / "built.jwt"
    assert main(["--data", str(ds.root), "--json", "status-list", "build", "A0001", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sub"] == "urn:mykey:status-list:A0001" and doc["without_position"] == 0
    jwks = json.loads((ds.root / "keys" / "status-list.jwks.json").read_text())
    v = sl.verify(out.read_bytes(), jwks, now=time.time(), sub=sl.list_uri("A0001"))
    assert main(["--data", str(ds.root), "--json", "resolve", "A0001", "M-002"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert v.status(answer["idx"]).label == answer["status"] == "suspended"
    assert main(["--data", str(ds.root), "status-list", "build", "Z9999", "--out", str(out)]) == 1
