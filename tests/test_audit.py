"""Audit trail, verify (tamper detection), proofs, replay, resolve_as_of, diff, a person's history, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import zlib
from pathlib import Path

import pytest
from mykey.audit import verify as audit_verify
from mykey.audit.checkpoint import peek_checkpoint
from mykey.audit.checkpoints import checkpoint_path, list_checkpoints, read_checkpoint
from mykey.audit.history import subject_history
from mykey.audit.keys import KEY_FILE, VKEY_FILE, ensure_signing_key, load_verifier_key
from mykey.audit.merkle import leaf_hash
from mykey.audit.merkle_store import MerkleStore
from mykey.audit.proofs import (
    check_proof,
    load_proof_doc,
    prove_consistency,
    prove_inclusion,
)
from mykey.audit.replay import (
    as_of_seq,
    diff_live_index,
    parse_as_of,
    replay,
    resolve_as_of,
)
from mykey.audit.trail import AuditTrail, read_record
from mykey.audit.verify import verify_data_dir
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.domain.status import Status
from mykey.errors import (
    AuditError,
    AuditMismatchError,
    NoCheckpointError,
    ProofError,
    ReplayError,
    SigningKeyError,
    SubjectNotFoundError,
    ValidationError,
)
from mykey.index.resolver import Resolver
from mykey.index.store import Index, current_generation
from mykey.log import framing
from mykey.log.filelog import SEGMENT_HEADER_SIZE, FileLog, list_segments

ALICE, BOB = "AAAAAAAA", "BBBBBBBB"
ISSUER = "CN=JPKI User CA,O=JPKI,C=JP"
ORIGIN = "mykey.test/log"
T0 = 1_700_000_000  # unix seconds of the first event
OP = ev.Actor("operator", "ops-1")
TERM_A = ev.Actor("terminal", "A0001-T0001")
TERM_B = ev.Actor("terminal", "B0002-T0001")


def fp(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


# (actor, seconds after T0, events) or ("checkpoint", seconds after T0). Sequence numbers in comments.
SCRIPT = [
    (
        OP,
        0,
        [ev.BusinessRegistered("A0001", "Sakura Clinic", "131016"), ev.BusinessRegistered("B0002", "Minato Gym", "131032")],
    ),  # 1-2
    (ev.Actor("user", ALICE), 10, [ev.MyKeyCreated(ALICE, ISSUER, "a1", fp(1))]),  # 3
    (ev.Actor("user", BOB), 20, [ev.MyKeyCreated(BOB, ISSUER, "b1", fp(2))]),  # 4
    (TERM_A, 30, [ev.ServiceIdRegistered("A0001", "p-100"), ev.ServiceIdRegistered("A0001", "p-200")]),  # 5-6
    (TERM_B, 40, [ev.ServiceIdRegistered("B0002", "m-1", customer_id="c-77")]),  # 7
    (ev.Actor("user", ALICE), 50, [ev.ServiceIdLinked("A0001", "p-100", ALICE)]),  # 8
    (ev.Actor("user", ALICE), 60, [ev.ServiceIdLinked("B0002", "m-1", ALICE)]),  # 9
    (ev.Actor("user", BOB), 70, [ev.ServiceIdLinked("A0001", "p-200", BOB)]),  # 10
    ("checkpoint", 80),  # size 10
    (OP, 100, [ev.MyKeySuspended(ALICE, "card reported lost")]),  # 11
    (OP, 110, [ev.MyKeySuspended(BOB, "on request")]),  # 12
    ("checkpoint", 120),  # size 12
    (OP, 200, [ev.MyKeyResumed(ALICE)]),  # 13
    (
        ev.SYSTEM,
        210,
        [
            ev.CertificateRevoked(ISSUER, "a1", "superseded", T0 + 210, fp(9)),  # 14
            ev.CertificateRenewed(ALICE, fp(1), ISSUER, "a2", fp(3)),  # 15
        ],
    ),
    (ev.Actor("user", ALICE), 220, [ev.ServiceIdUnlinked("B0002", "m-1", ALICE)]),  # 16
    (TERM_A, 230, [ev.ServiceIdRegistered("A0001", "p-300")]),  # 17
    ("checkpoint", 240),  # size 17
    (OP, 300, [ev.MyKeyInvalidated(BOB, "card expired")]),  # 18
    (OP, 310, [ev.MyKeySuspended(ALICE, "fraud check")]),  # 19, after the last checkpoint
]
LAST_SEQ = 19
CHECKPOINTS = (10, 12, 17)
ALICE_SEQS = [3, 5, 7, 8, 9, 11, 13, 14, 15, 16, 19]


def build(root: Path) -> DataDir:
    """A real data directory: log (small segments), index, Merkle trail, signing key, checkpoints."""
    data = DataDir(root)
    ensure_signing_key(data, ORIGIN)
    log = FileLog.open(data.log, fsync="never", segment_bytes=600)
    idx = Index.open(data)
    trail = AuditTrail.open(data, log)
    try:
        for step in SCRIPT:
            if step[0] == "checkpoint":
                trail.checkpoint(now=T0 + step[1])
                continue
            actor, dt, events = step
            envs = log.append(events, actor, ts=(T0 + dt) * 1_000_000)
            idx.apply(envs)
            trail.catch_up()
    finally:
        trail.close()
        idx.close()
        log.close()
    return data


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> DataDir:
    return build(tmp_path_factory.mktemp("audit") / "data")


def copy_of(data: DataDir, tmp_path: Path) -> DataDir:
    """A private copy of a data directory, to tamper with."""
    dst = tmp_path / "copy"
    shutil.copytree(data.root, dst, symlinks=True)
    return DataDir(dst)


@pytest.fixture
def copy(built, tmp_path) -> DataDir:
    """A private copy of the built data directory, to tamper with."""
    return copy_of(built, tmp_path)


@pytest.fixture
def cli(monkeypatch):
    from mykey import cli as cli_mod
    from mykey.cli import audit_cmds

    if audit_cmds not in cli_mod.GROUPS:
        monkeypatch.setattr(cli_mod, "GROUPS", [*cli_mod.GROUPS, audit_cmds])
    return cli_mod.main


def vkey_text(data: DataDir) -> str:
    return (data.keys / VKEY_FILE).read_text().strip()


# ----------------------------------------------------------------- tampering helpers


def records(data: DataDir) -> list[tuple[Path, int, int, bytes]]:
    """(segment, batch offset, record offset, payload) for every record, in order."""
    out = []
    for seg in list_segments(data.log):
        buf = seg.path.read_bytes()
        batches, _, status, _, _ = framing.parse_batches(buf, SEGMENT_HEADER_SIZE, 1 << 62)
        assert status == framing.OK
        for off, _first, payloads in batches:
            pos = off + framing.HEADER_SIZE
            for p in payloads:
                out.append((seg.path, off, pos, p))
                pos += framing.RECORD_HEAD_SIZE + len(p)
    return out


def rewrite_record(data: DataDir, seq: int, old: bytes, new: bytes) -> tuple[Path, int]:
    """Replace bytes inside record seq (same length) and fix its CRC, so only the Merkle check can tell."""
    assert len(old) == len(new)
    seg, _, pos, payload = records(data)[seq - 1]
    assert old in payload
    fresh = payload.replace(old, new)
    with open(seg, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack("<II", len(fresh), zlib.crc32(fresh)) + fresh)
    return seg, pos


def rewrite_log(data: DataDir, transform) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the whole log through FileLog (so framing, CRCs and sequence numbers are all consistent)."""
    old = FileLog.open(data.log, readonly=True)
    batches = [[ev.decode_envelope(p) for p in payloads] for _, payloads in old.read_batches(1)]
    old.close()
    batches = transform(batches)
    shutil.rmtree(data.log)
    new = FileLog.open(data.log, fsync="never", segment_bytes=600)
    for envs in batches:
        if envs:
            new.append([e.body for e in envs], envs[0].actor, ts=envs[0].ts)
    new.close()


