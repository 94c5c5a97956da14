"""The demo (mykey_dev.demo, `mykey demo`) at a tiny size: every phase runs, the terminal
authenticates through mykey.auth.terminals (not through the Engine) and its lookups get
the statuses the platform holds."""

from __future__ import annotations

import json

from mykey.auth.terminals import TerminalAuthenticator
from mykey.cli import main
from mykey.engine.engine import Engine
from mykey_dev.demo import DemoConfig, run_demo

TINY = DemoConfig(businesses=2, terminals_per_business=1, users=12, rsa_users=1, service_ids=300,
                  links_per_user=2, lookups=3000, lookup_batch=1000)
PHASES = [
    "trust: throwaway root + intermediate CA",
    "the design's example table",
    "businesses and terminals",
    "users create MyKey IDs (cert chain + signature)",
    "bulk import of service IDs (CSV, all or nothing)",
    "users link service IDs",
    "suspensions, an invalidation, a renewal",
    "CRL: verify, record revocations, suspend",
    "terminal authenticates, resolves a random batch",
]


def test_a_tiny_demo_authenticates_through_the_terminal_authenticator(tmp_path, monkeypatch):
    # The demo must not need the Engine's own terminal authentication (it is leaving the Engine).
    monkeypatch.delattr(Engine, "authenticate_terminal", raising=False)
    accepted = []
    original = TerminalAuthenticator.authenticate

    def authenticate(self, terminal_id, message, signature, **kw):
        business = original(self, terminal_id, message, signature, **kw)
        accepted.append((terminal_id, business))
        return business

    monkeypatch.setattr(TerminalAuthenticator, "authenticate", authenticate)
    res = run_demo(tmp_path / "demo", TINY)
    assert [p.name for p in res.phases] == PHASES
    assert len(accepted) == 1 and accepted[0][1] != ""
    assert (tmp_path / "demo" / "auth-nonces").exists()  # the nonce was recorded for every gateway process
    assert sum(res.status_counts.values()) == TINY.lookups and res.lookups_per_second > 0
    assert {"unknown", "unlinked", "valid"} <= set(res.status_counts)
    assert [row[2:4] for row in res.example_table] == [
        ("A0001", "123456"), ("B2108", "578901"), ("A0001", "111111"), ("B2108", "589000")]
    assert res.last_seq > TINY.service_ids and res.index_bytes > 0 and res.log_bytes > 0
    assert res.checkpoint.splitlines()[1] == str(res.last_seq)  # the signed checkpoint covers every event


def test_mykey_demo_command(tmp_path, capsys):
    data = tmp_path / "demo"
    args = ["demo", "--data", str(data), "--businesses", "2", "--users", "10", "--service-ids", "200",
            "--lookups", "2000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mykey demo in {data}") and "terminal authenticates, resolves a random batch" in out
    assert "the design's example table, built with real commands:" in out
    assert out.rstrip().splitlines()[-1].startswith("demo done: ")
    assert "\\u000a" not in out and "\nthe design's example table" in out  # real lines, not escaped ones
    assert main([*args, "--json"]) == 0  # a second run replaces the first demo's directory
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and [p["name"] for p in doc["phases"]] == PHASES
    assert sum(doc["statuses"].values()) == 2000
