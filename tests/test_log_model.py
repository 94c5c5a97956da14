"""A stateful model test of the file log: append, close, reopen, torn tails, reads from any sequence number.

The model is the list of acknowledged batches that no crash took back. A torn
tail is made the way a crash makes it: bytes cut off the end of the newest
segment (the last batch was being written), or zeros appended (blocks a power loss
left unwritten). Recovery must cut exactly the torn part, keep every other batch
whole, and number new batches on from there.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from mykey.domain import events as ev
from mykey.errors import ConcurrencyError
from mykey.log import framing
from mykey.log.filelog import SEGMENT_HEADER_SIZE, FileLog, list_segments
from mykey.log.verify import verify_log

SEGMENT_BYTES = 1024  # small: the log rolls every batch or two


def svc(i: int) -> ev.ServiceIdRegistered:
    return ev.ServiceIdRegistered("A0001", f"m{i}")


def last_batch_start(seg: Path) -> int | None:
    """File offset of the last batch in seg, None if it holds none."""
    data = seg.read_bytes()
    pos, last = SEGMENT_HEADER_SIZE, None
    while (head := framing.parse_header(data, pos)) is not None:
        last, pos = pos, pos + framing.HEADER_SIZE + head[2]
    return last


class FileLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="mykey-log-model-"))
        self.log = FileLog.open(self.dir, segment_bytes=SEGMENT_BYTES)
        self.batches: list[list[ev.Envelope]] = []  # the model: acknowledged batches still in the log
        self.made = 0  # events made so far (each gets a distinct body)

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def last(self) -> int:
        return sum(len(b) for b in self.batches)

    def envelopes(self) -> list[ev.Envelope]:
        return [e for b in self.batches for e in b]

    def reopen(self) -> None:
        self.log.close()
        self.log = FileLog.open(self.dir, segment_bytes=SEGMENT_BYTES)

    # --- writing ---------------------------------------------------------

    @rule(size=st.integers(1, 12), conditional=st.booleans())
    def append(self, size: int, conditional: bool) -> None:
        events = [svc(self.made + i) for i in range(size)]
        self.made += size
        envs = self.log.append(events, expected_last_seq=self.last if conditional else None)
        assert [e.seq for e in envs] == list(range(self.last + 1, self.last + size + 1))
        assert [e.body for e in envs] == events
        self.batches.append(envs)

    @rule(off=st.sampled_from([-3, -1, 1, 5]))
    def append_with_a_stale_expected_last_seq(self, off: int) -> None:
        stale = self.last + off
        if stale < 0:
            return
        with pytest.raises(ConcurrencyError):
            self.log.append([svc(self.made)], expected_last_seq=stale)

    # --- crashes and restarts -------------------------------------------

    @rule()
    def close_and_reopen(self) -> None:
        self.reopen()
        assert self.log.recovery is None
        assert verify_log(self.dir).ok

    @rule(data=st.data())
    def tear_the_last_batch(self, data: st.DataObject) -> None:
        """A crash while the last batch was being written: bytes cut off the newest segment."""
        self.log.close()
        seg = list_segments(self.dir)[-1].path
        size = seg.stat().st_size
        start = last_batch_start(seg)
        if start is None:
            # The newest segment holds no batch yet (a tear took it back): cut into its header,
            # as a crash while creating it would have left it.
            cut = data.draw(st.integers(1, SEGMENT_HEADER_SIZE), label="header bytes cut")
            with open(seg, "r+b") as f:
                f.truncate(size - cut)
            self.reopen()
            assert self.log.recovery is None and seg.stat().st_size == SEGMENT_HEADER_SIZE
            return
        before = seg.read_bytes()
        cut = data.draw(st.integers(1, size - start), label="bytes cut")
        with open(seg, "r+b") as f:
            f.truncate(size - cut)
        self.reopen()
        gone = self.batches.pop()
        assert gone[-1].seq == self.last + len(gone)
        rec = self.log.recovery
        if cut == size - start:
            assert rec is None  # the whole batch went: nothing torn is left
        else:
            assert rec is not None and rec.offset == start and rec.first_seq == self.last + 1
            assert Path(rec.saved_to).read_bytes() == before[start : size - cut]
        assert seg.stat().st_size == start

    @rule(zeros=st.integers(1, 2000))
    def unwritten_blocks_at_the_tail(self, zeros: int) -> None:
        """A power loss left the blocks after the last batch unwritten: they read as zeros."""
        self.log.close()
        seg = list_segments(self.dir)[-1].path
        end = seg.stat().st_size
        with open(seg, "ab") as f:
            f.write(bytes(zeros))
        self.reopen()
        rec = self.log.recovery
        assert rec is not None and rec.offset == end and rec.dropped_bytes == zeros
        assert seg.stat().st_size == end

    # --- reading ---------------------------------------------------------

    @rule(data=st.data())
    def read_from_any_sequence_number(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(1, self.last + 1), label="from")
        to = data.draw(st.none() | st.integers(start - 1, self.last + 1), label="to")
        flat = self.envelopes()
        assert list(self.log.read(start, to)) == flat[start - 1 : to]
        want = [(b[0].seq, [ev.encode_envelope(e) for e in b]) for b in self.batches if b[-1].seq >= start]
        assert list(self.log.read_batches(start)) == want
        if start <= self.last:
            assert self.log.record_at(start)[2] == ev.encode_envelope(flat[start - 1])
        assert self.log.record_at(self.last + 1) is None

    @rule(data=st.data())
    def a_reader_sees_the_same_log(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(1, self.last + 1), label="from")
        with FileLog.open(self.dir, readonly=True) as reader:
            assert reader.last_seq == self.last
            assert list(reader.read(start)) == self.envelopes()[start - 1 :]

    @invariant()
    def the_writer_ends_where_the_model_does(self) -> None:
        assert self.log.last_seq == self.last


FileLogMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestFileLogModel = FileLogMachine.TestCase
