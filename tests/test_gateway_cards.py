"""The card flows over HTTP against a real `mykey serve` (2 workers): challenges, identify, first-use
links, the person's own history, and every refusal; every response checked against the OpenAPI document."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading

import httpx
import pytest
from mykey.auth.challenges import open_challenge_store
from mykey.client.gateway import Card, GatewayClient, PersonClient, check_history
from mykey.domain import events as ev
from mykey.errors import GatewayRefusedError, ProofError
from mykey.log.backend import open_log

from tests.test_gateway_support import (
    Api,
    bearer,
    build_dataset,
    problem_kind,
    start_server,
    wait_for,
)

A, A2, B, CLINIC = "A0001-T0001", "A0001-T0002", "A0002-T0001", "A0004-T0001"


@pytest.fixture(scope="module")
def ds(tmp_path_factory, pki):
    """The gateway dataset, plus: A0004 (no first-use registration), people with known cards, a checkpoint."""
    from mykey.client import keys as terminal_keys
    from mykey.engine import Engine

    root = tmp_path_factory.mktemp("gwc")
    ds = build_dataset(root, pki)
    with Engine.open(ds.root, checkpoint_on_close=True) as engine:
        assert engine.register_business("Clinic", "131016", first_use_registration=False) == "A0004"
        path, pub = terminal_keys.write_key_pair(root / "clinic.key")
        ds.keys[engine.enrol_terminal("A0004", pub.read_bytes())] = path
        engine.register_service_ids("A0004", [("K-1", None)])
        for name, cred in (("alice", pki.user()), ("newbie", pki.user()), ("rsa", pki.rsa_user())):
            challenge = engine.new_challenge()
            ds.people[name] = (engine.create_mykey(pki.chain(cred), cred.sign(challenge), challenge), cred)
        engine.link_in_person("A0001", "AL-1", ds.people["alice"][0], "passport checked")
        engine.link_in_person("A0002", "R-1", ds.people["rsa"][0], "passport checked")
    ds.people["nobody"] = ("", pki.user())  # a genuine card with no MyKey ID
    ds.people["untrusted"] = ("", pki.other.issue_user())  # a card from a CA the platform does not trust
    ds.pki = pki
    return ds


@pytest.fixture(scope="module")
def server(request, ds):
    return start_server(request, ds.root, ds.root.parent, "--rate-limit", "0", "--people-rate", "0")


@pytest.fixture
def api(server):
    client = Api(server.url)
    yield client
    client.close()


def card(ds, who: str) -> Card:
    cred = ds.people[who][1]
    return Card(ds.pki.chain(cred), cred.sign)


def challenge(api, token, purpose="identify", service_id=None) -> bytes:
    body = {"purpose": purpose} if service_id is None else {"purpose": purpose, "service_id": service_id}
    resp = api.post("/v1/challenges", json=body, headers=bearer(token))
    assert resp.status_code == 200, resp.text
    return resp.json()["challenge"].encode()


def identify(api, token, body):
    return api.post("/v1/identify", json=body, headers=bearer(token))


# --- challenges -------------------------------------------------------------------------------------


def test_challenges_are_bound_to_the_terminal_business_and_purpose(api, ds):
    token = api.sign_in(ds, A)
    doc = api.post("/v1/challenges", json={"purpose": "identify"}, headers=bearer(token)).json()
    assert doc["challenge"].startswith("mykey:identify:A0001:A0001-T0001:")
    link = api.post("/v1/challenges", json={"purpose": "link", "service_id": "NEW-1"}, headers=bearer(token)).json()
    assert link["challenge"].startswith("mykey:link:A0001:A0001-T0001:NEW-1:")
    assert doc["challenge"] != link["challenge"] and doc["expires_at"] > 0


@pytest.mark.parametrize(
    "body, words",
    [
        ({"purpose": "create"}, "purpose"),
        ({"purpose": "history"}, "purpose"),
        ({"purpose": "link"}, "service_id"),
        ({"purpose": "identify", "service_id": "X-1"}, "names no service_id"),
        ({"purpose": "link", "service_id": "has space"}, "service_id"),
        ({"purpose": "link", "service_id": "123456789018"}, "Individual Number"),  # a valid check digit
        ({"purpose": "identify", "terminal_id": A2}, "terminal_id"),
        ({}, "purpose"),
    ],
)
def test_malformed_challenge_requests_are_400(api, ds, body, words):
    token = api.sign_in(ds, A)
    resp = api.post("/v1/challenges", json=body, headers=bearer(token))
    assert resp.status_code == 400 and problem_kind(resp) == "malformed-request"
    assert words in resp.json()["detail"]


# --- identify ------------------------------------------------------------------------------------------


def test_identify_answers_this_business_s_service_ids_and_never_the_mykey_id(api, ds):
    valid_id, cred = ds.people["valid"]
    for terminal, want in ((A, [("M-001", "valid"), ("SHARED", "valid")]), (B, [("B-100", "valid")])):
        token = api.sign_in(ds, terminal)
        ch = challenge(api, token)
        resp = identify(api, token, card(ds, "valid").proof(ch))
        assert resp.status_code == 200
        assert [(s["service_id"], s["status"]) for s in resp.json()["service_ids"]] == want
        assert valid_id not in resp.text
    token = api.sign_in(ds, B)  # an RSA card
    assert _no_idx(identify(api, token, card(ds, "rsa").proof(challenge(api, token))).json()) == {
        "service_ids": [{"service_id": "R-1", "status": "valid"}]}


def test_a_person_identified_at_business_a_is_invisible_to_business_b(api, ds):
    alice = card(ds, "alice")
    token_a, token_b = api.sign_in(ds, A), api.sign_in(ds, B)
    seen_a = identify(api, token_a, alice.proof(challenge(api, token_a))).json()
    assert _no_idx(seen_a) == {"service_ids": [{"service_id": "AL-1", "status": "valid"}]}
    seen_b = identify(api, token_b, alice.proof(challenge(api, token_b)))
    assert seen_b.status_code == 200 and seen_b.json() == {"service_ids": []}
    assert api.get("/v1/status/AL-1", headers=bearer(token_b)).json()["status"] == "unknown"
    # A's challenge, signed by alice, relayed by B's terminal: refused, and it tells B nothing.
    stolen = alice.proof(challenge(api, token_a))
    resp = identify(api, token_b, stolen)
    assert resp.status_code == 403 and problem_kind(resp) == "challenge-invalid"
    assert "AL-1" not in resp.text and ds.people["alice"][0] not in resp.text


def test_identify_refusals(api, ds):
    token, other = api.sign_in(ds, A), api.sign_in(ds, A2)

    def refused(body, kind, status=403, tok=token, words=""):
        resp = identify(api, tok, body)
        assert resp.status_code == status and problem_kind(resp) == kind, resp.text
        assert words in resp.json()["detail"]
        for mykey_id, _cred in ds.people.values():
            assert not mykey_id or mykey_id not in resp.text
        return resp

    refused(card(ds, "suspended").proof(challenge(api, token)), "mykey-not-valid", words="suspended")
    refused(card(ds, "nobody").proof(challenge(api, token)), "card-refused", words="no MyKey ID")
    refused(card(ds, "untrusted").proof(challenge(api, token)), "card-refused")
    forged = card(ds, "valid").proof(challenge(api, token))
    forged["signature"] = base64.b64encode(ds.people["valid"][1].sign(b"something else")).decode()
    refused(forged, "card-refused", words="signature")
    # Single use: a used challenge, even after a refusal, is refused.
    once = card(ds, "valid").proof(challenge(api, token))
    assert identify(api, token, once).status_code == 200
    refused(once, "challenge-invalid", words="already used")
    refused(forged, "challenge-invalid")
    # Issued to another terminal of the same business, or for another purpose: refused (and used up).
    theirs = card(ds, "valid").proof(challenge(api, other))
    refused(theirs, "challenge-invalid", words="terminal A0001-T0002")
    refused(theirs, "challenge-invalid", tok=other)  # discarded by the misuse: not usable by its own terminal
    refused(card(ds, "valid").proof(challenge(api, token, "link", "L-9")), "challenge-invalid", words="link")
    refused(card(ds, "valid").proof(b"mykey:identify:A0001:A0001-T0001:" + b"0" * 64), "challenge-invalid")
    refused(card(ds, "valid").proof(b"not a challenge"), "challenge-invalid")
    # Malformed bodies.
    good = card(ds, "valid").proof(challenge(api, token))
    refused({**good, "signature": "***"}, "malformed-request", 400)
    refused({**good, "certificate": "é"}, "malformed-request", 400)
    refused({k: v for k, v in good.items() if k != "challenge"}, "malformed-request", 400)
    refused({**good, "mykey_id": "X"}, "malformed-request", 400)
    refused({**good, "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            "card-refused")
    resp = api.post("/v1/identify", content=b"{", headers={**bearer(token), "content-type": "application/json"})
    assert resp.status_code == 400 and problem_kind(resp) == "malformed-request"
    resp = api.post("/v1/identify", json={**good, "certificate": "x" * 70_000}, headers=bearer(token))
    assert resp.status_code == 413 and problem_kind(resp) == "body-too-large"
    resp = api.post("/v1/identify", json=good)  # no token
    assert resp.status_code == 401 and problem_kind(resp) == "token-missing"
    assert api.get("/healthz").status_code == 200


def test_a_challenge_is_used_once_across_processes_and_workers(api, ds, server):
    token = api.sign_in(ds, A)
    valid = card(ds, "valid")
    # Used up by another process (here: this test, through the machine's shared store): refused.
    taken = challenge(api, token)
    with open_challenge_store(ds.root) as store:
        store.consume(taken, "identify")
    resp = identify(api, token, valid.proof(taken))
    assert resp.status_code == 403 and problem_kind(resp) == "challenge-invalid"
    # The same proof sent at once on two fresh connections (two workers): exactly one succeeds.
    for _ in range(8):
        body = valid.proof(challenge(api, token))
        codes: list[int] = []

        def send():
            with httpx.Client(base_url=server.url, timeout=30, headers={"connection": "close"}) as http:
                codes.append(http.post("/v1/identify", json=body, headers=bearer(token)).status_code)

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(codes) == [200, 403]


# --- first-use links ------------------------------------------------------------------------------------


def link(api, token, who_card, service_id, ch=None):
    ch = ch if ch is not None else challenge(api, token, "link", service_id)
    return api.post("/v1/links", json={**who_card.proof(ch), "service_id": service_id}, headers=bearer(token))


def test_first_use_link_registers_and_links_by_the_card(api, ds):
    token = api.sign_in(ds, A)
    newbie_id, _ = ds.people["newbie"]
    resp = link(api, token, card(ds, "newbie"), "NEW-1")
    assert resp.status_code == 201 and resp.json() == {"service_id": "NEW-1", "status": "valid"}
    assert newbie_id not in resp.text
    assert api.get("/v1/status/NEW-1", headers=bearer(token)).json()["status"] == "valid"
    ch = challenge(api, token)
    assert _no_idx(identify(api, token, card(ds, "newbie").proof(ch)).json()) == {
        "service_ids": [{"service_id": "NEW-1", "status": "valid"}]}
    again = link(api, token, card(ds, "newbie"), "NEW-1")  # the same person again: nothing changes
    assert again.status_code == 201 and again.json()["status"] == "valid"
    registered = link(api, token, card(ds, "newbie"), "M-003")  # registered by the business, unlinked
    assert registered.status_code == 201
    with open_log(ds.root, readonly=True) as log:
        links = [e for e in log.read(1) if isinstance(e.body, ev.ServiceIdLinked) and e.body.service_id == "NEW-1"]
    assert len(links) == 1
    assert links[0].actor == ev.Actor("user", newbie_id)  # the person's own act ...
    assert links[0].body.authority == "card" and links[0].body.relayed_by == f"terminal:{A}"  # ... relayed by A


def test_link_refusals(api, ds):
    token = api.sign_in(ds, A)
    newbie = card(ds, "newbie")

    def refused(resp, kind, status=403, words=""):
        assert resp.status_code == status and problem_kind(resp) == kind, resp.text
        assert words in resp.json()["detail"]
        for mykey_id, _cred in ds.people.values():
            assert not mykey_id or mykey_id not in resp.text

    refused(link(api, token, newbie, "M-001"), "conflict", 409, "already linked")  # someone else's
    refused(link(api, token, card(ds, "suspended"), "SUS-1"), "mykey-not-valid", words="suspended")
    refused(link(api, token, card(ds, "nobody"), "NB-1"), "card-refused")
    refused(link(api, token, card(ds, "untrusted"), "UT-1"), "card-refused")
    other = challenge(api, token, "link", "OTHER-1")  # a challenge naming another service ID
    refused(link(api, token, newbie, "NEW-2", ch=other), "challenge-invalid", words="OTHER-1")
    refused(link(api, token, newbie, "NEW-2", ch=challenge(api, token)), "challenge-invalid", words="identify")
    refused(link(api, token, newbie, "NEW-2", ch=challenge(api, api.sign_in(ds, A2), "link", "NEW-2")),
            "challenge-invalid", words="terminal")
    used = challenge(api, token, "link", "NEW-3")
    assert link(api, token, newbie, "NEW-3", ch=used).status_code == 201
    refused(link(api, token, newbie, "NEW-3", ch=used), "challenge-invalid", words="already used")
    resp = api.post("/v1/links", json={**newbie.proof(challenge(api, token, "link", "N-4")), "service_id": "a b"},
                    headers=bearer(token))
    refused(resp, "malformed-request", 400)
    # A business without first-use registration: its own IDs link, unknown ones are refused.
    clinic = api.sign_in(ds, CLINIC)
    refused(link(api, clinic, newbie, "K-2"), "registration-not-allowed", words="not registered")
    assert api.get("/v1/status/K-2", headers=bearer(clinic)).json()["status"] == "unknown"
    ok = link(api, clinic, newbie, "K-1")
    assert ok.status_code == 201 and ok.json() == {"service_id": "K-1", "status": "valid"}


def test_a_revoked_terminal_cannot_relay_a_card(api, ds):
    from mykey.gateway.writer import WriterClient

    terminal = "A0001-T0003"
    token = api.sign_in(ds, terminal)
    ch = challenge(api, token, "link", "REV-1")
    with WriterClient(ds.root / "run" / "writer.sock", timeout=30) as writer:
        writer.call("revoke_terminal", terminal_id=terminal, reason="stolen")
    resp = link(api, token, card(ds, "newbie"), "REV-1", ch=ch)
    assert resp.status_code == 403 and problem_kind(resp) == "terminal-revoked"


# --- the person's own view ----------------------------------------------------------------------------------


def history(api, who_card, ch=None):
    if ch is None:
        resp = api.post("/v1/people/challenges")
        assert resp.status_code == 200, resp.text
        ch = resp.json()["challenge"].encode()
        assert ch.startswith(b"mykey:history:")
    return api.post("/v1/people/history", json=who_card.proof(ch))


def test_a_person_sees_their_own_history_with_proofs_and_nothing_else(api, ds):
    valid_id, _ = ds.people["valid"]
    resp = history(api, card(ds, "valid"))
    assert resp.status_code == 200
    h = resp.json()
    assert h["mykey_id"] == valid_id and h["state"] == "valid"
    assert h["businesses"] == ["A0001", "A0002", "A0003"]
    assert {(x["business_id"], x["service_id"]) for x in h["links"]} == {
        ("A0001", "M-001"), ("A0001", "SHARED"), ("A0002", "B-100"), ("A0003", "C-1")}
    assert h["events"][0]["type"] == "mk.created"
    linked = [e for e in h["events"] if e["type"] == "svc.linked"]
    assert linked and all("by an operator who checked you in person: seen in person" in e["what"] for e in linked)
    for other, _ in (ds.people[n] for n in ("suspended", "alice", "newbie", "rsa")):
        assert other not in resp.text  # nothing about anyone else
    assert all(e["proof"] for e in h["events"])  # the fixture signed a checkpoint over everything
    lines = check_history(h, ds.root / "keys" / "checkpoint.vkey")
    assert len(lines) == len(h["events"]) and all("OK inclusion" in line for line in lines)


def test_a_suspended_person_still_sees_their_history(api, ds):
    resp = history(api, card(ds, "suspended"))
    assert resp.status_code == 200
    h = resp.json()
    assert h["state"] == "suspended" and h["reason"] == "reported lost"
    assert [e["type"] for e in h["events"]][-1] == "mk.suspended"


def test_history_refusals(api, ds):
    resp = history(api, card(ds, "nobody"))
    assert resp.status_code == 404 and problem_kind(resp) == "not-found"
    resp = history(api, card(ds, "untrusted"))
    assert resp.status_code == 403 and problem_kind(resp) == "card-refused"
    token = api.sign_in(ds, A)
    resp = history(api, card(ds, "valid"), ch=challenge(api, token))  # a terminal's identify challenge
    assert resp.status_code == 403 and problem_kind(resp) == "challenge-invalid"
    ch = api.post("/v1/people/challenges").json()["challenge"].encode()
    assert history(api, card(ds, "valid"), ch=ch).status_code == 200
    resp = history(api, card(ds, "valid"), ch=ch)
    assert resp.status_code == 403 and problem_kind(resp) == "challenge-invalid"
    # A person's history challenge cannot identify anyone at a terminal.
    ch = api.post("/v1/people/challenges").json()["challenge"].encode()
    resp = identify(api, token, card(ds, "valid").proof(ch))
    assert resp.status_code == 403 and problem_kind(resp) == "challenge-invalid"
    resp = api.post("/v1/people/history", json={"certificate": "x"})
    assert resp.status_code == 400 and problem_kind(resp) == "malformed-request"


def test_history_proofs_catch_a_gateway_that_lies(api, ds):
    h = history(api, card(ds, "valid")).json()
    vkey = ds.root / "keys" / "checkpoint.vkey"
    check_history(h, vkey)
    shown = json.loads(json.dumps(h))
    shown["events"][0]["body"]["cert_serial"] = "ff"  # a field changed: the proven leaf says otherwise
    with pytest.raises(ProofError, match="another event"):
        check_history(shown, vkey)
    swapped = json.loads(json.dumps(h))
    swapped["events"][0]["proof"], swapped["events"][1]["proof"] = h["events"][1]["proof"], h["events"][0]["proof"]
    with pytest.raises(ProofError):
        check_history(swapped, vkey)
    dropped = json.loads(json.dumps(h))
    dropped["events"][1]["proof"] = None  # covered by the checkpoint, but no proof
    with pytest.raises(ProofError, match="no proof"):
        check_history(dropped, vkey)
    from mykey.audit.checkpoint import generate_signing_key, verifier_key

    stranger = verifier_key("mykey/stranger", generate_signing_key().public_key())
    with pytest.raises(ProofError):
        check_history(h, stranger)


def test_new_events_get_proofs_once_the_writer_signs_a_checkpoint(server, ds):
    """After a link through the gateway, the writer signs a checkpoint when it goes idle; then it is proven."""
    newbie_id, _ = ds.people["newbie"]
    with GatewayClient(server.url, A, ds.keys[A]) as gw:
        assert gw.link("FRESH-1", card(ds, "newbie")) == "valid"
    vkey = ds.root / "keys" / "checkpoint.vkey"

    def proven():
        with PersonClient(server.url) as me:
            h = me.history(card(ds, "newbie"))
        fresh = [e for e in h["events"] if e["type"] == "svc.linked" and e["body"]["service_id"] == "FRESH-1"]
        return h if fresh and fresh[0]["proof"] else None

    h = wait_for(proven, 30, "a checkpoint covering the new link", interval=0.25)
    assert h["mykey_id"] == newbie_id
    assert any("by your card (relayed by terminal A0001-T0001)" in e["what"] for e in h["events"])
    assert all(line.startswith("seq") for line in check_history(h, vkey))


# --- the reference client ----------------------------------------------------------------------------------------


def test_reference_client_identify_link_and_history(server, ds, tmp_path):
    cert, key = ds.people["alice"][1].write(tmp_path, "alice")
    chain = tmp_path / "alice-chain.pem"
    chain.write_bytes(ds.pki.chain(ds.people["alice"][1]))
    base = [sys.executable, "-m", "mykey", "client", "--gateway", server.url]
    term = [*base, "--terminal", A, "--key", str(ds.keys[A])]
    cardargs = ["--cert", str(chain), "--card-key", str(key)]

    def run(*args):
        return subprocess.run([*args], capture_output=True, text=True, timeout=60)

    r = run(*term, "identify", *cardargs)
    assert r.returncode == 0 and r.stdout == "AL-1 valid\n", r.stderr
    r = run(*term, "link", "AL-2", *cardargs)
    assert r.returncode == 0 and "linked service ID AL-2 of A0001" in r.stdout, r.stderr
    r = run(*term, "identify", *cardargs)
    assert r.stdout.splitlines() == ["AL-1 valid", "AL-2 valid"]
    b = [*base, "--terminal", B, "--key", str(ds.keys[B])]
    r = run(*b, "identify", *cardargs)
    assert r.returncode == 0 and "no service ID at A0002" in r.stdout
    r = run(*base, "history", *cardargs, "--checkpoint-key", str(ds.root / "keys" / "checkpoint.vkey"))
    assert r.returncode == 0, r.stderr
    assert f"MyKey ID {ds.people['alice'][0]}: valid" in r.stdout
    assert "checked offline" in r.stdout and "AL-2" in r.stdout
    r = run(*base, "identify", *cardargs)  # a terminal command without the terminal
    assert r.returncode == 1 and "--terminal" in r.stderr
    r = run(*term, "link", "M-001", *cardargs)
    assert r.returncode == 1 and "409" in r.stderr and "already linked" in r.stderr


def test_client_raises_problem_json_for_card_refusals(server, ds):
    with GatewayClient(server.url, A, ds.keys[A]) as gw, pytest.raises(GatewayRefusedError) as exc:
        gw.identify(card(ds, "suspended"))
    assert exc.value.status == 403 and exc.value.problem["type"].endswith("mykey-not-valid")


# --- the person's endpoints are limited per client address ------------------------------------------------------


def test_people_are_rate_limited_per_address_and_forwarded_for_counts_only_from_the_proxy(request, ds):
    server = start_server(request, ds.root, ds.root.parent, "--people-rate", "0.01", "--people-burst", "2",
                          "--trusted-proxy", "127.0.0.2", workers=1)
    direct = Api(server.url)
    proxy = Api(server.url)
    proxy.http = httpx.Client(base_url=server.url, timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    try:
        def ask(api, forwarded=None):
            headers = {"x-forwarded-for": forwarded} if forwarded else {}
            return api.post("/v1/people/challenges", headers=headers).status_code

        # A peer that is not the proxy: its own address counts, whatever X-Forwarded-For claims.
        assert [ask(direct, f"198.51.100.{i}") for i in range(3)] == [200, 200, 429]
        resp = direct.post("/v1/people/challenges")
        assert problem_kind(resp) == "rate-limited" and int(resp.headers["retry-after"]) >= 1
        # The proxy: the address it forwards counts (the rightmost one that is not a proxy).
        assert [ask(proxy, "198.51.100.7") for _ in range(3)] == [200, 200, 429]
        assert ask(proxy, "198.51.100.8") == 200
        assert ask(proxy, "203.0.113.1, 198.51.100.8") == 200
        assert ask(proxy, "198.51.100.8, 127.0.0.2") == 429  # the proxy itself is skipped
        for _ in range(2):  # history requests count as well
            resp = proxy.post("/v1/people/history", json=card(ds, "valid").proof(b"x"),
                              headers={"x-forwarded-for": "198.51.100.20"})
            assert problem_kind(resp) == "challenge-invalid"
        assert ask(proxy, "198.51.100.20") == 429
        token = direct.sign_in(ds, A)  # terminals are not limited by the person's limit
        assert direct.get("/v1/status/M-001", headers=bearer(token)).status_code == 200
    finally:
        direct.close()
        proxy.close()


def test_client_address_parsing():
    from mykey.gateway.app import client_address

    class Scope:
        def __init__(self, client, forwarded=()):
            self.client = client
            self.headers = type("H", (), {"items": lambda _self: [("X-Forwarded-For", f) for f in forwarded]})()

    proxies = frozenset({"10.0.0.1", "::1"})
    assert client_address(Scope("192.0.2.1:5555", ["198.51.100.1"]), proxies) == "192.0.2.1"
    assert client_address(Scope("10.0.0.1:5555", ["198.51.100.1, 203.0.113.9"]), proxies) == "203.0.113.9"
    assert client_address(Scope("10.0.0.1:5555", ["198.51.100.1", "203.0.113.9, 10.0.0.1"]), proxies) == "203.0.113.9"
    assert client_address(Scope("10.0.0.1:5555"), proxies) == "10.0.0.1"
    assert client_address(Scope("[::1]:5555", ["2001:db8::7"]), proxies) == "2001:db8::7"
    assert client_address(Scope("[::1]:5555", ["[2001:db8:0::7]:80"]), proxies) == "2001:db8::7"
    assert client_address(Scope("10.0.0.1:5555", ["not an address"]), proxies) == "not an address"


def _no_idx(doc: dict) -> dict:
    """An identify answer without the status list positions (each a non-negative integer)."""
    assert all(isinstance(item["idx"], int) and item["idx"] >= 0 for item in doc["service_ids"])
    return {"service_ids": [{k: v for k, v in item.items() if k != "idx"} for item in doc["service_ids"]]}
