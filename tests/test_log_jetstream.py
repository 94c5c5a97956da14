"""The JetStream log (mykey.log.jetstream) against real nats-servers on loopback.

The LogStore contract on R1 and R3 streams (with one message per batch and with batches
spread over many messages); locations; how batches are laid out in messages and checked
when read; the batch size limits; exactly one writer (the fence); ambiguous commits
resolved by reading the stream (faults injected between the client and a real server);
a forked child; and the CLI: --log, MYKEY_LOG, `mykey nats up/down`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mykey.domain import events as ev
from mykey.errors import (
    ConcurrencyError,
    CorruptLogError,
    LogError,
    LogFencedError,
    LogUnavailableError,
    ValidationError,
)
from mykey.log import framing
from mykey.log.backend import file_log_dir, open_log
from mykey.log.contract import ACTOR, LogStoreContract, svc
from mykey.log.jetstream import (
    BATCH_LIMIT,
    JetStreamLog,
    NatsLocation,
    is_nats_location,
)
from mykey.log.nats_records import (
    H_BATCH,
    H_DIGEST,
    H_PART,
    BatchAssembler,
    StreamMessage,
    batch_digest,
    message_headers,
    pack_frames,
)

from .nats_fixtures import unique_stream

SETUPS = {
    # name: (cluster fixture, replicas, max_msg_bytes)
    "r1": ("nats_single", 1, None),
    "r1-small-msgs": ("nats_single", 1, 1024),  # ~12 events a message: batches span many messages
    "r3-small-msgs": ("nats_cluster", 3, 1024),
}


@pytest.fixture(params=list(SETUPS))
def open_store(request):
    fixture, replicas, max_bytes = SETUPS[request.param]
    cluster = request.getfixturevalue(fixture)
    opened: list[JetStreamLog] = []
    state = {"url": None}

    def new_url() -> str:
        return cluster.log_url(stream=unique_stream(), replicas=replicas, max_msg_bytes=max_bytes)

    state["url"] = new_url()

    def factory(readonly: bool = False, fresh: bool = False) -> JetStreamLog:
        if fresh:
            state["url"] = new_url()
        log = JetStreamLog.open(state["url"], readonly=readonly)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()


class TestJetStreamContract(LogStoreContract):
    """The JetStream log holds to the LogStore contract."""


@pytest.fixture
def r1_url(nats_single):
    """A fresh R1 stream on the single server, with small messages (many per batch)."""

    def make(**kw) -> str:
        kw.setdefault("max_msg_bytes", 1024)
        return nats_single.log_url(stream=unique_stream(), replicas=1, **kw)

    return make


def bodies(log) -> list[ev.Event]:
    return [e.body for e in log.read()]


def stream_messages(log: JetStreamLog) -> list[StreamMessage]:
    """Every message of the log's stream, as stored."""
    return list(log._messages(1, follow=False))


# --- locations ------------------------------------------------------------------------------


def test_locations_parse_with_defaults_and_parameters():
    loc = NatsLocation.parse("nats://127.0.0.1:4222")
    assert loc.servers == ("nats://127.0.0.1:4222",) and loc.stream == "MYKEY_LOG"
    assert loc.subject == "mykey.log.MYKEY_LOG" and loc.replicas == 3 and loc.timeout == 30
    loc = NatsLocation.parse("nats://a:1,nats://b:2, c:3?stream=S1&replicas=1&timeout=2.5&max_msg_bytes=4096")
    assert loc.servers == ("nats://a:1", "nats://b:2", "nats://c:3")
    assert (loc.stream, loc.subject, loc.replicas, loc.timeout, loc.max_msg_bytes) == ("S1", "mykey.log.S1", 1, 2.5, 4096)
    assert NatsLocation.parse(loc.url) == loc
    assert NatsLocation.parse("tls://h:1?subject=a.b").subject == "a.b"
    assert is_nats_location("nats://h:1") and is_nats_location("TLS://h:1") and not is_nats_location("file:///x")


@pytest.mark.parametrize(
    "url",
    [
        "nats://somewhere",  # no port
        "nats://h:1/mykey",  # a path
        "http://h:1",
        "nats://h:1?stream=a.b",
        "nats://h:1?subject=a..b",
        "nats://h:1?replicas=0",
        "nats://h:1?replicas=x",
        "nats://h:1?timeout=0",
        "nats://h:1?max_msg_bytes=10",
        "nats://h:1?colour=red",
        "nats://h:1?stream",
    ],
)
def test_bad_locations_are_refused_before_connecting(url):
    with pytest.raises(ValidationError):
        NatsLocation.parse(url)


