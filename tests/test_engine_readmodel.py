"""The engine's read model: named answers from one read transaction, and the data directory's subject key."""

from __future__ import annotations

import pytest
from mykey.datadir import DataDir, ensure_subject_key
from mykey.domain.status import MyKeyState, Status
from mykey.engine import Engine
from mykey.errors import KeyFileError
from mykey.index.readmodel import CertHolder, ReadModel

from .conftest import create_user, link_card


def test_a_snapshot_answers_by_name(engine, pki):
    bid = engine.register_business("Library", "131016")
    mk, cred = create_user(engine, pki)
    engine.register_service_ids(bid, [("S1", "C1"), ("S2", None)])
    link_card(engine, pki, cred, bid, "S1")
    engine.register_consumer("points", "131016")
    engine.ack("points", 3)
    serial = format(cred.serial, "x")
    with engine.read_model.snapshot() as s:
        assert s.last_seq == engine.log.last_seq
        rec = s.mykey(mk)
        assert rec.state is MyKeyState.VALID and rec.cert_serial == serial
        assert s.mykey("ABCDEFGH") is None and s.mykey_exists(mk) and not s.mykey_exists("ABCDEFGH")
        assert [m for m, _ in s.mykeys()] == [mk]
        svc = s.service(bid, "S1")
        assert (svc.status, svc.customer_id, svc.linked) == (Status.VALID, "C1", True)
        assert s.mykey_by_ref(svc.ref) == mk
        assert s.service(bid, "S3") is None and s.registered(bid, ["S2", "S3", "S1"]) == [True, False, True]
        assert s.linked_businesses(mk) == [bid]
        assert s.business_ids() == [bid] and s.business(bid).active
        assert s.current_holder(rec.cert_issuer, serial) == mk
        holders = list(s.certificate_holders(rec.cert_issuer, serial, rec.cert_fingerprint))
        assert holders == [CertHolder(mk, MyKeyState.VALID)] * 2  # by issuer+serial and by fingerprint
        assert not s.replaced_by_renewal(rec.cert_issuer, serial) and not s.is_revoked(rec.cert_issuer, serial)
        cas = s.trusted_cas()
        assert len(cas.anchors) == 1 and cas.intermediates == s.intermediates() and len(cas.intermediates) == 1
        assert s.feed_position("points") == 3 and s.feed_position("nobody") == 0


def test_a_snapshot_sees_one_state_while_commands_commit(engine):
    bid = engine.register_business("Library", "131016")
    with engine.read_model.snapshot() as s:
        before = s.last_seq
        engine.register_service_ids(bid, [("S1", None)])
        engine.deactivate_business(bid, "closed")
        assert s.last_seq == before and s.service(bid, "S1") is None and s.business(bid).active
    with engine.read_model.snapshot() as s:
        assert s.service(bid, "S1") is not None and not s.business(bid).active


def test_the_live_index_read_only(tmp_path, binding):
    data = DataDir(tmp_path / "data")
    assert ReadModel.open_live(data) is None  # no index yet
    with Engine.open(data.root, binding=binding, audit=False) as e:
        e.register_business("Library", "131016")
        e.register_consumer("points", "131016")
        e.ack("points", 1)
    model = ReadModel.open_live(data, binding=binding)
    with model, model.snapshot() as s:
        assert s.feed_position("points") == 1 and s.business_ids() == ["A0001"]
    assert model.env is None  # closed: it opened the environment itself


def test_the_subject_key_is_made_once_and_checked(tmp_path):
    data = DataDir(tmp_path / "data")
    key = ensure_subject_key(data)
    assert len(key) == 32 and ensure_subject_key(data) == key
    (data.keys / "subject.key").write_bytes(b"short")
    with pytest.raises(KeyFileError, match="restore it from your backup"):
        ensure_subject_key(data)
