"""Tests of the two LMDB bindings (mykey._lmdb in Cython, mykey._lmdb_pure on py-lmdb).

Every behavioural test runs against both bindings on a real LMDB environment in
tmp_path; the hypothesis test checks that they answer resolve_many byte-identically.
"""
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mykey.errors import EnvAlreadyOpenError
from mykey.index import binding as lmdbenv
from mykey.index import envguard
from mykey.index.envguard import (
    DbNotFoundError,
    EnvNotFoundError,
    LmdbError,
    MapFullError,
)

NATIVE_ERROR = lmdbenv.native_import_error()
native_reason = f"native binding mykey._lmdb not built: {NATIVE_ERROR}"
needs_native = pytest.mark.skipif(NATIVE_ERROR is not None, reason=native_reason)

BINDINGS = [
    pytest.param("native", marks=needs_native, id="native"),
    pytest.param("pure", id="pure"),
]
PREFIX = b"svc01"  # 5-byte prefix, as the resolver uses


@pytest.fixture(params=BINDINGS)
def binding(request):
    return lmdbenv.binding_by_name(request.param)


@pytest.fixture
def env(binding, tmp_path):
    e = binding.Env(str(tmp_path / "env"), map_size=16 << 20)
    yield e
    e.close()


def run_py(code: str, timeout: float = 60) -> str:
    """Run code in a fresh interpreter (a separate process); fail with its stderr."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# --------------------------------------------------------------------------- basics


def test_module_attributes(binding):
    assert binding.NAME in ("native", "pure")
    assert isinstance(binding.LMDB_VERSION, tuple) and len(binding.LMDB_VERSION) == 3
    assert binding.LMDB_VERSION[:2] == (0, 9)
    assert issubclass(binding.LmdbError, envguard.LmdbError)


def test_put_get_delete_and_commit(env):
    db = env.open_db(b"ids")
    assert env.open_db(b"ids") == db  # same handle again
    with env.begin(write=True) as txn:
        txn.put(db, b"k1", b"v1")
        txn.put(db, b"k2", b"")
        assert txn.get(db, b"k1") == b"v1"  # a transaction sees its own writes
    with env.begin() as txn:
        assert txn.get(db, b"k1") == b"v1"
        assert txn.get(db, b"k2") == b""
        assert txn.get(db, b"nope") is None
    with env.begin(write=True) as txn:
        assert txn.delete(db, b"k1") is True
        assert txn.delete(db, b"k1") is False
        txn.put(db, b"k2", b"new")  # overwrite
    with env.begin() as txn:
        assert txn.get(db, b"k1") is None
        assert txn.get(db, b"k2") == b"new"
    assert env.stat(db)["entries"] == 1


def test_abort_discards_and_exception_aborts(env):
    db = env.open_db(b"ids")
    txn = env.begin(write=True)
    txn.put(db, b"a", b"1")
    txn.abort()
    txn.abort()  # idempotent
    with pytest.raises(ZeroDivisionError):
        with env.begin(write=True) as txn:
            txn.put(db, b"b", b"2")
            1 / 0
    with env.begin() as txn:
        assert txn.get(db, b"a") is None
        assert txn.get(db, b"b") is None
    with pytest.raises(LmdbError, match="ended"):
        txn.put(db, b"c", b"3")
    with pytest.raises(LmdbError, match="ended"):
        txn.commit()


def test_explicit_commit_inside_with(env):
    db = env.open_db(b"ids")
    with env.begin(write=True) as txn:
        txn.put(db, b"a", b"1")
        txn.commit()
    assert env.reader().get(db, b"a") == b"1"


def test_put_many_and_drop(env):
    db = env.open_db(b"ids")
    other = env.open_db(b"other")
    items = [(b"k%05d" % i, b"v%d" % i) for i in range(3000)]
    random.Random(1).shuffle(items)
    with env.begin(write=True) as txn:
        txn.put_many(db, items)
        txn.put_many(db, [])
        txn.put_many(db, [(b"k00001", b"overwritten"), ("k00002", b"str key")])
        txn.put(other, b"x", b"y")
    with env.begin() as txn:
        assert txn.get(db, b"k00001") == b"overwritten"
        assert txn.get(db, b"k00002") == b"str key"
        assert txn.get(db, b"k02999") == b"v2999"
    assert env.stat(db)["entries"] == 3000
    with env.begin(write=True) as txn:
        txn.drop(db)
    assert env.stat(db)["entries"] == 0
    assert env.stat(other)["entries"] == 1
    with env.begin(write=True) as txn:  # the dropped database is still usable
        txn.put(db, b"again", b"1")
    assert env.reader().get(db, b"again") == b"1"


def test_put_many_checks_every_item_before_writing(env):
    db = env.open_db(b"ids")
    with env.begin(write=True) as txn:
        with pytest.raises(LmdbError, match="1..511 bytes"):
            txn.put_many(db, [(b"ok", b"1"), (b"x" * 512, b"2")])
        with pytest.raises(TypeError, match="value must be bytes"):
            txn.put_many(db, [(b"ok", b"1"), (b"k", "not bytes")])
        with pytest.raises(LmdbError, match="1..511 bytes"):
            txn.put_many(db, [(b"", b"1")])
        assert txn.get(db, b"ok") is None  # nothing was written
        with pytest.raises(LmdbError, match="1..511 bytes"):
            txn.put(db, b"", b"1")
        txn.put(db, b"k" * 511, b"max")  # the longest key LMDB stores
    assert env.reader().get(db, b"k" * 511) == b"max"


def test_cursor(env):
    db = env.open_db(b"ids")
    keys = [b"a", b"ab", b"abc", b"b", b"ba", b"c"]
    with env.begin(write=True) as txn:
        txn.put_many(db, [(k, k.upper()) for k in keys])
    with env.begin() as txn:
        cur = txn.cursor(db)
        with pytest.raises(LmdbError, match="not on an item"):
            cur.key()
        assert cur.first() and cur.key() == b"a" and cur.value() == b"A"
        assert cur.next() and cur.key() == b"ab"
        assert cur.set_range(b"abd") and cur.key() == b"b"
        assert cur.set_range(b"b") and cur.key() == b"b"
        assert cur.set_range(b"") and cur.key() == b"a"
        assert not cur.set_range(b"d")
        with pytest.raises(LmdbError, match="not on an item"):
            cur.value()
        assert list(cur.iter_from()) == [(k, k.upper()) for k in keys]
        assert list(cur.iter_from(b"ab")) == [(k, k.upper()) for k in keys[1:]]
        assert [k for k, _ in cur.iter_from(prefix=b"a")] == [b"a", b"ab", b"abc"]
        assert [k for k, _ in cur.iter_from(b"ab", prefix=b"a")] == [b"ab", b"abc"]
        assert [k for k, _ in cur.iter_from(b"b", prefix=b"a")] == []
        assert [k for k, _ in cur.iter_from(prefix=b"b")] == [b"b", b"ba"]
        assert [k for k, _ in cur.iter_from(prefix=b"zz")] == []
        cur.close()
        cur.close()
        with pytest.raises(LmdbError, match="closed"):
            cur.first()
        cur2 = txn.cursor(db)
    with pytest.raises(LmdbError):  # its transaction ended
        cur2.first()


def test_cursor_in_write_txn_sees_own_writes(env):
    db = env.open_db(b"ids")
    with env.begin(write=True) as txn:
        txn.put_many(db, [(b"a", b"1"), (b"c", b"3")])
        cur = txn.cursor(db)
        assert cur.first()
        txn.put(db, b"b", b"2")
        assert cur.next() and cur.key() == b"b"
        assert [k for k, _ in txn.cursor(db).iter_from()] == [b"a", b"b", b"c"]


def test_empty_db_and_empty_batch(env):
    db = env.open_db(b"ids")
    r = env.reader()
    assert r.resolve_many(db, PREFIX, []) == b""
    assert r.resolve_many(db, PREFIX, [b"x", b"y"], method="sorted") == b"\0\0"
    with env.begin() as txn:
        assert not txn.cursor(db).first()
        assert list(txn.cursor(db).iter_from()) == []


def test_env_info_stat_sync_set_map_size(env):
    db = env.open_db(b"ids")
    with env.begin(write=True) as txn:
        txn.put(db, b"a", b"1")
    info = env.info()
    assert info["map_size"] == 16 << 20 and info["last_txnid"] >= 1 and info["last_pgno"] > 0
    st_ = env.stat(db)
    assert set(st_) == {"entries", "depth", "psize", "branch_pages", "leaf_pages", "overflow_pages"}
    assert st_["entries"] == 1 and st_["psize"] == 4096
    env.sync()
    env.sync(force=False)
    env.set_map_size(32 << 20)
    assert env.info()["map_size"] == 32 << 20
    txn = env.begin()
    with pytest.raises(LmdbError, match="transaction"):
        env.set_map_size(64 << 20)
    txn.abort()
    assert env.path.endswith("env")


def test_failures_leave_no_transaction_or_call_counted(binding, tmp_path):
    """Each binding counts open transactions (set_map_size refuses while any is open) and
    batch calls in progress (close refuses while any runs): every failure gives both back."""
    e = binding.Env(str(tmp_path / "env"), map_size=1 << 20)
    db = e.open_db(b"ids")
    with e.begin(write=True) as txn:
        txn.put(db, PREFIX + b"a", b"\x01")
    r = e.reader()
    failures = [
        (DbNotFoundError, lambda: e.open_db(b"missing", create=False)),
        (TypeError, lambda: r.resolve_many(db, PREFIX, [b"a", 7])),
        (UnicodeEncodeError, lambda: r.resolve_many(db, PREFIX, ["é"], method="sorted")),
        (LmdbError, lambda: r.get(db + 100, b"a")),
        (LmdbError, lambda: e.stat(db + 100)),
    ]
    for exc_type, call in failures:
        with pytest.raises(exc_type):
            call()
    with pytest.raises(MapFullError):  # fails inside the batch put, then the with-block aborts
        with e.begin(write=True) as txn:
            txn.put_many(db, [(b"%08d" % i, b"x" * 200) for i in range(20000)])
    with pytest.raises(ZeroDivisionError):
        with e.begin() as txn:
            1 / 0
    txn = e.begin()
    txn.cursor(db).first()
    del txn  # dropped without commit or abort: aborted when collected
    for method in ("get", "sorted"):
        assert r.resolve_many(db, PREFIX, [b"a", b"b"], method=method) == b"\x01\x00"
    assert r.get(db, PREFIX + b"a") == b"\x01"
    e.set_map_size(2 << 20)  # raises if any transaction were still counted as open
    e.close()  # raises if any batch call were still counted as running


def test_map_full_says_what_to_do(binding, tmp_path):
    with binding.Env(str(tmp_path / "small"), map_size=1 << 20) as e:
        db = e.open_db(b"ids")
        with pytest.raises(MapFullError, match="map_size"):
            with e.begin(write=True) as txn:
                txn.put_many(db, [(b"%08d" % i, b"x" * 200) for i in range(20000)])
        assert e.stat(db)["entries"] == 0


def test_errors(binding, tmp_path):
    path = str(tmp_path / "env")
    with pytest.raises(EnvNotFoundError, match="create=True"):
        binding.Env(path, create=False)
    with pytest.raises(EnvNotFoundError):
        binding.Env(path, readonly=True)
    os.makedirs(path)
    with pytest.raises(EnvNotFoundError, match="no LMDB environment"):
        binding.Env(path, readonly=True)  # directory without data.mdb
    with binding.Env(path, map_size=1 << 20) as e:
        db = e.open_db(b"ids")
        with pytest.raises(DbNotFoundError, match="create=True"):
            e.open_db(b"missing", create=False)
        with pytest.raises(TypeError):
            e.open_db("ids")
        with pytest.raises(LmdbError, match="unknown database handle"):
            e.reader().get(db + 100, b"x")
        with e.begin() as txn:
            with pytest.raises(LmdbError, match="read-only"):
                txn.put(db, b"a", b"b")
        r = e.reader()
        with pytest.raises(ValueError, match="method"):
            r.resolve_many(db, PREFIX, [b"a"], method="fast")
        with pytest.raises(ValueError, match="sort_threshold"):
            r.resolve_many(db, PREFIX, [b"a"], sort_threshold=-1)
        with pytest.raises(TypeError, match="bytes or an ASCII str"):
            r.resolve_many(db, PREFIX, [b"a", 7])
        with pytest.raises(UnicodeEncodeError):
            r.resolve_many(db, PREFIX, [b"a", "é"])
        with pytest.raises(TypeError, match="value must be bytes"):
            with e.begin(write=True) as txn:
                txn.put(db, b"a", "text")
        w = e.begin(write=True)
        with pytest.raises(LmdbError, match="already has a write transaction"):
            e.begin(write=True)
        with pytest.raises(LmdbError, match="before beginning the write"):
            e.open_db(b"later")
        w.abort()
        r.close()
        with pytest.raises(LmdbError, match="reader is closed"):
            r.get(db, b"a")
    with binding.Env(path, readonly=True) as e:
        with pytest.raises(DbNotFoundError):
            e.open_db(b"missing")  # create is ignored in a read-only env
        db = e.open_db(b"ids")
        with pytest.raises(LmdbError, match="read-only"):
            e.begin(write=True)
    with pytest.raises(LmdbError, match="closed"):
        e.begin()
    e.close()  # idempotent


# --------------------------------------------------------------------------- resolve_many


def fill(binding, path: str, data: dict[bytes, bytes]):
    e = binding.Env(path, map_size=64 << 20)
    db = e.open_db(b"ids")
    with e.begin(write=True) as txn:
        txn.put_many(db, list(data.items()))
    return e, db


@contextlib.contextmanager
def in_both_bindings(data: dict[bytes, bytes]):
    """The prefixed items stored through each binding, in its own environment:
    yields (native reader, its db, pure reader, its db)."""
    native = lmdbenv.binding_by_name("native")
    pure = lmdbenv.binding_by_name("pure")
    with tempfile.TemporaryDirectory() as tmp:
        full = {PREFIX + k: v for k, v in data.items()}
        en, dbn = fill(native, os.path.join(tmp, "native"), full)
        ep, dbp = fill(pure, os.path.join(tmp, "pure"), full)
        try:
            yield en.reader(), dbn, ep.reader(), dbp
        finally:
            en.close()
            ep.close()


def test_resolve_many_basic(env):
    db = env.open_db(b"ids")
    with env.begin(write=True) as txn:
        txn.put_many(db, [(PREFIX + b"alice", b"\x07rest"), (PREFIX + b"bob", b""), (PREFIX + b"carol", b"\xff")])
    r = env.reader()
    keys = [b"alice", b"bob", b"carol", b"dave", "alice", b"carol", b"", b"x" * 507, b"x" * 506]
    expect = bytes([7, 0, 255, 0, 7, 255, 0, 0, 0])
    for method in ("get", "sorted", "auto"):
        assert r.resolve_many(db, PREFIX, keys, method=method) == expect
        assert r.resolve_many(db, PREFIX, tuple(keys), method=method, sort_threshold=0) == expect
        assert r.resolve_many(db, PREFIX, iter(keys), method=method) == expect
    assert r.resolve_many(db, b"", [PREFIX + b"bob", PREFIX + b"carol", b""]) == b"\0\xff\0"
    assert r.resolve_many(db, PREFIX.decode(), ["carol"]) == b"\xff"
    assert r.get(db, PREFIX + b"alice") == b"\x07rest"
    assert r.get(db, b"") is None and r.get(db, b"x" * 600) is None


# Keys from a tiny alphabet collide, share long prefixes and are prefixes of each other,
# which is what the native sort's tie-breaking has to get right.
small_ids = st.binary(min_size=0, max_size=12).map(lambda b: bytes(c % 3 for c in b))
service_ids = st.binary(min_size=32, max_size=32)  # maximum-length service ids
long_common = st.binary(min_size=0, max_size=4).map(lambda b: b"0123456789AB" + b)
odd_ids = st.sampled_from([b"", b"x" * 506, b"x" * 507, b"\0", b"\0" * 8, b"\xff" * 9])
ids = st.one_of(small_ids, service_ids, long_common, odd_ids)
values = st.one_of(st.binary(min_size=0, max_size=3), st.just(b""), st.just(b"\0rest"))


@needs_native
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(ids.filter(lambda k: 0 < len(PREFIX + k) <= 511), values, max_size=60),
    extra=st.lists(ids, max_size=40),
    seed=st.integers(0, 2**32 - 1),
    threshold=st.integers(0, 50),
)
def test_resolve_many_native_equals_pure(data, extra, seed, threshold):
    rnd = random.Random(seed)
    present = list(data)
    batch = present + extra + [rnd.choice(present) for _ in range(len(present) // 2)] if present else extra
    rnd.shuffle(batch)
    expect = bytes((data[k][0] if data.get(k) else 0) if k in data else 0 for k in batch)
    with in_both_bindings(data) as (rn, dbn, rp, dbp):
        for method in ("get", "sorted", "cursor", "auto"):
            a = rn.resolve_many(dbn, PREFIX, batch, method=method, sort_threshold=threshold)
            b = rp.resolve_many(dbp, PREFIX, batch, method=method, sort_threshold=threshold)
            assert a == b == expect, method
        assert rn.resolve_many(dbn, PREFIX, []) == rp.resolve_many(dbp, PREFIX, []) == b""


@pytest.mark.parametrize("shape", ["random", "shared12", "dups", "short"])
def test_resolve_many_large_batches_agree(binding, tmp_path, shape):
    """Batches big enough for the radix sort, with long runs of equal sort heads."""
    rnd = random.Random(shape)
    if shape == "random":
        universe = [rnd.randbytes(11) for _ in range(6000)]
    elif shape == "shared12":  # every id shares 12 bytes, then differs (ties in the 8-byte head)
        universe = [b"customer-000" + rnd.randbytes(rnd.randint(0, 10)) for _ in range(6000)]
    elif shape == "dups":
        universe = [rnd.randbytes(2) for _ in range(300)]
    else:
        universe = [bytes(rnd.randint(0, 2) for _ in range(rnd.randint(0, 9))) for _ in range(3000)]
    stored = {k: bytes([rnd.randint(0, 255)]) * rnd.randint(0, 2) for k in universe[: len(universe) // 2]}
    stored = {k: v for k, v in stored.items() if k}
    if shape == "short":
        stored = {k: v for k, v in stored.items() if len(PREFIX + k) > 0}
    e, db = fill(binding, str(tmp_path / "env"), {PREFIX + k: v for k, v in stored.items()})
    try:
        batch = [rnd.choice(universe) for _ in range(20000)]
        expect = bytes((stored[k][0] if stored.get(k) else 0) for k in batch)
        r = e.reader()
        assert r.resolve_many(db, PREFIX, batch, method="sorted") == expect
        assert r.resolve_many(db, PREFIX, batch, method="get") == expect
        assert r.resolve_many(db, PREFIX, batch) == expect
    finally:
        e.close()


def test_reader_sees_commits_not_uncommitted_writes(env):
    db = env.open_db(b"ids")
    r = env.reader()
    assert r.get(db, PREFIX + b"a") is None
    w = env.begin(write=True)
    w.put(db, PREFIX + b"a", b"\x01")
    assert r.get(db, PREFIX + b"a") is None
    for method in ("get", "sorted"):
        assert r.resolve_many(db, PREFIX, [b"a"], method=method) == b"\0"
    w.commit()
    assert r.get(db, PREFIX + b"a") == b"\x01"
    for method in ("get", "sorted"):
        assert r.resolve_many(db, PREFIX, [b"a"], method=method) == b"\x01"
    for i in range(2, 6):  # every call renews: it sees each new commit
        with env.begin(write=True) as txn:
            txn.put(db, PREFIX + b"a", bytes([i]))
        assert r.resolve_many(db, PREFIX, [b"a"], method="sorted") == bytes([i])
        assert r.get(db, PREFIX + b"a") == bytes([i])
    old = env.begin()  # a plain read transaction keeps its snapshot
    with env.begin(write=True) as txn:
        txn.delete(db, PREFIX + b"a")
    assert old.get(db, PREFIX + b"a") == b"\x05"
    assert r.get(db, PREFIX + b"a") is None
    old.abort()


def test_two_threads_share_one_reader(env):
    db = env.open_db(b"ids")
    rnd = random.Random(7)
    stored = {rnd.randbytes(11): bytes([rnd.randint(1, 255)]) for _ in range(20000)}
    with env.begin(write=True) as txn:
        txn.put_many(db, [(PREFIX + k, v) for k, v in stored.items()])
    universe = list(stored) + [rnd.randbytes(11) for _ in range(2000)]
    r = env.reader()
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(seed: int, method: str) -> None:
        try:
            w = random.Random(seed)
            start.wait()
            for _ in range(25):
                batch = [w.choice(universe) for _ in range(w.choice([10, 5000, 30000]))]
                expect = bytes(stored[k][0] if k in stored else 0 for k in batch)
                got = r.resolve_many(db, PREFIX, batch, method=method)
                assert got == expect
                k = w.choice(universe)
                assert r.get(db, PREFIX + k) == stored.get(k)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(1, "sorted")), threading.Thread(target=work, args=(2, "auto"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# --------------------------------------------------------------------------- the guard


@needs_native
@pytest.mark.parametrize("first,second", [("native", "pure"), ("pure", "native"),
                                          ("native", "native"), ("pure", "pure")])
def test_guard_refuses_second_open(tmp_path, first, second):
    path = str(tmp_path / "env")
    a = lmdbenv.binding_by_name(first).Env(path, map_size=1 << 20)
    try:
        with pytest.raises(EnvAlreadyOpenError) as info:
            lmdbenv.binding_by_name(second).Env(path, map_size=1 << 20)
        msg = str(info.value)
        assert path in msg and repr(first) in msg
        assert "one process may open an environment once, through one binding" in msg
        assert "reuse the open handle or close it first" in msg
        with pytest.raises(EnvAlreadyOpenError):  # another spelling of the same directory
            lmdbenv.binding_by_name(second).Env(os.path.join(path, "..", "env"), readonly=True)
        os.symlink(path, str(tmp_path / "link"))
        with pytest.raises(EnvAlreadyOpenError):
            lmdbenv.binding_by_name(second).Env(str(tmp_path / "link"))
        assert envguard.holder(path) == first
    finally:
        a.close()
    assert envguard.holder(path) is None
    b = lmdbenv.binding_by_name(second).Env(path, map_size=1 << 20)  # reopening after close works
    b.close()
    c = lmdbenv.binding_by_name(first).Env(path, map_size=1 << 20)
    c.close()


def test_guard_released_when_open_fails(binding, tmp_path):
    path = str(tmp_path / "env")
    os.makedirs(path)
    with pytest.raises(EnvNotFoundError):
        binding.Env(path, readonly=True)
    assert envguard.holder(path) is None
    binding.Env(path).close()


def test_guard_acquire_release_directly(tmp_path):
    key = envguard.acquire(str(tmp_path / "d"), "pure", create=True)
    with pytest.raises(EnvAlreadyOpenError, match="'pure' binding"):
        envguard.acquire(str(tmp_path / "d"), "native")
    envguard.release(key)
    envguard.release(key)  # a stale key is ignored
    envguard.release(envguard.acquire(str(tmp_path / "d"), "native"))


# --------------------------------------------------------------------------- processes


def test_map_resized_by_writer_in_other_process(binding, tmp_path):
    path = str(tmp_path / "env")
    e = binding.Env(path, map_size=1 << 20)
    db = e.open_db(b"ids")
    with e.begin(write=True) as txn:
        txn.put(db, PREFIX + b"first", b"\x01")
    r = e.reader()
    assert r.resolve_many(db, PREFIX, [b"first"]) == b"\x01"
    run_py(f"""
        from mykey.index import binding as lmdbenv
        b = lmdbenv.binding_by_name({binding.NAME!r})
        with b.Env({path!r}, map_size=1 << 20) as e:
            db = e.open_db(b"ids")
            e.set_map_size(64 << 20)
            with e.begin(write=True) as txn:  # ~8 MB: far beyond the reader's 1 MiB map
                txn.put_many(db, [({PREFIX!r} + b"%08d" % i, bytes([i % 250 + 1]) * 100) for i in range(60000)])
            assert e.info()["map_size"] == 64 << 20
    """)
    keys = [b"%08d" % i for i in range(0, 60000, 7)] + [b"first", b"absent"]
    expect = bytes([i % 250 + 1 for i in range(0, 60000, 7)] + [1, 0])
    assert r.resolve_many(db, PREFIX, keys, method="sorted") == expect
    assert r.resolve_many(db, PREFIX, keys, method="get") == expect
    assert e.info()["map_size"] >= 64 << 20
    with e.begin() as txn:
        assert txn.get(db, PREFIX + b"00059999") == bytes([59999 % 250 + 1]) * 100
    e.close()


def test_map_resized_while_this_process_holds_a_transaction(binding, tmp_path, monkeypatch):
    """The new size can only be adopted with no transaction open: a clear error, then recovery."""
    monkeypatch.setattr(binding, "_RESIZE_WAIT_S", 0.05)
    path = str(tmp_path / "env")
    e = binding.Env(path, map_size=1 << 20)
    db = e.open_db(b"ids")
    r = e.reader()
    held = e.begin()
    run_py(f"""
        from mykey.index import binding as lmdbenv
        b = lmdbenv.binding_by_name({binding.NAME!r})
        with b.Env({path!r}, map_size=1 << 20) as e:
            db = e.open_db(b"ids")
            e.set_map_size(32 << 20)
            with e.begin(write=True) as txn:
                txn.put_many(db, [(b"%08d" % i, b"\x01" * 100) for i in range(30000)])
    """)
    with pytest.raises(envguard.MapResizedError, match="commit or abort them"):
        r.resolve_many(db, b"", [b"00000001"])
    assert held.get(db, b"00000001") is None  # the old snapshot still reads fine
    held.abort()
    assert r.resolve_many(db, b"", [b"00000001", b"nope"]) == b"\x01\x00"
    e.set_map_size(64 << 20)  # the failed calls left no transaction counted as open
    e.close()


def test_close_ends_transactions_and_readers(env):
    db = env.open_db(b"ids")
    with env.begin(write=True) as txn:
        txn.put(db, b"a", b"1")
    r = env.reader()
    t = env.begin()
    c = t.cursor(db)
    assert c.first()
    env.close()
    for call in (lambda: t.get(db, b"a"), lambda: c.next(), lambda: r.get(db, b"a"),
                 lambda: r.resolve_many(db, b"", [b"a"]), lambda: env.reader()):
        with pytest.raises(LmdbError):
            call()
    t.abort()  # still idempotent
    c.close()
    r.close()


@needs_native
def test_py_lmdb_writer_process_native_reader(tmp_path):
    """Format compatibility and a shared lock table: py-lmdb writes in another process
    while this process has the environment open through the C library."""
    native = lmdbenv.binding_by_name("native")
    path = str(tmp_path / "env")
    run_py(f"""
        import lmdb
        env = lmdb.open({path!r}, subdir=True, map_size=64 << 20, max_dbs=16)  # 0.9 format: no lib_version
        db = env.open_db(b"ids")
        with env.begin(write=True) as txn:
            for i in range(1000):
                txn.put({PREFIX!r} + b"%06d" % i, bytes([i % 200 + 1]), db=db)
        env.close()
    """)
    e = native.Env(path, map_size=64 << 20)
    db = e.open_db(b"ids")
    r = e.reader()
    keys = [b"%06d" % i for i in range(1200)]
    assert r.resolve_many(db, PREFIX, keys, method="sorted") == bytes(
        [i % 200 + 1 for i in range(1000)] + [0] * 200)
    run_py(f"""
        from mykey.index import _lmdb_pure as pure
        with pure.Env({path!r}, map_size=64 << 20) as e:
            db = e.open_db(b"ids")
            with e.begin(write=True) as txn:
                txn.put_many(db, [({PREFIX!r} + b"%06d" % i, b"\\x09") for i in range(1000, 1200)])
    """)
    assert r.resolve_many(db, PREFIX, keys, method="get") == bytes(
        [i % 200 + 1 for i in range(1000)] + [9] * 200)
    e.close()


@needs_native
def test_pure_creates_format_native_reads(tmp_path):
    """The pure binding makes 0.9-format environments even if py-lmdb is told to default to 1.0."""
    path = str(tmp_path / "env")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from mykey.index import _lmdb_pure as pure
        with pure.Env({path!r}, map_size=1 << 20) as e:
            db = e.open_db(b"ids")
            with e.begin(write=True) as txn:
                txn.put(db, b"k", b"\\x05")
    """)], env={**os.environ, "LMDB_DEFAULT_LIB_VERSION": "1"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with lmdbenv.binding_by_name("native").Env(path, readonly=True) as e:
        assert e.reader().resolve_many(e.open_db(b"ids"), b"", [b"k"]) == b"\x05"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_refuses_parent_handles_and_may_reopen(binding, tmp_path):
    path = str(tmp_path / "env")
    e = binding.Env(path, map_size=1 << 20)
    db = e.open_db(b"ids")
    with e.begin(write=True) as txn:
        txn.put(db, b"k", b"v")
    r = e.reader()
    assert r.get(db, b"k") == b"v"
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            try:
                r.get(db, b"k")
            except LmdbError as exc:
                assert "fork" in str(exc)
            else:
                raise AssertionError("parent handle worked in the child")
            e.close()  # must not touch the parent's handles
            with binding.Env(path) as e2:
                assert e2.reader().get(e2.open_db(b"ids"), b"k") == b"v"
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert r.get(db, b"k") == b"v"  # the parent's handles still work
    with e.begin(write=True) as txn:
        txn.put(db, b"k2", b"v2")
    assert r.get(db, b"k2") == b"v2"
    e.close()


# --------------------------------------------------------------------------- selection


def test_binding_selection(monkeypatch):
    monkeypatch.setenv("MYKEY_PURE", "1")
    assert lmdbenv.binding().NAME == "pure"
    monkeypatch.delenv("MYKEY_PURE")
    assert lmdbenv.binding().NAME == ("native" if NATIVE_ERROR is None else "pure")
    assert lmdbenv.binding_by_name("pure").NAME == "pure"
    with pytest.raises(ValueError, match="native"):
        lmdbenv.binding_by_name("fast")


def test_compact_copy_has_the_same_data_in_less_space(binding, tmp_path):
    env = binding.Env(str(tmp_path / "src"), sync=False)
    db = env.open_db(b"ids")
    for round_ in range(5):  # big transactions that rewrite everything leave free pages
        with env.begin(write=True) as txn:
            txn.put_many(db, [(b"k%07d" % i, b"v%d" % (i + round_)) for i in range(20_000)])
    (tmp_path / "dst").mkdir()
    env.copy(str(tmp_path / "dst"), compact=True)
    env.close()
    src_size = (tmp_path / "src" / "data.mdb").stat().st_size
    dst_size = (tmp_path / "dst" / "data.mdb").stat().st_size
    assert dst_size < src_size
    with binding.Env(str(tmp_path / "dst"), readonly=True, create=False) as copy:
        cdb = copy.open_db(b"ids", create=False)
        with copy.begin() as txn:
            assert txn.get(cdb, b"k0000007") == b"v11"
            assert copy.stat(cdb)["entries"] == 20_000


# --------------------------------------------------------------------------- sorted writes, batch reads


def contents(env, db) -> list[tuple[bytes, bytes]]:
    with env.begin() as txn:
        return list(txn.cursor(db).iter_from(b""))


pairs = st.lists(st.tuples(ids.filter(lambda k: 0 < len(k) <= 64), values), max_size=80)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=pairs, batch=pairs)
@pytest.mark.parametrize("name", [pytest.param("native", marks=needs_native), "pure"])
def test_put_many_sorted_stores_what_put_in_order_stores(name, before, batch):
    """sort=True (key order, appends past the end) leaves what one put after another leaves:
    of equal keys the last pair wins, keys before, among and after existing ones."""
    binding = lmdbenv.binding_by_name(name)
    with tempfile.TemporaryDirectory() as tmp:
        a = binding.Env(os.path.join(tmp, "a"), map_size=16 << 20)
        b = binding.Env(os.path.join(tmp, "b"), map_size=16 << 20)
        try:
            dba, dbb = a.open_db(b"x"), b.open_db(b"x")
            for env, db, sort in ((a, dba, False), (b, dbb, True)):
                with env.begin(write=True) as txn:
                    txn.put_many(db, before)
                with env.begin(write=True) as txn:
                    txn.put_many(db, batch, sort=sort)
                with env.begin(write=True) as txn:  # lists of keys and values: the same again
                    txn.put_keys(db, [k for k, _ in batch], [v for _, v in batch], sort=sort)
            assert contents(a, dba) == contents(b, dbb) == sorted({**dict(before), **dict(batch)}.items())
        finally:
            a.close()
            b.close()