def test_file_log_tools_refuse_a_nats_location(tmp_path):
    with pytest.raises(ValidationError, match="not files"):
        file_log_dir(tmp_path, url="nats://127.0.0.1:4222")
    with pytest.raises(ValidationError, match="not understood"):
        file_log_dir(tmp_path, url="nats://127.0.0.1")


def test_no_server_is_a_clear_error():
    from mykey_dev.nats import free_port

    with pytest.raises(LogUnavailableError, match="no NATS server answered"):
        JetStreamLog.open(f"nats://127.0.0.1:{free_port()}?replicas=1&timeout=1")


# --- messages: layout and checks -------------------------------------------------------------

_frames = framing  # the pure twin; the log uses the accelerated one when built (same bytes)


def _messages(first_seq: int, batches: list[list[bytes]], max_bytes: int, start: int = 1) -> list[StreamMessage]:
    """Stream messages as a writer lays them out: one batch after another from stream seq start."""
    out, seq = [], first_seq
    for i, payloads in enumerate(batches):
        frames = pack_frames(_frames, seq, payloads, max_bytes)
        digest = batch_digest(frames)
        for k, f in enumerate(frames, 1):
            out.append(StreamMessage(start + len(out), message_headers(f"b{i}", k, len(frames), digest, "w"), f))
        seq += len(payloads)
    return out


def _assemble(msgs: list[StreamMessage], first_event: int | None = 1) -> list[tuple[int, list[bytes]]]:
    asm = BatchAssembler(_frames, "test stream", msgs[0].stream_seq if msgs else 1, first_event)
    return [b for m in msgs if (b := asm.feed(m)) is not None]


payload_lists = st.lists(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=20), min_size=1, max_size=6)


@given(batches=payload_lists, max_bytes=st.integers(400, 3000))
def test_batches_survive_the_trip_through_messages(batches, max_bytes):
    msgs = _messages(1, batches, max_bytes)
    assert all(len(m.data) <= max_bytes for m in msgs)
    got = _assemble(msgs)
    firsts = [1 + sum(map(len, batches[:i])) for i in range(len(batches))]
    assert got == list(zip(firsts, batches, strict=True))
    flat = [p for b in batches for p in b]
    for i, m in enumerate(msgs):  # a record reader may start at any message, inside a batch too
        first = int.from_bytes(m.data[8:16], "little")
        asm = BatchAssembler(_frames, "test stream", m.stream_seq, first, mid_batch=True)
        records = [p for x in msgs[i:] for p in asm.feed_records(x)[1]]
        assert records == flat[first - 1 :]


@given(batches=payload_lists, data=st.data())
def test_a_reader_refuses_altered_reordered_or_missing_messages(batches, data):
    msgs = _messages(1, batches, 500)
    i = data.draw(st.integers(0, len(msgs) - 1), label="message")
    m = msgs[i]
    damage = data.draw(st.sampled_from(["flip", "drop", "swap", "no-part", "foreign-batch", "digest", "renumber"]))
    bad = list(msgs)
    if damage == "flip":
        pos = data.draw(st.integers(0, len(m.data) - 1), label="byte")
        bad[i] = StreamMessage(m.stream_seq, m.headers, m.data[:pos] + bytes([m.data[pos] ^ 1]) + m.data[pos + 1 :])
    elif damage == "drop":
        if len(msgs) < 2:
            return
        bad = [StreamMessage(j + 1, x.headers, x.data) for j, x in enumerate(msgs[:i] + msgs[i + 1 :])]
        if i == len(msgs) - 1 and m.headers[H_PART].split("/")[0] == "1":
            return  # dropping a whole last batch leaves a shorter, sound log: the Merkle trail catches that
    elif damage == "swap":
        if i + 1 >= len(msgs):
            return
        a, b = msgs[i], msgs[i + 1]
        bad[i], bad[i + 1] = StreamMessage(a.stream_seq, b.headers, b.data), StreamMessage(b.stream_seq, a.headers, a.data)
    elif damage == "no-part":
        bad[i] = StreamMessage(m.stream_seq, {k: v for k, v in m.headers.items() if k != H_PART}, m.data)
    elif damage == "foreign-batch":
        bad[i] = StreamMessage(m.stream_seq, {**m.headers, H_BATCH: "other"}, m.data)
        if m.headers[H_PART] == "1/1":
            return  # a one-message batch under another ID is still whole and intact
    elif damage == "digest":
        first = next(j for j in range(i, -1, -1) if H_DIGEST in msgs[j].headers)
        bad[first] = StreamMessage(msgs[first].stream_seq, {**msgs[first].headers, H_DIGEST: "0" * 64}, msgs[first].data)
    elif damage == "renumber":
        first_seq = int.from_bytes(m.data[8:16], "little")
        payloads = framing.parse_batches(m.data, 0, 1 << 30)[0][0][2]
        bad[i] = StreamMessage(m.stream_seq, m.headers, framing.encode_batch(first_seq + 1, payloads))
    with pytest.raises(CorruptLogError):
        _assemble(bad)


