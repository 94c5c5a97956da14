"""The LMDB index: the log projected into named databases (writer side, and rebuild).

DATA/index is a symlink to the current generation directory (index-000001, ...).
Each batch of events is applied in one write transaction that also stores the
last applied sequence number, so the index always sits at a batch boundary and
reopening resumes from there. `rebuild` replays the log into a new generation and
swaps the symlink atomically; resolvers with the old one open keep working.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import msgspec

from ..datadir import DataDir
from ..domain.events import Envelope, decode_envelope
from ..errors import (
    EnvNotFoundError,
    IndexGapError,
    IndexLockedError,
    IndexSchemaError,
    NoIndexError,
)
from ..fs import (
    LMDB_FILES,
    OwnerLock,
    check_private_dir,
    fsync_dir,
    fsync_path,
    private_dir,
)
from ..log.store import LogStore
from . import keys as k
from .binding import binding as default_binding
from .keys import Dbs
from .projection import apply_envelopes

GENERATION_PREFIX = "index-"


def open_dbs(env, *, create: bool) -> Dbs:
    """Open every named database of the index in env, once its schema is known to be this
    mykey's (IndexSchemaError saying to run `mykey rebuild` if not; a new index gets it)."""
    meta = env.open_db(b"meta", create=create)
    _check_schema(env, meta, write=create and not env.readonly)
    return Dbs(**{name.decode(): env.open_db(name, create=create) for name in k.DB_NAMES})


def current_generation(data: DataDir) -> Path | None:
    """The generation directory DATA/index points at, or None before the first index."""
    link = data.index
    if not link.is_symlink():
        return None
    return (link.parent / os.readlink(link)).resolve()


def _next_generation(data: DataDir) -> Path:
    nums = [int(p.name[len(GENERATION_PREFIX) :].split(".")[0]) for p in data.root.glob(GENERATION_PREFIX + "*")
            if p.name[len(GENERATION_PREFIX) :].split(".")[0].isdigit()]
    return data.root / f"{GENERATION_PREFIX}{max(nums, default=0) + 1:06d}"


def _point_index_at(data: DataDir, generation: Path) -> None:
    """Atomically make DATA/index point at generation (rename of a fresh symlink)."""
    tmp = data.root / f".index-link-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(generation.name, tmp)
    os.replace(tmp, data.index)
    fsync_dir(data.root)


def open_readonly(path: Path, binding: ModuleType | None = None, *, nordahead: bool = False):
    """Open an index environment directory read-only: (env, dbs). The caller closes env."""
    env = (binding or default_binding()).Env(str(path), readonly=True, create=False, max_dbs=k.MAX_DBS, nordahead=nordahead)
    try:
        return env, open_dbs(env, create=False)
    except BaseException:
        env.close()
        raise


def open_live_readonly(data: DataDir, binding: ModuleType | None = None, *, nordahead: bool = False):
    """Open the generation DATA/index points at, read-only: (env, dbs, generation).

    NoIndexError before the first index exists. For a process that does not hold the index
    open otherwise (LMDB allows one open of an environment per process).
    """
    gen = current_generation(data)
    if gen is None or not gen.is_dir():
        raise NoIndexError(f"no index in {data.root}; run `mykey init` (or `mykey rebuild`) first")
    check_private_dir(data.root)
    try:
        env, dbs = open_readonly(gen, binding, nordahead=nordahead)
    except EnvNotFoundError:  # a crash while an older version created it: nothing was applied
        raise NoIndexError(f"the index {gen} is empty; open the engine once (or run `mykey rebuild`)") from None
    return env, dbs, gen


_ENVELOPES = msgspec.msgpack.Decoder(list[Envelope])


def _array_header(n: int) -> bytes:
    """MessagePack's header of an array of n items."""
    if n < 16:
        return bytes((0x90 | n,))
    return b"\xdc" + struct.pack(">H", n) if n < 1 << 16 else b"\xdd" + struct.pack(">I", n)


def decode_envelopes(payloads: Sequence[bytes]) -> list[Envelope]:
    """decode_envelope of every record, in one call for the whole list (the records side by
    side are an array's items); a record of an older schema version, or any that does not
    decode, is decoded on its own as decode_envelope does."""
    if len(payloads) < 2:
        return [decode_envelope(p) for p in payloads]
    try:
        envs = _ENVELOPES.decode(_array_header(len(payloads)) + b"".join(payloads))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return [decode_envelope(p) for p in payloads]
    if len(envs) != len(payloads):
        return [decode_envelope(p) for p in payloads]
    for i, env in enumerate(envs):
        if env.v != env.body.VERSION:
            envs[i] = decode_envelope(payloads[i])
    return envs


def envelope_chunks(
    log: LogStore, from_seq: int, max_events: int, to_seq: int | None = None
) -> Iterator[list[Envelope]]:
    """Envelopes from from_seq on in whole log batches, grouped up to about max_events.

    Whole batches keep a command's events together in one transaction; with to_seq, the
    last chunk ends at the last batch boundary at or before it.
    """
    pending: list[Envelope] = []
    for first_seq, payloads in log.read_batches(from_seq):
        if to_seq is not None and first_seq + len(payloads) - 1 > to_seq:
            break
        skip = from_seq - first_seq if first_seq < from_seq else 0
        pending.extend(decode_envelopes(payloads[skip:] if skip else payloads))
        if len(pending) >= max_events:
            yield pending
            pending = []
    if pending:
        yield pending