# ------------------------------------------------------------------------- keys


def test_signing_key_is_private_and_idempotent(tmp_path):
    data = DataDir(tmp_path / "d")
    ensure_signing_key(data)
    key = data.keys / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    vk = load_verifier_key(data)
    assert vk.name.startswith("mykey/") and len(vk.name) == len("mykey/") + 16
    before = key.read_bytes(), (data.keys / VKEY_FILE).read_text()
    ensure_signing_key(data)
    ensure_signing_key(data, vk.name)
    assert (key.read_bytes(), (data.keys / VKEY_FILE).read_text()) == before
    with pytest.raises(SigningKeyError, match="cannot change"):
        ensure_signing_key(data, "other/origin")


def test_lost_vkey_is_recreated_with_the_signed_origin(copy):
    (copy.keys / VKEY_FILE).unlink()
    ensure_signing_key(copy)
    assert load_verifier_key(copy).name == ORIGIN
    assert verify_data_dir(copy).ok


def test_checkpoint_without_a_key_says_to_run_init(tmp_path):
    data = DataDir(tmp_path / "d")
    log = FileLog.open(data.log)
    with AuditTrail.open(data, log) as trail, pytest.raises(SigningKeyError, match="mykey init"):
        trail.checkpoint()
    log.close()


# ------------------------------------------------------------------- the trail


