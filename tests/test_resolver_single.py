"""Resolver.resolve, one service ID at a time, through the lookups each view keeps bound per business."""

from __future__ import annotations

import pytest
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.domain.status import Status
from mykey.errors import LmdbError, ValidationError
from mykey.index import resolver as resolver_mod
from mykey.index.resolver import Resolver
from mykey.index.store import Index, rebuild
from mykey.log.filelog import FileLog

OP = ev.Actor("operator", "test")
BUSINESSES = [f"A{i:04d}" for i in range(1, 13)]


def build(tmp_path, binding) -> DataDir:
    """Twelve businesses; business i has service IDs S1..Si (all UNLINKED)."""
    data = DataDir(tmp_path)
    log = FileLog.open(data.log)
    log.append([ev.BusinessRegistered(b, "Shop", "131016") for b in BUSINESSES], OP)
    log.append([ev.ServiceIdRegistered(b, f"S{j}") for i, b in enumerate(BUSINESSES, 1) for j in range(1, i + 1)], OP)
    with Index.open(data, binding=binding) as idx:
        idx.catch_up(log)
    log.close()
    return data


class Bid(str):
    """A str subclass that claims to equal any business ID."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("A0001")


def test_many_businesses_beyond_the_kept_bindings(tmp_path, binding, monkeypatch):
    """More businesses than a view keeps bound: each still answers for its own IDs only."""
    monkeypatch.setattr(resolver_mod, "_ONES_KEPT", 3)
    data = build(tmp_path, binding)
    asked = [f"S{j}" for j in range(0, 14)] + ["", "é", "S1 "]
    with Resolver.open(data.root, binding=binding) as r:
        for _ in range(2):
            for i, b in enumerate(BUSINESSES, 1):
                want = [Status.UNLINKED if s in {f"S{j}" for j in range(1, i + 1)} else Status.UNKNOWN
                        for s in asked]
                assert [r.resolve(b, s) for s in asked] == want == r.resolve_statuses(b, asked), b
                assert [r.resolve(b, s.encode("utf-8")) for s in asked] == want
        assert len(r._view.ones) <= 3


def test_a_str_posing_as_a_business_is_refused(tmp_path, binding):
    data = build(tmp_path, binding)
    with Resolver.open(data.root, binding=binding) as r:
        assert r.resolve("A0001", "S1") == Status.UNLINKED  # A0001's lookup is bound now
        for _ in range(2):
            with pytest.raises(ValidationError):
                r.resolve(Bid("A0012"), "S12")
        with pytest.raises(TypeError):
            r.resolve("A0001", 5)


def test_a_rebuilt_index_answers_through_new_bindings(tmp_path, binding):
    """After a rebuild the new view binds afresh; the old view's bindings end with its reader."""
    data = build(tmp_path, binding)
    with Resolver.open(data.root, binding=binding) as r:
        assert r.resolve("A0002", "S2") == Status.UNLINKED
        old = r._view
        old_one = old.ones["A0002"]
        log = FileLog.open(data.log)
        log.append([ev.ServiceIdRegistered("A0002", "S9")], OP)
        rebuild(data, log, binding=binding)
        log.close()
        assert r.reopen_if_rebuilt()
        assert r._view is not old and r._view.ones == {}
        assert r.resolve("A0002", "S9") == Status.UNLINKED and r.resolve("A0002", "S2") == Status.UNLINKED
        assert old_one(b"S2") == Status.UNLINKED  # still usable in its grace period
        r._close_retired(0)
        with pytest.raises(LmdbError, match="closed"):
            old_one(b"S2")