def test_frames_hold_records_exactly_as_the_file_log_stores_them():
    payloads = [ev.encode_envelope(ev.Envelope(i + 1, 5, ACTOR, 1, svc(i))) for i in range(40)]
    frames = pack_frames(_frames, 1, payloads, 1024)
    assert len(frames) > 1
    records = [p for f in frames for p in framing.parse_batches(f, 0, 1 << 30)[0][0][2]]
    assert records == payloads  # the Merkle trail hashes these bytes on either backend


def test_a_million_row_import_fits_one_atomic_batch():
    env = ev.Envelope(1_000_000, ev.now_us(), ACTOR, 1, ev.ServiceIdRegistered("A0001", "S" * 20, "C" * 20, False))
    record = ev.encode_envelope(env)  # a service ID registration, longer IDs than most
    from mykey.log.accel import framing_module

    frames = pack_frames(framing_module(), 1, [record] * 1_000_000, 1024 * 1024 - 4096)
    assert len(frames) < BATCH_LIMIT // 5  # with the default 1 MiB max_payload: room for 5 million rows


def test_a_record_larger_than_a_message_is_refused():
    with pytest.raises(ValidationError, match="more than one log message holds"):
        pack_frames(_frames, 1, [b"x" * 100, b"y" * 2000], 1024)


# --- batches on a real server ------------------------------------------------------------------


def test_a_batch_over_the_atomic_batch_limit_is_refused_whole(r1_url, js_open):
    log = js_open(r1_url())
    log.append([svc(0)])
    per_msg = (1024 - framing.HEADER_SIZE) // (framing.RECORD_HEAD_SIZE + len(ev.encode_envelope(log.read().__next__())))
    with pytest.raises(ValidationError, match="limit of 1000 messages"):
        log.append([svc(i) for i in range(per_msg * BATCH_LIMIT + per_msg)])
    assert log.last_seq == 1 and log.stream_last == 1
    big = log.append([svc(i) for i in range(5000)])  # several hundred messages, one atomic batch
    assert log.stream_last > 300 and [(f, len(p)) for f, p in log.read_batches(2)] == [(2, 5000)]
    assert bodies(log)[1:] == [e.body for e in big]


def test_a_half_sent_batch_is_never_visible(r1_url, js_open):
    """A writer that dies after sending part of a batch (no commit): nothing of it is stored, ever."""
    url = r1_url()
    log = js_open(url)
    log.append([svc(0)])
    frames = pack_frames(log._frames, 2, [ev.encode_envelope(ev.Envelope(2 + i, 1, ACTOR, 1, svc(i))) for i in range(60)], 1024)
    msgs = log._batch_messages(frames, "abandoned", batch_digest(frames), log.stream_last)
    client = log._client_now()

    async def send_all_but_the_commit():
        for h, data in msgs[:-1]:
            await client.nc.publish(log.location.subject, data, headers=h)
        await client.nc.flush()

    client.run(send_all_but_the_commit(), 5)
    reader = js_open(url, readonly=True)
    assert reader.refresh() == 1 and reader.stream_last == 1 and bodies(reader) == [svc(0)]
    log.append([svc(1), svc(2)])  # the writer goes on; the abandoned batch can never commit after it
    assert reader.refresh() == 3 and bodies(reader) == [svc(0), svc(1), svc(2)]
    assert all(m.headers[H_BATCH] != "abandoned" for m in stream_messages(reader))


# --- exactly one writer ------------------------------------------------------------------------


def test_a_second_writer_fences_the_first(r1_url, js_open):
    url = r1_url()
    a, b = js_open(url), js_open(url)
    a.append([svc(1)])
    with pytest.raises(LogFencedError, match=b.writer_id.split(":")[0]) as info:
        b.append([svc(2)])  # b knew an empty stream: a appended since
    assert isinstance(info.value, ConcurrencyError) and a.writer_id in str(info.value)
    with pytest.raises(LogFencedError):
        b.append([svc(3)])  # stays stopped, without asking the server
    a.append([svc(4)])
    assert bodies(a) == [svc(1), svc(4)]
    c = js_open(url)  # a writer opened now knows the end: it wins, and a stops at its next append
    c.append([svc(5)])
    with pytest.raises(LogFencedError):
        a.append([svc(6)])
    assert bodies(c) == [svc(1), svc(4), svc(5)]


