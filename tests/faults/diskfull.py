"""Full disks and I/O errors: the writer stops with a clear error, loses nothing acknowledged, and goes on.

Full disk: ``small_fs`` mounts a small tmpfs (root only; ``NeedsRoot`` otherwise) and
always unmounts it; ``full_disk_round`` runs the workload there, fills the file system
to a random level and keeps going until a command fails (appends, imports, checkpoints,
the index growing), or fills it before `mykey rebuild`. Then it checks the failure was a
clear error, frees the space, reopens, checks that every acknowledged record is there,
runs the `mykey` checks, and goes on with more commands.

I/O errors: ``io_error_round`` runs the workload under the recorder (osmodel) with one
injected EIO (or ENOSPC) on a write or an fsync of a file of the log, the Merkle store or
the checkpoints, chosen at random. After the failure it checks the same things, and also
cuts the power at the failure and at the end, where a failed fsync made nothing durable
(the model), and checks the states that allows. LMDB's own writes are C calls the shim
does not see: the full-disk rounds cover those.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mykey.engine import Engine
from mykey.errors import MykeyError

from .checks import AckBook, check_acked, cli, verify_commands
from .osmodel import Fault, Recorder, cut_states
from .powerloss import lmdb_file, lock_file
from .workload import Pki, Workload


class NeedsRoot(Exception):
    """Mounting a small file system needs root."""


@contextmanager
def small_fs(size_kb: int) -> Iterator[Path]:
    """A fresh tmpfs of size_kb KiB, unmounted (and its mount point removed) however the block ends."""
    if os.geteuid() != 0:
        raise NeedsRoot("mounting a small tmpfs to fill needs root; run the full-disk tests as root")
    mnt = Path(tempfile.mkdtemp(prefix="mykey-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "mykey-faults", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        mnt.rmdir()
        raise NeedsRoot(f"could not mount a tmpfs ({done.stderr.strip()}); the full-disk tests need mount rights")
    try:
        yield mnt
    finally:
        for args in (["umount", str(mnt)], ["umount", "-l", str(mnt)]):
            if subprocess.run(args, capture_output=True).returncode == 0:
                break
        try:
            mnt.rmdir()
        except OSError:
            pass


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mnt: Path, leave: int) -> None:
    """Take all but about `leave` bytes of mnt's free space with a filler file."""
    chunk = bytes(1 << 16)
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while (room := free_bytes(mnt) - leave) > 0:
            try:
                os.write(fd, chunk[: min(len(chunk), room)])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)


def release(mnt: Path) -> None:
    (mnt / "filler").unlink(missing_ok=True)


def is_clear(exc: BaseException) -> bool:
    """A failure the writer may report: one of ours, typed, whose message says what to do."""
    return isinstance(exc, MykeyError)


@dataclass
class FaultStats:
    rounds: int = 0
    injected: int = 0  # injected errors that fired
    failures: int = 0  # commands that failed with a clear error
    by_error: dict[str, int] | None = None
    acknowledged: int = 0  # acknowledged records checked after reopening
    power_states: int = 0

    def count(self, what: BaseException | str) -> None:
        """One clean failure: the exception, or a description of a refused command."""
        name = what if isinstance(what, str) else type(what).__name__
        self.failures += 1
        self.by_error = self.by_error or {}
        self.by_error[name] = self.by_error.get(name, 0) + 1

    def add(self, other: FaultStats) -> None:
        self.rounds += other.rounds
        self.injected += other.injected
        self.failures += other.failures
        self.acknowledged += other.acknowledged
        self.power_states += other.power_states
        for k, v in (other.by_error or {}).items():
            self.by_error = self.by_error or {}
            self.by_error[k] = self.by_error.get(k, 0) + v


PHASES = ("commands", "import", "checkpoint", "rebuild")  # commands: the mixed workload; import: CSV imports only