def commit_envelopes(env, dbs: Dbs, envs: Sequence[Envelope]) -> int:
    """Apply envelopes and record the last applied seq in one write transaction; returns it."""
    txn = env.begin(write=True)
    try:
        last = apply_envelopes(txn, dbs, envs)
        txn.put(dbs.meta, b"last_seq", k.u64(last))
        txn.commit()
    except BaseException:
        txn.abort()
        raise
    return last


def read_meta_last_seq(txn, dbs: Dbs) -> int:
    raw = txn.get(dbs.meta, b"last_seq")
    return 0 if raw is None else k.parse_u64(raw)


class Index:
    """Writer side of the LMDB index. One per data directory at a time (an OS lock)."""

    def __init__(self, data: DataDir, env, dbs: Dbs, lock: OwnerLock, binding: ModuleType) -> None:
        self.data = data
        self.env = env
        self.dbs = dbs
        self.binding = binding
        self._lock = lock
        with env.begin() as txn:
            self._last_seq = read_meta_last_seq(txn, dbs)

    @classmethod
    def open(cls, data: DataDir, *, binding: ModuleType | None = None, sync: bool = True) -> Index:
        """Open (creating if needed) the live index for writing; takes the index lock."""
        binding = binding or default_binding()
        private_dir(data.root)
        lock = _take_index_lock(data)
        try:
            gen = current_generation(data)
            if gen is None or not gen.is_dir():
                gen = _first_generation(data, binding)
            # No meta-page fsync: an OS crash may undo the last commit, never corrupt the env;
            # the log is the source of truth and reopening replays what the index lacks.
            env = binding.Env(str(gen), map_size=64 << 30, max_dbs=k.MAX_DBS, sync=sync, metasync=False)
            try:
                dbs = open_dbs(env, create=True)
            except BaseException:
                env.close()
                raise
        except BaseException:
            lock.release()
            raise
        return cls(data, env, dbs, lock, binding)

    @property
    def last_seq(self) -> int:
        """Sequence number of the last event applied."""
        return self._last_seq

    def apply(self, envs: Sequence[Envelope]) -> int:
        """Apply one batch in one write transaction (with the new last_seq); returns last_seq.

        Envelopes at or below last_seq are skipped, so applying twice is harmless;
        a gap raises IndexGapError and changes nothing.
        """
        start = 0
        while start < len(envs) and envs[start].seq <= self._last_seq:
            start += 1
        if start == len(envs):
            return self._last_seq
        if envs[start].seq != self._last_seq + 1:
            raise IndexGapError(
                f"index is at sequence {self._last_seq} but the next event given is {envs[start].seq}; "
                "catch up from the log instead"
            )
        self._last_seq = commit_envelopes(self.env, self.dbs, envs[start:] if start else envs)
        return self._last_seq

    def catch_up(self, log: LogStore, *, progress: Callable[[int], None] | None = None,
                 max_events_per_txn: int = 50_000) -> int:
        """Apply every committed log batch after last_seq; returns the new last_seq.

        Whole log batches only (a command's events become visible together); small
        consecutive batches share a transaction up to max_events_per_txn.
        """
        for chunk in envelope_chunks(log, self._last_seq + 1, max_events_per_txn):
            self.apply(chunk)
            if progress:
                progress(len(chunk))
        return self._last_seq

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        """Close the environment and release the index lock. Idempotent."""
        if self.env is not None:
            self.env.close()
            self.env = None
        self._lock.release()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_generation(data: DataDir, binding: ModuleType) -> Path:
    """Make an empty index (its schema recorded, durably) and only then point DATA/index at it.

    A reader that finds DATA/index finds an environment in it, even after a crash or a
    power cut during the creation (which leaves only an unfinished build, removed here next time).
    """
    _remove_unfinished_builds(data)
    target = _next_generation(data).with_suffix(".building")
    private_dir(target, files=LMDB_FILES)
    env = binding.Env(str(target), map_size=64 << 30, max_dbs=k.MAX_DBS)
    try:
        open_dbs(env, create=True)  # records the schema
    finally:
        env.close()
    fsync_path(target / "data.mdb")
    fsync_dir(target)
    final = target.with_suffix("")
    os.rename(target, final)
    _point_index_at(data, final)
    return final


def _take_index_lock(data: DataDir) -> OwnerLock:
    """DATA/index.lock: one index writer (engine, projector or rebuild) per data directory."""

    def held_by(holder: str) -> IndexLockedError:
        return IndexLockedError(
            f"another process (pid {holder}) writes the index of {data.root}; "
            "stop it first (an engine, projector or rebuild), or use a read-only Resolver"
        )

    check_private_dir(data.root, tighten=True)  # refuse a directory others may write; make it owner-only
    return OwnerLock.acquire(data.root / "index.lock", held_by=held_by)