def test_a_reader_never_creates_a_stream(r1_url):
    with pytest.raises(LogError, match="no log stream"):
        JetStreamLog.open(r1_url(), readonly=True)
    with pytest.raises(LogError, match="no log stream"):
        JetStreamLog.open(r1_url(), create=False)


def test_a_single_server_cannot_hold_an_r3_stream(nats_single):
    with pytest.raises(LogError, match=r"replicas=1"):
        JetStreamLog.open(nats_single.log_url(stream=unique_stream()))


def test_a_stream_set_up_otherwise_is_refused(nats_single, js_open):
    name = unique_stream()
    r1 = js_open(nats_single.log_url(stream=name, replicas=1))
    r1.append([svc(1)])
    with pytest.raises(LogError, match="1 replica"):  # the URL asks for R3: never silently less
        JetStreamLog.open(nats_single.log_url(stream=name, replicas=3))

    async def plain_stream(nc):
        cfg = {"name": name + "x", "subjects": [f"plain.{name}"], "storage": "memory", "num_replicas": 1}
        await nc.request(f"$JS.API.STREAM.CREATE.{name}x", json.dumps(cfg).encode(), timeout=5)

    r1._client_now().run(plain_stream(r1._client_now().nc), 10)
    with pytest.raises(LogError, match="storage must be file.*allow_atomic"):
        JetStreamLog.open(nats_single.log_url(stream=name + "x", subject=f"plain.{name}", replicas=1))


# --- ambiguous outcomes: faults between the writer and a real server -----------------------------


class FaultyLink(JetStreamLog):
    """A JetStream log whose attempts meet injected faults, in order, before behaving normally.

    "lost-ack": the batch is sent, but its answer never arrives. "not-sent": nothing goes out.
    A callable runs before the attempt (another writer appending, say) and then it proceeds.
    """

    faults: list = []
    attempts = 0

    def _send(self, msgs, timeout):
        self.attempts += 1
        fault = self.faults.pop(0) if self.faults else None
        if callable(fault):
            fault()
        if fault == "not-sent":
            raise LogUnavailableError("injected: no answer")
        answer = super()._send(msgs, timeout)
        if fault == "lost-ack":
            raise LogUnavailableError("injected: the answer was lost")
        return answer


@pytest.mark.parametrize("size", [1, 100], ids=["one-message", "many-messages"])
def test_a_batch_whose_ack_was_lost_is_found_and_acknowledged_once(r1_url, js_open, size):
    url = r1_url()
    log = js_open(url, FaultyLink)
    log.append([svc(0)])
    log.faults = ["lost-ack", "not-sent", "lost-ack"]
    envs = log.append([svc(i) for i in range(1, size + 1)])
    assert log.attempts == 1 + 4 and [e.seq for e in envs] == list(range(2, size + 2))
    reader = js_open(url, readonly=True)
    assert bodies(reader) == [svc(i) for i in range(size + 1)]  # exactly once
    assert [(f, len(p)) for f, p in reader.read_batches()] == [(1, 1), (2, size)]
    assert log.append([svc(99)])[0].seq == size + 2


def test_a_batch_that_was_never_sent_is_sent_again(r1_url, js_open):
    log = js_open(r1_url(), FaultyLink)
    log.faults = ["not-sent", "not-sent"]
    log.append([svc(1), svc(2)])
    assert log.attempts == 3 and bodies(log) == [svc(1), svc(2)]


def test_another_writer_between_attempts_fences_this_one(r1_url, js_open):
    url = r1_url()
    log = js_open(url, FaultyLink)
    log.append([svc(0)])
    other = js_open(url)
    log.faults = ["not-sent", lambda: other.append([svc(50)])]
    with pytest.raises(LogFencedError, match=other.writer_id):
        log.append([svc(1)])
    assert bodies(other) == [svc(0), svc(50)]


def test_an_outcome_not_found_in_time_stops_the_handle_and_reopening_tells(r1_url, js_open):
    url = r1_url(timeout=0.5)
    log = js_open(url, FaultyLink)
    log.faults = ["lost-ack"] + ["not-sent"] * 1000
    with pytest.raises(LogUnavailableError, match="may or may not have been stored"):
        log.append([svc(1), svc(2)])
    with pytest.raises(LogError, match="stopped appending"):
        log.append([svc(3)])
    again = js_open(url)
    assert again.last_seq == 2 and bodies(again) == [svc(1), svc(2)]  # it had landed


