"""`make torture`: the long fault-injection runs, and their figures.

    python -m tests.faults.torture [--scale F] [--only power,disk,kill,fuzz] [--resume FILE] [--save-corpus]

Runs, at scale 1: power cuts of the engine (sampled, with second cuts during recovery)
and of the log, the Merkle store and mykey.fs (every state); full disks (as root) and
injected I/O errors; 1,000 SIGKILLs each of the writer, the projector and resolvers;
1,000,000+ fuzzed inputs. Any broken invariant stops the run with the failure (exit 1);
the figures are printed at the end. --resume FILE keeps the figures of each finished part,
so a run that was stopped goes on with the parts not yet done (`make torture` does this in
build/). --save-corpus merges the inputs atheris found interesting into
tests/faults/corpus/ (libFuzzer's -merge: only inputs that add coverage).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import components, diskfull, fuzz, killloop
from .powerloss import Stats, record_run, simulate
from .workload import Pki

FUZZ_BUDGET = {"envelope": 300_000, "framing": 300_000, "csv": 150_000, "certs": 100_000, "crl": 100_000,
               "proof": 150_000, "gateway": 150_000}


def _n(x: float) -> str:
    return f"{int(x):,}"


def power(pki: Pki, work: Path, scale: float, out: list[str]) -> None:
    started = time.monotonic()
    comp_cuts = comp_states = comp_full = 0
    for seed in range(max(1, round(6 * scale))):
        for make in (lambda r: components.files_run(r, seed), lambda r: components.log_run(r, seed, 8),
                     lambda r: components.merkle_run(r, seed, 6)):
            root = work / f"comp-{seed}"
            shutil.rmtree(root, ignore_errors=True)
            c, s, full = components.check_all(make(root), work / "comp-work", rng=random.Random(seed),
                                              require_exhaustive=False)
            comp_cuts += c
            comp_states += s
            comp_full += full
            shutil.rmtree(root, ignore_errors=True)
    total = Stats()
    for seed in range(max(1, round(12 * scale))):
        base = work / f"engine-{seed}"
        shutil.rmtree(base, ignore_errors=True)
        (base / "data").mkdir(parents=True)
        (base / "scratch").mkdir()
        rec = record_run(base / "data", base / "scratch", pki, seed=seed, commands=40, big_imports=seed % 3 == 1)
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(len(rec.trace)), min(len(rec.trace), 100)))
        total.add(simulate(rec, base / "work", cuts=cuts, rng=rng, limit=32, samples=4, second_cut=True))
        shutil.rmtree(base, ignore_errors=True)
    out.append(
        f"power cuts: {_n(comp_cuts + total.cuts)} cuts simulated, {_n(comp_states + total.states)} disk states "
        f"reopened and checked ({_n(comp_cuts)} cuts of the log, the Merkle store and mykey.fs, {_n(comp_full)} of "
        f"them with every state the model allows, {_n(comp_states)} states; {_n(total.cuts)} cuts of engine runs, {_n(total.states)} states "
        f"sampled, {_n(total.second_cuts)} of them after a second cut during recovery) "
        f"[{time.monotonic() - started:.0f} s]"
    )


def disk(pki: Pki, work: Path, scale: float, out: list[str]) -> None:
    started = time.monotonic()
    full = diskfull.FaultStats()
    note = ""
    try:
        for i in range(max(len(diskfull.PHASES), round(32 * scale))):
            full.add(diskfull.full_disk_round(pki, 1000 + i, diskfull.PHASES[i % len(diskfull.PHASES)]))
    except diskfull.NeedsRoot as exc:
        note = f" (full-disk rounds skipped: {exc})"
    io = diskfull.FaultStats()
    for i in range(max(len(diskfull.TARGETS), round(8 * len(diskfull.TARGETS) * scale))):
        io.add(diskfull.io_error_round(pki, 2000 + i, work, target=i % len(diskfull.TARGETS)))
    errors = ", ".join(f"{k} {v}" for k, v in sorted({**(full.by_error or {}), **(io.by_error or {})}.items()))
    out.append(
        f"full disk: {_n(full.rounds)} fills of a small tmpfs during commands, imports, checkpoints and rebuilds, "
        f"{_n(full.failures)} clean failures{note}; injected I/O errors: {_n(io.rounds)} rounds, {_n(io.injected)} "
        f"errors fired, {_n(io.failures)} clean failures, {_n(io.power_states)} power-cut states after them checked; "
        f"errors seen: {errors} [{time.monotonic() - started:.0f} s]"
    )


def kill(pki: Pki, work: Path, scale: float, out: list[str]) -> None:
    from mykey.index.binding import binding

    started = time.monotonic()
    n = max(10, round(1000 * scale))
    w = killloop.writer_kills(pki, work, n, seed=1)
    p = killloop.projector_kills(pki, work, n, seed=2)
    native = binding().__name__.endswith("_lmdb")
    r = killloop.resolver_kills(pki, work, n, seed=3, writer_restart_every=100 if native else None)
    out.append(
        f"kills survived: writer {_n(w.kills)} ({_n(w.commands)} acknowledged commands), projector {_n(p.kills)} "
        f"({_n(p.commands)} acknowledged applies), resolvers {_n(r.kills)} ({_n(r.acknowledged)} acknowledged "
        f"answers, {_n(r.commands)} writer commands meanwhile): {_n(w.kills + p.kills + r.kills)} SIGKILLs, each "
        f"followed by reopen, `mykey log verify`, `mykey audit verify` and `mykey audit diff` "
        f"[{time.monotonic() - started:.0f} s]"
        + ("\n  (the writer holding the index is restarted every 100 resolver kills: the native LMDB binding does "
           "not reclaim a killed reader's slot; see test_killed_resolvers_do_not_use_up_the_reader_slots)"
           if native else "")
    )


def fuzzing(work: Path, scale: float, save_corpus: bool, out: list[str]) -> None:
    started = time.monotonic()
    total = fuzz.FuzzStats()
    engines = set()
    for target, budget in FUZZ_BUDGET.items():
        budget = max(1000, round(budget * scale))
        if fuzz.atheris_available():
            half = budget // 2
            total.add(fuzz.run_atheris(target, half, work))
            engines.add("atheris (coverage-guided)")
            if save_corpus:
                _merge_corpus(target, work)
            budget -= half
        total.add(fuzz.mutate(target, budget, seed=int(time.time())))
        engines.add("mutation fuzzer (structure-aware)")
    per = ", ".join(f"{k} {_n(v)}" for k, v in total.inputs.items())
    out.append(
        f"fuzzed inputs: {_n(total.total)} ({per}), crashes {total.crashes} (only documented errors); engines: "
        f"{', '.join(sorted(engines))} [{time.monotonic() - started:.0f} s]"
    )


def _merge_corpus(target: str, work: Path) -> None:
    """Add the atheris inputs that add coverage to the repository's corpus (small files only)."""
    live = work / f"atheris-{target}" / "corpus"
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-m", "tests.faults.fuzz", "atheris", target, "-merge=1", "-max_len=4096",
         str(fuzz.CORPUS / target), str(live)],
        cwd=root, capture_output=True, env={**os.environ, "PYTHONPATH": str(root)}, check=True,
    )