def test_trail_matches_the_log_and_checkpoints_are_stored(built):
    store = MerkleStore.open(built.merkle, readonly=True)
    log = FileLog.open(built.log, readonly=True)
    assert store.size == LAST_SEQ
    for seq, rec in log.read_raw(1):
        assert store.leaf_hash(seq - 1) == leaf_hash(rec)
    assert [s for s, _ in list_checkpoints(built)] == list(CHECKPOINTS)
    for size in CHECKPOINTS:
        cp = peek_checkpoint(read_checkpoint(built, size))
        assert (cp.origin, cp.size, cp.root_hash) == (ORIGIN, size, store.root(size))
    store.close()
    log.close()


def test_trail_ahead_of_the_log_is_cut_back_on_open(copy):
    with MerkleStore.open(copy.merkle) as store:
        store.append_leaves([b"never in the log", b"nor this"])
    log = FileLog.open(copy.log)
    with AuditTrail.open(copy, log) as trail:
        assert trail.size == LAST_SEQ
        assert any("ahead of the log" in r for r in trail.repairs)
    log.close()
    assert verify_data_dir(copy).ok


def test_unsynced_tail_that_disagrees_with_the_log_is_rehashed(copy):
    # A crash left a wrong leaf after the last checkpoint and no meta: the writer re-checks against the log.
    with open(copy.merkle / "level-00", "r+b") as f:
        f.seek((LAST_SEQ - 1) * 32)
        f.write(b"\xff" * 32)
    (copy.merkle / "meta").unlink()
    log = FileLog.open(copy.log)
    with AuditTrail.open(copy, log) as trail:
        assert trail.size == LAST_SEQ
        assert any(f"log record {LAST_SEQ}" in r for r in trail.repairs)
    log.close()
    assert verify_data_dir(copy).ok


def test_trail_refuses_a_log_shorter_than_a_signed_checkpoint(copy):
    seg, off, _, _ = records(copy)[12 - 1]  # cut the log before seq 12: checkpoint 12 and 17 are lost
    os.truncate(seg, off)
    for later in list_segments(copy.log):
        if later.path > seg:
            later.path.unlink()
            later.idx_path.unlink(missing_ok=True)
    log = FileLog.open(copy.log)
    with pytest.raises(AuditMismatchError, match="events 12..17 are missing"):
        AuditTrail.open(copy, log)
    log.close()


def test_trail_refuses_a_rewritten_log(copy):
    rewrite_record(copy, LAST_SEQ, b"fraud check", b"fraud chEck")
    log = FileLog.open(copy.log)
    with pytest.raises(AuditMismatchError, match=f"log record {LAST_SEQ} differs"):
        AuditTrail.open(copy, log)
    log.close()


# ----------------------------------------------------------------------- verify


def test_verify_a_healthy_data_dir(built):
    report = verify_data_dir(built)
    assert report.ok, report.problems
    assert (report.events, report.last_seq, report.checkpoints, report.merkle_size) == (LAST_SEQ, LAST_SEQ, 3, LAST_SEQ)


def test_verify_detects_a_rewritten_event_with_a_fixed_crc(copy):
    seg, pos = rewrite_record(copy, 11, b"card reported lost", b"card reported LOST")
    from mykey.log.verify import verify_log

    assert verify_log(copy.log).ok  # CRCs and sequence numbers are all fine
    p = verify_data_dir(copy).problem
    assert p is not None and (p.seq, p.segment, p.offset) == (11, seg.name, pos)
    assert "rewritten" in p.what


