"""The index store: its databases, its writer lock, and the projector's log."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import textwrap
from dataclasses import fields

import lmdb
import pytest
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.domain.status import Status
from mykey.errors import IndexLockedError
from mykey.index import keys as k
from mykey.index.projector import run_projector
from mykey.index.resolver import Resolver
from mykey.index.store import Index, current_generation, rebuild
from mykey.log.filelog import FileLog

OP = ev.Actor("operator", "test")


def test_one_list_of_databases(tmp_path, binding):
    """Dbs's fields are the databases: an index holds exactly those, and DB_NAMES follows them."""
    assert k.DB_NAMES == tuple(f.name.encode() for f in fields(k.Dbs))
    assert len(set(k.DB_NAMES)) == len(k.DB_NAMES) and k.MAX_DBS > len(k.DB_NAMES)
    data = DataDir(tmp_path)
    with Index.open(data, binding=binding) as idx:
        assert [getattr(idx.dbs, f.name) for f in fields(k.Dbs)] == [idx.env.open_db(n) for n in k.DB_NAMES]
    # The named databases as LMDB lists them (keys of the unnamed main database), read with
    # py-lmdb directly once the index is closed.
    env = lmdb.open(str(current_generation(data)), readonly=True, lock=False, max_dbs=k.MAX_DBS)
    try:
        with env.begin() as txn:
            names = [key for key, _ in txn.cursor()]
    finally:
        env.close()
    assert sorted(names) == sorted(k.DB_NAMES)


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from mykey.fs import OwnerLock
    lock = OwnerLock.acquire(sys.argv[1])
    print("held", flush=True)
    sys.stdin.read()
    """
)


def test_index_lock_held_by_another_process_names_it(tmp_path, binding):
    data = DataDir(tmp_path)
    data.root.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(data.root / "index.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexLockedError, match=rf"pid {holder.pid}\b.*stop it first"):
            Index.open(data, binding=binding)
        log = FileLog.open(data.log)
        try:
            with pytest.raises(IndexLockedError, match=str(holder.pid)):
                rebuild(data, log, binding=binding)
        finally:
            log.close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with Index.open(data, binding=binding) as idx:  # free again once the holder is gone
        assert idx.last_seq == 0
        with pytest.raises(IndexLockedError, match=str(os.getpid())):
            Index.open(data, binding=binding)  # one writer per data directory, even in one process
    Index.open(data, binding=binding).close()  # closing released it


def test_index_lock_failing_for_another_reason_is_not_reported_as_held(tmp_path, binding, monkeypatch):
    """Only "somebody holds it" errnos mean another writer; others (here ENOLCK) are raised as they are."""

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError) as info:
        Index.open(DataDir(tmp_path), binding=binding)
    assert info.value.errno == errno.ENOLCK
    assert not isinstance(info.value, IndexLockedError)


def test_projector_reads_the_log_the_data_directory_is_configured_with(tmp_path, binding, monkeypatch):
    """The projector opens the log through mykey.log.backend (MYKEY_LOG), not DATA/log by hand."""
    elsewhere = tmp_path / "elsewhere-log"
    log = FileLog.open(elsewhere)
    log.append([ev.BusinessRegistered("A0001", "Lib", "131016")], OP)
    log.append([ev.ServiceIdRegistered("A0001", f"S{i}") for i in range(3)], OP)
    log.close()
    monkeypatch.setenv("MYKEY_LOG", f"file://{elsewhere}")
    data = DataDir(tmp_path / "data")
    assert run_projector(data, binding=binding) == 4
    assert not data.log.exists()
    with Resolver.open(data.root, binding=binding) as r:
        assert r.last_seq == 4
        assert r.resolve_statuses("A0001", ["S0", "S2", "S3"]) == [Status.UNLINKED, Status.UNLINKED, Status.UNKNOWN]


def test_an_index_of_the_previous_layout_is_refused_until_rebuilt(tmp_path, binding, monkeypatch, capsys):
    """Older layouts kept MyKey links and registration seqs in svc's values: such an index is
    refused (writer and readers alike) with the way out, and `mykey rebuild` is that way."""
    from mykey.cli import main
    from mykey.errors import IndexError_

    data = DataDir(tmp_path)
    log = FileLog.open(data.log)
    log.append([ev.BusinessRegistered("A0001", "Lib", "131016")], OP)
    log.append([ev.ServiceIdRegistered("A0001", f"S{i}") for i in range(3)], OP)
    old = tmp_path / "index-000001"  # as an older mykey left it: no svcrec, 17-byte values
    env = binding.Env(str(old), max_dbs=k.MAX_DBS)
    meta, svc = env.open_db(b"meta"), env.open_db(b"svc")
    with env.begin(write=True) as txn:
        txn.put(meta, b"schema", k.u64(k.INDEX_SCHEMA - 1))
        txn.put(meta, b"last_seq", k.u64(4))
        txn.put(svc, b"A0001S0", b"\x04" + bytes(16))
    env.close()
    os.symlink(old.name, tmp_path / "index")
    with pytest.raises(IndexError_, match=rf"index schema {k.INDEX_SCHEMA - 1} is not {k.INDEX_SCHEMA} .*run `mykey rebuild`"):
        Index.open(data, binding=binding)
    with pytest.raises(IndexError_, match="run `mykey rebuild`"):
        Resolver.open(data.root, binding=binding)
    log.close()
    monkeypatch.setenv("MYKEY_PURE", "1" if binding.NAME == "pure" else "0")
    assert main(["resolve", "A0001", "S0", "--data", str(data.root)]) != 0
    assert "run `mykey rebuild`" in capsys.readouterr().err
    assert main(["rebuild", "--data", str(data.root)]) == 0
    with Resolver.open(data.root, binding=binding) as r:
        assert r.last_seq == 4
        assert r.resolve_statuses("A0001", ["S0", "S2", "S3"]) == [Status.UNLINKED, Status.UNLINKED, Status.UNKNOWN]
    with Index.open(data, binding=binding) as idx:
        assert idx.last_seq == 4


def test_rebuild_repacks_a_bulk_import_into_full_pages(tmp_path, binding):
    """Imports that land in the middle of the keys leave pages part empty; rebuild writes
    every database afresh in key order, so the hot database's pages come out full."""
    import random

    rnd = random.Random(4)
    data = DataDir(tmp_path)
    log = FileLog.open(data.log)
    log.append([ev.BusinessRegistered("A0001", "Lib", "131016")], OP)
    ids = [f"{rnd.getrandbits(40):011x}" for _ in range(30_000)]
    with Index.open(data, binding=binding) as idx:
        for part in (ids[:15_000], ids[15_000:]):  # the second import interleaves with the first
            log.append([ev.ServiceIdRegistered("A0001", s) for s in part], OP)
            idx.catch_up(log)
        before = idx.env.stat(idx.dbs.svc)
    rebuild(data, log, binding=binding)
    log.close()
    with Index.open(data, binding=binding) as idx:
        after = idx.env.stat(idx.dbs.svc)
        per_page = 4096 // (8 + 16 + 2 + 2)  # node header, key, value (even), pointer
        assert after["entries"] == before["entries"] == 30_000
        assert after["leaf_pages"] <= 30_000 // per_page + 2 < before["leaf_pages"]
    with Resolver.open(data.root, binding=binding) as r:
        assert set(r.resolve_many("A0001", ids[::97])) == {Status.UNLINKED}


