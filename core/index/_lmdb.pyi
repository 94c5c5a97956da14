"""Type stub of mykey.index._lmdb, the Cython LMDB binding (ext/_lmdb.pyx).

The pure-Python twin mykey.index._lmdb_pure has the same public interface; code that
takes "a binding" (see mykey.index.binding) may rely on exactly what is written here.
Database handles are ints from Env.open_db; keys are 1..511 bytes (an ASCII str is
encoded), values are bytes. Checked against the module in tests/test_index_stub.py.
"""

from collections.abc import Callable, Iterable, Iterator
from os import PathLike
from typing import Literal

from mykey.errors import DbNotFoundError as DbNotFoundError
from mykey.errors import EnvAlreadyOpenError as EnvAlreadyOpenError
from mykey.errors import EnvNotFoundError as EnvNotFoundError
from mykey.errors import LmdbError as LmdbError
from mykey.errors import MapFullError as MapFullError
from mykey.errors import MapResizedError as MapResizedError
from typing_extensions import disjoint_base

__all__ = [
    "NAME", "LMDB_VERSION", "Env", "Txn", "Cursor", "Reader",
    "LmdbError", "DbNotFoundError", "MapFullError", "MapResizedError",
    "EnvNotFoundError", "EnvAlreadyOpenError",
]

_Key = bytes | str
_Method = Literal["auto", "get", "sorted", "cursor"]

NAME: str
"""The binding's name: "native" here, "pure" in the twin."""
LMDB_VERSION: tuple[int, int, int]
"""Version of the LMDB library in use (0.9.x)."""

@disjoint_base
class Env:
    """An LMDB environment (a directory holding data.mdb and lock.mdb)."""

    @property
    def path(self) -> str: ...
    @property
    def readonly(self) -> bool: ...
    def __init__(
        self,
        path: str | PathLike[str],
        *,
        readonly: bool = False,
        map_size: int = 68719476736,  # 64 GiB
        max_dbs: int = 16,
        nordahead: bool = False,
        create: bool = True,
        sync: bool = True,
        metasync: bool = True,
    ) -> None: ...
    def open_db(self, name: bytes, *, create: bool = True) -> int:
        """Open (and, in a writable env, create) the named database; return its handle."""
    def begin(self, write: bool = False) -> Txn:
        """Begin a transaction (read-only unless write=True)."""
    def reader(self) -> Reader:
        """A long-lived lookup helper that reuses read transactions between calls."""
    def stat(self, db: int) -> dict[str, int]:
        """entries, depth, psize, branch_pages, leaf_pages, overflow_pages."""
    def info(self) -> dict[str, int]:
        """map_size, last_txnid, last_pgno."""
    def set_map_size(self, n: int) -> None: ...
    def sync(self, force: bool = True) -> None: ...
    def copy(self, path: str | PathLike[str], *, compact: bool = True, repack: bool = False) -> None:
        """Copy into an existing empty directory: compact drops free pages; repack rewrites
        every named database in key order with appends, so that its pages are full."""
    def close(self) -> None: ...
    def __enter__(self) -> Env: ...
    def __exit__(self, *exc: object) -> None: ...

@disjoint_base
class Txn:
    """A transaction: commits on normal exit from a with-block, aborts on an exception."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Raises TypeError: make one with Env.begin()."""
    @property
    def write(self) -> bool: ...
    def get(self, db: int, key: _Key) -> bytes | None: ...
    def put(self, db: int, key: _Key, value: bytes) -> None: ...
    def put_many(self, db: int, items: Iterable[tuple[_Key, bytes]], *, sort: bool = False) -> None:
        """Store the pairs in order; sort=True: in key order (the last pair of a key wins),
        appended past the database's last key, so the pages it adds are full."""
    def put_keys(self, db: int, keys: Iterable[_Key], values: bytes | Iterable[bytes], *, sort: bool = False) -> None:
        """put_many over keys[i] -> values[i] (or values, if it is one bytes object, for every key)."""
    def get_many(self, db: int, keys: Iterable[_Key]) -> list[bytes | None]:
        """The value under each key (None where absent), in input order; looked up in key order."""
    def delete(self, db: int, key: _Key) -> bool: ...
    def drop(self, db: int) -> None: ...
    def cursor(self, db: int) -> Cursor: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Txn: ...
    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...

@disjoint_base
class Cursor:
    """A position in one database within a transaction."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Raises TypeError: make one with Txn.cursor(db)."""
    def set_range(self, key: _Key) -> bool: ...
    def first(self) -> bool: ...
    def next(self) -> bool: ...
    def key(self) -> bytes: ...
    def value(self) -> bytes: ...
    def iter_from(self, key: _Key = b"", prefix: _Key | None = None) -> Iterator[tuple[bytes, bytes]]: ...
    def close(self) -> None: ...

@disjoint_base
class Reader:
    """Lookups, each in a fresh snapshot of the latest commit; safe to share between threads."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Raises TypeError: make one with Env.reader()."""
    def get(self, db: int, key: _Key) -> bytes | None: ...
    def resolve_one(self, db: int, prefix: _Key, key: _Key) -> int:
        """The first byte of the value at prefix+key, 0 if absent or empty (one key of resolve_many)."""
    def bind_one(self, db: int, prefix: _Key) -> Callable[[_Key], int]:
        """resolve_one with db and prefix bound: a callable key -> int, for many single calls
        (db and prefix are checked once, here). An empty key answers 0 without a lookup."""
    def resolve_many(
        self, db: int, prefix: _Key, keys: Iterable[_Key], *, method: _Method = "auto", sort_threshold: int = 16
    ) -> bytes:
        """One byte per key, in input order: the first byte of the value at prefix+key, 0 if absent or empty."""
    def close(self) -> None: ...