def test_put_many_sorted_fills_pages(binding, tmp_path):
    """Random keys written sorted (appended) take fewer pages than the same keys in random order."""
    rnd = random.Random(3)
    items = [(rnd.randbytes(16), b"\x01") for _ in range(30_000)]
    env = binding.Env(str(tmp_path / "env"), map_size=64 << 20, sync=False)
    try:
        plain, ordered = env.open_db(b"plain"), env.open_db(b"ordered")
        with env.begin(write=True) as txn:
            txn.put_many(plain, items)
            txn.put_many(ordered, items, sort=True)
        assert contents(env, plain) == contents(env, ordered)
        per_page = 4096 // (8 + 16 + 2 + 2)  # LMDB's node header, the key, the value (even), the pointer
        assert env.stat(ordered)["leaf_pages"] <= len(items) // per_page + 2
        assert env.stat(plain)["leaf_pages"] > 1.25 * env.stat(ordered)["leaf_pages"]
    finally:
        env.close()


def test_put_keys_values_and_errors(env):
    db = env.open_db(b"x")
    with env.begin(write=True) as txn:
        txn.put_keys(db, [b"b", "a", b"c"], b"\x02")  # one value for every key; str keys are ASCII
        txn.put_keys(db, (b"c",), [b"\x03"], sort=True)
        with pytest.raises(ValueError, match="2 keys but 1 values"):
            txn.put_keys(db, [b"d", b"e"], [b"\x04"])
        with pytest.raises(LmdbError, match="put_keys key 1"):
            txn.put_keys(db, [b"d", b""], b"\x04", sort=True)
        with pytest.raises(TypeError):
            txn.put_keys(db, [b"d"], [4])
        txn.put_keys(db, [], b"\x04")
    assert contents(env, db) == [(b"a", b"\x02"), (b"b", b"\x02"), (b"c", b"\x03")]
    with env.begin() as txn:
        with pytest.raises(LmdbError, match="read-only"):
            txn.put_keys(db, [b"z"], b"\x01", sort=True)


