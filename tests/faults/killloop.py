"""Kill loops: SIGKILL the writer, the projector and resolvers at random moments, thousands of times.

A kill costs little: the parent has imported everything once and forks each child (no
interpreter start-up); the child opens the data directory, prints ``ready`` and then works
until it is killed, printing an acknowledgement line (unbuffered, one ``os.write``) after
each call returned. The parent reads those lines, kills the child at a random moment,
and checks the data directory after every kill:

- writer (Engine, the mixed workload): reopening keeps every acknowledged record (by its
  CRC-32) and checkpoint, the index and the Merkle trail follow the log;
- projector (`mykey project --follow`, run_projector): the parent appends while it runs;
  the index keeps every batch the projector reported applied, and the next one goes on;
- resolvers (the gateway's read path) are killed while a long-lived writer process holds
  the index open; every kill is followed by a fresh resolver answering, and the writer's
  acknowledged records are checked at the end;

and after each kill `mykey log verify`, `mykey audit verify` and `mykey audit diff` pass.
The parent never has an LMDB environment open while it forks (a child must not inherit one).
"""

from __future__ import annotations

import base64
import os
import random
import select
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mykey.domain import events as ev
from mykey.domain.status import Status
from mykey.engine import Engine

from .checks import AckBook, check_acked, verify_commands
from .workload import Pki, Workload, record_digest

READY_TIMEOUT = 60.0


@dataclass
class KillStats:
    kills: int = 0
    acknowledged: int = 0  # acknowledged records (or applied batches, answers) checked after the kills
    commands: int = 0  # acknowledged calls the killed children made
    seconds: float = 0.0

    def add(self, other: KillStats) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


# ----------------------------------------------------------------------------- children