def test_verify_names_the_range_when_the_trail_was_recomputed_too(copy):
    rewrite_record(copy, 11, b"card reported lost", b"card reported LOST")
    shutil.rmtree(copy.merkle)
    log = FileLog.open(copy.log, readonly=True)
    with MerkleStore.open(copy.merkle) as store:
        store.append_leaves(rec for _, rec in log.read_raw(1))
    log.close()
    p = verify_data_dir(copy).problem
    assert p is not None and p.seq == 11 and "11..12" in p.what  # between checkpoints 10 and 12


def test_verify_detects_a_deleted_event_even_when_later_ones_are_renumbered(copy):
    def drop_seq_9(batches):
        return [[e for e in envs if e.seq != 9] for envs in batches]

    rewrite_log(copy, drop_seq_9)
    p = verify_data_dir(copy).problem
    assert p is not None and p.seq == 9 and p.segment is not None and p.offset is not None


def test_verify_detects_a_deleted_record_inside_a_batch(copy):
    seg, off, _, _ = records(copy)[14 - 1]  # batch 14-15: drop 14, keep the framing valid
    buf = bytearray(seg.read_bytes())
    batch = [p for s, o, _, p in records(copy) if s == seg and o == off]
    new = framing.encode_batch(14, batch[1:])
    old_len = framing.HEADER_SIZE + sum(framing.RECORD_HEAD_SIZE + len(p) for p in batch)
    buf[off : off + old_len] = new
    seg.write_bytes(bytes(buf))
    p = verify_data_dir(copy).problem
    assert p is not None and p.seq == 14 and p.segment == seg.name and p.offset == off
    assert "log damaged" in p.what


def test_verify_detects_two_reordered_events(copy):
    def swap_11_12(batches):
        i = next(n for n, envs in enumerate(batches) if envs[0].seq == 11)
        batches[i], batches[i + 1] = batches[i + 1], batches[i]
        return batches

    rewrite_log(copy, swap_11_12)
    p = verify_data_dir(copy).problem
    assert p is not None and p.seq == 11


def test_verify_detects_truncation_after_a_checkpoint(copy):
    seg, off, _, _ = records(copy)[16 - 1]
    os.truncate(seg, off)
    for later in list_segments(copy.log):
        if later.path > seg:
            later.path.unlink()
    report = verify_data_dir(copy)
    p = report.problem
    assert p is not None and p.seq == 16 and "truncated" in p.what and "17" in p.what
    assert (p.segment, p.offset) == (seg.name, off)


def test_verify_detects_a_forged_checkpoint(copy):
    path = checkpoint_path(copy, 12)
    path.write_text(path.read_text().replace("time ", "time 1"))
    p = verify_data_dir(copy).problem
    assert p is not None and "not validly signed" in p.what


def test_verify_trusts_only_the_given_key(built, tmp_path):
    other = DataDir(tmp_path / "other")
    ensure_signing_key(other, ORIGIN)
    report = verify_data_dir(built, vkey=vkey_text(other))
    assert not report.ok and "not validly signed" in report.problem.what


def test_verify_flags_an_event_changed_after_the_last_checkpoint(copy):
    rewrite_record(copy, LAST_SEQ, b"fraud check", b"fraud chEck")
    p = verify_data_dir(copy).problem
    assert p is not None and p.seq == LAST_SEQ and "changed after it was written" in p.what


# ----------------------------------------------------------------------- proofs


def test_inclusion_and_consistency_proofs_verify_offline(built):
    vkey = vkey_text(built)
    for seq in range(1, 18):
        doc = prove_inclusion(built, seq)
        assert doc.tree_size == 17 and doc.seq == seq
        assert check_proof(load_proof_doc(doc.to_json()), vkey).startswith("OK inclusion")
    old = prove_inclusion(built, 5, checkpoint_size=10)
    assert old.tree_size == 10 and check_proof(old, vkey).startswith("OK")
    for a, b in [(0, 10), (10, 12), (10, 17), (12, 17), (17, 17), (3, 12)]:
        assert check_proof(prove_consistency(built, a, b), vkey).startswith("OK consistency")


