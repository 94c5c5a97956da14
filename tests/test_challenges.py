"""Challenges for a card's proof of possession: what they are bound to, single use, expiry,
and single use across the processes of a machine (mykey.auth.challenges over mykey.auth.onetime)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from mykey.auth import onetime
from mykey.auth.challenges import (
    TTL,
    Challenge,
    LmdbChallengeStore,
    MemoryChallengeStore,
    open_challenge_store,
)
from mykey.datadir import DataDir
from mykey.errors import ChallengeError, ValidationError


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path, binding):
    clock = Clock()
    if request.param == "memory":
        s = MemoryChallengeStore(clock)
    else:
        s = open_challenge_store(DataDir(tmp_path / "data"), binding, clock)
    s.clock = clock
    yield s
    s.close()


def test_the_signed_bytes_say_the_purpose_and_what_they_bind(store):
    link = store.issue("link", business_id="A0001", service_id="lib:42", terminal_id="A0001-T0007")
    assert link.startswith(b"mykey:link:A0001:A0001-T0007:lib:42:")
    assert Challenge.parse(link) == Challenge("link", link.decode()[-64:], "A0001", "A0001-T0007", "lib:42")
    assert store.issue("identify", business_id="B0002").startswith(b"mykey:identify:B0002:-:")
    assert store.issue("create").startswith(b"mykey:create:") and store.issue("renew").startswith(b"mykey:renew:")
    raw, expires_at = store.issue_expiring("link", business_id="A0001", service_id="S1")
    assert expires_at == store.clock.t + TTL["link"] and TTL["link"] <= 120


@pytest.mark.parametrize(
    "purpose, bound",
    [
        ("login", {}),
        ("link", {"business_id": "A0001"}),  # a link names the service ID
        ("identify", {"business_id": "A0001", "service_id": "S1"}),
        ("identify", {}),
        ("create", {"business_id": "A0001"}),
        ("link", {"business_id": "A0001", "service_id": "S1", "terminal_id": "B0002-T0001"}),  # another's terminal
        ("link", {"business_id": "A0001", "service_id": "has space"}),
        ("link", {"business_id": "A0001", "service_id": "1234-5678-9018"}),  # an Individual Number, disguised
        ("identify", {"business_id": "a0001"}),
    ],
)
def test_a_challenge_must_be_bound_to_what_its_purpose_needs(store, purpose, bound):
    with pytest.raises(ValidationError):
        store.issue(purpose, **bound)


def test_a_challenge_is_used_once(store):
    ch = store.issue("link", business_id="A0001", service_id="S1")
    assert store.consume(ch, "link").service_id == "S1"
    with pytest.raises(ChallengeError, match="already used"):
        store.consume(ch, "link")


def test_a_challenge_expires(store):
    ch = store.issue("identify", business_id="A0001")
    store.clock.t += TTL["identify"] + 1
    with pytest.raises(ChallengeError, match="expired"):
        store.consume(ch, "identify")
    with pytest.raises(ChallengeError, match="already used"):
        store.consume(ch, "identify")  # an expired one is used up too


def test_a_challenge_serves_only_its_purpose_and_is_used_up_trying(store):
    ch = store.issue("identify", business_id="A0001")
    with pytest.raises(ChallengeError, match="issued to identify, not to link"):
        store.consume(ch, "link")
    with pytest.raises(ChallengeError, match="already used"):
        store.consume(ch, "identify")


@pytest.mark.parametrize(
    "want, why",
    [
        ({"business_id": "B0002", "service_id": "S1"}, "another business"),
        ({"business_id": "A0001", "service_id": "S2"}, "names service ID S1, not S2"),
        ({"business_id": "A0001", "service_id": "S1", "terminal_id": "A0001-T0002"}, "issued to terminal A0001-T0001"),
    ],
)
def test_expect_refuses_another_binding_and_burns_the_challenge(store, want, why):
    ch = store.issue("link", business_id="A0001", service_id="S1", terminal_id="A0001-T0001")
    with pytest.raises(ChallengeError, match=why):
        store.expect(ch, "link", **want)
    with pytest.raises(ChallengeError, match="already used"):
        store.consume(ch, "link")


def test_expect_accepts_the_exact_binding_without_using_it(store):
    ch = store.issue("link", business_id="A0001", service_id="S1")
    store.expect(ch, "link", business_id="A0001", service_id="S1")
    with pytest.raises(ChallengeError, match="issued to no terminal"):
        store.expect(store.issue("link", business_id="A0001", service_id="S1"), "link", business_id="A0001",
                     service_id="S1", terminal_id="A0001-T0001")
    store.consume(ch, "link")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe", b"mykey:create", b"mykey:link:A0001:-:S1:" + b"0" * 63, b"other:create:" + b"0" * 64, "text"],
)
def test_garbage_is_an_unknown_challenge(store, raw):
    with pytest.raises(ChallengeError):
        store.consume(raw, "link")
    with pytest.raises(ChallengeError):
        store.expect(raw, "link", business_id="A0001", service_id="S1")


def test_a_forged_challenge_was_never_issued(store):
    issued = store.issue("link", business_id="A0001", service_id="S1")
    forged = issued.replace(b":S1:", b":S2:")
    with pytest.raises(ChallengeError, match="unknown"):
        store.consume(forged, "link")
    store.consume(issued, "link")


def test_only_a_digest_is_stored_never_the_service_id(tmp_path, binding):
    with open_challenge_store(DataDir(tmp_path), binding) as store:
        store.issue("link", business_id="A0001", service_id="MEMBER-31337")
    stored = b"".join(p.read_bytes() for p in (tmp_path / "challenges").iterdir())
    assert b"MEMBER-31337" not in stored


# --- across processes -----------------------------------------------------------------------

_CONSUME = textwrap.dedent(
    """
    import sys
    from mykey.auth.challenges import open_challenge_store
    from mykey.errors import ChallengeError
    store = open_challenge_store(sys.argv[1])
    sys.stdin.readline()  # wait until every process is ready
    try:
        store.consume(bytes.fromhex(sys.argv[2]), "link")
        print("consumed")
    except ChallengeError as exc:
        print("refused:", exc)
    store.close()
    """
)


def test_a_challenge_is_used_once_across_processes(tmp_path):
    data = DataDir(tmp_path / "data")
    with open_challenge_store(data) as store:
        ch = store.issue("link", business_id="A0001", service_id="S1", terminal_id="A0001-T0001")
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONSUME, str(data.root), ch.hex()],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate("go\n", timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    answers = sorted(out.strip().split(":")[0] for out, _ in outs)
    assert answers == ["consumed", "refused", "refused", "refused"]  # four racing workers: one wins
    with open_challenge_store(data) as store, pytest.raises(ChallengeError, match="already used"):
        store.consume(ch, "link")


def test_a_forked_worker_opens_its_own_store(tmp_path):
    # Gateway workers are forked after the parent opened things: the child must not use the parent's handle.
    data = DataDir(tmp_path / "data")
    parent = open_challenge_store(data)
    ch = parent.issue("identify", business_id="A0001")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            os.close(r)
            with open_challenge_store(data) as child:
                child.consume(ch, "identify")
            code = 0
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"\x00"
    os.waitpid(pid, 0)
    with pytest.raises(ChallengeError, match="already used"):
        parent.consume(ch, "identify")
    parent.close()


# --- the single-use store underneath -------------------------------------------------------------


def test_onetime_keys_add_take_and_sweep_only_what_expired(tmp_path, binding):
    keys = onetime.acquire(tmp_path / "keys", binding, b"test")
    try:
        assert keys.add(b"a", expiry=100.0, now=0.0)
        assert not keys.add(b"a", expiry=200.0, now=50.0)  # there and not expired: first use wins
        assert keys.add(b"a", expiry=300.0, now=150.0)  # expired: usable again
        assert keys.add(b"b", expiry=120.0, now=150.0) and keys.add(b"c", expiry=500.0, now=150.0)
        assert len(keys) == 3
        assert keys.prune(now=400.0) == 2 and len(keys) == 1  # a and b expired; c stays
        assert keys.take(b"c", now=400.0) == 500.0 and keys.take(b"c", now=400.0) is None
        assert len(keys) == 0
    finally:
        onetime.release(keys)


def test_challenges_are_swept_once_expired(tmp_path, binding):
    clock = Clock()
    with open_challenge_store(DataDir(tmp_path), binding, clock) as store:
        for _ in range(5):
            store.issue("create")
        clock.t += max(TTL.values()) + onetime.PRUNE_SECONDS + 1
        store.issue("create")  # sweeps the expired ones on the way
        assert isinstance(store, LmdbChallengeStore) and len(store._keys) == 1


def test_nonces_recorded_before_the_expiry_index_are_still_refused_and_swept(tmp_path, binding):
    # DATA/auth-nonces as the previous release left it: one database of key -> expiry.
    import struct

    from mykey.auth import nonces

    path = tmp_path / "auth-nonces"
    env = binding.Env(str(path), map_size=1 << 30, max_dbs=2, sync=False)
    db = env.open_db(b"nonces")
    with env.begin(write=True) as txn:
        txn.put(db, b"A0001-T0001\0" + b"n" * 16, struct.pack(">d", 1000.0))
        txn.put(db, b"A0001-T0001\0" + b"o" * 16, struct.pack(">d", 10.0))
    env.close()
    store = nonces.acquire(path, binding)
    try:
        from mykey.errors import NonceReusedError

        with pytest.raises(NonceReusedError):
            store.accept("A0001-T0001", b"n" * 16, now=500.0, expiry=1100.0)
        assert store._keys.prune(now=500.0) == 1 and len(store._keys) == 1
    finally:
        nonces.release(store)
