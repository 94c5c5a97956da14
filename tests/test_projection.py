"""The LMDB projection: replay equals incremental, exactly-once under SIGKILL, readers never see half a batch."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.domain.status import Status
from mykey.engine.engine import Engine
from mykey.errors import EnvAlreadyOpenError
from mykey.index import keys as k
from mykey.index.binding import binding_by_name
from mykey.index.resolver import Resolver
from mykey.index.store import (
    Index,
    IndexGapError,
    IndexLockedError,
    build_generation,
    diff_indexes,
    open_dbs,
    rebuild,
)
from mykey.log.filelog import FileLog

from .conftest import create_user, link_card

OP = ev.Actor("operator", "test")


def random_workload(engine: Engine, pki, rng: random.Random, steps: int = 120) -> None:
    """A random mix of every command (refusals included) against a live engine."""
    bids = [engine.register_business(f"Biz {i}", "131016") for i in range(3)]
    mykeys: list[str] = []
    creds = []
    sids: dict[str, list[str]] = {b: [] for b in bids}
    n = 0
    for _ in range(steps):
        op = rng.choice(["create", "register", "link", "unlink", "suspend", "resume", "invalidate", "renew", "crl", "ack"])
        try:
            if op == "create" or not mykeys:
                mk, cred = create_user(engine, pki)
                mykeys.append(mk)
                creds.append(cred)
            elif op == "register":
                b = rng.choice(bids)
                rows = [(f"S{n + i}", rng.choice([None, f"C{n + i}"])) for i in range(rng.randint(1, 30))]
                n += len(rows)
                engine.register_service_ids(b, rows)
                sids[b] += [r[0] for r in rows]
            elif op == "link":
                b = rng.choice(bids)
                sid = rng.choice(sids[b]) if sids[b] and rng.random() < 0.7 else f"U{n}"
                n += 1
                i = rng.randrange(len(mykeys))
                if rng.random() < 0.5:
                    link_card(engine, pki, creds[i], b, sid)
                else:
                    engine.link_in_person(b, sid, mykeys[i], "checked in person")
            elif op == "unlink":
                b = rng.choice(bids)
                if sids[b]:
                    engine.unlink_service_id(b, rng.choice(sids[b]))
            elif op in ("suspend", "invalidate"):
                getattr(engine, op)(rng.choice(mykeys), "test")
            elif op == "resume":
                engine.resume(rng.choice(mykeys))
            elif op == "renew":
                i = rng.randrange(len(mykeys))
                new = pki.inter.renew(creds[i])
                ch = engine.new_challenge("renew")
                engine.renew_certificate(mykeys[i], pki.chain(new), new.sign(ch), ch)
                creds[i] = new
            elif op == "crl":
                engine.apply_crl(pki.inter.crl([(rng.choice(creds), "key_compromise")], number=1000 + n))
                n += 1
            elif op == "ack":
                engine.ack("points", engine.log.last_seq)
        except Exception as exc:  # refusals are part of a random workload
            from mykey.errors import MykeyError

            assert isinstance(exc, MykeyError), exc


def test_replay_equals_incremental(tmp_path, binding, pki):
    data = DataDir(tmp_path / "data")
    with Engine.open(data.root, binding=binding) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        random_workload(e, pki, random.Random(5))
        log = FileLog.open(data.log, readonly=True)
        replay_dir = build_generation(data, log, into=tmp_path / "replay", binding=binding)
        with binding.Env(str(replay_dir), readonly=True, create=False, max_dbs=k.MAX_DBS) as env:
            diffs = diff_indexes(e.index.env, e.index.dbs, env, open_dbs(env, create=False))
    assert diffs == []


def test_apply_is_exactly_once(tmp_path, binding):
    data = DataDir(tmp_path)
    log = FileLog.open(data.log)
    envs = log.append([ev.BusinessRegistered("A0001", "Lib", "131016"), ev.ServiceIdRegistered("A0001", "S1")], OP)
    more = log.append([ev.ServiceIdRegistered("A0001", "S2")], OP)
    with Index.open(data, binding=binding) as idx:
        assert idx.apply(envs) == 2
        assert idx.apply(envs) == 2  # applying the same events again changes nothing
        with pytest.raises(IndexGapError):
            idx.apply(log.append([ev.ServiceIdRegistered("A0001", "S3")], OP))
        idx.apply(more)
        assert idx.catch_up(log) == 4
        with pytest.raises(IndexLockedError):
            Index.open(data, binding=binding)


def test_one_binding_per_env_per_process(tmp_path, pki):
    with Engine.open(tmp_path / "d", binding=binding_by_name("native")):
        for name in ("pure", "native"):
            with pytest.raises(EnvAlreadyOpenError, match="one binding"):
                Resolver.open(tmp_path / "d", binding=binding_by_name(name))


PROJECTOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mykey.datadir import DataDir
    from mykey.index.binding import binding_by_name
    from mykey.index.projector import run_projector
    run_projector(DataDir(Path(sys.argv[1])), binding=binding_by_name(sys.argv[2]), max_events_per_txn=1)
    print("done", flush=True)
    """
)