def test_a_stream_behind_the_writer_is_reported_as_lost_data(r1_url, js_open):
    log = js_open(r1_url())
    log.append([svc(1)])
    log._stream_last += 5  # as if the servers had acknowledged messages they no longer hold
    with pytest.raises(CorruptLogError, match="lost acknowledged data"):
        log.append([svc(2)])


# --- fork ------------------------------------------------------------------------------------------


def test_a_forked_child_reconnects_and_the_parent_keeps_its_connection(r1_url, js_open):
    url = r1_url()
    log = js_open(url)
    reader = js_open(url, readonly=True)
    log.append([svc(1)])
    pid = os.fork()
    if pid == 0:  # the child: inherited handles get a connection of their own
        code = 1
        try:
            if [e.seq for e in reader.read()] == [1] and log.append([svc(2)])[0].seq == 2:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reader.refresh() == 2 and bodies(reader) == [svc(1), svc(2)]
    with pytest.raises(LogFencedError):  # the child wrote as another writer
        log.append([svc(3)])


# --- the command line -------------------------------------------------------------------------------


def test_every_command_takes_the_log_location(tmp_path, nats_single, monkeypatch, capsys):
    from mykey.cli import main

    url = nats_single.log_url(stream=unique_stream(), replicas=1)
    data = ["--data", str(tmp_path / "data")]
    assert main(["--log", url, "init", *data]) == 0
    assert main(["business", "add", "--name", "Library", "--municipality", "131016", "--log", url, *data]) == 0
    assert not (tmp_path / "data" / "log").exists()
    capsys.readouterr()
    monkeypatch.setenv("MYKEY_LOG", url)
    assert main(["log", "show", *data]) == 0
    assert "BusinessRegistered" in capsys.readouterr().out
    assert main(["audit", "verify", *data]) == 0
    assert main(["log", "verify", *data]) == 1 and "not files" in capsys.readouterr().err
    monkeypatch.delenv("MYKEY_LOG")
    assert main(["business", "add", "--name", "X", "--municipality", "131016", *data]) == 1  # no log here
    with open_log(tmp_path / "data", url=url, readonly=True) as log:
        assert [type(e.body).__name__ for e in log.read()][-1] == "BusinessRegistered"


def test_nats_up_and_down(tmp_path, capsys):
    from mykey.cli import main
    from mykey_dev.nats import LocalCluster, _gone

    d = tmp_path / "cl"
    try:
        assert main(["nats", "up", "--nodes", "3", "--dir", str(d)]) == 0
        urls = capsys.readouterr().out.split()
        state = json.loads((d / "cluster.json").read_text())
        assert urls == state["urls"] and len(urls) == 3 and len(state["pids"]) == len(state["monitor_urls"]) == 3
        assert all(u.startswith("nats://127.0.0.1:") for u in urls)
        assert main(["nats", "up", "--nodes", "3", "--dir", str(d)]) == 1  # already running there
        conf = (d / "n1.conf").read_text()
        assert "sync_interval: always" in conf and "127.0.0.1" in conf and "0.0.0.0" not in conf
        with JetStreamLog.open(",".join(urls) + f"?stream={unique_stream()}") as log:  # R3
            log.append([svc(1)])
            assert log.info()["config"]["num_replicas"] == 3
    finally:
        assert main(["nats", "down", "--dir", str(d)]) == 0
    assert all(_gone(p) for p in state["pids"])
    assert main(["nats", "down", "--dir", str(d)]) == 0  # nothing left to stop
    assert main(["nats", "down", "--dir", str(tmp_path / "none")]) == 1
    laid_out = LocalCluster.create(tmp_path / "ports", 3, base_port=20000)
    assert [(n.port, n.cluster_port, n.monitor_port) for n in laid_out.nodes] == [
        (20000, 20003, 20006), (20001, 20004, 20007), (20002, 20005, 20008)
    ]
    assert Path(laid_out.nodes[0].conf).read_text().count("nats-route://127.0.0.1:2000") == 3


def test_the_loop_thread_ends_with_the_last_handle(r1_url):
    url = r1_url()
    a = JetStreamLog.open(url)
    b = JetStreamLog.open(url, readonly=True)
    client = a._client
    assert b._client is client and client.refs == 2
    a.close()
    assert client._thread.is_alive()
    b.close()
    assert not client._thread.is_alive() and client._closed
    with pytest.raises(LogError, match="closed"):
        a.append([svc(1)])
    with pytest.raises(LogError, match="closed"):
        list(b.read())
