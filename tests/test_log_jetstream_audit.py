"""The audit trail over a JetStream log: records are stored byte for byte as in the file log, so the
Merkle trail, `audit verify` and the proofs work unchanged; and a server that returns altered,
reordered or truncated data is caught. Plus the engine's flows on a JetStream log."""

from __future__ import annotations

import pytest
from mykey.audit.checkpoint import peek_checkpoint
from mykey.audit.checkpoints import list_checkpoints, read_checkpoint
from mykey.audit.keys import VKEY_FILE, ensure_signing_key
from mykey.audit.proofs import check_proof, load_proof_doc, prove_inclusion
from mykey.audit.trail import AuditTrail
from mykey.audit.verify import verify_data_dir
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.domain.status import MyKeyState, Status
from mykey.engine import Engine
from mykey.errors import AuditMismatchError, CorruptLogError, LogFencedError
from mykey.index.store import Index
from mykey.log.filelog import FileLog
from mykey.log.jetstream import JetStreamLog
from mykey.log.nats_records import batch_digest, pack_frames

from .conftest import create_user, engine_resolver
from .nats_fixtures import unique_stream

OP = ev.Actor("operator", "ops-1")
T0 = 1_700_000_000
ORIGIN = "mykey.test/jetstream"


def script() -> list:
    """(actor, seconds after T0, events) or ("checkpoint", seconds after T0); sequence numbers in comments."""
    many = [ev.ServiceIdRegistered("A0001", f"p-{i:04d}") for i in range(60)]  # spans several small messages
    return [
        (OP, 0, [ev.BusinessRegistered("A0001", "Sakura Clinic", "131016")]),  # 1
        (OP, 10, many),  # 2-61
        (ev.Actor("user", "AAAAAAAA"), 20, [ev.MyKeyCreated("AAAAAAAA", "CN=CA", "a1", b"\x01" * 32)]),  # 62
        ("checkpoint", 30),  # size 62
        (OP, 40, [ev.ServiceIdLinked("A0001", "p-0001", "AAAAAAAA")]),  # 63
        (OP, 50, [ev.MyKeySuspended("AAAAAAAA", "card reported lost")]),  # 64
        ("checkpoint", 60),  # size 64
        (OP, 70, [ev.ServiceIdRegistered("A0001", "q-1"), ev.ServiceIdRegistered("A0001", "q-2")]),  # 65-66
        ("checkpoint", 80),  # size 66
        (OP, 90, [ev.MyKeyResumed("AAAAAAAA")]),  # 67, after the last checkpoint
    ]


LAST_SEQ = 67


def build(data: DataDir, log) -> None:
    """Run the script into data's index and audit trail over log (any LogStore)."""
    ensure_signing_key(data, ORIGIN)
    idx = Index.open(data)
    trail = AuditTrail.open(data, log)
    try:
        for step in script():
            if step[0] == "checkpoint":
                trail.checkpoint(now=T0 + step[1])
                continue
            actor, dt, events = step
            idx.apply(log.append(events, actor, ts=(T0 + dt) * 1_000_000))
        trail.catch_up()
    finally:
        trail.close()
        idx.close()


@pytest.fixture
def jet(tmp_path, nats_single):
    """(data dir, log URL): the script on an R1 stream of small messages."""
    url = nats_single.log_url(stream=unique_stream("A"), replicas=1, max_msg_bytes=1024)
    data = DataDir(tmp_path / "data")
    with JetStreamLog.open(url) as log:
        build(data, log)
    return data, url


@pytest.fixture
def reader(js_open):
    return lambda url: js_open(url, readonly=True)


def vkey(data: DataDir) -> str:
    return (data.keys / VKEY_FILE).read_text().strip()


def test_records_and_roots_are_those_of_the_file_log(jet, tmp_path, reader):
    data, url = jet
    log = reader(url)
    file_data = DataDir(tmp_path / "file")
    with FileLog.open(file_data.log) as flog:
        build(file_data, flog)
        assert list(log.read_raw()) == list(flog.read_raw())  # stored bytes, record for record
        assert [(f, len(p)) for f, p in log.read_batches()] == [(f, len(p)) for f, p in flog.read_batches()]
    # The same Merkle roots at every checkpoint (the signatures differ: another key).
    roots = [peek_checkpoint(read_checkpoint(d, s)).root_hash for d in (data, file_data) for s, _ in list_checkpoints(d)]
    assert len(roots) == 6 and roots[:3] == roots[3:]


