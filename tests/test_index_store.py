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
