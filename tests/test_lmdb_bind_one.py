"""Reader.bind_one, the single lookup with its database and prefix bound, in both bindings.

It must answer as resolve_one and resolve_many do (byte-identically in the two bindings),
refuse the same bad input, and keep the reader's safety: a closed reader, a closed
environment and a forked child are refused on every call, not only when binding.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mykey.index.envguard import LmdbError

from tests.test_lmdb_binding import PREFIX, in_both_bindings, needs_native


@pytest.fixture
def filled(binding, tmp_path):
    """An environment of either binding (the `binding` fixture of conftest) with a few prefixed keys."""
    e = binding.Env(str(tmp_path / "env"), map_size=16 << 20)
    db = e.open_db(b"ids")
    with e.begin(write=True) as txn:
        txn.put_many(db, [(PREFIX + b"alice", b"\x07rest"), (PREFIX + b"bob", b""), (PREFIX + b"carol", b"\xff"),
                          (PREFIX, b"\x09"), (b"other" + b"alice", b"\x02")])
    yield e, db
    e.close()


def test_answers_as_resolve_one(filled):
    e, db = filled
    r = e.reader()
    one = r.bind_one(db, PREFIX)
    asked = [b"alice", "alice", b"bob", b"carol", b"dave", b"alic", b"alice\x00", b"x" * 600]
    assert [one(k) for k in asked] == [r.resolve_one(db, PREFIX, k) for k in asked] == [7, 7, 0, 255, 0, 0, 0, 0]
    assert r.bind_one(db, PREFIX.decode())(b"carol") == 255  # an ASCII str prefix
    assert r.bind_one(db, b"other")(b"alice") == 2 and r.bind_one(db, b"")(PREFIX + b"alice") == 7
    # An empty key answers 0 unlooked (resolve_one looks the bare prefix up: here it is stored).
    assert one(b"") == one("") == 0 and r.resolve_one(db, PREFIX, b"") == 9


def test_sees_each_commit(filled):
    """Bound once, it still reads the latest commit on every call (a fresh snapshot per call)."""
    e, db = filled
    one = e.reader().bind_one(db, PREFIX)
    assert one(b"erin") == 0
    with e.begin(write=True) as txn:
        txn.put(db, PREFIX + b"erin", b"\x03")
    assert one(b"erin") == 3
    with e.begin(write=True) as txn:
        txn.delete(db, PREFIX + b"erin")
    assert one(b"erin") == 0


def test_refuses_what_resolve_one_refuses(filled):
    e, db = filled
    r = e.reader()
    with pytest.raises(LmdbError, match="unknown database handle"):
        r.bind_one(db + 100, PREFIX)
    with pytest.raises(TypeError, match="prefix must be bytes or an ASCII str"):
        r.bind_one(db, 5)
    with pytest.raises(UnicodeEncodeError):
        r.bind_one(db, "é")
    one = r.bind_one(db, PREFIX)
    for bad in (5, None, bytearray(b"alice"), memoryview(b"alice")):
        with pytest.raises(TypeError, match="key must be bytes or an ASCII str"):
            one(bad)
    with pytest.raises(UnicodeEncodeError):
        one("alicé")
    with pytest.raises(TypeError):
        one(key=b"alice")  # positional only
    assert one(b"alice") == 7  # nothing above broke the reader


def test_closed_reader_and_closed_env_refused_on_every_call(filled):
    e, db = filled
    r = e.reader()
    one = r.bind_one(db, PREFIX)
    r.close()
    for key in (b"alice", b""):
        with pytest.raises(LmdbError, match="reader is closed"):
            one(key)
    one2 = e.reader().bind_one(db, PREFIX)
    assert one2(b"alice") == 7
    e.close()
    for key in (b"alice", b""):
        with pytest.raises(LmdbError, match="closed"):
            one2(key)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_refuses_a_bound_lookup(filled):
    e, db = filled
    one = e.reader().bind_one(db, PREFIX)
    assert one(b"alice") == 7
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            for key in (b"alice", b""):
                try:
                    one(key)
                except LmdbError as exc:
                    assert "fork" in str(exc)
                else:
                    raise AssertionError("a parent's bound lookup worked in the child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert one(b"alice") == 7  # the parent's still works


keys_st = st.one_of(st.binary(min_size=0, max_size=12), st.text(alphabet="abcxyz01", max_size=12))


@needs_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(st.binary(min_size=1, max_size=12), st.binary(max_size=3), max_size=40),
       extra=st.lists(keys_st, max_size=40))
def test_native_equals_pure(data, extra):
    """Byte-identical answers: bound lookups of both bindings, and resolve_many of each."""
    with in_both_bindings(data) as (rn, dbn, rp, dbp):
        asked = list(data) + extra
        on, op = rn.bind_one(dbn, PREFIX), rp.bind_one(dbp, PREFIX)
        native = bytes(on(k) for k in asked)
        assert native == bytes(op(k) for k in asked)
        nonempty = [k if k else b"\x00" * 600 for k in asked]  # an unstorable key: 0 in resolve_many too
        assert bytes(on(k) for k in nonempty) == rn.resolve_many(dbn, PREFIX, nonempty) == rp.resolve_many(
            dbp, PREFIX, nonempty)