def _send(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


def _fork(body: Callable[[int], None]) -> tuple[int, int]:
    """Run body(write_fd) in a forked child that never returns; (pid, read fd of its lines)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            body(w)
        except BaseException:  # noqa: BLE001 - reported to the parent
            code = 1
            try:
                _send(w, "ERR " + traceback.format_exc().replace("\n", "\\n"))
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


class Child:
    """A forked child's lines, read as they come; killed with SIGKILL."""

    def __init__(self, body: Callable[[int], None]) -> None:
        self.pid, self.fd = _fork(body)
        self.lines: list[str] = []
        self._buf = b""
        self._eof = False
        self.dead = False

    def _read(self, timeout: float) -> bool:
        """Read what is there within timeout; False once nothing was there (or at the end)."""
        if self._eof:
            return False
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        *done, self._buf = self._buf.split(b"\n")
        self.lines.extend(line.decode() for line in done)
        for line in done:
            if line.startswith(b"ERR "):
                raise AssertionError("the child failed:\n" + line[4:].decode().replace("\\n", "\n"))
        return True

    def wait_for(self, prefix: str, timeout: float = READY_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            if self._eof:
                raise AssertionError(f"the child ended before saying {prefix!r}: {self.lines[-5:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the child did not say {prefix!r} within {timeout} s: {self.lines[-5:]}")
            self._read(deadline - time.monotonic())

    def run_for(self, seconds: float) -> None:
        """Let it work for `seconds`, collecting its lines; with 0, collect what is there."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if not self._read(max(left, 0.0)) and left <= 0:
                return

    def kill(self) -> list[str]:
        """SIGKILL it, reap it, and return every line it wrote (those written before it died are in the pipe)."""
        if not self.dead:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.dead = True
            while self._read(1.0):
                pass
            os.close(self.fd)
        return self.lines


def _parse_acks(lines: list[str], acks: AckBook) -> int:
    """Fold a writer child's "r SEQ CRC" and "c NOTE" lines into acks; returns the acknowledged calls."""
    calls = 0
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "r":
            seq, digest = rest.split()
            acks.record(int(seq), int(digest))
        elif kind == "c":
            from mykey.audit.checkpoint import peek_checkpoint

            note = base64.b64decode(rest).decode()
            acks.checkpoints.append((peek_checkpoint(note).size, note))
        elif kind == "a":
            calls += 1
    return calls


def _writer_body(data: Path, pki: Pki, seed: int, pause: float = 0.0) -> Callable[[int], None]:
    def body(w: int) -> None:
        rng = random.Random(seed)
        scratch = Path(tempfile.mkdtemp(prefix="mykey-kill-"))
        engine = Engine.open(data)
        sent = engine.log.last_seq

        def on_ack(kind: str, seq: int, extra: object) -> None:
            nonlocal sent
            lines = [f"r {s} {record_digest(p)}" for s, p in engine.log.read_raw(sent + 1, seq)] if seq > sent else []
            if kind == "checkpoint":
                lines.append("c " + base64.b64encode(str(extra).encode()).decode())
            lines.append("a")
            os.write(w, ("\n".join(lines) + "\n").encode())  # one write: all or nothing of an acknowledgement
            sent = max(sent, seq)

        work = Workload(engine, pki, rng, scratch, on_ack)
        _send(w, "ready")
        while True:
            work.step()
            if pause:
                time.sleep(pause)

    return body


# ----------------------------------------------------------------------------- the writer


def _fresh_data(workdir: Path, pki: Pki, name: str, seed: int, commands: int = 3) -> tuple[Path, str]:
    data = workdir / name
    shutil.rmtree(data, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix="mykey-kill-"))
    with Engine.open(data) as engine:
        work = Workload(engine, pki, random.Random(seed), scratch)
        work.setup()
        for _ in range(commands):
            work.step()
    shutil.rmtree(scratch, ignore_errors=True)
    return data, (data / "keys" / "checkpoint.vkey").read_text("ascii").strip()


def writer_kills(pki: Pki, workdir: Path, kills: int, seed: int, *, fresh_every: int = 40, max_delay: float = 0.3
                 ) -> KillStats:
    """SIGKILL an Engine doing the mixed workload `kills` times (see the module docstring)."""
    rng = random.Random(seed)
    stats = KillStats()
    started = time.monotonic()
    data = vkey = acks = None
    for k in range(kills):
        if k % fresh_every == 0:
            data, vkey = _fresh_data(workdir, pki, "writer", seed + k)
            acks = AckBook()
        child = Child(_writer_body(data, pki, rng.randrange(1 << 30)))
        child.wait_for("ready")
        child.run_for(rng.uniform(0.0, max_delay))
        stats.commands += _parse_acks(child.kill(), acks)
        stats.kills += 1
        with Engine.open(data) as engine:  # reopening runs recovery
            check_acked(engine, acks)
        verify_commands(data, vkey)
        stats.acknowledged += len(acks.digests)
    stats.seconds = time.monotonic() - started
    return stats


# ----------------------------------------------------------------------------- the projector


def _template(pki: Pki, workdir: Path, seed: int, commands: int) -> list[tuple[ev.Actor, list[ev.Event]]]:
    """Batches of a real workload (events and actor), to append again under a projector."""
    data, _ = _fresh_data(workdir, pki, "template", seed, commands)
    from mykey.log.filelog import FileLog

    with FileLog.open(data / "log", readonly=True) as log:
        out = []
        for _first, payloads in log.read_batches():
            envs = [ev.decode_envelope(p) for p in payloads]
            out.append((envs[0].actor, [e.body for e in envs]))
    shutil.rmtree(data)
    return out


def projector_kills(pki: Pki, workdir: Path, kills: int, seed: int, *, template_commands: int = 150,
                    max_delay: float = 0.3) -> KillStats:
    """SIGKILL `mykey project --follow` while the parent appends (see the module docstring)."""
    from mykey.datadir import DataDir
    from mykey.index.projector import run_projector
    from mykey.log.filelog import FileLog

    rng = random.Random(seed)
    stats = KillStats()
    started = time.monotonic()
    template = _template(pki, workdir, seed, template_commands)
    data = DataDir(workdir / "projected")
    cursor = len(template)
    applied_acked = 0

    def body(w: int) -> None:
        start = _applied(data) or 0
        applied = start
        _send(w, f"ready {start}")

        def progress(n: int) -> None:
            nonlocal applied
            applied += n
            _send(w, f"applied {applied}")

        run_projector(data, follow=True, poll_interval=0.005, progress=progress)

    for k in range(kills):
        if cursor >= len(template):  # start over on a fresh directory
            shutil.rmtree(data.root, ignore_errors=True)
            with FileLog.open(data.log) as log:
                for actor, events in template[:10]:
                    log.append(events, actor)
            cursor, applied_acked = 10, 0
        child = Child(body)
        child.wait_for("ready")
        stop = threading.Event()
        trng = random.Random(rng.randrange(1 << 30))
        take = rng.randrange(0, 40)
        batches = template[cursor : cursor + take]
        cursor += len(batches)

        def append(batches=batches) -> None:
            with FileLog.open(data.log) as log:
                for actor, events in batches:
                    if stop.is_set():
                        break
                    log.append(events, actor)
                    time.sleep(trng.uniform(0, 0.004))

        writer = threading.Thread(target=append)
        writer.start()
        child.run_for(rng.uniform(0.0, max_delay))
        lines = child.kill()
        stop.set()
        writer.join()
        stats.kills += 1
        with FileLog.open(data.log) as log:  # the writer's open: recovery (nothing to cut here)
            last = log.last_seq
        reported = [int(x.split()[1]) for x in lines if x.startswith(("applied ", "ready "))]
        applied_acked = max([applied_acked, *reported])
        index_at = _applied(data)
        assert applied_acked <= (index_at or 0) <= last, (
            f"the projector reported {applied_acked}, the index is at {index_at}, the log at {last}")
        stats.acknowledged += 1
        stats.commands += len(reported)
        verify_commands(data.root, diff=index_at is not None)  # killed before it made the index: no diff
        cursor = _resync(template, data, cursor)
    stats.seconds = time.monotonic() - started
    return stats


def _applied(data) -> int | None:
    """The live index's last applied sequence number (None: there is no index yet)."""
    from mykey.errors import NoIndexError
    from mykey.index.store import open_live_readonly, read_meta_last_seq

    try:
        env, dbs, _ = open_live_readonly(data)
    except NoIndexError:
        return None
    try:
        with env.begin() as txn:
            return read_meta_last_seq(txn, dbs)
    finally:
        env.close()


def _resync(template: list, data, cursor: int) -> int:
    """Where the template stands in the log (the appender may have stopped early)."""
    from mykey.log.filelog import FileLog

    with FileLog.open(data.log, readonly=True) as log:
        last = log.last_seq
    total, i = 0, 0
    while i < len(template) and total + len(template[i][1]) <= last:
        total += len(template[i][1])
        i += 1
    return i


# ----------------------------------------------------------------------------- resolvers


def resolver_kills(pki: Pki, workdir: Path, kills: int, seed: int, *, writer_restart_every: int | None = None,
                   max_delay: float = 0.15) -> KillStats:
    """SIGKILL resolvers while a writer process holds the index open (see the module docstring).

    writer_restart_every: restart the long-lived writer that often (None: never). Until the
    LMDB binding reclaims the reader slots of killed processes, 126 kills with one writer
    holding the environment leave no slot for a new resolver (MDB_READERS_FULL).
    """
    from mykey.index.resolver import Resolver
    from mykey.log.filelog import FileLog

    rng = random.Random(seed)
    stats = KillStats()
    started = time.monotonic()
    data, vkey = _fresh_data(workdir, pki, "resolved", seed, commands=20)
    acks = AckBook()
    with FileLog.open(data / "log", readonly=True) as log:
        from .workload import Fold

        fold = Fold()
        fold.advance(log)
    known: dict[str, list[bytes]] = {}
    for (bid, sid), _linked in fold.services.items():
        known.setdefault(bid, []).append(sid.encode())
    businesses = sorted(known)
    codes = {int(s) for s in Status}

    def resolver(w: int) -> None:
        r = Resolver.open(data)
        _send(w, "ready")
        n = 0
        while True:
            bid = businesses[n % len(businesses)]
            answers = r.resolve_many(bid, known[bid] + [b"never-registered"])
            assert all(a in codes for a in answers) and answers[-1] == int(Status.UNKNOWN), answers
            n += 1
            if n % 20 == 0:
                _send(w, f"ok {n}")

    writer = None
    for k in range(kills):
        if writer is None or (writer_restart_every and k % writer_restart_every == 0):
            if writer is not None:
                stats.commands += _parse_acks(writer.kill(), acks)
            writer = Child(_writer_body(data, pki, rng.randrange(1 << 30), pause=0.01))
            writer.wait_for("ready")
        child = Child(resolver)
        child.wait_for("ready")
        child.run_for(rng.uniform(0.0, max_delay))
        lines = child.kill()
        stats.kills += 1
        stats.acknowledged += sum(1 for x in lines if x.startswith("ok "))
        os.kill(writer.pid, signal.SIGSTOP)  # hold the writer still while the index is compared
        try:
            verify_commands(data, vkey)
        finally:
            os.kill(writer.pid, signal.SIGCONT)
        writer.run_for(0)
    assert writer is not None
    stats.commands += _parse_acks(writer.kill(), acks)
    with Engine.open(data) as engine:
        check_acked(engine, acks)
    stats.acknowledged += len(acks.digests)
    verify_commands(data, vkey)
    stats.seconds = time.monotonic() - started
    return stats


def stale_reader_slots(pki: Pki, workdir: Path, binding, *, kills: int = 130) -> None:
    """Kill `kills` resolvers (each with a read transaction) while a writer holds the index; a new one must open."""
    from mykey.index.resolver import Resolver

    data, _ = _fresh_data(workdir, pki, "slots", 1, commands=0)

    def holder(w: int) -> None:
        with Engine.open(data, binding=binding):
            _send(w, "ready")
            time.sleep(3600)

    def resolver(w: int) -> None:
        r = Resolver.open(data, binding=binding)
        r.resolve_many("A0001", [b"x"])
        _send(w, "ready")
        time.sleep(3600)

    hold = Child(holder)
    try:
        hold.wait_for("ready")
        for _ in range(kills):
            child = Child(resolver)
            try:
                child.wait_for("ready")
            finally:
                child.kill()
    finally:
        hold.kill()