def _check_schema(env, meta: int, *, write: bool) -> None:
    """IndexSchemaError unless the index's layout is INDEX_SCHEMA; with write, a new index gets it."""
    with env.begin(write=write) as txn:
        raw = txn.get(meta, b"schema")
        if raw is None and write:
            txn.put(meta, b"schema", k.u64(k.INDEX_SCHEMA))
        elif raw is not None and k.parse_u64(raw) != k.INDEX_SCHEMA:
            raise IndexSchemaError(
                f"index schema {k.parse_u64(raw)} is not {k.INDEX_SCHEMA} (this mykey's layout); "
                "run `mykey rebuild` to rebuild it from the log"
            )


def build_generation(
    data: DataDir,
    log: LogStore,
    *,
    to_seq: int | None = None,
    into: Path | None = None,
    binding: ModuleType | None = None,
    progress: Callable[[int], None] | None = None,
    batch_events: int = 50_000,
) -> Path:
    """Replay the log (up to to_seq, at a batch boundary at or before it) into a fresh env directory."""
    binding = binding or default_binding()
    target = into or _next_generation(data).with_suffix(".building")
    if target.exists():
        shutil.rmtree(target)
    private_dir(target, files=LMDB_FILES)
    try:
        _fill_generation(target, log, binding, to_seq, progress, batch_events)
    except BaseException:
        # A failed build (a full disk, say) leaves nothing behind to take the space freed for the next try.
        shutil.rmtree(target.with_name(target.name + ".compact"), ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _fill_generation(target: Path, log: LogStore, binding: ModuleType, to_seq: int | None,
                     progress: Callable[[int], None] | None, batch_events: int) -> None:
    env = binding.Env(str(target), map_size=64 << 30, max_dbs=k.MAX_DBS, sync=False)
    try:
        dbs = open_dbs(env, create=True)
        for chunk in envelope_chunks(log, 1, batch_events, to_seq):
            commit_envelopes(env, dbs, chunk)
            if progress:
                progress(len(chunk))
        # Keys written out of order leave pages part empty, and large write transactions
        # free pages behind them: the generation kept is a repacked copy, every database
        # rewritten in key order with appends so that every page is full.
        compact = target.with_name(target.name + ".compact")
        if compact.exists():
            shutil.rmtree(compact)
        private_dir(compact, files=LMDB_FILES)  # the repacked environment opens them as they are
        env.copy(str(compact), repack=True)
    finally:
        env.close()
    fsync_path(compact / "data.mdb")
    fsync_dir(compact)
    shutil.rmtree(target)
    os.rename(compact, target)
    fsync_dir(target.parent)


def _remove_unfinished_builds(data: DataDir) -> None:
    """Generations a killed rebuild left half built (only the index lock holder may call this)."""
    for p in data.root.glob(GENERATION_PREFIX + "*"):
        if p.is_dir() and not p.is_symlink() and p.name.endswith((".building", ".compact")):
            shutil.rmtree(p, ignore_errors=True)


def rebuild(data: DataDir, log: LogStore, *, binding: ModuleType | None = None,
            progress: Callable[[int], None] | None = None) -> Path:
    """Build a fresh index from the whole log and swap it in atomically; returns the new generation.

    Takes the index lock, so no engine or projector may be writing the index.
    """
    lock = _take_index_lock(data)
    try:
        _remove_unfinished_builds(data)
        building = build_generation(data, log, binding=binding, progress=progress)
        final = building.with_suffix("")
        os.rename(building, final)
        old = current_generation(data)
        _point_index_at(data, final)
        if old is not None and old != final and old.is_dir():
            # Resolvers that still have it open keep their mapping; the files go when they close.
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        lock.release()


def diff_indexes(env_a, dbs_a: Dbs, env_b, dbs_b: Dbs, *, limit: int = 100) -> list[str]:
    """Differences between two indexes, streamed key by key (empty when they are equal)."""
    diffs: list[str] = []
    with env_a.begin() as ta, env_b.begin() as tb:
        for name in k.DB_NAMES:
            attr = name.decode()
            ca, cb = ta.cursor(getattr(dbs_a, attr)), tb.cursor(getattr(dbs_b, attr))
            try:
                ia, ib = ca.iter_from(b""), cb.iter_from(b"")
                xa, xb = next(ia, None), next(ib, None)
                while xa is not None or xb is not None:
                    if xb is None or (xa is not None and xa[0] < xb[0]):
                        diffs.append(f"{attr}: {xa[0]!r} only in the first index")
                        xa = next(ia, None)
                    elif xa is None or xb[0] < xa[0]:
                        diffs.append(f"{attr}: {xb[0]!r} only in the second index")
                        xb = next(ib, None)
                    else:
                        if xa[1] != xb[1]:
                            diffs.append(f"{attr}: {xa[0]!r}: {xa[1]!r} != {xb[1]!r}")
                        xa, xb = next(ia, None), next(ib, None)
                    if len(diffs) >= limit:
                        return diffs
            finally:
                ca.close()
                cb.close()
    return diffs