def _reopen_and_check(data: Path, acks: AckBook, pki: Pki, rng: random.Random, scratch: Path, vkey: str,
                      stats: FaultStats) -> None:
    """Reopen after the failure: every acknowledged record is there, the checks pass, the writer goes on."""
    with Engine.open(data) as engine:
        check_acked(engine, acks)
        stats.acknowledged += len(acks.digests)
        work = Workload(engine, pki, rng, scratch, acks.on_ack_from(engine.log))
        for _ in range(3):
            work.step()
        engine.trail.checkpoint()
    verify_commands(data, vkey)


def full_disk_round(pki: Pki, seed: int, phase: str, *, size_kb: int = 6144) -> FaultStats:
    """One fill of a small file system during `phase` (see PHASES); raises AssertionError on a broken invariant."""
    rng = random.Random(seed)
    stats = FaultStats(rounds=1)
    scratch = Path(tempfile.mkdtemp(prefix="mykey-faults-scratch-"))
    try:
        with small_fs(size_kb) as mnt:
            data = mnt / "data"
            acks = AckBook()
            engine = Engine.open(data)
            try:
                work = Workload(engine, pki, rng, scratch, acks.on_ack_from(engine.log), big_imports=True)
                work.setup()
                for _ in range(rng.randrange(1, 6)):
                    work.step()
                vkey = (data / "keys" / "checkpoint.vkey").read_text("ascii").strip()
                if phase == "rebuild":
                    engine.trail.checkpoint()
                    engine.close()
                    fill(mnt, rng.randrange(0, 200_000))
                    rc, out = cli("--data", str(data), "rebuild")
                    if rc == 0:
                        return stats  # it fitted: nothing to check here
                    assert rc == 1 and "Traceback" not in out, out
                    assert not list(mnt.glob("data/index-*.building*")), "a failed rebuild left its files behind"
                    stats.count("`mykey rebuild` refused")
                    release(mnt)
                    verify_commands(data, vkey)  # the live index is untouched
                    rc, out = cli("--data", str(data), "rebuild")
                    assert rc == 0, out
                    _reopen_and_check(data, acks, pki, rng, scratch, vkey, stats)
                    return stats
                fill(mnt, rng.randrange(0, 400_000))
                failure = None
                for i in range(400):
                    try:
                        if phase == "checkpoint" and i % 2:
                            acks.on_ack_from(engine.log)("checkpoint", engine.log.last_seq, engine.trail.checkpoint())
                        elif phase == "import":
                            work.step("import")
                        else:
                            work.step()
                    except Exception as exc:  # noqa: BLE001 - judged below
                        failure = exc
                        break
                assert failure is not None, "the file system never filled"
                assert is_clear(failure), f"{type(failure).__name__}: {failure}"
                stats.count(failure)
                # The writer stopped cleanly: another command fails clearly too, or works.
                try:
                    work.step()
                except Exception as exc:  # noqa: BLE001
                    assert is_clear(exc), f"after the first failure: {type(exc).__name__}: {exc}"
                release(mnt)
            finally:
                try:
                    engine.close()
                except Exception as exc:  # noqa: BLE001 - a full disk may fail the close too
                    assert is_clear(exc), f"close: {type(exc).__name__}: {exc}"
            _reopen_and_check(data, acks, pki, rng, scratch, vkey, stats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return stats


# ----------------------------------------------------------------------------- injected errors

TARGETS = [
    ("write", lambda rel: rel.startswith("log/") and rel.endswith(".seg"), "log segment write"),
    ("sync", lambda rel: rel.startswith("log/") and rel.endswith(".seg"), "log segment fsync"),
    ("sync", lambda rel: rel == "log", "log directory fsync"),
    ("write", lambda rel: rel.startswith("log/") and rel.endswith(".idx"), "log index hint write"),
    ("write", lambda rel: rel.startswith("merkle/level"), "Merkle level write"),
    ("write", lambda rel: rel == "merkle/meta", "Merkle meta write"),
    ("sync", lambda rel: rel.startswith("merkle/"), "Merkle fsync"),
    ("write", lambda rel: rel.startswith("checkpoints/"), "checkpoint write"),
    ("sync", lambda rel: rel.startswith("checkpoints"), "checkpoint fsync"),
]


def io_error_round(pki: Pki, seed: int, workdir: Path, *, target: int | None = None, power_samples: int = 3
                   ) -> FaultStats:
    """One injected error (see TARGETS) during the workload, then the checks (module docstring)."""
    rng = random.Random(seed)
    stats = FaultStats(rounds=1)
    kind, match, _what = TARGETS[rng.randrange(len(TARGETS)) if target is None else target]
    root = workdir / f"io-{seed}"
    scratch = workdir / f"io-{seed}-scratch"
    scratch.mkdir(parents=True)
    rec = Recorder(root, external=lmdb_file)
    acks = AckBook()
    with rec.installed():
        from mykey.log.filelog import FileLog

        with Engine.open(root) as engine:
            work = Workload(engine, pki, rng, scratch, acks.on_ack_from(engine.log))
            work.setup()
        vkey = (root / "keys" / "checkpoint.vkey").read_text("ascii").strip()
        # Small segments, so that rolls (and their directory fsyncs) happen.
        engine = Engine.open(root, log=FileLog.open(root / "log", segment_bytes=8192))
        fault = Fault(kind, nth=rng.randrange(1, 12), err=rng.choice([errno.EIO, errno.EIO, errno.ENOSPC]),
                      match=match, partial=kind == "write" and rng.random() < 0.5)
        rec.faults.append(fault)
        fired_at = None
        try:
            work = Workload(engine, pki, rng, scratch, _marking(rec, acks.on_ack_from(engine.log)))
            for i in range(60):
                try:
                    if i % 7 == 6:
                        work.step("checkpoint")
                    else:
                        work.step()
                except Exception as exc:  # noqa: BLE001 - judged here
                    if not fault.fired:
                        raise
                    assert is_clear(exc), f"{type(exc).__name__}: {exc}"
                    stats.count(exc)
                    if fired_at is None:
                        fired_at = len(rec.trace) - 1
                if fault.fired and i > 5 and fired_at is not None and rng.random() < 0.3:
                    break
        finally:
            try:
                engine.close()
            except Exception as exc:  # noqa: BLE001
                assert is_clear(exc), f"close: {type(exc).__name__}: {exc}"
    stats.injected += fault.fired
    # A power cut right after the failure, or at the end, keeps everything acknowledged before it.
    if power_samples:
        cuts = [p for p in (fired_at, len(rec.trace) - 1) if p is not None]
        for state in cut_states(rec.trace, workdir / f"io-{seed}-cut", cuts=cuts, rng=rng, limit=8,
                                samples=power_samples, write_external=None, dont_care=lock_file):
            cut_acks = _acks_before(state.marks, acks)
            try:
                _check_after_cut(state.path, cut_acks, vkey)
            except Exception as exc:
                raise AssertionError(f"{state.where()}:\n{type(exc).__name__}: {exc}") from exc
            stats.power_states += 1
    # And the writer, restarted after the error, has everything acknowledged and goes on.
    _reopen_and_check(root, acks, pki, rng, scratch, vkey, stats)
    shutil.rmtree(workdir / f"io-{seed}-cut", ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return stats


def _marking(rec: Recorder, on_ack):
    def ack(kind: str, seq: int, extra: object) -> None:
        on_ack(kind, seq, extra)
        rec.mark("ack", (seq, extra if kind == "checkpoint" else None))

    return ack


def _acks_before(marks, acks: AckBook) -> AckBook:
    out = AckBook()
    from mykey.audit.checkpoint import peek_checkpoint

    for kind, payload in marks:
        if kind == "ack":
            seq, note = payload
            out.last = max(out.last, seq)
            if note is not None:
                out.checkpoints.append((peek_checkpoint(note).size, note))
    out.digests = {s: d for s, d in acks.digests.items() if s <= out.last}
    return out


def _check_after_cut(path: Path, acks: AckBook, vkey: str) -> None:
    """A cut state (LMDB's files, not in the model, are absent: the engine rebuilds the index from the log)."""
    with Engine.open(path) as engine:
        check_acked(engine, acks)
    verify_commands(path, vkey)