def test_get_many(env):
    db = env.open_db(b"x")
    rnd = random.Random(5)
    stored = {rnd.randbytes(rnd.randint(1, 20)): rnd.randbytes(rnd.randint(0, 3)) for _ in range(3000)}
    with env.begin(write=True) as txn:
        txn.put_many(db, list(stored.items()))
        txn.put(db, b"mine", b"uncommitted")
        keys = list(stored)[:500] + [b"", b"x" * 600, b"absent", "mine"] + list(stored)[:50]
        rnd.shuffle(keys)
        expect = [stored.get(k) if isinstance(k, bytes) else b"uncommitted" for k in keys]
        expect = [b"uncommitted" if k in (b"mine", "mine") else e for k, e in zip(keys, expect)]
        assert txn.get_many(db, keys) == expect  # a write transaction sees its own writes
        assert txn.get_many(db, iter(keys[:3])) == expect[:3]
        assert txn.get_many(db, []) == []
    with env.begin() as txn:
        assert txn.get_many(db, [b"mine", next(iter(stored))]) == [b"uncommitted", next(iter(stored.values()))]
        with pytest.raises(TypeError):
            txn.get_many(db, [3])


def test_repacked_copy_has_the_same_data_in_full_pages(binding, tmp_path):
    env = binding.Env(str(tmp_path / "src"), sync=False)
    rnd = random.Random(9)
    a, b, empty = env.open_db(b"a"), env.open_db(b"b"), env.open_db(b"empty")
    with env.begin(write=True) as txn:
        txn.put_many(a, [(rnd.randbytes(12), rnd.randbytes(rnd.randint(0, 40))) for _ in range(20_000)])
        txn.put_many(b, [(b"k%07d" % i, b"x" * 3000) for i in range(50)])  # values on overflow pages
    (tmp_path / "dst").mkdir()
    env.copy(str(tmp_path / "dst"), repack=True)
    try:
        with binding.Env(str(tmp_path / "dst"), readonly=True, create=False) as copy:
            for name, db in ((b"a", a), (b"b", b), (b"empty", empty)):
                cdb = copy.open_db(name, create=False)
                assert contents(copy, cdb) == contents(env, db)
            ca = copy.open_db(b"a", create=False)
            assert copy.stat(ca)["leaf_pages"] < 0.85 * env.stat(a)["leaf_pages"]
    finally:
        env.close()


