"""Many nodes, one log: state shared through the NATS cluster (single-use keys, the writer lease and fence)
and bootstrapping a node from an index snapshot. Real nats-servers on loopback; nodes are data directories,
and "another node" is another process where it matters (a process-wide cache could not fake it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from mykey.domain import events as ev

from .nats_fixtures import unique_stream


def _url(nats_single, stream: str | None = None) -> str:
    return nats_single.log_url(stream=stream or unique_stream("S"), replicas=1)


def _other_node(code: str, url: str, data, *args: str) -> str:
    """Run code in another process (another node: its own data directory, the same log); its stdout."""
    env = {**os.environ, "MYKEY_LOG": url}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(data), *args], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- single-use keys on the cluster ---------------------------------------------------------------


@pytest.fixture
def kv_keys(nats_single):
    from mykey.auth import onetime_kv
    from mykey.log.jetstream import NatsLocation

    store = onetime_kv.acquire(NatsLocation.parse(_url(nats_single)), b"challenges")
    yield store
    onetime_kv.release(store)


def test_a_key_is_added_once_and_taken_once(kv_keys):
    now = time.time()
    assert kv_keys.add(b"k1", now + 60, now)
    assert not kv_keys.add(b"k1", now + 60, now)  # a replay
    assert kv_keys.take(b"k1", now) == pytest.approx(now + 60)
    assert kv_keys.take(b"k1", now) is None  # used up
    assert kv_keys.take(b"never", now) is None
    assert kv_keys.add(b"k1", now + 60, now)  # a used-up key may be recorded again (as the LMDB store)
    assert len(kv_keys) >= 1


def test_an_expired_key_may_be_added_again(kv_keys):
    now = time.time()
    assert kv_keys.add(b"old", now + 1, now)
    later = now + 5  # expired by the caller's clock, whether or not the server has removed it yet
    assert kv_keys.add(b"old", later + 60, later)


def test_of_many_concurrent_adds_and_takes_exactly_one_wins(kv_keys):
    now = time.time()
    results: list[bool] = []
    barrier = threading.Barrier(12)

    def add() -> None:
        barrier.wait()
        results.append(kv_keys.add(b"race", now + 60, now))

    threads = [threading.Thread(target=add) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    taken: list[float | None] = []
    barrier = threading.Barrier(12)

    def take() -> None:
        barrier.wait()
        taken.append(kv_keys.take(b"race", now))

    threads = [threading.Thread(target=take) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(x is not None for x in taken) == 1


def test_the_store_is_chosen_by_the_log_location(tmp_path, nats_single, monkeypatch):
    from mykey.auth import nonces, onetime
    from mykey.auth.onetime_kv import KvOneTimeKeys
    from mykey.index.binding import binding

    monkeypatch.delenv("MYKEY_LOG", raising=False)
    local = nonces.acquire(tmp_path / "auth-nonces", binding())
    assert isinstance(local._keys, onetime.OneTimeKeys)
    nonces.release(local)
    monkeypatch.setenv("MYKEY_LOG", _url(nats_single))
    shared = nonces.acquire(tmp_path / "auth-nonces", binding())
    assert isinstance(shared._keys, KvOneTimeKeys) and "NATS key-value bucket" in shared.path
    nonces.release(shared)


NODE1_AUTH = """
    import sys
    from mykey.auth.terminals import TerminalAuthenticator
    from mykey.index.resolver import Resolver
    data, terminal, message, signature = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
    with Resolver.open(data) as r, TerminalAuthenticator.open(data, r, r.binding) as auth:
        print(auth.authenticate(terminal, message, signature))
"""


def test_a_terminal_message_accepted_on_one_node_is_refused_on_another(tmp_path, nats_single, monkeypatch):
    from mykey.auth.terminals import TerminalAuthenticator
    from mykey.client import keys as terminal_keys
    from mykey.engine import Engine
    from mykey.errors import TerminalAuthError
    from mykey.index.projector import run_projector
    from mykey.index.resolver import Resolver

    url = _url(nats_single)
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    key = terminal_keys.generate()
    with Engine.open(node1, log=url) as engine:
        bid = engine.register_business("Library", "131016")
        terminal = engine.enrol_terminal(bid, terminal_keys.public_pem(key))
    monkeypatch.setenv("MYKEY_LOG", url)
    from mykey.datadir import DataDir

    run_projector(DataDir(node2))  # node 2's own index, from the stream
    message, signature = terminal_keys.authentication(key, terminal)
    assert _other_node(NODE1_AUTH, url, node1, terminal, message.hex(), signature.hex()) == bid
    with Resolver.open(node2) as r, TerminalAuthenticator.open(node2, r, r.binding) as auth:
        with pytest.raises(TerminalAuthError, match="already used"):
            auth.authenticate(terminal, message, signature)
        fresh = terminal_keys.authentication(key, terminal)
        assert auth.authenticate(terminal, *fresh) == bid  # a fresh message is fine on any node


NODE1_CHALLENGE = """
    import sys
    from mykey.auth.challenges import open_challenge_store
    with open_challenge_store(sys.argv[1]) as store:
        print(store.issue("create").hex())