def _fill_log(data: DataDir, batches: int, rng: random.Random) -> None:
    log = FileLog.open(data.log, fsync="never")
    log.append([ev.BusinessRegistered("A0001", "Lib", "131016")], OP)
    mks = []
    for b in range(batches):
        kind = rng.random()
        if kind < 0.3 or not mks:
            mk = f"{'ABCDEFGH'[b % 8]}{b:07d}".replace("0", "A").replace("1", "B")[:8]
            mk = "".join(c if c in "ABCDEFGHJKMNPQRSTUVWXYZ23456789" else "Z" for c in mk)
            if mk in mks:
                continue
            log.append([ev.MyKeyCreated(mk, "CN=t", format(b + 1, "x"), os.urandom(32))], OP)
            mks.append(mk)
        elif kind < 0.7:
            log.append([ev.ServiceIdRegistered("A0001", f"S{b}-{i}") for i in range(rng.randint(1, 200))], OP)
            log.append([ev.ServiceIdLinked("A0001", f"S{b}-0", rng.choice(mks))], OP)
        else:
            mk = rng.choice(mks)
            log.append([ev.MyKeySuspended(mk, "x"), ev.MyKeyResumed(mk)], OP)
    log.close()


@pytest.mark.parametrize("impl", ["native", "pure"])
def test_projector_killed_at_random_moments(tmp_path, impl):
    rng = random.Random(11)
    data = DataDir(tmp_path / "data")
    _fill_log(data, 1500, rng)
    kills = 0
    for _ in range(15):
        child = subprocess.Popen([sys.executable, "-c", PROJECTOR, str(data.root), impl], stdout=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 0.6))  # the random moment of the kill, not a wait for anything
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.wait()
    out = subprocess.run([sys.executable, "-c", PROJECTOR, str(data.root), impl], capture_output=True, text=True)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr
    assert kills > 0
    b = binding_by_name(impl)
    log = FileLog.open(data.log, readonly=True)
    fresh = build_generation(data, log, into=tmp_path / "fresh", binding=b)
    with Index.open(data, binding=b) as idx, b.Env(str(fresh), readonly=True, create=False, max_dbs=k.MAX_DBS) as env:
        assert idx.last_seq == log.last_seq
        assert diff_indexes(idx.env, idx.dbs, env, open_dbs(env, create=False)) == []


READER = textwrap.dedent(
    """
    import sys, time
    from mykey.index.resolver import Resolver
    from mykey.index.binding import binding_by_name
    r = Resolver.open(sys.argv[1], binding=binding_by_name(sys.argv[2]))
    sids = [f"S{i}" for i in range(2000)]
    seen = set()
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        codes = set(r.resolve_many("A0001", sids))
        if len(codes) != 1:
            print("HALF", sorted(codes), flush=True)
            sys.exit(1)
        if len(seen) < 2 and len(seen | codes) == 2:
            print("both", flush=True)
        seen |= codes
        if len(seen) == 2 and r.last_seq > 0 and open(sys.argv[3]).read() == "stop":
            break
    print("OK", sorted(seen), flush=True)
    """
)


def wait_for(condition, what: str, timeout: float = 30.0, pause: float = 0.01) -> None:
    """Poll condition() until it is true; fail saying what did not happen within timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(pause)


class _Lines:
    """The lines a child process prints, collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line.strip())

    def saw(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in self.lines)

    def joined(self) -> str:
        self._thread.join(timeout=60)
        return "\n".join(self.lines)


