"""Pure-Python twin of mykey._lmdb on py-lmdb: same interface, byte-identical results.

Used when the Cython extension is not built or MYKEY_PURE=1 is set. Environments are
created in LMDB 0.9 format (py-lmdb's default engine), so the C library can read them.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lmdb

from ..errors import EnvAlreadyOpenError
from .envguard import (
    FORKED_MESSAGE,
    MDB_MAP_RESIZED,
    MDB_NOTFOUND,
    DbNotFoundError,
    EnvNotFoundError,
    LmdbError,
    MapFullError,
    MapResizedError,
    acquire,
    fork_generation,
    key_size_error,
    lmdb_error,
    release,
)

__all__ = [
    "NAME", "LMDB_VERSION", "Env", "Txn", "Cursor", "Reader",
    "LmdbError", "DbNotFoundError", "MapFullError", "MapResizedError",
    "EnvNotFoundError", "EnvAlreadyOpenError",
]

NAME = "pure"
LMDB_VERSION: tuple[int, int, int] = tuple(lmdb.version())  # type: ignore[assignment]

_METHODS = ("auto", "get", "sorted", "cursor")
_SORT_THRESHOLD = 16  # resolve_many(method="auto") sorts batches of at least this many keys (native)
# New environments in LMDB 0.9 format, which the C library (0.9) reads, even when
# LMDB_DEFAULT_LIB_VERSION asks py-lmdb for 1.0; py-lmdb before 3.0 knows only 0.9.
_FORMAT_0_9: dict[str, int] = {"lib_version": 0} if hasattr(lmdb.Environment, "lib_version") else {}
# How long a thread waits for this process's other transactions to finish before it
# gives up adopting a map that another process grew (MDB_MAP_RESIZED).
_RESIZE_WAIT_S = 2.0


def _err(what: str, exc: lmdb.Error) -> LmdbError:
    code = getattr(exc, "code", 0) or 0
    reason = getattr(exc, "reason", None) or str(exc)
    return lmdb_error(what, code, reason)


def _key_arg(k: Any, what: str) -> bytes:
    """bytes as they are; str encoded as ASCII; anything else is a TypeError."""
    if isinstance(k, bytes):
        return k
    if isinstance(k, str):
        return k.encode("ascii")
    raise TypeError(f"{what} must be bytes or an ASCII str, got {type(k).__name__}")


def _val_arg(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    raise TypeError(f"value must be bytes, got {type(v).__name__}")


def _check_method(method: Any, sort_threshold: Any) -> None:
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"method must be 'auto', 'get', 'sorted' or 'cursor', got {method!r}")
    if not isinstance(sort_threshold, int) or isinstance(sort_threshold, bool) or sort_threshold < 0:
        raise ValueError(f"sort_threshold must be an int >= 0, got {sort_threshold!r}")


class Env:
    """An LMDB environment (a directory holding data.mdb and lock.mdb) opened through py-lmdb."""

    def __init__(self, path: str, *, readonly: bool = False, map_size: int = 64 << 30, max_dbs: int = 16,
                 nordahead: bool = False, create: bool = True, sync: bool = True,
                 metasync: bool = True) -> None:
        self._env: lmdb.Environment | None = None
        self._key: tuple[int, int, int] | None = None
        path = os.path.abspath(os.fspath(path))
        self.path: str = path
        self.readonly: bool = bool(readonly)
        self._dbis: dict[bytes, int] = {}
        self._dbs: list[Any] = []
        self._children: weakref.WeakSet[Any] = weakref.WeakSet()
        self._dbi_lock = threading.Lock()
        self._active = 0            # transactions begun and not ended, reader calls in progress
        self._inflight = 0          # batch calls in progress (the native binding runs them without the GIL)
        self._writer_tid: int | None = None
        self._count_lock = threading.Lock()
        key = acquire(path, NAME, create=bool(create) and not readonly)
        try:
            # max_spare_txns=0: py-lmdb 3.0 aborts a cached spare transaction when a forked
            # child frees its copy of the Environment, which releases the parent's reader slot.
            env = lmdb.open(path, subdir=True, readonly=self.readonly, map_size=map_size, max_dbs=max_dbs,
                            readahead=not nordahead, sync=sync, metasync=metasync, lock=True, create=create,
                            max_readers=126, max_spare_txns=0, **_FORMAT_0_9)
        except lmdb.Error as exc:
            release(key)
            if getattr(exc, "code", 0) == 2:
                raise EnvNotFoundError(
                    f"mdb_env_open: no LMDB environment in {path!r}; check the path, or "
                    f"open it writable with create=True to make a new environment", 2) from exc
            raise _err(f"mdb_env_open({path!r})", exc) from exc
        except BaseException:
            release(key)
            raise
        self._env = env
        self._key = key
        self._gen = fork_generation()
        self._maxkey = env.max_key_size()

    def __del__(self) -> None:
        try:
            self.close()
        except BaseException:
            pass

    # -- helpers shared with Txn and Reader ------------------------------------

    def _count(self, active: int = 0, inflight: int = 0) -> None:
        with self._count_lock:
            self._active += active
            self._inflight += inflight

    @contextmanager
    def _batch_call(self) -> Iterator[None]:
        """Counts a batch call in _inflight for the block's length (the native binding runs it without the GIL)."""
        self._count(inflight=1)
        try:
            yield
        finally:
            self._count(inflight=-1)

    def _check(self) -> lmdb.Environment:
        if self._env is None:
            raise LmdbError(f"environment {self.path!r} is closed; open a new Env")
        if self._gen != fork_generation():
            raise LmdbError(FORKED_MESSAGE)
        return self._env

    def _db(self, db: Any) -> Any:
        if type(db) is not int or not 0 <= db < len(self._dbs):
            raise LmdbError(f"unknown database handle {db!r}; use a handle returned by open_db on this Env")
        return self._dbs[db]

    def _adopt_map_size(self) -> None:
        """Another process grew the map: wait until this process has no open
        transaction, then adopt the size (set_mapsize(0))."""
        deadline = time.monotonic() + _RESIZE_WAIT_S
        while self._active > 0:
            if time.monotonic() > deadline:
                raise MapResizedError(
                    f"another process grew the map of {self.path!r} and this process still has "
                    f"{self._active} transaction(s) open, so it cannot adopt the new size: commit or "
                    f"abort them (or open with a map_size at least as large as the writer's) and retry",
                    MDB_MAP_RESIZED)
            time.sleep(0.001)
        env = self._check()
        try:
            env.set_mapsize(0)
        except lmdb.Error as exc:
            raise _err("mdb_env_set_mapsize", exc) from exc

    def _begin_raw(self, write: bool) -> lmdb.Transaction:
        """Begin a py-lmdb transaction, counted in _active; adopt a grown map once."""
        for attempt in range(2):
            env = self._check()
            self._count(active=1)
            try:
                return env.begin(write=write, buffers=False)
            except lmdb.Error as exc:
                self._count(active=-1)
                if getattr(exc, "code", 0) == MDB_MAP_RESIZED and attempt == 0:
                    self._adopt_map_size()
                    continue
                raise _err("mdb_txn_begin", exc) from exc
            except BaseException:
                self._count(active=-1)
                raise
        raise AssertionError("unreachable")

    def _end_raw(self, txn: lmdb.Transaction, commit: bool) -> None:
        try:
            if commit:
                txn.commit()
            else:
                txn.abort()
        except lmdb.Error as exc:
            raise _err("mdb_txn_commit", exc) from exc
        finally:
            self._count(active=-1)

    # -- public interface -------------------------------------------------------

    def open_db(self, name: bytes, *, create: bool = True) -> int:
        """Open (and, in a writable env, create) the named database; return its integer handle."""
        env = self._check()
        if not isinstance(name, bytes) or not name:
            raise TypeError(f"database name must be non-empty bytes, got {name!r}")
        with self._dbi_lock:
            if name in self._dbis:
                return self._dbis[name]
            if not self.readonly and self._writer_tid == threading.get_ident():
                raise LmdbError(
                    f"open_db({name!r}) called while this thread has a write transaction open; "
                    f"open databases before beginning the write transaction")
            # py-lmdb keeps a handle only if its own temporary transaction opened it
            # (a write transaction unless the env is read-only).
            for attempt in range(2):
                try:
                    handle = env.open_db(name, create=bool(create) and not self.readonly)
                    break
                except lmdb.NotFoundError:
                    raise DbNotFoundError(
                        f"database {name!r} does not exist in {self.path!r}; create it with "
                        f"open_db({name!r}, create=True) in a writable Env (the projector does), "
                        f"or check the name", MDB_NOTFOUND) from None
                except lmdb.Error as exc:
                    if getattr(exc, "code", 0) == MDB_MAP_RESIZED and attempt == 0:
                        self._adopt_map_size()
                        continue
                    raise _err(f"mdb_dbi_open({name!r})", exc) from exc
            self._dbs.append(handle)
            self._dbis[name] = len(self._dbs) - 1
            return self._dbis[name]

    def begin(self, write: bool = False) -> Txn:
        """Begin a transaction (read-only unless write=True); use it as a context manager."""
        self._check()
        if write:
            if self.readonly:
                raise LmdbError(f"environment {self.path!r} is open read-only; open it with readonly=False to write")
            if self._writer_tid == threading.get_ident():
                raise LmdbError("this thread already has a write transaction open; commit or abort it "
                                "first (LMDB allows one writer at a time)")
        t = Txn(self, self._begin_raw(bool(write)), bool(write))
        if write:
            self._writer_tid = threading.get_ident()
        self._children.add(t)
        return t

    def reader(self) -> Reader:
        """A long-lived lookup helper that reuses reset read transactions between calls."""
        self._check()
        r = Reader(self)
        self._children.add(r)
        return r

    def stat(self, db: int) -> dict[str, int]:
        """Statistics of one database: entries, depth, psize and page counts."""
        handle = self._db(db)
        txn = self._begin_raw(False)
        try:
            st = txn.stat(handle)
        except lmdb.Error as exc:
            raise _err("mdb_stat", exc) from exc
        finally:
            self._end_raw(txn, False)
        return {k: st[k] for k in ("entries", "depth", "psize", "branch_pages", "leaf_pages", "overflow_pages")}

    def info(self) -> dict[str, int]:
        """Map size, last transaction id and last page number of the environment."""
        inf = self._check().info()
        return {"map_size": inf["map_size"], "last_txnid": inf["last_txnid"], "last_pgno": inf["last_pgno"]}

    def set_map_size(self, n: int) -> None:
        """Change the map size; every transaction of this process must be closed."""
        env = self._check()
        if self._active:
            raise LmdbError(f"set_map_size needs every transaction of this process on {self.path!r} "
                            f"closed, but {self._active} are open; commit or abort them first")
        try:
            env.set_mapsize(n)
        except lmdb.Error as exc:
            raise _err("mdb_env_set_mapsize", exc) from exc

    def sync(self, force: bool = True) -> None:
        """Flush buffers to disk (needed with sync=False); a no-op in a read-only env."""
        env = self._check()
        if self.readonly:
            return
        try:
            env.sync(force)
        except lmdb.Error as exc:
            raise _err("mdb_env_sync", exc) from exc

    def copy(self, path: str, *, compact: bool = True, repack: bool = False) -> None:
        """Copy the environment into an existing empty directory (compact: without free pages).

        repack=True writes a new environment there instead: every named database rewritten
        in key order with appends, so that its pages are full (a compact copy keeps pages as
        they are, however empty). The copy is synced to disk; it needs a directory of its own.
        """
        env = self._check()
        try:
            if repack:
                with self._dbi_lock:
                    self._repack(env, os.path.abspath(os.fspath(path)))
            else:
                env.copy(os.path.abspath(os.fspath(path)), compact=compact)
        except lmdb.Error as exc:
            raise _err("mdb_env_copy2", exc) from exc

    @staticmethod
    def _repack(env: lmdb.Environment, path: str, chunk: int = 1 << 16) -> None:
        with env.begin(buffers=False) as src:
            names = [key for key, _ in src.cursor()]
        dst = lmdb.open(path, subdir=True, map_size=env.info()["map_size"], max_dbs=len(names) + 2,
                        sync=False, lock=True, max_readers=126, max_spare_txns=0, **_FORMAT_0_9)
        try:
            for name in names:
                sdb = env.open_db(name, create=False)
                if sdb.flags(None)["dupsort"]:  # type: ignore[call-arg]
                    raise LmdbError(f"repack: database {name!r} has duplicates, which repack does not support")
                ddb = dst.open_db(name)
                with env.begin(db=sdb, buffers=False) as src:
                    items = iter(src.cursor())
                    while True:
                        part = [item for _, item in zip(range(chunk), items)]
                        if not part:
                            break
                        with dst.begin(write=True, db=ddb) as txn:
                            txn.cursor().putmulti(part, append=True)
                        if len(part) < chunk:
                            break
            dst.sync(True)
        finally:
            dst.close()

    def close(self) -> None:
        """Close the environment, aborting its open transactions; idempotent."""
        env = self._env
        if env is None:
            return
        if self._gen != fork_generation():
            self._env = None  # the parent's: py-lmdb never closes it in a forked child
            return
        if self._inflight:
            raise LmdbError(f"environment {self.path!r} is in use by {self._inflight} call(s) in other "
                            f"threads; close it after they return")
        for child in list(self._children):
            child._end_from_env()
        self._children = weakref.WeakSet()
        self._env = None
        self._dbs = []
        env.close()
        release(self._key)
        self._key = None

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._env is not None else "closed"
        return f"<mykey.index._lmdb_pure.Env {self.path!r} {state}>"