"""


def test_a_challenge_issued_on_one_node_is_used_once_on_another(tmp_path, nats_single, pki):
    from mykey.engine import Engine
    from mykey.errors import ChallengeError

    url = _url(nats_single)
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    challenge = bytes.fromhex(_other_node(NODE1_CHALLENGE, url, node1))
    cred = pki.user()
    with Engine.open(node2, log=url) as engine:
        engine.add_trust_anchor(pki.root.cert_pem())
        engine.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        mykey_id = engine.create_mykey(pki.chain(cred), cred.sign(challenge), challenge)
        assert engine.mykey(mykey_id) is not None
        with pytest.raises(ChallengeError, match="already used"):
            engine.create_mykey(pki.chain(pki.user()), cred.sign(challenge), challenge)


# --- the writer lease and the fence ------------------------------------------------------------------


def test_a_deposed_writer_is_fenced_by_its_successor(nats_single, js_open):
    """The takeover protocol, step by step: A holds the lease and writes; A stops renewing (it froze);
    the lease runs out; B takes it, opens the log (its end), fences it and writes; A wakes and appends:
    refused, nothing stored; A's renewal tells it the lease is gone."""
    import asyncio

    import nats
    from mykey.errors import LogFencedError
    from mykey.log.lease import Lease

    url = _url(nats_single)
    stream = url.split("stream=")[1].split("&")[0]

    async def run() -> None:
        nc = await nats.connect(nats_single.urls[0])
        try:
            a_lease = Lease(nc, stream, "a", ttl=2, replicas=1)
            b_lease = Lease(nc, stream, "b", ttl=2, replicas=1)
            await a_lease.setup()
            assert await a_lease.acquire() and a_lease.held
            a = js_open(url)
            a.append([ev.ServiceIdRegistered("A0001", "a-0")])
            assert not await b_lease.acquire()  # held by A
            assert (await b_lease.holder()).node == "a"
            deadline = time.monotonic() + 10
            while not await b_lease.acquire():  # A no longer renews: the server lets it run out
                assert time.monotonic() < deadline, "the lease did not run out"
                await asyncio.sleep(0.1)
            assert not a_lease.held  # A's own clock says so too
            b = js_open(url)
            fence_at = b.fence()
            b.append([ev.ServiceIdRegistered("A0001", "b-0")])
            with pytest.raises(LogFencedError, match="another writer"):
                a.append([ev.ServiceIdRegistered("A0001", "a-1")])
            assert not await a_lease.renew()
            assert await b_lease.renew()
            reader = js_open(url, readonly=True)
            batches = [(f, [ev.decode_envelope(p).body.service_id for p in ps]) for f, ps in reader.read_batches(1)]
            assert batches == [(1, ["a-0"]), (2, ["b-0"])]  # the fence holds no event; readers never see it
            assert reader.stream_last == fence_at + 1 and reader.last_seq == 2
            assert reader.position(2) == (fence_at + 1, 2)
        finally:
            await nc.close()

    asyncio.run(run())


def test_a_fence_on_an_empty_or_quiet_log_changes_no_event(nats_single, js_open, tmp_path):
    from mykey.index.store import Index

    url = _url(nats_single)
    w = js_open(url)
    w.fence()
    w.fence()
    w.append([ev.ServiceIdRegistered("A0001", "x")])
    w.fence()
    reader = js_open(url, readonly=True)
    assert reader.last_seq == 1 and reader.stream_last == 4
    assert [f for f, _ in reader.read_batches(1)] == [1]
    assert [s for s, _ in reader.read_raw(1)] == [1]
    from mykey.datadir import DataDir

    with Index.open(DataDir(tmp_path / "d")) as index:
        assert index.catch_up(reader) == 1


# --- snapshots ---------------------------------------------------------------------------------------


def _events(engine, prefix: str, n: int) -> None:
    for i in range(n):
        engine.register_service_ids("A0001", [(f"{prefix}{i}-{j}", None) for j in range(20)])