# --------------------------------------------------------------------------- the page walk


def walk_counts() -> tuple[int, int]:
    return lmdbenv.binding_by_name("native")._walk_counts() if NATIVE_ERROR is None else (0, 0)


@needs_native
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key_len=st.sampled_from([1, 4, 11, 60, 250, 500]),
    n=st.integers(0, 3000),
    seed=st.integers(0, 2**32 - 1),
    big_values=st.booleans(),
)
def test_page_walk_answers_as_lmdb_does(key_len, n, seed, big_values):
    """The sorted path walks LMDB's pages itself: on trees of one to several levels, with
    keys of every length, repeated and absent keys and values on overflow pages, its answers
    are LMDB's (the cursor, mdb_get, and py-lmdb in the pure twin), and it never gives up."""
    rnd = random.Random(seed)

    def key() -> bytes:
        return rnd.randbytes(rnd.randint(max(0, key_len - 3), key_len))

    stored = {}
    for _ in range(n):
        k = key()
        if 0 < len(PREFIX + k) <= 511:
            stored[k] = rnd.randbytes(3000) if big_values and rnd.random() < 0.1 else rnd.randbytes(rnd.randint(0, 2))
    present = list(stored)
    batch = [rnd.choice(present) for _ in range(min(4000, 2 * len(present)))] if present else []
    batch += [key() for _ in range(len(batch) // 5 + 3)] + [b"", b"\xff" * 510]
    rnd.shuffle(batch)
    expect = bytes((stored[k][0] if stored.get(k) else 0) if k in stored else 0 for k in batch)
    with in_both_bindings(stored) as (rn, dbn, rp, dbp):
        walks, fallbacks = walk_counts()
        assert rn.resolve_many(dbn, PREFIX, batch, method="sorted") == expect
        assert walk_counts() == (walks + 1, fallbacks)
        assert rn.resolve_many(dbn, PREFIX, batch, method="cursor") == expect
        assert rn.resolve_many(dbn, PREFIX, batch, method="get") == expect
        assert rp.resolve_many(dbp, PREFIX, batch) == expect
        for k in batch[:20]:
            assert rn.resolve_one(dbn, PREFIX, k) == rp.resolve_one(dbp, PREFIX, k) == (
                stored[k][0] if stored.get(k) else 0)


@needs_native
def test_page_walk_on_a_deep_tree_of_a_repacked_copy(tmp_path):
    """Long keys make a tree four levels deep; the walk reads it in place and in its repacked copy."""
    native = lmdbenv.binding_by_name("native")
    rnd = random.Random(11)
    stored = {rnd.randbytes(400): bytes([rnd.randint(0, 255)]) for _ in range(6000)}
    env, db = fill(native, str(tmp_path / "a"), {PREFIX + k: v for k, v in stored.items()})
    (tmp_path / "b").mkdir()
    env.copy(str(tmp_path / "b"), repack=True)
    env.close()
    batch = list(stored)[:3000] + [rnd.randbytes(400) for _ in range(300)]
    rnd.shuffle(batch)
    expect = bytes(stored[k][0] if k in stored else 0 for k in batch)
    for path in ("a", "b"):
        with native.Env(str(tmp_path / path), readonly=True, create=False) as e:
            d = e.open_db(b"ids", create=False)
            assert e.stat(d)["depth"] >= 4
            walks, fallbacks = walk_counts()
            assert e.reader().resolve_many(d, PREFIX, batch, method="sorted") == expect
            assert walk_counts() == (walks + 1, fallbacks)


@needs_native
def test_page_walk_sees_one_commit_while_a_writer_rewrites_the_tree(tmp_path):
    """Readers walk the pages of their snapshot: while a writer replaces every value (and
    deletes and adds keys, so that freed pages get reused) commit after commit, every
    answer of one call comes from one commit."""
    native = lmdbenv.binding_by_name("native")
    env = native.Env(str(tmp_path / "env"), map_size=256 << 20, sync=False)
    db = env.open_db(b"ids")
    keys = [b"%08d" % i for i in range(0, 40_000, 2)]
    with env.begin(write=True) as txn:
        txn.put_many(db, [(PREFIX + k, b"\x01") for k in keys])
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            g = 1
            while not stop.is_set():
                g = g % 250 + 1
                with env.begin(write=True) as txn:
                    txn.put_many(db, [(PREFIX + k, bytes([g])) for k in keys])
                    odd = [PREFIX + b"%08d" % (i * 2 + 1) for i in range(g * 40, g * 40 + 400)]
                    if g % 2:
                        txn.put_many(db, [(k, b"\0") for k in odd])
                    else:
                        for k in odd:
                            txn.delete(db, k)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        r = env.reader()
        rnd = random.Random(1)
        for _ in range(60):
            batch = rnd.sample(keys, 3000)
            got = r.resolve_many(db, PREFIX, batch, method="sorted")
            assert len(set(got)) == 1 and got[0] != 0, set(got)
    finally:
        stop.set()
        writer.join()
        env.close()
    assert not errors, errors
