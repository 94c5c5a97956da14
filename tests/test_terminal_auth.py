"""Terminal authentication tells nothing to outsiders, and fails closed without replay protection."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from mykey.auth.terminals import TerminalAuthenticator, terminal_auth_message
from mykey.client import keys as terminal_keys
from mykey.engine import Engine
from mykey.errors import ReplayProtectionError, TerminalAuthError
from mykey.index.resolver import Resolver

from .conftest import engine_authenticator, engine_resolver


@pytest.fixture
def enrolled(engine):
    """(engine, business ID, terminal ID, its key) with one terminal enrolled."""
    bid = engine.register_business("Library", "131016")
    key = terminal_keys.generate()
    return engine, bid, engine.enrol_terminal(bid, terminal_keys.public_pem(key)), key


def refusal(auth, terminal_id, message, signature) -> str:
    with pytest.raises(TerminalAuthError) as exc:
        auth.authenticate(terminal_id, message, signature)
    return str(exc.value)


def test_unknown_and_badly_signed_look_alike_and_take_as_long(enrolled):
    engine, bid, tid, key = enrolled
    unknown = f"{bid}-T0099"
    wrong = terminal_keys.generate()  # well-formed signatures by a key nobody enrolled: checked in full
    with engine_resolver(engine) as r, engine_authenticator(engine, r) as auth:
        def attempt(terminal_id: str, message: bytes | None = None) -> int:
            m = message or terminal_auth_message(terminal_id, int(time.time()), os.urandom(16))
            signature = wrong.sign(m)
            t0 = time.perf_counter_ns()
            try:
                auth.authenticate(terminal_id, m, signature)
            except TerminalAuthError:
                pass
            return time.perf_counter_ns() - t0

        m_unknown, m_enrolled = (terminal_auth_message(t, int(time.time()), os.urandom(16)) for t in (unknown, tid))
        told_unknown = refusal(auth, unknown, m_unknown, wrong.sign(m_unknown))
        assert told_unknown == refusal(auth, tid, m_enrolled, wrong.sign(m_enrolled)).replace(tid, unknown)
        ratios = []
        for _ in range(3):  # a noisy machine gets three tries; a real difference (30x) fails all of them
            samples: dict[str, list[int]] = {"unknown": [], "bad": [], "junk-unknown": [], "junk-bad": []}
            for _ in range(300):  # interleaved, so a burst of noise hits every kind alike
                samples["unknown"].append(attempt(unknown))
                samples["bad"].append(attempt(tid))
                samples["junk-unknown"].append(attempt(unknown, b"junk"))
                samples["junk-bad"].append(attempt(tid, b"junk"))
            median = {name: statistics.median(times) for name, times in samples.items()}
            ratios = [median["unknown"] / median["bad"], median["junk-unknown"] / median["junk-bad"]]
            if all(0.5 <= ratio <= 2 for ratio in ratios):
                break
        assert all(0.5 <= ratio <= 2 for ratio in ratios), f"unknown/enrolled time ratios {ratios}"


def test_a_stale_message_does_not_tell_our_clock(enrolled):
    engine, bid, tid, key = enrolled
    with engine_resolver(engine) as r, engine_authenticator(engine, r) as auth:
        told = set()
        for age in (3600, -7200, 61):
            m = terminal_auth_message(tid, int(time.time()) - age, os.urandom(16))
            told.add(refusal(auth, tid, m, key.sign(m)))
        assert len(told) == 1 and "time window" in told.pop()  # the same words whatever the timestamp
        # An outsider (no valid signature) learns nothing about time at all.
        unknown = f"{bid}-T0099"
        m = terminal_auth_message(unknown, int(time.time()) - 3600, os.urandom(16))
        assert "failed" in refusal(auth, unknown, m, key.sign(m))
        m = terminal_auth_message(tid, int(time.time()) - 3600, os.urandom(16))
        assert "failed" in refusal(auth, tid, m, os.urandom(64))


def test_without_a_nonce_record_authentication_fails_closed_unless_asked(enrolled):
    engine, bid, tid, key = enrolled
    with engine_resolver(engine) as r:
        closed = TerminalAuthenticator(r, None)
        m, s = terminal_keys.authentication(key, tid)
        with pytest.raises(ReplayProtectionError, match="per_process_replay"):
            closed.authenticate(tid, m, s)
        own = TerminalAuthenticator(r, None, per_process_replay=True)  # the explicit opt-in
        assert own.authenticate(tid, m, s) == bid
        with pytest.raises(TerminalAuthError, match="replay"):
            own.authenticate(tid, m, s)
        # A closed authenticator does not fall back to a weaker record.
        with engine_authenticator(engine, r) as shared:
            m, s = terminal_keys.authentication(key, tid)
            assert shared.authenticate(tid, m, s) == bid
        m, s = terminal_keys.authentication(key, tid)
        with pytest.raises(ReplayProtectionError, match="closed"):
            shared.authenticate(tid, m, s)


@contextmanager
def unwritable(path: Path):
    """Make the directory path unwritable even for this process (chmod; for root, the immutable flag)."""
    if os.geteuid() != 0:
        os.chmod(path, 0o500)
        undo = lambda: os.chmod(path, 0o700)  # noqa: E731
    else:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("as root only the immutable flag makes a directory unwritable, and `chattr +i` failed here "
                        "(install e2fsprogs, or run the tests as a non-root user)")
        undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)  # noqa: E731
    try:
        try:
            (path / "probe").touch()
        except OSError:
            pass
        else:
            (path / "probe").unlink()
            pytest.skip(f"{path} stays writable after chmod/chattr on this file system (root on tmpfs, say); "
                        "run the tests as a non-root user on a disk file system")
        yield
    finally:
        undo()


def test_an_unwritable_nonce_record_refuses_authentication(tmp_path, binding):
    data = tmp_path / "data"
    with Engine.open(data, binding=binding) as e:
        bid = e.register_business("Library", "131016")
        key = terminal_keys.generate()
        tid = e.enrol_terminal(bid, terminal_keys.public_pem(key))
    (data / "auth-nonces").mkdir(mode=0o700)
    with unwritable(data / "auth-nonces"), Resolver.open(data, binding=binding) as r:
        m, s = terminal_keys.authentication(key, tid)
        with TerminalAuthenticator.open(data, r, r.binding) as auth:
            with pytest.raises(ReplayProtectionError, match="auth-nonces") as exc:
                auth.authenticate(tid, m, s)
            assert "per_process_replay" in str(exc.value)
        with TerminalAuthenticator.open(data, r, r.binding, per_process_replay=True) as auth:
            assert auth.authenticate(tid, m, s) == bid
            with pytest.raises(TerminalAuthError, match="replay"):
                auth.authenticate(tid, m, s)