def test_verify_and_proofs_work_unchanged(jet, reader, capsys):
    from mykey.cli import main

    data, url = jet
    log = reader(url)
    report = verify_data_dir(data, log=log)
    assert report.ok, report.problems
    assert (report.events, report.last_seq, report.checkpoints, report.merkle_size) == (LAST_SEQ, LAST_SEQ, 3, LAST_SEQ)
    for seq in (1, 2, 30, 61, 62, 65, 66):
        doc = prove_inclusion(data, seq, log=log)
        assert check_proof(load_proof_doc(doc.to_json()), vkey(data)).startswith("OK inclusion")
    assert main(["--log", url, "audit", "verify", "--data", str(data.root)]) == 0
    assert "3 signed checkpoints match the log" in capsys.readouterr().out


# --- a server that lies ---------------------------------------------------------------------------------


def forge(nats_single, src: JetStreamLog, edit) -> str:
    """A stream laid out exactly as mykey writes one (valid frames and digests) holding edit(batches).

    batches: lists of envelopes as read from src; edit returns the lists to store, their
    sequence numbers as they should appear (renumbered or not).
    """
    batches = [[ev.decode_envelope(p) for p in payloads] for _first, payloads in src.read_batches()]
    url = nats_single.log_url(stream=unique_stream("F"), replicas=1, max_msg_bytes=1024)
    with JetStreamLog.open(url) as dst:
        for envs in edit(batches):
            frames = pack_frames(dst._frames, envs[0].seq, [ev.encode_envelope(e) for e in envs], dst.max_msg_bytes)
            assert batch_digest(frames)
            dst._stream_last = dst._commit(frames)
    return url


def renumber(batches: list[list[ev.Envelope]]) -> list[list[ev.Envelope]]:
    out, seq = [], 1
    for envs in batches:
        out.append([ev.Envelope(seq + i, e.ts, e.actor, e.v, e.body) for i, e in enumerate(envs)])
        seq += len(envs)
    return out


def problem(data: DataDir, url: str, reader):
    report = verify_data_dir(data, log=reader(url))
    assert not report.ok
    return report.problem


def test_verify_catches_an_event_rewritten_by_the_server(jet, reader, nats_single):
    data, url = jet

    def reword(batches):
        return [[ev.Envelope(e.seq, e.ts, e.actor, e.v, ev.MyKeySuspended("AAAAAAAA", "on request"))
                 if isinstance(e.body, ev.MyKeySuspended) else e for e in envs] for envs in batches]

    fake = forge(nats_single, reader(url), reword)
    p = problem(data, fake, reader)
    assert p.seq == 64 and "rewritten" in p.what


def test_the_audit_trail_refuses_to_open_on_a_rewritten_tail(jet, reader, nats_single, tmp_path):
    data, url = jet

    def reword(batches):
        return [[ev.Envelope(e.seq, e.ts, e.actor, e.v, ev.MyKeySuspended("AAAAAAAA", "x"))
                 if e.seq == LAST_SEQ else e for e in envs] for envs in batches]

    with pytest.raises(AuditMismatchError, match=f"log record {LAST_SEQ} differs"):
        AuditTrail.open(data, reader(forge(nats_single, reader(url), reword)))  # so the engine does not start


def test_verify_catches_a_record_rewritten_inside_a_large_batch(jet, reader, nats_single):
    data, url = jet

    def reword(batches):
        return [[ev.Envelope(e.seq, e.ts, e.actor, e.v, ev.ServiceIdRegistered("A0001", "p-XXXX"))
                 if e.seq == 40 else e for e in envs] for envs in batches]

    p = problem(data, forge(nats_single, reader(url), reword), reader)
    assert p.seq == 40 and "rewritten" in p.what


def test_verify_catches_batches_reordered_and_renumbered(jet, reader, nats_single):
    data, url = jet

    def swap(batches):
        i = next(n for n, envs in enumerate(batches) if envs[0].seq == 63)
        batches[i], batches[i + 1] = batches[i + 1], batches[i]
        return renumber(batches)

    assert problem(data, forge(nats_single, reader(url), swap), reader).seq == 63


