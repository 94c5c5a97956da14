"""The LogStore contract: the behaviour every log backend must show, as a pytest test suite.

For test suites only: importing this module needs pytest and hypothesis (the dev
extras); nothing in the runtime package imports it.

A backend proves itself by subclassing ``LogStoreContract`` in its own test module
and providing an ``open_store`` fixture that returns a factory::

    open_store(readonly: bool = False, fresh: bool = False) -> LogStore

Every call opens a new handle on the test's log (the same log each time);
``fresh=True`` first switches to a new, empty log. ``readonly=True`` opens a reader
while a writer may be open. The fixture closes every handle it returned when the
test ends (``close`` is idempotent, so tests may close handles themselves)::

    class TestMyBackendContract(LogStoreContract):
        @pytest.fixture
        def open_store(self, tmp_path):
            ...

What is held: appends are atomic and numbered 1, 2, 3, ... without gaps; an append
with a stale ``expected_last_seq`` raises ConcurrencyError and writes nothing, as does
any invalid input; ``read``/``read_raw``/``read_batches`` start from any sequence
number (mid-batch included) and keep batch boundaries; ``follow``/``follow_batches``
see new appends and end when ``stop`` says so; readers see appends after ``refresh``
and refuse to append; everything survives close and reopen.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..domain import events as ev
from ..errors import ConcurrencyError, IndividualNumberError, LogError, ValidationError

__all__ = ["ACTOR", "LogStoreContract", "svc"]

ACTOR = ev.Actor("operator", "op-1")
DEADLINE = 30.0  # seconds a follower may take to see what was appended


def svc(i: int) -> ev.ServiceIdRegistered:
    """A small valid event, distinct for each i."""
    return ev.ServiceIdRegistered("A0001", f"s{i}")


def _fill(log, sizes: list[int]) -> list[list[ev.Envelope]]:
    """Append one batch per size; returns the batches of envelopes as acknowledged."""
    batches, n = [], 0
    for size in sizes:
        batches.append(log.append([svc(n + i) for i in range(size)], ACTOR))
        n += size
    return batches


def _follow_until(it, last: int, key) -> list:
    """Items of a follow iterator up to the one whose key reaches last (the caller bounds the time with stop)."""
    got = []
    for item in it:
        got.append(item)
        if key(item) >= last:
            break
    return got


def _run_threads(target, args) -> None:
    """Run target(a) for each a in args, all at once; wait for them (within the deadline)."""
    threads = [threading.Thread(target=target, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), "an append did not return"


_examples = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


class LogStoreContract:
    """Behaviour every LogStore must have. Subclass it and provide the ``open_store`` fixture."""

    # --- appending -----------------------------------------------------------

    def test_empty_log(self, open_store):
        log = open_store()
        assert log.last_seq == 0
        assert list(log.read()) == [] and list(log.read_raw()) == [] and list(log.read_batches()) == []
        assert log.append([]) == [] and log.last_seq == 0

    def test_append_assigns_gap_free_sequence_numbers(self, open_store):
        log = open_store()
        a = log.append([svc(1), svc(2)], ACTOR)
        b = log.append([svc(3)], ACTOR)
        assert [e.seq for e in a + b] == [1, 2, 3]
        assert [e.body for e in a + b] == [svc(1), svc(2), svc(3)]
        assert log.last_seq == 3
        got = list(log.read())
        assert got == a + b
        assert all(e.actor == ACTOR and e.v == e.body.VERSION for e in got)
        assert len({e.ts for e in a}) == 1  # one timestamp per batch

    def test_raw_bytes_decode_to_the_same_envelopes(self, open_store):
        log = open_store()
        envs = log.append([svc(1), ev.MyKeyResumed("ABCDEFGH")], ACTOR)
        assert [ev.decode_envelope(p) for _, p in log.read_raw()] == envs
        assert [p for _, p in log.read_raw()] == [ev.encode_envelope(e) for e in envs]

    def test_timestamp_is_utc_now_or_given(self, open_store):
        log = open_store()
        e1 = log.append([svc(1)])[0]
        e2 = log.append([svc(2)], ts=123)[0]
        assert e1.ts > 1_600_000_000_000_000 and e1.time.tzinfo is not None
        assert e2.ts == 123 and e1.actor == ev.SYSTEM

    def test_invalid_input_writes_nothing(self, open_store):
        log = open_store()
        log.append([svc(1)])
        refused = [
            ([svc(2), ev.ServiceIdRegistered("A0001", "123456789018")], ACTOR, IndividualNumberError),
            ([svc(2), ev.ServiceIdRegistered("A0001", "x" * 40)], ACTOR, ValidationError),
            ([svc(2)], ev.Actor("user", "123456789018"), ValidationError),
            ([svc(2), "not an event"], ACTOR, ValidationError),
        ]
        for events, actor, error in refused:
            with pytest.raises(error):
                log.append(events, actor)
            assert log.last_seq == 1 and [e.seq for e in log.read()] == [1]
        assert log.append([svc(2)])[0].seq == 2  # no sequence number was used up
        log.close()
        assert [e.body for e in open_store(readonly=True).read()] == [svc(1), svc(2)]

    def test_expected_last_seq(self, open_store):
        log = open_store()
        assert log.append([svc(1)], expected_last_seq=0)[0].seq == 1
        assert log.append([svc(2), svc(3)], expected_last_seq=1)[0].seq == 2
        assert log.last_seq == 3

    @pytest.mark.parametrize("stale", [0, 2, 4, 100])
    def test_expected_last_seq_conflict_writes_nothing(self, open_store, stale):
        log = open_store()
        before = log.append([svc(1), svc(2), svc(3)])
        with pytest.raises(ConcurrencyError):
            log.append([svc(9), svc(10)], expected_last_seq=stale)
        assert log.last_seq == 3 and list(log.read()) == before
        assert log.append([svc(4)], expected_last_seq=3)[0].seq == 4
        reader = open_store(readonly=True)
        assert [e.body for e in reader.read()] == [svc(1), svc(2), svc(3), svc(4)]

    def test_concurrent_conditional_appends_admit_exactly_one(self, open_store):
        log = open_store()
        log.append([svc(0)])
        n = 8
        barrier = threading.Barrier(n)
        won: list[int] = []
        lost: list[BaseException] = []

        def attempt(i: int) -> None:
            barrier.wait()
            try:
                log.append([svc(100 + i), svc(200 + i)], expected_last_seq=1)
            except ConcurrencyError as exc:
                lost.append(exc)
            else:
                won.append(i)

        _run_threads(attempt, range(n))
        assert len(won) == 1 and len(lost) == n - 1
        assert log.last_seq == 3
        assert [e.body for e in log.read(2)] == [svc(100 + won[0]), svc(200 + won[0])]

    def test_batches_stay_whole_under_concurrent_appends(self, open_store):
        log = open_store()
        threads_n, per_thread, size = 4, 25, 5
        acked: list[list[ev.Envelope]] = []
        mutex = threading.Lock()

        def writer(t: int) -> None:
            for b in range(per_thread):
                envs = log.append([svc(10_000 * t + 100 * b + i) for i in range(size)])
                with mutex:
                    acked.append(envs)

        _run_threads(writer, range(threads_n))
        total = threads_n * per_thread * size
        assert log.last_seq == total and [e.seq for e in log.read()] == list(range(1, total + 1))
        got = [[ev.decode_envelope(p) for p in payloads] for _, payloads in log.read_batches()]
        assert sorted(got, key=lambda b: b[0].seq) == sorted(acked, key=lambda b: b[0].seq)

    # --- reading -------------------------------------------------------------

    def test_read_ranges(self, open_store):
        log = open_store()
        _fill(log, [i + 1 for i in range(10)])
        total = sum(range(1, 11))
        assert [e.seq for e in log.read(5, 9)] == [5, 6, 7, 8, 9]
        assert [e.seq for e in log.read(total)] == [total]
        assert [e.seq for e in log.read(total - 1, total + 50)] == [total - 1, total]
        assert list(log.read(total + 1)) == [] and list(log.read_batches(total + 1)) == []
        assert list(log.read(9, 5)) == []
        assert [s for s, _ in log.read_raw(1, 3)] == [1, 2, 3]
        assert [s for s, _ in log.read_raw(7, 7)] == [7]

    @pytest.mark.parametrize("method", ["read", "read_raw", "read_batches"])
    def test_sequence_numbers_start_at_1(self, open_store, method):
        log = open_store()
        log.append([svc(1)])
        with pytest.raises(ValidationError):
            list(getattr(log, method)(0))

    def test_read_batches_keeps_batch_boundaries(self, open_store):
        log = open_store()
        _fill(log, [2, 1, 3])
        assert [(f, len(p)) for f, p in log.read_batches(1)] == [(1, 2), (3, 1), (4, 3)]
        assert [(f, len(p)) for f, p in log.read_batches(2)] == [(1, 2), (3, 1), (4, 3)]  # the batch holding 2
        assert [(f, len(p)) for f, p in log.read_batches(3)] == [(3, 1), (4, 3)]
        assert [(f, len(p)) for f, p in log.read_batches(5)] == [(4, 3)]
        assert list(log.read_batches(7)) == []

    @_examples
    @given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=15), data=st.data())
    def test_read_from_any_sequence_number(self, open_store, sizes, data):
        log = open_store(fresh=True)
        batches = _fill(log, sizes)
        written = [e for b in batches for e in b]
        last = len(written)
        start = data.draw(st.integers(1, last + 1), label="start")
        end = data.draw(st.integers(start - 1, last + 1), label="end")
        assert list(log.read(start)) == written[start - 1 :]
        assert list(log.read(start, end)) == written[start - 1 : end]
        raw = list(log.read_raw(start, end))
        assert raw == [(e.seq, ev.encode_envelope(e)) for e in written[start - 1 : end]]
        from_batch = [b for b in batches if b[-1].seq >= start]
        got = [(f, [ev.decode_envelope(p) for p in payloads]) for f, payloads in log.read_batches(start)]
        assert got == [(b[0].seq, b) for b in from_batch]
        log.close()

    # --- following -----------------------------------------------------------

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
        t.join(DEADLINE)
        stop.set()
        assert not t.is_alive() and seen == list(range(1, 51))

    def test_follow_batches_yields_whole_batches_from_mid_batch(self, open_store):
        writer = open_store()
        _fill(writer, [3, 2])
        deadline = time.monotonic() + DEADLINE
        it = writer.follow_batches(2, poll_interval=0.005, stop=lambda: time.monotonic() > deadline)
        assert next(it)[0] == 1  # the batch holding 2
        assert next(it)[0] == 4
        writer.append([svc(10), svc(11), svc(12)])
        first, payloads = next(it)
        assert first == 6 and [ev.decode_envelope(p).body for p in payloads] == [svc(10), svc(11), svc(12)]
        it.close()

    def test_follow_from_mid_batch_and_from_the_future(self, open_store):
        writer = open_store()
        _fill(writer, [4])
        deadline = time.monotonic() + DEADLINE

        def stop() -> bool:
            return time.monotonic() > deadline

        got = _follow_until(writer.follow_raw(3, poll_interval=0.005, stop=stop), 4, key=lambda r: r[0])
        assert [s for s, _ in got] == [3, 4]
        later = writer.follow(6, poll_interval=0.005, stop=stop)  # 5 and 6 do not exist yet
        writer.append([svc(10), svc(11), svc(12)])
        assert [e.seq for e in _follow_until(later, 7, key=lambda e: e.seq)] == [6, 7]

    @pytest.mark.parametrize("kind", ["event", "callable"])
    def test_follow_ends_when_stopped_at_the_tail(self, open_store, kind):
        writer = open_store()
        _fill(writer, [2, 3])
        reader = open_store(readonly=True)
        flag = threading.Event()
        stop = flag if kind == "event" else flag.is_set
        records: list[int] = []
        batches: list[int] = []

        def consume_records():
            for env in reader.follow(1, poll_interval=0.005, stop=stop):
                records.append(env.seq)

        def consume_batches():
            for first, _payloads in reader.follow_batches(1, poll_interval=0.005, stop=stop):
                batches.append(first)

        threads = [threading.Thread(target=consume_records), threading.Thread(target=consume_batches)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + DEADLINE
        while (len(records) < 5 or len(batches) < 2) and time.monotonic() < deadline:
            time.sleep(0.001)  # poll until both followers have reached the tail
        flag.set()
        for t in threads:
            t.join(DEADLINE)
        assert not any(t.is_alive() for t in threads), "a follower did not stop"
        assert records == [1, 2, 3, 4, 5] and batches == [1, 3]

    # --- readers, reopening, closing ----------------------------------------

    def test_reader_sees_committed_batches_after_refresh(self, open_store):
        writer = open_store()
        writer.append([svc(1)])
        reader = open_store(readonly=True)
        assert reader.last_seq == 1
        writer.append([svc(2), svc(3)])
        assert reader.refresh() == 3 and reader.last_seq == 3
        assert [e.seq for e in reader.read()] == [1, 2, 3]
        assert [(f, len(p)) for f, p in reader.read_batches(3)] == [(2, 2)]
        assert reader.refresh() == 3  # nothing new: unchanged

    def test_reader_refuses_appends(self, open_store):
        writer = open_store()
        writer.append([svc(1)])
        reader = open_store(readonly=True)
        with pytest.raises(LogError):
            reader.append([svc(2)])
        with pytest.raises(LogError):
            reader.append([svc(2)], expected_last_seq=1)
        assert writer.last_seq == 1 and reader.refresh() == 1 and [e.seq for e in writer.read()] == [1]
        reader.sync()  # a no-op for a reader, never an error

    def test_reopen_keeps_everything(self, open_store):
        log = open_store()
        batches = _fill(log, [1, 100, 3])
        log.sync()
        log.close()
        log = open_store()
        assert log.last_seq == 104 and list(log.read()) == [e for b in batches for e in b]
        assert [(f, len(p)) for f, p in log.read_batches()] == [(1, 1), (2, 100), (102, 3)]
        assert log.append([svc(104)])[0].seq == 105
        log.close()
        assert open_store(readonly=True).last_seq == 105

    def test_close_is_idempotent_and_a_closed_log_refuses_appends(self, open_store):
        log = open_store()
        log.append([svc(1)])
        with log:
            pass  # leaving the with-block closes it
        log.close()
        with pytest.raises(LogError):
            log.append([svc(2)])
        assert open_store().last_seq == 1