PARTS = ("power", "disk", "kill", "fuzz")


def _parts(value: str) -> list[str]:
    """--only's value: known part names, comma-separated (a typo must not pass as an empty run)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown or [value]}: choose from {', '.join(PARTS)}")
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faults.torture", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full run (default 1)")
    ap.add_argument("--only", default=",".join(PARTS), type=_parts,
                    help=f"comma-separated parts to run, of: {', '.join(PARTS)} (default: all)")
    ap.add_argument("--save-corpus", action="store_true", help="merge new interesting fuzz inputs into the corpus")
    ap.add_argument("--resume", metavar="FILE", type=Path,
                    help="keep each finished part's figures in FILE; run again to do only the parts not yet done")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # recovery logs every repair: thousands of them
    parts = args.only
    work = Path(tempfile.mkdtemp(prefix="mykey-torture-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    started = time.monotonic()
    out: list[str] = []
    command = "make torture" if args.scale == 1 and len(parts) == 4 else "python -m tests.faults.torture " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print(f"mykey torture: {command} ({datetime.now(timezone.utc).isoformat(timespec='seconds')}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})",
          flush=True)
    done = _load_state(args.resume, args.scale)
    runs = {"power": lambda pki: power(pki, work, args.scale, out), "disk": lambda pki: disk(pki, work, args.scale, out),
            "kill": lambda pki: kill(pki, work, args.scale, out),
            "fuzz": lambda pki: fuzzing(work, args.scale, args.save_corpus, out)}
    try:
        pki = Pki()
        for part, run in runs.items():
            if part not in parts:
                continue
            if part in done:
                out.append(done[part])
                print(out[-1] + " (done before; from " + str(args.resume) + ")", flush=True)
                continue
            run(pki)
            print(out[-1], flush=True)
            if args.resume is not None:
                done[part] = out[-1]
                args.resume.write_text(json.dumps({"scale": args.scale, "done": done}, indent=1))
    except (AssertionError, fuzz.Crash) as exc:
        print(f"\nFAILED: {type(exc).__name__}: {exc}", flush=True)
        print("lost acknowledged events or broken invariants: see above (the work directory is kept: "
              f"{work})")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print(f"crashes: 0; lost acknowledged events: 0 (total {time.monotonic() - started:.0f} s)")
    if args.resume is not None:
        args.resume.unlink(missing_ok=True)  # a whole run is done: the next one starts afresh
    return 0


def _load_state(path: Path | None, scale: float) -> dict[str, str]:
    """The figures of the parts an interrupted run with the same scale finished (see --resume)."""
    if path is None or not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        return {}
    return dict(state.get("done", {})) if state.get("scale") == scale else {}


if __name__ == "__main__":
    sys.exit(main())
