"""Power cuts: every state of short component runs, and a sample of states of an engine run (`make torture`: more)."""

from __future__ import annotations

import itertools
import os
import random

import pytest

from . import components
from .osmodel import DiskModel, Recorder, combinations, space_size
from .powerloss import record_run, simulate

pytestmark = pytest.mark.usefixtures("quiet")


@pytest.mark.parametrize("run", ["files", "log", "merkle"])
def test_every_state_after_every_cut_of_a_small_run(fast_path, run):
    make = {
        "files": lambda root: components.files_run(root, 1),
        "log": lambda root: components.log_run(root, 1, 8),
        "merkle": lambda root: components.merkle_run(root, 1, 6),
    }[run]
    cuts, states, exhaustive = components.check_all(make(fast_path / "root"), fast_path / "work", rng=random.Random(1))
    assert cuts > 30 and states > 30 and exhaustive > 10  # check_all fails a cut it cannot enumerate


def test_engine_power_cuts(fast_path, faults_pki):
    (fast_path / "data").mkdir()
    (fast_path / "scratch").mkdir()
    rec = record_run(fast_path / "data", fast_path / "scratch", faults_pki, seed=11, commands=25)
    assert len(rec.commands) == 25 and len(rec.truth.records) > 25
    rng = random.Random(11)
    cuts = sorted(rng.sample(range(len(rec.trace)), 40))
    stats = simulate(rec, fast_path / "work", cuts=cuts, rng=rng, limit=32, samples=3, second_cut=True)
    assert stats.states > 100 and stats.second_cuts > 20


def test_the_model_drops_keeps_or_tears_unsynced_writes(fast_path):
    # The model itself: an unsynced 1,000-byte write over three sectors gives every
    # mix of old and new sectors and every size; once fsynced, only the new content.
    rec = Recorder(fast_path / "root")
    with rec.installed():
        fd = os.open(fast_path / "root" / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"a" * 100)
        os.fsync(fd)
        os.write(fd, b"b" * 1000)
        rec.mark("written")
        os.fsync(fd)
        os.close(fd)
        d = os.open(fast_path / "root", os.O_RDONLY)
        os.fsync(d)
        os.close(d)
    model = DiskModel()
    contents = set()
    n = itertools.count()
    for e in rec.trace:
        model.apply(e)
        if e == ("mark", "written", None):
            dims, plan = model.choices()
            for choice in combinations(dims, limit=10_000, samples=0, rng=random.Random()):
                out = fast_path / f"s{next(n)}"
                out.mkdir()
                model.materialise(plan, choice, out, None)
                if (out / "f").exists():
                    contents.add((out / "f").read_bytes())
            assert space_size(dims) > 1
    sectors = [b"a" * 100 + b"b" * 412, b"b" * 512, b"b" * 76]
    olds = [b"a" * 100 + bytes(412), bytes(512), bytes(76)]
    for pick in range(8):
        full = b"".join(sectors[i] if pick >> i & 1 else olds[i] for i in range(3))
        assert full in contents  # torn at sector granularity, at the full size
    assert b"a" * 100 in contents  # the size not yet extended
    dims, _ = model.choices()
    assert dims == []  # after the final fsyncs nothing is left to choose
