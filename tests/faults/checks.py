"""Invariants every fault test checks after a crash: through the Engine, and through the `mykey` commands.

``cli`` runs a `mykey` command in this process (the same code path as the command line,
without a Python start-up per call) and returns its exit code and output.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mykey.audit.merkle import leaf_hash, root_from_leaf_hashes

from .workload import record_digest


def cli(*argv: str) -> tuple[int, str]:
    """Run `mykey ARGV...` in-process: (exit code, stdout and stderr)."""
    from mykey.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(list(argv))
    return rc, buf.getvalue()


def verify_commands(data: Path, vkey: str | None = None, *, diff: bool = True) -> None:
    """`mykey log verify`, `mykey audit verify` (with the original verifier key) and `mykey audit diff` pass."""
    checks = [("log", "verify"), ("audit", "verify", *(["--public-key", vkey] if vkey else []))]
    if diff:
        checks.append(("audit", "diff"))
    for argv in checks:
        rc, out = cli("--data", str(data), *argv)
        assert rc == 0, f"`mykey {' '.join(argv[:2])}` failed on {data}:\n{out}"


@dataclass
class Truth:
    """What the writer wrote, as the writer saw it: record bytes by sequence number and batch starts."""

    records: list[bytes] = field(default_factory=list)
    batch_starts: list[int] = field(default_factory=list)

    @classmethod
    def of_log(cls, log) -> Truth:
        t = cls()
        for first, payloads in log.read_batches():
            t.batch_starts.append(first)
            t.records.extend(payloads)
        return t

    def batch_ends(self) -> set[int]:
        return {s - 1 for s in self.batch_starts[1:]} | {len(self.records)}


def check_engine_state(engine, truth: Truth, acked_seq: int, acked_checkpoints: Sequence[tuple[int, str]]) -> int:
    """A reopened engine holds every acknowledged batch whole, and its trail and index follow the log."""
    log = engine.log
    last = log.last_seq
    assert last >= acked_seq, f"acknowledged through sequence {acked_seq}, the log ends at {last}"
    batches = list(log.read_batches())
    got = [p for _, payloads in batches for p in payloads]
    assert len(got) == last, f"the log says it ends at {last} but holds {len(got)} records"
    assert got == truth.records[:last], "a record differs from what was written"
    starts = [s for s in truth.batch_starts if s <= last]
    assert [f for f, _ in batches] == starts, f"batches {[f for f, _ in batches]} are not the batches written {starts}"
    assert last == 0 or last in truth.batch_ends(), f"the log ends at {last}, inside a batch (a half batch)"
    assert engine.index.last_seq == last, f"the index is at {engine.index.last_seq}, the log at {last}"
    if engine.trail is not None:
        assert engine.trail.size == last, f"the Merkle trail has {engine.trail.size} leaves, the log {last} records"
        assert engine.trail.store.root() == root_from_leaf_hashes([leaf_hash(r) for r in got]), "Merkle root"
    for size, note in acked_checkpoints:
        from mykey.audit.checkpoints import checkpoint_path

        assert_checkpoint_kept(checkpoint_path(engine.data, size), size, note)
    return last


class AckBook:
    """Acknowledged records by sequence number (their digests), from the writer's acknowledgements."""

    def __init__(self) -> None:
        self.digests: dict[int, int] = {}
        self.checkpoints: list[tuple[int, str]] = []
        self.last = 0

    def record(self, seq: int, digest: int) -> None:
        self.digests[seq] = digest
        self.last = max(self.last, seq)

    def on_ack_from(self, log):
        """A Workload on_ack that reads the acknowledged batches back from the writer's log."""

        def on_ack(kind: str, seq: int, extra: object) -> None:
            if seq > self.last:
                for s, payload in log.read_raw(self.last + 1, seq):
                    self.record(s, record_digest(payload))
            if kind == "checkpoint":
                from mykey.audit.checkpoint import peek_checkpoint

                self.checkpoints.append((peek_checkpoint(extra).size, extra))  # type: ignore[arg-type]

        return on_ack


def check_acked(engine, acks: AckBook) -> int:
    """A reopened engine holds every acknowledged record unchanged; its index and trail follow its log."""
    log = engine.log
    last = log.last_seq
    assert last >= acks.last, f"acknowledged through sequence {acks.last}, the log ends at {last}"
    records = [p for _, p in log.read_raw()]
    assert len(records) == last, f"the log says it ends at {last} but holds {len(records)} records"
    for seq, digest in acks.digests.items():
        assert record_digest(records[seq - 1]) == digest, f"acknowledged record {seq} changed"
    assert engine.index.last_seq == last, f"the index is at {engine.index.last_seq}, the log at {last}"
    if engine.trail is not None:
        assert engine.trail.size == last, f"the Merkle trail has {engine.trail.size} leaves, the log {last} records"
        assert engine.trail.store.root() == root_from_leaf_hashes([leaf_hash(r) for r in records]), "Merkle root"
        from mykey.audit.checkpoints import checkpoint_path

        for size, note in acks.checkpoints:
            assert_checkpoint_kept(checkpoint_path(engine.data, size), size, note)
    return last


def assert_checkpoint_kept(path: Path, size: int, note: str) -> None:
    """The checkpoint signed for size is stored: that note, or one signed later for the same size and root."""
    from mykey.audit.checkpoint import peek_checkpoint

    assert path.exists(), f"acknowledged checkpoint {size} is lost"
    stored = path.read_text("utf-8")
    if stored != note:
        a, b = peek_checkpoint(note), peek_checkpoint(stored)
        assert (a.origin, a.size, a.root_hash) == (b.origin, b.size, b.root_hash), (
            f"the checkpoint stored for size {size} is not the one acknowledged (root or origin differs)")
