"""Power cuts small enough to enumerate: every disk state the model allows, at every point of a short run.

Three components are run alone under the recorder, each with its own invariants:

- ``log_run``: the file log (fsync="always", small segments so that it rolls): every
  acknowledged batch is present and whole after reopening, nothing else but whole batches
  written later, and `log verify` agrees;
- ``merkle_run``: the Merkle store: after reopening, every flushed leaf and the flushed
  root are intact, the interior nodes match the leaves, and any leaf that differs from
  what was appended lies at or after ``recovery.unsynced_from`` (the caller's promise to
  re-check those against the log is what the trail keeps);
- ``files_run``: mykey.fs's private_dir, write_exclusive and write_atomic: each file is
  absent or holds one whole version, and what returned is there.

``check_all`` walks every cut of a recording and checks every state each cut allows (a
sample where there are more than LIMIT; the tests ask for every cut to be enumerated in full).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mykey import fs
from mykey.audit.merkle import leaf_hash, root_from_leaf_hashes
from mykey.audit.merkle_store import MerkleStore
from mykey.domain import events as ev
from mykey.log.filelog import FileLog
from mykey.log.verify import verify_log

from .checks import Truth
from .osmodel import Recorder, cut_states

LIMIT = 4096  # states per cut up to which a cut counts as small enough to enumerate


@dataclass
class Run:
    trace: list[tuple]
    check: Callable[[Path, list[tuple[str, object]]], None]
    dont_care: Callable[[str], bool] = lambda rel: False


def log_run(root: Path, seed: int, batches: int, *, segment_bytes: int = 3000) -> Run:
    rng = random.Random(seed)
    rec = Recorder(root)
    with rec.installed():
        log = FileLog.open(root / "log", fsync="always", segment_bytes=segment_bytes)
        for i in range(batches):
            n = rng.choice([1, 1, 2, 3])
            events = [ev.TrustAnchorAdded(bytes(32), bytes([i % 251 + 1]) * rng.randrange(1, 700)) for _ in range(n)]
            log.append(events)
            rec.mark("ack", log.last_seq)
        log.close()
    with FileLog.open(root / "log", readonly=True) as log:
        truth = Truth.of_log(log)

    def check(path: Path, marks: list[tuple[str, object]]) -> None:
        acked = max([p for k, p in marks if k == "ack"], default=0)
        with FileLog.open(path / "log", segment_bytes=segment_bytes) as log:
            batches_now = list(log.read_batches())
            records = [p for _, ps in batches_now for p in ps]
            assert log.last_seq >= acked, f"acknowledged through {acked}, the log ends at {log.last_seq}"
            assert records == truth.records[: len(records)], "a record differs from what was written"
            assert [f for f, _ in batches_now] == truth.batch_starts[: len(batches_now)], "batches differ"
            assert len(records) == log.last_seq and (log.last_seq == 0 or log.last_seq in truth.batch_ends())
            log.append([ev.TrustAnchorAdded(bytes(32), b"after the cut")])
        report = verify_log(path / "log")
        assert report.ok, f"log verify: {report.problem}"

    return Run(rec.trace, check, lambda rel: rel == "log/LOCK")


def merkle_run(root: Path, seed: int, appends: int) -> Run:
    rng = random.Random(seed)
    rec = Recorder(root)
    leaves: list[bytes] = []
    with rec.installed():
        store = MerkleStore.open(root / "merkle")
        for i in range(appends):
            new = [f"leaf {len(leaves) + j} of run {seed}".encode() for j in range(rng.choice([1, 2, 3]))]
            store.append_leaves(new)
            leaves.extend(leaf_hash(d) for d in new)
            rec.mark("appended", len(leaves))
            if i % 2 == 1 or i == appends - 1:
                store.flush()
                rec.mark("flushed", len(leaves))
        store.close()

    def check(path: Path, marks: list[tuple[str, object]]) -> None:
        flushed = max([p for k, p in marks if k == "flushed"], default=0)
        with MerkleStore.open(path / "merkle") as store:
            assert store.size >= flushed, f"flushed {flushed} leaves, the store has {store.size}"
            got = [store.leaf_hash(i) for i in range(store.size)]
            assert got[:flushed] == leaves[:flushed], "a flushed leaf changed"
            assert store.root(flushed) == root_from_leaf_hashes(leaves[:flushed]), "the flushed root changed"
            store.verify()
            bad = next((i for i, h in enumerate(got) if i >= len(leaves) or h != leaves[i]), None)
            if bad is not None:
                unsynced = store.recovery.unsynced_from if store.recovery is not None else store.size
                assert bad >= unsynced, f"leaf {bad} is wrong but recovery says leaves from {unsynced} are sound"

    return Run(rec.trace, check, lambda rel: rel == "merkle/lock")


def files_run(root: Path, seed: int) -> Run:
    rng = random.Random(seed)
    rec = Recorder(root)
    versions: dict[str, list[bytes]] = {"a/b/key": [], "a/b/note": [], "a/c/d/key2": []}
    with rec.installed():
        fs.private_dir(root / "a" / "b")
        for name in ("a/b/key", "a/c/d/key2"):
            data = rng.randbytes(rng.randrange(1, 1500))
            versions[name].append(data)
            fs.private_dir((root / name).parent)
            fs.write_exclusive(root / name, data)
            rec.mark("ack", (name, data))
        for _ in range(3):
            data = rng.randbytes(rng.randrange(1, 1500))
            versions["a/b/note"].append(data)
            fs.write_atomic(root / "a/b/note", data, mode=0o644)
            rec.mark("ack", ("a/b/note", data))

    def check(path: Path, marks: list[tuple[str, object]]) -> None:
        acked: dict[str, bytes] = {}
        for kind, payload in marks:
            if kind == "ack":
                name, data = payload  # type: ignore[misc]
                acked[name] = data
        for name, vs in versions.items():
            p = path / name
            if p.exists():
                assert p.read_bytes() in vs, f"{name} holds a version that was never written whole"
            if name in acked:
                assert p.exists(), f"{name} was written and returned, but is gone"
                content = p.read_bytes()
                assert vs.index(content) >= vs.index(acked[name]), f"{name} went back to an older version"

    return Run(rec.trace, check)


def check_all(run: Run, workdir: Path, *, rng: random.Random, require_exhaustive: bool = True,
              samples: int = 200) -> tuple[int, int, int]:
    """Check the states at every cut of run: all of them where there are at most LIMIT, else a sample.

    Returns (cuts, states checked, cuts enumerated in full); with require_exhaustive, a cut
    with too many states to enumerate fails the check (make the run smaller).
    """
    states = 0
    exhaustive: set[int] = set()
    for state in cut_states(run.trace, workdir, cuts=range(len(run.trace)), rng=rng, limit=LIMIT,
                            samples=samples, dont_care=run.dont_care):
        if require_exhaustive:
            assert state.exhaustive, f"{state.where()}: too many states to enumerate; make the run smaller"
        if state.exhaustive:
            exhaustive.add(state.pos)
        try:
            run.check(state.path, state.marks)
        except Exception as exc:
            raise AssertionError(f"{state.where()}:\n{type(exc).__name__}: {exc}") from exc
        states += 1
    return len(run.trace), states, len(exhaustive)
