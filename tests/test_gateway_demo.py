"""`mykey demo` ends with a tour of the terminal gateway: a real `mykey serve` driven by the reference client
(sign-in, identify, a first-use link, status lookups, a refusal, another business, a person's proven history),
always stopped, nothing left running."""

from __future__ import annotations

from mykey_dev.demo import DemoConfig, format_result, run_demo

TINY = DemoConfig(businesses=2, terminals_per_business=1, users=12, rsa_users=1, service_ids=300,
                  links_per_user=2, lookups=1000, lookup_batch=1000)


def test_the_demo_drives_a_real_gateway_and_stops_it(tmp_path):
    res = run_demo(tmp_path / "demo", TINY)
    text = "\n".join(res.gateway)
    assert res.gateway[0].startswith("mykey serve on http://127.0.0.1:")
    assert "signed in (Ed25519)" in text
    assert "identify (a card taps the reader): " in text
    new = next(line for line in res.gateway if line.startswith("first-use link"))
    assert new.split(": ")[1].startswith("valid")
    sid = new.split()[5]
    again = next(line for line in res.gateway if line.startswith("identify again: "))
    assert f"{sid} valid" in again.split(": ")[1].split(", ")
    assert f"status lookups: {sid} valid, " in text and "NOT-REGISTERED unknown" in text
    assert "refused (403 mykey-not-valid)" in text
    elsewhere = next(line for line in res.gateway if line.startswith("the same card at"))
    assert sid not in elsewhere and elsewhere.endswith(f"none of {sid[3:-1]}'s")
    history = next(line for line in res.gateway if line.startswith("the person's own history"))
    events, proven = history.split(": ")[1].split(" events, ")
    assert int(proven.split()[0]) == int(events) > 0  # every event proven, checked offline
    assert f"by your card (relayed by terminal {res.gateway[1].split()[1]})" in text
    assert res.gateway[-1] == "gateway stopped with SIGTERM: exit code 0, no process left"
    assert "the terminal gateway, driven by the reference client" in format_result(res)
    assert not list((tmp_path / "demo" / "run").glob("*.sock"))
