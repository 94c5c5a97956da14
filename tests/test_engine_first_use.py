"""First-use registration is the business's choice (BusinessRegistered v2), a terminal registers service IDs
only with the right to, the engine owns the machine's challenge store, a worker reads snapshots through its
Resolver, and a person's history reads the same through a snapshot the caller holds."""

from __future__ import annotations

import json

import msgspec
import pytest
from mykey.audit.history import describe_event, history_from, subject_history
from mykey.auth.challenges import LmdbChallengeStore, open_challenge_store
from mykey.cli import main
from mykey.client import keys as terminal_keys
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.engine import Engine
from mykey.errors import RegistrationNotAllowedError
from mykey.index import keys as k
from mykey.log.backend import open_log

from tests.conftest import create_user, engine_resolver, link_card


def test_a_v1_business_registration_reads_as_one_allowing_first_use():
    body = ["biz.registered", "A0001", "Library", "131016", True]
    record = msgspec.msgpack.encode([3, 1_700_000_000_000_000, ["operator", "op"], 1, body])
    env = ev.decode_envelope(record)
    assert env.v == ev.BusinessRegistered.VERSION == 2
    assert env.body == ev.BusinessRegistered("A0001", "Library", "131016", True, True)
    shortest = msgspec.msgpack.encode([3, 1_700_000_000_000_000, ["operator", "op"], 1, body[:4]])
    assert ev.decode_envelope(shortest).body == ev.BusinessRegistered("A0001", "Library", "131016", False, True)
    old = msgspec.msgpack.encode(["Library", "131016", False, True, 2])  # an index record without the flag
    assert k.decode(k.BusinessRecord, old) == k.BusinessRecord("Library", "131016", False, True, 2, True)


def test_a_business_without_first_use_registration_links_only_its_own_ids(engine, pki):
    closed = engine.register_business("Clinic", "131016", first_use_registration=False)
    open_ = engine.register_business("Library", "131016")
    with engine.read_model.snapshot() as state:
        assert state.business(closed).first_use_registration is False
        assert state.business(open_).first_use_registration is True
    mykey_id, cred = create_user(engine, pki)
    before = engine.log.last_seq
    with pytest.raises(RegistrationNotAllowedError, match="not registered at business"):
        link_card(engine, pki, cred, closed, "K-1")
    with pytest.raises(RegistrationNotAllowedError):
        engine.link_in_person(closed, "K-1", mykey_id, "passport checked")
    assert engine.log.last_seq == before
    engine.register_service_ids(closed, [("K-1", None)])
    assert link_card(engine, pki, cred, closed, "K-1").label == "valid"
    assert link_card(engine, pki, cred, open_, "L-1").label == "valid"  # registered at first use
    with pytest.raises(Exception, match="True or False"):
        engine.register_business("Odd", "131016", first_use_registration="no")


def test_a_terminal_registers_service_ids_only_with_the_right_to(engine, tmp_path):
    bid = engine.register_business("Library", "131016")
    other = engine.register_business("Gym", "131016")
    _, plain_pub = terminal_keys.write_key_pair(tmp_path / "plain.key")
    _, reg_pub = terminal_keys.write_key_pair(tmp_path / "reg.key")
    plain = engine.enrol_terminal(bid, plain_pub.read_bytes())
    reg = engine.enrol_terminal(bid, reg_pub.read_bytes(), can_register=True)
    csv = tmp_path / "rows.csv"
    csv.write_text("service_id,customer_id\nR-1,\nR-2,c\n")
    with pytest.raises(RegistrationNotAllowedError, match="may not register"):
        engine.import_service_ids_csv(bid, csv, actor=ev.Actor("terminal", plain))
    with pytest.raises(Exception, match="not enrolled at business"):
        engine.import_service_ids_csv(other, csv, actor=ev.Actor("terminal", reg))
    assert engine.import_service_ids_csv(bid, csv, actor=ev.Actor("terminal", reg), name="the upload") == 2
    csv.write_text("service_id,customer_id\nR-3,\nR-1,\n")
    with pytest.raises(Exception, match="^the upload: line 3: service ID 'R-1' is already registered"):
        engine.import_service_ids_csv(bid, csv, actor=ev.Actor("terminal", reg), name="the upload")
    engine.revoke_terminal(reg)
    with pytest.raises(Exception, match="revoked"):
        engine.register_service_ids(bid, [("R-9", None)], actor=ev.Actor("terminal", reg))


def test_business_add_no_first_use(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert main(["--data", data, "init"]) == 0
    capsys.readouterr()
    assert main(["--data", data, "--json", "business", "add", "--name", "Clinic", "--municipality", "131016",
                 "--no-first-use"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["business_id"], out["first_use_registration"]) == ("A0001", False)
    with Engine.open(data) as engine, engine.read_model.snapshot() as state:
        assert state.business("A0001").first_use_registration is False


def test_the_engine_owns_the_machine_s_challenge_store(tmp_path):
    with Engine.open(tmp_path / "data") as engine:
        assert isinstance(engine.challenges, LmdbChallengeStore)
        challenge = engine.new_challenge()
        store = engine.challenges
        with open_challenge_store(tmp_path / "data") as elsewhere:  # another process's share of the store
            elsewhere.consume(challenge, "create")
        with pytest.raises(Exception, match="already used"):
            store.consume(challenge, "create")
    with pytest.raises(Exception, match="closed"):
        store.issue("create")


def test_resolver_snapshots_read_the_view_it_answers_from(engine, pki):
    bid = engine.register_business("Library", "131016")
    mykey_id, cred = create_user(engine, pki)
    link_card(engine, pki, cred, bid, "L-1")
    with engine_resolver(engine) as resolver, resolver.snapshot() as state:
        assert state.last_seq == resolver.last_seq == engine.log.last_seq
        assert [sid for sid, _ in state.linked_service_ids(mykey_id, bid)] == ["L-1"]
        assert state.mykey_links(mykey_id) == [(bid, "L-1")]
        assert state.mykey_event_seqs(mykey_id) == sorted(state.mykey_event_seqs(mykey_id))


def test_history_from_a_held_snapshot_equals_the_audit_command_s(tmp_path, pki):
    data = DataDir(tmp_path / "data")
    with Engine.open(data.root) as engine:
        engine.add_trust_anchor(pki.root.cert_pem())
        engine.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = engine.register_business("Library", "131016")
        mykey_id, cred = create_user(engine, pki)
        link_card(engine, pki, cred, bid, "L-1")
        engine.link_in_person(bid, "L-2", mykey_id, "passport checked")
        engine.trail.checkpoint()
        with engine_resolver(engine) as resolver, open_log(data, readonly=True) as log:
            held = history_from(resolver, log, data, mykey_id)
    assert held == subject_history(data, mykey_id)
    assert all(e["proof"] for e in held["events"])
    what = [e["what"] for e in held["events"] if e["type"] == "svc.linked"]
    assert what[0].endswith("linked to your MyKey ID by your card (relayed by operator " + engine.operator.id + ")")
    assert what[1].endswith("by an operator who checked you in person: passport checked")
    old = ev.ServiceIdLinked(bid, "L-3", mykey_id)
    assert describe_event(old).endswith("(what authorised it was not recorded)")