def test_resolve_one_at_a_time_answers_as_resolve_many(tmp_path, binding):
    """resolve (one key, its own fast path) and resolve_many agree on every kind of input."""
    from mykey.errors import ValidationError

    data = DataDir(tmp_path)
    log = FileLog.open(data.log)
    log.append([ev.BusinessRegistered("A0001", "Lib", "131016"), ev.BusinessRegistered("B0002", "Gym", "131016")], OP)
    log.append([ev.ServiceIdRegistered("A0001", s) for s in ("S1", "x" * 32, "A")], OP)
    log.append([ev.ServiceIdRegistered("B0002", "S2")], OP)
    with Index.open(data, binding=binding) as idx:
        idx.catch_up(log)
    log.close()
    asked = ["S1", "x" * 32, "A", "S2", "", "S1 ", "é", "x" * 600, "B0002S2"[5:], "0"]
    with Resolver.open(data.root, binding=binding) as r:
        for bid in ("A0001", "B0002", "C0003"):
            many = r.resolve_statuses(bid, asked)
            assert [r.resolve(bid, s) for s in asked] == many
            assert [r.resolve(bid, s.encode("utf-8")) for s in asked] == many
        assert r.resolve("A0001", "S1") == Status.UNLINKED and r.resolve("B0002", "S1") == Status.UNKNOWN
        for bad in ("A001", "a0001", "A0001S", "", None, 5, b"A0001"):
            for _ in range(2):  # a refused business ID is refused every time
                with pytest.raises(ValidationError):
                    r.resolve(bad, "S1")
                with pytest.raises(ValidationError):
                    r.resolve_many(bad, ["S1"])