class Txn:
    """A transaction: commits on normal exit from a with-block, aborts on an exception."""

    def __init__(self, env: Env, txn: lmdb.Transaction, write: bool) -> None:
        self.env = env
        self._txn: lmdb.Transaction | None = txn
        self.write = write
        self._busy = False
        self._cursors: weakref.WeakSet[Cursor] = weakref.WeakSet()

    def __del__(self) -> None:
        try:
            if self._txn is not None and self.env._gen == fork_generation():
                self._end(False)
        except BaseException:
            pass

    def _check(self) -> lmdb.Transaction:
        if self._txn is None:
            raise LmdbError("transaction has ended (committed or aborted); begin a new one")
        if self.env._gen != fork_generation():
            raise LmdbError(FORKED_MESSAGE)
        if self._busy:
            raise LmdbError("transaction is busy in put_many on another thread; use one transaction per thread")
        return self._txn

    def _check_write(self) -> lmdb.Transaction:
        txn = self._check()
        if not self.write:
            raise LmdbError("transaction is read-only; use env.begin(write=True) to write")
        return txn

    def _end(self, commit: bool) -> None:
        txn = self._txn
        if txn is None:
            return
        for c in list(self._cursors):
            c._close()
        self._txn = None
        try:
            self.env._end_raw(txn, commit and self.write)
        finally:
            if self.write:
                self.env._writer_tid = None

    def _end_from_env(self) -> None:
        self._end(False)

    def get(self, db: int, key: bytes) -> bytes | None:
        """The value stored under key, or None."""
        txn = self._check()
        handle = self.env._db(db)
        kb = _key_arg(key, "key")
        if not 0 < len(kb) <= self.env._maxkey:
            return None
        try:
            return txn.get(kb, None, handle)
        except lmdb.Error as exc:
            raise _err("mdb_get", exc) from exc

    def put(self, db: int, key: bytes, value: bytes) -> None:
        """Store value under key, replacing any old value."""
        txn = self._check_write()
        handle = self.env._db(db)
        kb = _key_arg(key, "key")
        vb = _val_arg(value)
        if not 0 < len(kb) <= self.env._maxkey:
            raise key_size_error("put", len(kb))
        try:
            txn.put(kb, vb, db=handle)
        except lmdb.Error as exc:
            raise _err("mdb_put", exc) from exc

    def put_many(self, db: int, items: Iterable[tuple[bytes, bytes]], *, sort: bool = False) -> None:
        """Store every (key, value) pair in order; all pairs are checked before any is written.

        sort=True writes them in key order instead (of pairs with equal keys, the last one
        given wins, as in order), appending those past the database's last key: the pages
        it adds are full. For bulk loads; the stored items are the same either way.
        """
        txn = self._check_write()
        handle = self.env._db(db)
        maxkey = self.env._maxkey
        pairs = []
        for i, item in enumerate(tuple(items)):
            k, v = item
            kb = _key_arg(k, "key")
            vb = _val_arg(v)
            if not 0 < len(kb) <= maxkey:
                raise key_size_error(f"put_many item {i}", len(kb))
            pairs.append((kb, vb))
        if not pairs:
            return
        self._busy = True
        try:
            with self.env._batch_call():
                if sort:
                    self._put_sorted(txn, handle, pairs)
                else:
                    put = txn.put
                    for kb, vb in pairs:
                        put(kb, vb, db=handle)
        except lmdb.Error as exc:
            raise _err("mdb_put", exc) from exc
        finally:
            self._busy = False

    def put_keys(self, db: int, keys: Iterable[bytes | str], values: bytes | Iterable[bytes], *,
                 sort: bool = False) -> None:
        """put_many(db, zip(keys, values), sort=sort) without the pairs: values is a sequence
        as long as keys, or one bytes object stored under every key."""
        self._check_write()
        key_list = tuple(keys)
        if isinstance(values, bytes):
            value_list: tuple[Any, ...] = (values,) * len(key_list)
        else:
            value_list = tuple(values)
            if len(value_list) != len(key_list):
                raise ValueError(f"put_keys: {len(key_list)} keys but {len(value_list)} values")
        maxkey = self.env._maxkey
        for i, k in enumerate(key_list):
            kb = _key_arg(k, "key")
            if not 0 < len(kb) <= maxkey:
                raise key_size_error(f"put_keys key {i}", len(kb))
        self.put_many(db, zip(key_list, value_list, strict=True), sort=sort)

    @staticmethod
    def _put_sorted(txn: lmdb.Transaction, handle: Any, pairs: list[tuple[bytes, bytes]]) -> None:
        """put_many(sort=True): the last pair of each key, in key order; appended past the last key."""
        latest = dict(pairs)  # a later pair with the same key wins
        ordered = sorted(latest.items())
        cur = txn.cursor(db=handle)
        try:
            last = cur.key() if cur.last() else None
            split = 0
            if last is not None:
                while split < len(ordered) and ordered[split][0] <= last:
                    split += 1
            for kb, vb in ordered[:split]:
                txn.put(kb, vb, db=handle)
            if split < len(ordered):
                cur.putmulti(ordered[split:], append=True)
        finally:
            cur.close()

    def get_many(self, db: int, keys: Iterable[bytes | str]) -> list[bytes | None]:
        """The value stored under each key (None where there is none), in input order."""
        txn = self._check()
        handle = self.env._db(db)
        maxkey = self.env._maxkey
        out: list[bytes | None] = []
        try:
            for k in keys:
                kb = _key_arg(k, "key")
                out.append(txn.get(kb, None, handle) if 0 < len(kb) <= maxkey else None)
        except lmdb.Error as exc:
            raise _err("mdb_get", exc) from exc
        return out

    def delete(self, db: int, key: bytes) -> bool:
        """Delete key; return True if it was there."""
        txn = self._check_write()
        handle = self.env._db(db)
        kb = _key_arg(key, "key")
        if not 0 < len(kb) <= self.env._maxkey:
            return False
        try:
            return bool(txn.delete(kb, db=handle))
        except lmdb.Error as exc:
            raise _err("mdb_del", exc) from exc

    def drop(self, db: int) -> None:
        """Delete every item of the database (the database itself stays)."""
        txn = self._check_write()
        handle = self.env._db(db)
        try:
            txn.drop(handle, delete=False)
        except lmdb.Error as exc:
            raise _err("mdb_drop", exc) from exc

    def cursor(self, db: int) -> Cursor:
        """A cursor over one database, valid until this transaction ends."""
        txn = self._check()
        handle = self.env._db(db)
        try:
            c = Cursor(self, txn.cursor(db=handle))
        except lmdb.Error as exc:
            raise _err("mdb_cursor_open", exc) from exc
        self._cursors.add(c)
        return c

    def commit(self) -> None:
        """Make the writes durable and visible; the transaction ends."""
        self._check()
        self._end(True)

    def abort(self) -> None:
        """Discard the writes; the transaction ends. Idempotent."""
        if self._txn is None:
            return
        if self.env._gen != fork_generation():
            self._txn = None
            return
        if self._busy:
            raise LmdbError("transaction is busy in put_many on another thread; abort it from that thread")
        self._end(False)

    def __enter__(self) -> Txn:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._txn is None:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Cursor:
    """A position in one database within a transaction."""

    def __init__(self, txn: Txn, cur: lmdb.Cursor) -> None:
        self.txn = txn
        self._cur: lmdb.Cursor | None = cur
        self._pos = False

    def _close(self) -> None:
        if self._cur is not None:
            self._cur.close()
            self._cur = None
        self._pos = False

    def _check(self) -> lmdb.Cursor:
        if self._cur is None:
            raise LmdbError("cursor is closed (or its transaction ended); open a new one with txn.cursor(db)")
        self.txn._check()
        return self._cur

    def _move(self, op: Callable[..., bool], *args: bytes) -> bool:
        """Move with a py-lmdb cursor call; False (and no position) when there is no such item."""
        try:
            self._pos = bool(op(*args))
        except lmdb.Error as exc:
            self._pos = False
            raise _err("mdb_cursor_get", exc) from exc
        return self._pos

    def set_range(self, key: bytes) -> bool:
        """Move to the first item whose key is >= key; False if there is none."""
        cur = self._check()
        kb = _key_arg(key, "key")
        return self._move(cur.set_range, kb) if kb else self._move(cur.first)

    def first(self) -> bool:
        """Move to the first item; False if the database is empty."""
        return self._move(self._check().first)

    def next(self) -> bool:
        """Move to the next item; False past the last one."""
        return self._move(self._check().next)

    def _current(self) -> lmdb.Cursor:
        cur = self._check()
        if not self._pos:
            raise LmdbError("cursor is not on an item; call first(), set_range() or next() and "
                            "check that it returned True")
        return cur

    def key(self) -> bytes:
        """Key of the current item."""
        return self._current().key()

    def value(self) -> bytes:
        """Value of the current item."""
        return self._current().value()

    def iter_from(self, key: bytes = b"", prefix: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for items >= key (and >= prefix) while their key starts with prefix."""
        start = _key_arg(key, "key")
        if prefix is not None:
            prefix = _key_arg(prefix, "prefix")
            if prefix > start:
                start = prefix
        self._check()
        ok = self.set_range(start)
        while ok:
            cur = self._cur
            assert cur is not None
            kb = cur.key()
            if prefix is not None and not kb.startswith(prefix):
                return
            yield kb, cur.value()
            self._check()
            ok = self._move(cur.next)

    def close(self) -> None:
        """Release the cursor; idempotent."""
        if self._cur is not None and self.txn.env._gen != fork_generation():
            self._cur = None
            return
        self._close()
        self.txn._cursors.discard(self)


class Reader:
    """One short read transaction per call (py-lmdb 3.0 exposes no reset/renew): each call
    sees the latest commit and pins no pages between calls. Safe to share between threads."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self._closed = False

    def _end_from_env(self) -> None:
        self._closed = True

    def _take(self) -> lmdb.Transaction:
        if self._closed:
            raise LmdbError("reader is closed; make a new one with env.reader()")
        return self.env._begin_raw(False)

    def get(self, db: int, key: bytes) -> bytes | None:
        """The value stored under key in the latest committed snapshot, or None."""
        if self._closed:
            raise LmdbError("reader is closed; make a new one with env.reader()")
        env = self.env
        env._check()
        handle = env._db(db)
        kb = _key_arg(key, "key")
        if not 0 < len(kb) <= env._maxkey:
            return None
        txn = self._take()
        try:
            return txn.get(kb, None, handle)
        except lmdb.Error as exc:
            raise _err("mdb_get", exc) from exc
        finally:
            env._end_raw(txn, False)

    def resolve_one(self, db: int, prefix: bytes | str, key: bytes | str) -> int:
        """The first byte of the value at prefix+key (an int), 0 if absent or empty."""
        if self._closed:
            raise LmdbError("reader is closed; make a new one with env.reader()")
        env = self.env
        env._check()
        handle = env._db(db)
        full = _key_arg(prefix, "key") + _key_arg(key, "key")
        if not 0 < len(full) <= env._maxkey:
            return 0
        txn = self._take()
        try:
            v = txn.get(full, None, handle)
        except lmdb.Error as exc:
            raise _err("mdb_get", exc) from exc
        finally:
            env._end_raw(txn, False)
        return v[0] if v else 0

    def bind_one(self, db: int, prefix: bytes | str) -> Callable[[bytes | str], int]:
        """resolve_one with db and prefix bound: a callable key -> int, for many single calls.

        An empty key answers 0 without a lookup (resolve_one would look the bare prefix up)."""
        self._check_open()
        self.env._db(db)
        pb = _key_arg(prefix, "prefix")
        resolve_one = self.resolve_one

        def code(key: bytes | str, /) -> int:
            if isinstance(key, (bytes, str)) and not key:
                self._check_open()
                return 0
            return resolve_one(db, pb, key)

        return code

    def _check_open(self) -> None:
        if self._closed:
            raise LmdbError("reader is closed; make a new one with env.reader()")
        self.env._check()

    def resolve_many(self, db: int, prefix: bytes, keys: Sequence[bytes], *, method: str = "auto",
                     sort_threshold: int = _SORT_THRESHOLD) -> bytes:
        """One byte per key (input order): first byte of the value at prefix+key, 0 if absent or empty."""
        _check_method(method, sort_threshold)
        if self._closed:
            raise LmdbError("reader is closed; make a new one with env.reader()")
        env = self.env
        env._check()
        handle = env._db(db)
        pb = _key_arg(prefix, "prefix")
        if type(keys) is not list and type(keys) is not tuple:
            keys = list(keys)
        full = []
        for k in keys:
            if isinstance(k, bytes):
                full.append(pb + k)
            elif isinstance(k, str):
                full.append(pb + k.encode("ascii"))
            else:
                raise TypeError(f"key must be bytes or an ASCII str, got {type(k).__name__}")
        if not full:
            return b""
        maxkey = env._maxkey
        out = bytearray(len(full))
        txn = self._take()
        try:
            with env._batch_call():
                get = txn.get
                for i, k in enumerate(full):
                    if 0 < len(k) <= maxkey:
                        v = get(k, None, handle)
                        if v:
                            out[i] = v[0]
        except lmdb.Error as exc:
            raise _err("resolve_many (mdb_get)", exc) from exc
        finally:
            env._end_raw(txn, False)
        return bytes(out)

    def close(self) -> None:
        """Release the reader; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.env._children.discard(self)
