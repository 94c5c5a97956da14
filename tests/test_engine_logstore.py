"""The engine stands on the LogStore interface: it runs on a second backend as it does on the file log.

MemoryLog is a deliberately small LogStore (batches in a list, shared by the handles
opened over one MemoryLogData). It proves itself with the contract suite first; the
engine then runs its flows on it, replays it into the index on reopen, and keeps its
audit trail over it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import pytest
from mykey.domain import events as ev
from mykey.domain.status import MyKeyState, Status
from mykey.engine import Engine
from mykey.errors import ConcurrencyError, LogError, ValidationError
from mykey.log.contract import LogStoreContract
from mykey.log.store import LogStore, should_stop

from .conftest import create_user, engine_resolver, link_card

Stop = threading.Event | Callable[[], bool] | None


class MemoryLogData:
    """What a memory log holds: committed batches (first_seq, payloads), and a condition for followers."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[bytes]]] = []
        self.changed = threading.Condition()

    @property
    def last_seq(self) -> int:
        if not self.batches:
            return 0
        first, payloads = self.batches[-1]
        return first + len(payloads) - 1


class MemoryLog(LogStore):
    def __init__(self, data: MemoryLogData, *, readonly: bool = False) -> None:
        self.data = data
        self.readonly = readonly
        self.closed = False
        self._seen = data.last_seq

    @property
    def last_seq(self) -> int:
        return self.data.last_seq if not self.readonly else self._seen

    def append(self, events: Sequence[ev.Event], actor: ev.Actor = ev.SYSTEM, *,
               expected_last_seq: int | None = None, ts: int | None = None) -> list[ev.Envelope]:
        if self.readonly or self.closed:
            raise LogError("this memory log handle cannot append")
        if not events:
            return []
        actor.check()
        for e in events:
            ev.check_event(e)
        with self.data.changed:
            last = self.data.last_seq
            if expected_last_seq is not None and expected_last_seq != last:
                raise ConcurrencyError(f"expected last sequence {expected_last_seq} but the log is at {last}")
            ts = ev.now_us() if ts is None else ts
            envs = [ev.Envelope(last + 1 + i, ts, actor, e.VERSION, e) for i, e in enumerate(events)]
            self.data.batches.append((last + 1, [ev.encode_envelope(e) for e in envs]))
            self.data.changed.notify_all()
        return envs

    def _records(self, from_seq: int, to_seq: int | None) -> Iterator[tuple[int, bytes]]:
        for first, payloads in self._batches_from(from_seq):
            for i, payload in enumerate(payloads):
                seq = first + i
                if seq >= from_seq and (to_seq is None or seq <= to_seq):
                    yield seq, payload

    def _batches_from(self, from_seq: int) -> list[tuple[int, list[bytes]]]:
        if from_seq < 1:
            raise ValidationError("sequence numbers start at 1")
        with self.data.changed:
            return [(f, p) for f, p in self.data.batches if f + len(p) - 1 >= from_seq]

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        return self._records(from_seq, to_seq)

    def read_batches(self, from_seq: int = 1) -> Iterator[tuple[int, list[bytes]]]:
        return iter(self._batches_from(from_seq))

    def _follow(self, from_seq: int, poll_interval: float, stop: Stop, whole: bool) -> Iterator:
        nxt = from_seq
        while not should_stop(stop):
            for first, payloads in self._batches_from(nxt):
                if whole:
                    yield first, payloads
                else:
                    yield from ((first + i, p) for i, p in enumerate(payloads) if first + i >= nxt)
                nxt = first + len(payloads)
                if should_stop(stop):
                    return
            with self.data.changed:
                if self.data.last_seq < nxt:
                    self.data.changed.wait(poll_interval)

    def follow_batches(self, from_seq: int = 1, *, poll_interval: float = 0.05,
                       stop: Stop = None) -> Iterator[tuple[int, list[bytes]]]:
        return self._follow(from_seq, poll_interval, stop, whole=True)

    def follow_raw(self, from_seq: int = 1, *, poll_interval: float = 0.05,
                   stop: Stop = None) -> Iterator[tuple[int, bytes]]:
        return self._follow(from_seq, poll_interval, stop, whole=False)

    def refresh(self) -> int:
        self._seen = self.data.last_seq
        return self._seen

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def open_store():
    state = {"data": MemoryLogData()}

    def factory(readonly: bool = False, fresh: bool = False) -> MemoryLog:
        if fresh:
            state["data"] = MemoryLogData()
        return MemoryLog(state["data"], readonly=readonly)

    return factory


class TestMemoryLogContract(LogStoreContract):
    """MemoryLog is a LogStore like any other: it passes the contract every backend must pass."""


def test_the_engine_runs_on_another_log_backend(tmp_path, binding, pki):
    log_data = MemoryLogData()
    with Engine.open(tmp_path / "data", log=MemoryLog(log_data), binding=binding) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = e.register_business("Library", "131016")
        e.register_consumer("points", "131016")
        mk, cred = create_user(e, pki)
        link_card(e, pki, cred, bid, "S1")
        e.suspend(mk, "lost")
        assert e.log.last_seq == log_data.last_seq == e.index.last_seq
        assert e.trail is not None and e.trail.size == log_data.last_seq  # the audit trail hashes it too
        last = e.log.last_seq
    assert not (tmp_path / "data" / "log").exists()  # nothing went to the file log
    # The backend holds events the index never applied (a crash between append and apply).
    MemoryLog(log_data).append([ev.ServiceIdRegistered(bid, "S2")], ev.Actor("operator", "op"))
    with Engine.open(tmp_path / "data", log=MemoryLog(log_data), binding=binding) as e:
        assert e.index.last_seq == last + 1  # replayed from the backend on open
        assert e.mykey(mk).state == MyKeyState.SUSPENDED
        assert [i.change for i in e.feed("points")] == ["joined", "suspended"]
        with engine_resolver(e) as r:
            assert r.resolve_statuses(bid, ["S1", "S2"]) == [Status.SUSPENDED, Status.UNLINKED]


def test_the_engine_closes_a_log_it_was_given_when_opening_fails(tmp_path, binding):
    from mykey.errors import IndexAheadError

    with Engine.open(tmp_path / "data", log=MemoryLog(MemoryLogData()), binding=binding, audit=False) as e:
        e.register_business("Library", "131016")
    shorter = MemoryLog(MemoryLogData())  # a backend that lost the event the index applied
    with pytest.raises(IndexAheadError):
        Engine.open(tmp_path / "data", log=shorter, binding=binding, audit=False)
    assert shorter.closed


def test_a_log_location_is_opened_through_the_backend_chooser(tmp_path, binding):
    elsewhere = tmp_path / "elsewhere-log"
    with Engine.open(tmp_path / "data", log=f"file://{elsewhere}", binding=binding, audit=False) as e:
        e.register_business("Library", "131016")
    assert elsewhere.is_dir() and not (tmp_path / "data" / "log").exists()
    with pytest.raises(ValidationError, match="not understood"):
        Engine.open(tmp_path / "other", log="nats://somewhere", binding=binding, audit=False)