def test_a_reader_refuses_batches_reordered_without_renumbering(jet, reader, nats_single):
    data, url = jet

    def swap(batches):
        i = next(n for n, envs in enumerate(batches) if envs[0].seq == 63)
        batches[i], batches[i + 1] = batches[i + 1], batches[i]
        return batches

    fake = forge(nats_single, reader(url), swap)
    with pytest.raises(CorruptLogError, match="where event 63 was expected"):
        list(reader(fake).read())
    p = problem(data, fake, reader)
    assert p.seq == 63 and "log damaged" in p.what


def test_verify_catches_a_truncated_stream(jet, reader, nats_single):
    data, url = jet
    p = problem(data, forge(nats_single, reader(url), lambda batches: batches[:-3]), reader)
    assert p.seq == 64 and "truncated" in p.what


def test_a_foreign_message_fences_the_writer_and_is_refused_by_readers(jet, reader):
    data, url = jet
    writer = JetStreamLog.open(url)
    try:
        client = writer._client_now()
        client.run(client.nc.request(writer.location.subject, b"hello", timeout=5), 10)  # someone publishes
        with pytest.raises(LogFencedError, match="not mykey"):
            writer.append([ev.MyKeySuspended("AAAAAAAA", "x")])
    finally:
        writer.close()
    log = reader(url)
    assert log.refresh() == LAST_SEQ  # the last whole batch before the damage
    with pytest.raises(CorruptLogError, match="not a mykey log message"):
        list(log.read(LAST_SEQ))
    report = verify_data_dir(data, log=log)
    assert report.problem is not None and "log damaged" in report.problem.what


# --- the engine -------------------------------------------------------------------------------------------


def test_the_engine_runs_on_a_jetstream_log(tmp_path, nats_cluster, binding, pki):
    url = nats_cluster.log_url(stream=unique_stream("E"), max_msg_bytes=2048)  # R3
    rows = [(f"S{i:05d}", None) for i in range(3000)]  # one command, one atomic batch of many messages
    with Engine.open(tmp_path / "data", log=url, binding=binding, checkpoint_on_close=True) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = e.register_business("Library", "131016")
        assert e.register_service_ids(bid, rows) == 3000
        mk, _ = create_user(e, pki)
        e.link_in_person(bid, "S00001", mk, "seen in person")
        e.suspend(mk, "lost")
        last = e.log.last_seq
        assert e.log.stream_last > 50 and e.trail.size == last == e.index.last_seq
    assert not (tmp_path / "data" / "log").exists()
    # An event the index never applied (a crash between append and apply): replayed on open.
    with JetStreamLog.open(url) as log:
        log.append([ev.ServiceIdRegistered(bid, "S-late")], OP)
    with Engine.open(tmp_path / "data", log=url, binding=binding) as e:
        assert e.index.last_seq == last + 1 and e.mykey(mk).state == MyKeyState.SUSPENDED
        with engine_resolver(e) as r:
            assert r.resolve_statuses(bid, ["S00001", "S02999", "S-late"]) == [
                Status.SUSPENDED, Status.UNLINKED, Status.UNLINKED
            ]
    report = verify_data_dir(DataDir(tmp_path / "data"), log=JetStreamLog.open(url, readonly=True))
    assert report.ok and report.checkpoints == 1 and report.last_seq == last + 1


def test_two_engines_on_one_stream_never_interleave(tmp_path, nats_single, binding):
    url = nats_single.log_url(stream=unique_stream("E"), replicas=1)
    with Engine.open(tmp_path / "a", log=url, binding=binding, audit=False) as a:
        a.register_business("A", "131016")
        with Engine.open(tmp_path / "b", log=url, binding=binding, audit=False) as b:
            assert b.index.last_seq == 1  # caught up from the stream
            b.register_business("B", "131016")
            with pytest.raises(LogFencedError):
                a.register_business("C", "131016")  # a's view is stale: fenced, nothing appended
            b.register_business("D", "131016")
    with JetStreamLog.open(url, readonly=True) as log:
        assert [e.body.name for e in log.read()] == ["A", "B", "D"]
