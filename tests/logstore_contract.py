"""The LogStore contract: every backend (file log today, JetStream later) must pass it.

A backend's test module subclasses LogStoreContract and provides the `open_store`
fixture: a factory `open_store(readonly=False) -> LogStore` over one fresh log.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mykey.domain import events as ev
from mykey.errors import ConcurrencyError, IndividualNumberError, ValidationError

ACTOR = ev.Actor("operator", "op-1")


def svc(i: int) -> ev.ServiceIdRegistered:
    return ev.ServiceIdRegistered("A0001", f"s{i}")


class LogStoreContract:
    """Behaviour every LogStore must have."""

    def test_empty(self, open_store):
        log = open_store()
        assert log.last_seq == 0
        assert list(log.read()) == []
        assert log.append([]) == []

    def test_append_assigns_gap_free_sequence_numbers(self, open_store):
        log = open_store()
        a = log.append([svc(1), svc(2)], ACTOR)
        b = log.append([svc(3)], ACTOR)
        assert [e.seq for e in a + b] == [1, 2, 3]
        assert log.last_seq == 3
        got = list(log.read())
        assert got == a + b
        assert all(e.actor == ACTOR and e.v == e.body.VERSION for e in got)

    def test_read_ranges(self, open_store):
        log = open_store()
        for i in range(10):
            log.append([svc(10 * i + j) for j in range(i + 1)])
        total = sum(range(1, 11))
        assert [e.seq for e in log.read(5, 9)] == [5, 6, 7, 8, 9]
        assert [e.seq for e in log.read(total)] == [total]
        assert list(log.read(total + 1)) == []
        assert [s for s, _ in log.read_raw(1, 3)] == [1, 2, 3]
        with pytest.raises(ValidationError):
            list(log.read(0))

    def test_read_batches_keeps_batch_boundaries(self, open_store):
        log = open_store()
        log.append([svc(1), svc(2)])
        log.append([svc(3)])
        log.append([svc(4), svc(5), svc(6)])
        assert [(f, len(p)) for f, p in log.read_batches(1)] == [(1, 2), (3, 1), (4, 3)]
        assert [(f, len(p)) for f, p in log.read_batches(3)] == [(3, 1), (4, 3)]
        assert [(f, len(p)) for f, p in log.read_batches(5)] == [(4, 3)]
        assert list(log.read_batches(7)) == []

    def test_raw_bytes_decode_to_the_same_envelopes(self, open_store):
        log = open_store()
        envs = log.append([svc(1), ev.MyKeyResumed("ABCDEFGH")], ACTOR)
        assert [ev.decode_envelope(p) for _, p in log.read_raw()] == envs
        assert [p for _, p in log.read_raw()] == [ev.encode_envelope(e) for e in envs]

    def test_bad_input_appends_nothing(self, open_store):
        log = open_store()
        log.append([svc(1)])
        with pytest.raises(IndividualNumberError):
            log.append([svc(2), ev.ServiceIdRegistered("A0001", "123456789018")])
        with pytest.raises(ValidationError):
            log.append([ev.ServiceIdRegistered("A0001", "x" * 40)])
        with pytest.raises(ValidationError):
            log.append([svc(3)], ev.Actor("user", "123456789018"))
        with pytest.raises(ValidationError):
            log.append(["not an event"])  # type: ignore[list-item]
        assert log.last_seq == 1 and [e.seq for e in log.read()] == [1]

    def test_expected_last_seq(self, open_store):
        log = open_store()
        log.append([svc(1)], expected_last_seq=0)
        with pytest.raises(ConcurrencyError):
            log.append([svc(2)], expected_last_seq=0)
        log.append([svc(2)], expected_last_seq=1)
        assert log.last_seq == 2

    def test_timestamp_is_utc_now_or_given(self, open_store):
        log = open_store()
        e1 = log.append([svc(1)])[0]
        e2 = log.append([svc(2)], ts=123)[0]
        assert e1.ts > 1_600_000_000_000_000 and e1.time.tzinfo is not None
        assert e2.ts == 123

    def test_reopen_keeps_everything(self, open_store):
        log = open_store()
        envs = log.append([svc(i) for i in range(100)])
        log.close()
        log = open_store()
        assert log.last_seq == 100 and list(log.read()) == envs
        assert log.append([svc(100)])[0].seq == 101

    def test_reader_sees_committed_batches(self, open_store):
        writer = open_store()
        writer.append([svc(1)])
        reader = open_store(readonly=True)
        assert reader.last_seq == 1
        writer.append([svc(2), svc(3)])
        assert reader.refresh() == 3
        assert [e.seq for e in reader.read()] == [1, 2, 3]

    def test_follow_sees_new_events(self, open_store):
        writer = open_store()
        writer.append([svc(0)])
        reader = open_store(readonly=True)
        stop = threading.Event()
        seen: list[int] = []

        def consume():
            for env in reader.follow(1, poll_interval=0.005, stop=stop):
                seen.append(env.seq)
                if env.seq == 50:
                    stop.set()

        t = threading.Thread(target=consume)
        t.start()
        for i in range(1, 50):
            writer.append([svc(i)])
        t.join(timeout=20)
        stop.set()
        assert seen == list(range(1, 51))

    @settings(max_examples=25)
    @given(batches=st.lists(st.integers(1, 30), min_size=1, max_size=15), start=st.integers(1, 200))
    def test_random_batches_read_back(self, open_store, batches, start):
        log = open_store(fresh=True)
        written = []
        for n in batches:
            written += log.append([svc(len(written) + i) for i in range(n)])
        assert list(log.read()) == written
        assert list(log.read(start)) == written[start - 1 :]
        log.close()