def test_restore_plus_the_tail_equals_a_full_rebuild(tmp_path, nats_single):
    from mykey.audit.replay import diff_live_index
    from mykey.datadir import DataDir
    from mykey.engine import Engine
    from mykey.index.projector import run_projector
    from mykey.index.snapshot import read_snapshot, restore_snapshot
    from mykey.log.backend import open_log

    url = _url(nats_single)
    node1, node3 = DataDir(tmp_path / "node1"), DataDir(tmp_path / "node3")
    with Engine.open(node1.root, log=url) as engine:
        engine.register_business("Library", "131016", business_id="A0001")
        _events(engine, "a", 30)
        cli = [sys.executable, "-m", "mykey", "snapshot", "--out", str(tmp_path / "snap"), "--data", str(node1.root),
               "--log", url, "--json"]  # another process, while the engine holds the index
        out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        info = read_snapshot(tmp_path / "snap")
        at = engine.log.last_seq
        assert info.last_seq == at == 601 and info.log["kind"] == "nats"
        assert info.stream_seq == engine.log.stream_last == json.loads(out.stdout.splitlines()[-1])["stream_seq"]
        _events(engine, "b", 10)  # the tail, written after the snapshot
        final = engine.log.last_seq
    with open_log(node3, url=url, readonly=True) as log:
        assert restore_snapshot(tmp_path / "snap", node3, log).last_seq == at
    applied: list[int] = []
    from mykey.log.backend import set_log_location

    set_log_location(url)
    try:
        assert run_projector(node3, progress=applied.append) == final
        assert sum(applied) == final - at  # only the tail was replayed
        assert diff_live_index(node3) == []  # equals a fresh rebuild from the whole log
    finally:
        set_log_location(None)


def test_a_damaged_or_foreign_snapshot_is_refused(tmp_path, nats_single):
    from mykey.datadir import DataDir
    from mykey.engine import Engine
    from mykey.errors import SnapshotError
    from mykey.index.snapshot import restore_snapshot, write_snapshot
    from mykey.index.store import current_generation
    from mykey.log.backend import open_log

    url, other = _url(nats_single), _url(nats_single)
    node1 = DataDir(tmp_path / "node1")
    for u, d in ((url, node1.root), (other, tmp_path / "elsewhere")):
        with Engine.open(d, log=u) as e:
            e.register_business("Library", "131016", business_id="A0001")
            _events(e, "x", 3)  # the same events: only the records' times tell the two logs apart
    with open_log(node1, url=url, readonly=True) as log:
        write_snapshot(node1, log, tmp_path / "snap")
        with pytest.raises(SnapshotError, match="already exists"):
            write_snapshot(node1, log, tmp_path / "snap")
    raw = bytearray((tmp_path / "snap").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "bad").write_bytes(bytes(raw))
    with open_log(node1, url=url, readonly=True) as log:
        with pytest.raises(SnapshotError, match="checksum"):
            restore_snapshot(tmp_path / "bad", DataDir(tmp_path / "n3"), log)
        assert current_generation(DataDir(tmp_path / "n3")) is None  # nothing installed
        with pytest.raises(SnapshotError, match="already has an index"):
            restore_snapshot(tmp_path / "snap", node1, log)
    with open_log(node1, url=other, readonly=True) as log:
        with pytest.raises(SnapshotError, match="another log"):
            restore_snapshot(tmp_path / "snap", DataDir(tmp_path / "n4"), log)
    (tmp_path / "short").write_bytes(bytes(raw[:100]))
    with pytest.raises(SnapshotError, match="not an intact"):
        restore_snapshot(tmp_path / "short", DataDir(tmp_path / "n5"), None)


def test_snapshot_and_restore_from_the_command_line_on_the_file_log(tmp_path):
    from mykey.cli import main
    from mykey.log.backend import set_log_location

    data, new = tmp_path / "data", tmp_path / "new"
    assert main(["init", "--data", str(data)]) == 0
    assert main(["business", "add", "--name", "Lib", "--municipality", "131016", "--data", str(data)]) == 0
    snap = tmp_path / "index.snap"
    assert main(["snapshot", "--out", str(data / "x.snap"), "--data", str(data)]) == 1  # never into DATA
    assert main(["snapshot", "--out", str(snap), "--data", str(data), "--json"]) == 0
    log = f"file://{data / 'log'}"
    try:
        assert main(["restore", str(snap), "--data", str(new), "--log", log]) == 0
        assert main(["business", "add", "--name", "Pool", "--municipality", "131016", "--data", str(data)]) == 0
        assert main(["project", "--data", str(new), "--log", log]) == 0
        assert main(["audit", "diff", "--data", str(new), "--log", log]) == 0
    finally:
        set_log_location(None)
    out = subprocess.run([sys.executable, "-m", "mykey", "resolve", "A0002", "x", "--data", str(new), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["status"] == "unknown"
