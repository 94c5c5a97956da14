"""Power-loss simulation: record a writer's OS calls, cut the power anywhere, reopen every disk state allowed.

``record_run`` runs the mixed workload through an Engine (fsync="always") under the
recorder (osmodel.py: the model, and why a shim), marking every
acknowledgement and every LMDB commit in the trace. ``simulate`` replays the trace; at
each chosen cut it materialises the disk states the model allows (all of them when there
are few, else a sample) and checks each with ``check_state``: the engine reopens,
recovery keeps every acknowledged batch whole and drops no more than unacknowledged
ones, the Merkle trail and the checkpoints agree with the log, the index catches up to
a fresh rebuild (`mykey audit diff`), and the engine goes on appending.

LMDB's durability is LMDB's. The index runs with sync on and metasync off: a commit
fdatasyncs its data pages (which also flushes the previous commit's meta page) and
writes its own meta page without a sync, so after a crash the index is at its last or
its previous commit, never corrupt (LMDB documents exactly this for MDB_NOMETASYNC). The
harness snapshots data.mdb after every commit of the engine (a consistent copy: the
engine is single-threaded and between transactions) and the model offers, for a cut,
the last two, any earlier one (sampled), or none (data.mdb's directory entry is never
fsynced by LMDB). The log is the truth: reopening must catch up from any of them.

``second_cut=True`` also cuts the power while the engine reopens (recovery itself is
recorded from the first cut's state) and checks the state after that second cut.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mykey.datadir import DataDir
from mykey.engine import Engine
from mykey.index.store import current_generation
from mykey.log.filelog import FileLog

from .checks import Truth, check_engine_state, verify_commands
from .osmodel import DiskModel, Recorder, cut_states
from .workload import Pki, Workload

LMDB_DIRS = ("challenges", "auth-nonces")  # single-use stores: LMDB environments beside the index


def lmdb_file(rel: str) -> bool:
    """LMDB's own files (an index generation, the single-use stores): written by C, not seen by the shim.

    The index's are modelled by snapshots; the single-use stores hold nothing that must
    survive (challenges and nonces expire in minutes), so the model drops them.
    """
    first, sep, _ = rel.partition("/")
    return bool(sep) and (first.startswith("index-") or first in LMDB_DIRS)


@dataclass
class Recording:
    """One recorded run: the trace, LMDB snapshots, and what the writer wrote."""

    trace: list[tuple]
    lmdb: dict[int, bytes]
    truth: Truth
    vkey: str
    commands: list[str] = field(default_factory=list)


class _LmdbVersions:
    """Snapshots of the live index's data.mdb after each commit, marked in the trace."""

    def __init__(self, rec: Recorder, data: DataDir, store: dict[int, bytes]) -> None:
        self.rec, self.data, self.store = rec, data, store
        self._by_hash: dict[bytes, int] = {}
        self._last: int | None = None

    def snapshot(self) -> None:
        gen = current_generation(self.data)
        assert gen is not None
        with open(gen / "data.mdb", "rb") as f:
            content = f.read()
        h = hashlib.sha256(content).digest()
        vid = self._by_hash.get(h)
        if vid is None:
            vid = self._by_hash[h] = len(self.store)
            self.store[vid] = content
        if vid != self._last:
            self._last = vid
            self.rec.mark("external", (f"{gen.name}/data.mdb", vid))

    def watch(self, index) -> None:
        """Snapshot after every Index.apply (the engine's only index commits after open)."""
        apply = index.apply

        def applied(envs):
            r = apply(envs)
            self.snapshot()
            return r

        index.apply = applied


def record_run(root: Path, scratch: Path, pki: Pki, seed: int, commands: int, *, segment_bytes: int = 4096,
               big_imports: bool = False) -> Recording:
    """Run the workload on an empty root under the recorder (fsync="always"); returns the recording."""
    rng = random.Random(seed)
    rec = Recorder(root, external=lmdb_file)
    lmdb: dict[int, bytes] = {}
    data = DataDir(root)
    kinds: list[str] = []
    versions = _LmdbVersions(rec, data, lmdb)

    def on_ack(kind: str, seq: int, extra: object) -> None:
        rec.mark("ack", (seq, extra if kind == "checkpoint" else None))

    with rec.installed():
        # As `mykey init` and a first command would: the data directory is made by Engine.open.
        engine = Engine.open(root)
        try:
            versions.snapshot()
            versions.watch(engine.index)
            Workload(engine, pki, rng, scratch, on_ack).setup()
        finally:
            engine.close()
        # The writer, reopened with small segments so that the workload rolls to new ones.
        engine = Engine.open(root, log=FileLog.open(data.log, fsync="always", segment_bytes=segment_bytes))
        try:
            versions.snapshot()
            versions.watch(engine.index)
            work = Workload(engine, pki, rng, scratch, on_ack, big_imports=big_imports)
            for _ in range(commands):
                kinds.append(work.step())
        finally:
            engine.close()
    with FileLog.open(data.log, readonly=True) as log:
        truth = Truth.of_log(log)
    vkey = (data.keys / "checkpoint.vkey").read_text("ascii").strip()
    return Recording(rec.trace, lmdb, truth, vkey, kinds)


@dataclass
class Stats:
    cuts: int = 0
    states: int = 0  # distinct disk states reopened and checked
    exhaustive_cuts: int = 0  # cuts whose every allowed state was checked
    second_cuts: int = 0
    seconds: float = 0.0

    def add(self, other: Stats) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