def test_proofs_refuse_what_no_checkpoint_covers(built):
    with pytest.raises(NoCheckpointError, match="run `mykey audit checkpoint`"):
        prove_inclusion(built, 18)
    with pytest.raises(NoCheckpointError, match="no checkpoint for tree size 11"):
        prove_consistency(built, 10, 11)


def test_a_proof_of_altered_data_fails(built):
    d = prove_inclusion(built, 11).to_dict()
    d["leaf_data"] = __import__("base64").b64encode(b"something else").decode()
    with pytest.raises(ProofError, match="not proven"):
        check_proof(d, vkey_text(built))


def test_record_reads_match_the_log(built):
    log = FileLog.open(built.log, readonly=True)
    for seq, rec in log.read_raw(1):
        assert read_record(log, seq) == rec
    for seq in (0, LAST_SEQ + 1):
        with pytest.raises(AuditError, match="not in the log"):
            read_record(log, seq)
    log.close()


# ----------------------------------------------------------------------- replay


def at(seconds: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(T0 + seconds, tz=timezone.utc).isoformat()


def replayed(data: DataDir, as_of, into: Path) -> Resolver:  # type: ignore[no-untyped-def]
    replay(data, as_of, into)
    return Resolver.open(into)


@pytest.mark.parametrize(
    "as_of, alice, bob",
    [
        (10, Status.VALID, Status.VALID),
        (11, Status.SUSPENDED, Status.VALID),
        (12, Status.SUSPENDED, Status.SUSPENDED),
        (13, Status.VALID, Status.SUSPENDED),
        (at(99), Status.VALID, Status.VALID),  # just before the suspension
        (at(100), Status.SUSPENDED, Status.VALID),  # the second it was written
        (at(150), Status.SUSPENDED, Status.SUSPENDED),
        (at(205), Status.VALID, Status.SUSPENDED),
    ],
)
def test_replay_gives_what_a_terminal_was_told(built, tmp_path, as_of, alice, bob):
    r = replayed(built, as_of, tmp_path / "then")
    try:
        assert r.resolve("A0001", "p-100") == alice
        assert r.resolve("A0001", "p-200") == bob
    finally:
        r.close()


def test_replay_stops_at_a_whole_batch_and_says_where(built, tmp_path):
    assert replay(built, 14, tmp_path / "a") == 13  # 14-15 were one batch
    assert replay(built, 0, tmp_path / "b") == 0
    assert replay(built, 10**6, tmp_path / "c") == LAST_SEQ
    assert replay(built, at(-5), tmp_path / "d") == 0
    r = Resolver.open(tmp_path / "a")
    assert r.last_seq == 13
    r.close()
    with pytest.raises(ReplayError, match="not an empty directory"):
        replay(built, 3, tmp_path / "a")


def test_as_of_parsing():
    assert parse_as_of(5) == ("seq", 5) and parse_as_of(" 7 ") == ("seq", 7)
    assert parse_as_of("1970-01-01T00:00:01Z") == ("ts", 1_000_000)
    assert parse_as_of("1970-01-01T09:00:01+09:00") == ("ts", 1_000_000)
    assert parse_as_of("1970-01-01T00:00:01") == ("ts", 1_000_000)  # no offset: UTC
    for bad in ("yesterday", "", -1, True):
        with pytest.raises(ValidationError):
            parse_as_of(bad)


def test_as_of_seq_skips_batches_before_the_one_asked_for(built):
    log = FileLog.open(built.log, readonly=True)
    assert [as_of_seq(log, s) for s in range(0, LAST_SEQ + 2)] == [
        0, 0, 2, 3, 4, 4, 6, 7, 8, 9, 10, 11, 12, 13, 13, 15, 16, 17, 18, 19, 19,
    ]
    log.close()


def test_resolve_as_of_equals_a_resolver_on_a_replay(built, tmp_path):
    keys = {"A0001": ["p-100", "p-200", "p-300", "nope", "ü"], "B0002": ["m-1", "p-100"], "C0003": ["m-1"]}
    for seq in range(0, LAST_SEQ + 1):
        r = replayed(built, seq, tmp_path / f"r{seq}")
        try:
            for biz, sids in keys.items():
                assert resolve_as_of(built, seq, biz, sids) == [r.resolve(biz, s) for s in sids], (seq, biz)
        finally:
            r.close()
    assert resolve_as_of(built, at(105), "A0001", [b"p-100"]) == [Status.SUSPENDED]
    with pytest.raises(ValidationError):
        resolve_as_of(built, 5, "not-a-business", ["x"])


# ------------------------------------------------------------------------- diff


def test_diff_is_empty_on_a_healthy_dir(built):
    assert diff_live_index(built) == []


def test_diff_finds_a_tampered_live_index(copy):
    from mykey.index import keys as k

    idx = Index.open(copy)
    with idx.env.begin(write=True) as txn:
        key = k.service_key("A0001", "p-100")
        txn.put(idx.dbs.svc, key, k.with_status(txn.get(idx.dbs.svc, key), Status.VALID))
        txn.put(idx.dbs.svc, k.service_key("A0001", "ghost"), k.svc_value(Status.VALID, 0, 1, None))
    idx.close()
    diffs = diff_live_index(copy)
    assert len(diffs) == 2
    assert any("p-100" in d for d in diffs) and any("ghost" in d and "only in the live index" in d for d in diffs)


# ---------------------------------------------------------------------- history


def test_subject_history_is_complete_proven_and_private(built):
    h = subject_history(built, ALICE)
    assert [e["seq"] for e in h["events"]] == ALICE_SEQS
    assert h["state"] == "suspended" and h["reason"] == "fraud check"
    assert h["certificate"]["serial"] == "a2" and h["certificate"]["issuer"] == ISSUER
    assert h["businesses"] == ["A0001"]
    assert h["links"] == [{"business_id": "A0001", "service_id": "p-100"}]
    vkey = vkey_text(built)
    for e in h["events"]:
        if e["seq"] <= 17:
            assert check_proof(e["proof"], vkey).startswith(f"OK inclusion: leaf {e['seq'] - 1} ")
        else:
            assert e["proof"] is None
    created = h["events"][0]
    assert created["type"] == "mk.created" and created["body"]["cert_fingerprint"] == fp(1)  # plain data: bytes
    text = json.dumps({**h, "events": [{**e, "proof": None} for e in h["events"]]}, default=bytes.hex)
    for other in (BOB, "p-200", "Sakura", "Minato", "on request", "card expired"):
        assert other not in text
    for e in h["events"]:  # a proof carries exactly the one record it proves
        if e["proof"]:
            leaf = load_proof_doc(e["proof"]).leaf_data
            assert ev.decode_envelope(leaf).seq == e["seq"] and BOB.encode() not in leaf
    assert h["events"][3]["by"] == {"kind": "user", "id": "you"}
    assert h["events"][5]["by"] == {"kind": "operator", "id": "ops-1"}


def test_subject_history_of_an_unknown_or_malformed_id(built):
    with pytest.raises(SubjectNotFoundError):
        subject_history(built, "CCCCCCCC")
    with pytest.raises(ValidationError):
        subject_history(built, "alice")


def test_subject_history_drops_index_entries_about_someone_else(copy):
    from mykey.index import keys as k

    idx = Index.open(copy)
    with idx.env.begin(write=True) as txn:  # a damaged index points Alice at Bob's suspension (seq 12)
        txn.put(idx.dbs.mkevents, ALICE.encode() + k.u64(12), b"")
    idx.close()
    h = subject_history(copy, ALICE)
    assert [e["seq"] for e in h["events"]] == ALICE_SEQS


# -------------------------------------------------------------------------- CLI


def test_cli_checkpoint_prove_and_check_offline(cli, copy, tmp_path, capsys):
    assert cli(["audit", "checkpoint", "--data", str(copy.root)]) == 0
    note = capsys.readouterr().out
    assert peek_checkpoint(note).size == LAST_SEQ and note.startswith(ORIGIN + "\n")
    proof = tmp_path / "p.json"
    assert cli(["audit", "prove", "19", "--out", str(proof), "--data", str(copy.root)]) == 0
    assert "wrote inclusion proof" in capsys.readouterr().out
    vkey_file = copy.keys / VKEY_FILE
    # Offline: the data directory is gone, only the document and the key remain.
    key_copy = tmp_path / "log.vkey"
    shutil.copy(vkey_file, key_copy)
    shutil.rmtree(copy.root)
    assert cli(["audit", "check-proof", str(proof), "--public-key", str(key_copy)]) == 0
    assert capsys.readouterr().out.startswith("OK inclusion: leaf 18 (seq 19)")
    assert cli(["audit", "check-proof", str(proof), "--public-key", key_copy.read_text().strip(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    d = json.loads(proof.read_text())
    d["tree_size"] = 18
    proof.write_text(json.dumps(d))
    assert cli(["audit", "check-proof", str(proof), "--public-key", str(key_copy)]) == 1
    assert "refused" in capsys.readouterr().err


def test_cli_prove_prints_a_document_and_consistency(cli, built, capsys):
    assert cli(["audit", "prove", "3", "--checkpoint", "10", "--data", str(built.root)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "mykey.inclusion-proof.v1" and doc["tree_size"] == 10
    assert cli(["audit", "prove-consistency", "10", "17", "--data", str(built.root), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert check_proof(res["proof"], vkey_text(built)).startswith("OK consistency")
    assert cli(["audit", "prove", "18", "--data", str(built.root)]) == 1
    assert "mykey audit checkpoint" in capsys.readouterr().err


def test_cli_verify_and_diff(cli, copy, capsys):
    assert cli(["audit", "verify", "--data", str(copy.root)]) == 0
    assert "audit OK: 19 events" in capsys.readouterr().out
    assert cli(["audit", "diff", "--data", str(copy.root)]) == 0
    capsys.readouterr()
    seg, pos = rewrite_record(copy, 11, b"card reported lost", b"card reported LOST")
    assert cli(["audit", "verify", "--data", str(copy.root), "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] is False and res["problem"]["seq"] == 11 and res["problem"]["offset"] == pos
    assert cli(["audit", "verify", "--data", str(copy.root)]) == 1
    assert f"audit failed at {seg.name} offset {pos} (sequence 11): event differs" in capsys.readouterr().err


def test_cli_verify_prints_the_first_problem_and_every_other_once(cli, copy, capsys):
    path = checkpoint_path(copy, 12)
    path.write_text(path.read_text().replace("time ", "time 1"))  # a problem with no position, found first
    rewrite_record(copy, 11, b"card reported lost", b"card reported LOST")  # the first by position
    assert cli(["audit", "verify", "--data", str(copy.root)]) == 1
    out = capsys.readouterr()
    assert "audit failed at" in out.err and "(sequence 11): event differs" in out.err
    also = [ln for ln in out.out.splitlines() if ln.startswith("also: ")]
    assert len(also) == 1 and "not validly signed" in also[0], also


def test_cli_diff_reports_differences(cli, copy, capsys):
    from mykey.index import keys as k

    idx = Index.open(copy)
    with idx.env.begin(write=True) as txn:
        txn.delete(idx.dbs.svc, k.service_key("A0001", "p-300"))
    idx.close()
    assert cli(["audit", "diff", "--data", str(copy.root)]) == 1
    out = capsys.readouterr()
    assert "p-300" in out.out and "differs" in out.err


def test_cli_subject_text_and_json(cli, built, capsys):
    assert cli(["audit", "subject", ALICE, "--data", str(built.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"MyKey ID {ALICE}: suspended (fraud check)"
    assert "linked to businesses: A0001" in lines
    events = [ln for ln in lines if "[seq " in ln]
    assert len(events) == len(ALICE_SEQS)
    assert events[5].startswith(at(100)[:19] + "Z  suspended: card reported lost  — by operator ops-1")
    assert "not yet in a signed checkpoint" in events[-1]
    assert cli(["audit", "subject", ALICE, "--json", "--data", str(built.root)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and [e["seq"] for e in res["events"]] == ALICE_SEQS
    assert res["events"][0]["body"]["cert_fingerprint"] == fp(1).hex()  # JSON at the edge: bytes as hex
    assert cli(["audit", "subject", "CCCCCCCC", "--data", str(built.root)]) == 1


def test_cli_replay(cli, built, tmp_path, capsys):
    into = tmp_path / "then"
    assert cli(["replay", "--as-of", at(105), "--into", str(into), "--data", str(built.root)]) == 0
    assert "up to sequence 11" in capsys.readouterr().out
    assert current_generation(DataDir(into)) is not None
    with Resolver.open(into) as r:
        assert r.resolve("A0001", "p-100") == Status.SUSPENDED
    assert cli(["replay", "--as-of", "last tuesday", "--into", str(tmp_path / "x"), "--data", str(built.root)]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["audit"],
        ["audit", "checkpoint"],
        ["audit", "prove"],
        ["audit", "prove-consistency"],
        ["audit", "check-proof"],
        ["audit", "verify"],
        ["audit", "diff"],
        ["audit", "subject"],
        ["replay"],
    ],
)
def test_cli_help(cli, argv, capsys):
    assert cli([*argv, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


# ------------------------------------------------------------------ more edges


def test_verify_reports_a_damaged_record_and_does_not_crash(copy):
    seg, _, pos, payload = records(copy)[13 - 1]
    with open(seg, "r+b") as f:  # flip a byte of record 13 without fixing its CRC
        f.seek(pos + framing.RECORD_HEAD_SIZE + len(payload) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    report = verify_data_dir(copy)
    p = report.problem
    assert p is not None and p.seq == 13 and p.segment == seg.name and "log damaged" in p.what
    assert not any("truncated" in q.what for q in report.problems)


def test_verify_without_checkpoints_or_trail(tmp_path):
    data = DataDir(tmp_path / "d")
    log = FileLog.open(data.log)
    log.append([ev.MyKeyCreated(ALICE, ISSUER, "a1", fp(1))])
    log.close()
    report = verify_data_dir(data)
    assert report.ok and report.events == 1 and any("no signed checkpoints" in n for n in report.notes)


def test_a_rebuilt_trail_over_a_rewritten_log_is_refused(copy):
    rewrite_record(copy, 11, b"card reported lost", b"card reported LOST")
    shutil.rmtree(copy.merkle)  # the attacker also throws the trail away
    log = FileLog.open(copy.log)
    with pytest.raises(AuditMismatchError, match="no longer give the root signed"):
        AuditTrail.open(copy, log)
    log.close()


def test_cli_checkpoint_refuses_while_the_engine_holds_the_log(cli, copy, capsys):
    engine_log = FileLog.open(copy.log)
    try:
        assert cli(["audit", "checkpoint", "--data", str(copy.root)]) == 1
        assert "engine" in capsys.readouterr().err
    finally:
        engine_log.close()


def test_live_index_is_never_opened_twice_in_one_process(built):
    from mykey.errors import EnvAlreadyOpenError

    with Resolver.open(built.root):
        with pytest.raises(EnvAlreadyOpenError):
            diff_live_index(built)
        with pytest.raises(EnvAlreadyOpenError):
            subject_history(built, ALICE)
    assert diff_live_index(built) == []


@pytest.mark.parametrize("chunk", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seq", [1, 4, 8, 11, 16, 17])
def test_verify_pinpoints_a_rewrite_whatever_the_comparison_chunk(copy, monkeypatch, chunk, seq):
    monkeypatch.setattr(audit_verify, "_CHUNK", chunk)  # exercise whole-chunk comparison and the drill-down
    assert verify_data_dir(copy).ok
    _, _, pos, payload = records(copy)[seq - 1]
    assert payload[:3] == bytes([0x95, seq, 0xCF])  # [seq, ts (uint64), ...]: move the event by 1 µs
    rewrite_record(copy, seq, payload[:11], payload[:10] + bytes([payload[10] ^ 0x01]))
    p = verify_data_dir(copy).problem
    assert p is not None and p.seq == seq and p.offset == pos, p


def test_revocation_of_a_former_certificate_is_in_the_holders_history(tmp_path, pki):
    from mykey.engine.engine import Engine

    from .conftest import create_user

    data = tmp_path / "data"
    with Engine.open(data, checkpoint_on_close=True) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        mk, old = create_user(e, pki)
        new = pki.inter.renew(old)
        ch = e.new_challenge("renew")
        e.renew_certificate(mk, pki.chain(new), new.sign(ch), ch, operator_approval="holder seen in person")
        e.apply_crl(pki.inter.crl([(old, "superseded")], number=77))
    history = subject_history(DataDir(data), mk)
    kinds = [ev_["type"] for ev_ in history["events"]]
    assert kinds == ["mk.created", "cert.renewed", "cert.revoked"]