@pytest.mark.parametrize("impl", ["native", "pure"])
def test_readers_in_other_processes_never_see_half_a_batch(tmp_path, impl, pki):
    data = tmp_path / "data"
    flag = tmp_path / "flag"
    flag.write_text("")
    with Engine.open(data, binding=binding_by_name(impl)) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = e.register_business("Lib", "131016")
        mk, _ = create_user(e, pki)
        e.register_service_ids(bid, [(f"S{i}", None) for i in range(2000)])
        e._commit([ev.ServiceIdLinked(bid, f"S{i}", mk) for i in range(2000)], OP)
        readers = [
            subprocess.Popen([sys.executable, "-c", READER, str(data), other, str(flag)], stdout=subprocess.PIPE, text=True)
            for other in ("native", "pure")
        ]
        outs = [_Lines(r) for r in readers]
        wait_for(lambda: all(o.saw("ready") for o in outs), "both readers opening the index")
        # Flip the 2000 answers back and forth until each reader has seen both states.
        deadline = time.monotonic() + 60
        while not all(o.saw("both") or o.saw("HALF") for o in outs) and time.monotonic() < deadline:
            e.suspend(mk, "flip")
            time.sleep(0.01)  # a moment in the suspended state, for the readers to catch
            e.resume(mk)
        flag.write_text("stop")
        for r in readers:
            r.wait(timeout=60)
    texts = [o.joined() for o in outs]
    assert all(r.returncode == 0 for r in readers), texts
    assert all("OK [1, 2]" in t for t in texts), texts


def test_rebuild_swaps_atomically_and_old_readers_keep_working(tmp_path, pki, monkeypatch):
    from mykey.index import resolver as resolver_mod

    monkeypatch.setattr(resolver_mod, "RECHECK_SECONDS", 3600.0)  # this test switches by itself
    data = DataDir(tmp_path / "data")
    with Engine.open(data.root) as e:
        bid = e.register_business("Lib", "131016")
        e.register_service_ids(bid, [("S1", None)])
    old = Resolver.open(data.root, binding=binding_by_name("pure"))
    gen_before = old.generation
    log = FileLog.open(data.log)
    log.append([ev.ServiceIdRegistered(bid, "S2")], OP)  # appended, not yet projected
    new_gen = rebuild(data, log)
    log.close()
    assert new_gen != gen_before and (data.root / "index").resolve() == new_gen
    assert old.resolve(bid, "S1") == Status.UNLINKED  # still answers from the old generation
    assert old.reopen_if_rebuilt()
    assert old.resolve(bid, "S2") == Status.UNLINKED and old.last_seq == 3
    old.close()
    assert not gen_before.exists()


def test_open_resolvers_follow_a_rebuild_by_themselves(tmp_path, pki):
    data = DataDir(tmp_path / "data")
    with Engine.open(data.root) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = e.register_business("Lib", "131016")
        mk, cred = create_user(e, pki)
        link_card(e, pki, cred, bid, "S1")
    gateway = Resolver.open(data.root, binding=binding_by_name("native"))
    assert gateway.resolve(bid, "S1") == Status.VALID
    log = FileLog.open(data.log)
    rebuild(data, log)
    log.close()
    with Engine.open(data.root) as e:
        e.suspend(mk, "lost")  # applied to the new index generation only
    # The gateway's own watcher switches to the new generation: no call here makes it.
    wait_for(lambda: gateway.generation == (data.root / "index").resolve(), "the switch to the rebuilt index")
    assert gateway.resolve(bid, "S1") == Status.SUSPENDED  # the suspension takes effect without a restart
    assert gateway.resolve_many(bid, ["S1"]) == bytes([Status.SUSPENDED])
    gateway.close()


def test_rebuilds_under_load_close_old_indexes_and_never_answer_wrong(tmp_path, pki, monkeypatch):
    from mykey.index import resolver as resolver_mod

    monkeypatch.setattr(resolver_mod, "RECHECK_SECONDS", 0.02)
    monkeypatch.setattr(resolver_mod, "RETIRE_GRACE", 0.1)
    data = DataDir(tmp_path / "data")
    with Engine.open(data.root) as e:
        bid = e.register_business("Lib", "131016")
        e.register_service_ids(bid, [(f"S{i}", None) for i in range(500)])
    gateway = Resolver.open(data.root)
    stop = threading.Event()
    wrong: list[bytes] = []

    def hammer():
        want = bytes([Status.UNLINKED]) * 500 + bytes([Status.UNKNOWN])
        sids = [f"S{i}" for i in range(500)] + ["nope"]
        while not stop.is_set():
            got = gateway.resolve_many(bid, sids)
            if got != want:
                wrong.append(got)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(6):
        log = FileLog.open(data.log)
        new_gen = rebuild(data, log)
        log.close()
        wait_for(lambda: gateway.generation == new_gen.resolve(), f"the switch to {new_gen.name}")
    # Replaced indexes are closed after the grace period, not kept open until restart.
    wait_for(lambda: gateway._retired == [], "closing the replaced indexes")
    stop.set()
    for t in threads:
        t.join()
    assert wrong == []
    assert gateway.generation == (data.root / "index").resolve()
    gateway.close()