def check_state(root: Path, rec: Recording, acked_seq: int, acked_cps: list[tuple[int, str]], *,
                go_on: bool = True) -> int:
    """Reopen a materialised state and check every invariant; returns the log's last sequence then."""
    engine = Engine.open(root)
    try:
        last = check_engine_state(engine, rec.truth, acked_seq, acked_cps)
        if go_on:
            engine.register_business("after the power cut", "131016")  # the writer goes on
    finally:
        engine.close()
    verify_commands(root, rec.vkey)
    return last


def _write_external(store: dict[int, bytes]):
    def write(path: Path, version: object) -> None:
        path.write_bytes(store[version])  # type: ignore[index]

    return write


def _acknowledged(marks: list[tuple[str, object]]) -> tuple[int, list[tuple[int, str]]]:
    """(last acknowledged sequence, acknowledged checkpoints (size, note)) from the trace's markers."""
    from mykey.audit.checkpoint import peek_checkpoint

    acked_seq, cps = 0, []
    for kind, payload in marks:
        if kind == "ack":
            acked_seq, note = payload  # type: ignore[misc]
            if note is not None:
                cps.append((peek_checkpoint(note).size, note))
    return acked_seq, cps


def lock_file(rel: str) -> bool:
    """Lock files hold only the holder's pid, for messages: the model keeps them as last written."""
    return rel in ("log/LOCK", "merkle/lock", "index.lock")


def simulate(rec: Recording, workdir: Path, *, cuts: Iterable[int], rng: random.Random, limit: int = 64,
             samples: int = 6, second_cut: bool = False) -> Stats:
    """Cut the power after each trace position in cuts; check every (or a sample of each) allowed state."""
    stats = Stats()
    started = time.monotonic()
    cuts = sorted(set(cuts))
    stats.cuts = len(cuts)
    exhaustive: set[int] = set()
    for state in cut_states(rec.trace, workdir, cuts=cuts, rng=rng, limit=limit, samples=samples,
                            write_external=_write_external(rec.lmdb), dont_care=lock_file):
        acked_seq, acked_cps = _acknowledged(state.marks)
        try:
            if second_cut and rng.random() < 0.5:
                stats.second_cuts += _second_cut(state.path, workdir, rng)
            check_state(state.path, rec, acked_seq, acked_cps)
        except AssertionError as exc:
            raise AssertionError(f"{state.where()}:\n{exc}") from exc
        except Exception as exc:
            raise AssertionError(f"{state.where()}:\nreopening raised {type(exc).__name__}: {exc}") from exc
        stats.states += 1
        if state.exhaustive:
            exhaustive.add(state.pos)
    stats.exhaustive_cuts = len(exhaustive)
    stats.seconds = time.monotonic() - started
    return stats


def _second_cut(target: Path, workdir: Path, rng: random.Random) -> int:
    """Record the reopen of target (its recovery), cut the power during it, and leave the result in target."""
    staging = workdir / "second"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    store: dict[int, bytes] = {}
    r2 = Recorder(staging, external=lmdb_file)
    _adopt(r2, target, store)
    with r2.installed():
        engine = Engine.open(staging)
        try:
            v = _LmdbVersions(r2, DataDir(staging), store)
            v.snapshot()
            v.watch(engine.index)
        finally:
            engine.close()
    model = DiskModel(dont_care=lock_file)
    positions = [i for i, e in enumerate(r2.trace) if e[0] != "mark"]
    base = next(i for i, e in enumerate(r2.trace) if e == ("mark", "adopted", None))
    cut = rng.choice([p for p in positions if p > base] or [base])
    for e in r2.trace[: cut + 1]:
        model.apply(e)
    dims, plan = model.choices()
    choice = tuple(rng.randrange(d.options) for d in dims)
    shutil.rmtree(target)
    target.mkdir()
    model.materialise(plan, choice, target, _write_external(store))
    shutil.rmtree(staging)
    return 1


def _adopt(rec: Recorder, source: Path, store: dict[int, bytes]) -> None:
    """Copy source into the recorder's (empty) root through the recorded calls, all of it durable."""
    with rec.installed():
        for dirpath, dirnames, filenames in os.walk(source):
            rel = os.path.relpath(dirpath, source)
            dest = Path(rec.root) / rel if rel != "." else Path(rec.root)
            for d in sorted(dirnames):
                if os.path.islink(os.path.join(dirpath, d)):
                    os.symlink(os.readlink(os.path.join(dirpath, d)), dest / d)
                else:
                    os.mkdir(dest / d)
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                if os.path.islink(src):
                    os.symlink(os.readlink(src), dest / name)
                    continue
                content = Path(src).read_bytes()
                relfile = os.path.relpath(os.path.join(dest, name), rec.root)
                if lmdb_file(relfile):
                    with open(src, "rb") as f:
                        blob = f.read()
                    vid = len(store)
                    store[vid] = blob
                    shutil.copyfile(src, dest / name)  # LMDB's files are not in the model
                    rec.mark("external", (relfile, vid))
                    continue
                fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, os.stat(src).st_mode & 0o777)
                try:
                    os.write(fd, content)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for dirpath, _dirs, _files in os.walk(rec.root):
            fd = os.open(dirpath, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    rec.mark("adopted")
