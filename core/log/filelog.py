"""The embedded LogStore: segmented, CRC-framed, fsync'ed files in DATA/log/.

Layout (see mykey.log.segments): ``{first_seq:020d}.seg`` segments of batches framed
by mykey.log.framing, each with a sparse ``.idx`` so a reader finds a sequence
number without scanning, and ``LOCK`` (the single writer's lock, holding its pid).
Segments roll at batch boundaries once they pass ``segment_bytes``.

Durability (fsync modes):
- ``always``: append returns after fdatasync; an acknowledged batch survives
  process and OS crashes and power loss.
- ``interval``: a background thread fdatasyncs every ``fsync_interval_ms``;
  survives a process crash; an OS crash or power loss may lose the last interval.
- ``never``: no fsync until close(); survives a process crash only.
In every mode a batch is atomic: after any crash it is wholly present or absent.

Recovery on open (writer, mykey.log.recovery): a torn tail of the newest segment is
cut, saved under ``log/torn/`` and reported; any other damage is refused with the
segment, offset and sequence number (the rule is in mykey.log.damage).

New segments are created under a temporary name (header written and fsynced) and
renamed into place, so a reader never sees a segment without its header, and the
writer never appends to a segment once a newer one exists. Readers go through a
``SegmentCursor`` (mykey.log.segments), which relies on both.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..domain.events import (
    SYSTEM,
    Actor,
    Envelope,
    Event,
    check_event,
    encode_envelope,
    now_us,
)
from ..errors import (
    ConcurrencyError,
    LogError,
    LogLockedError,
    ValidationError,
)
from ..fs import (
    OwnerLock,
    check_private_dir,
    fsync_dir,
    fsync_path,
    private_dir,
    write_atomic,
)
from . import framing
from .accel import framing_module
from .recovery import RecoveryReport, recover_tail
from .segments import (
    ALL,
    IDX_ENTRY,
    IDX_STRIDE,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MODE,
    TMP_SUFFIX,
    Segment,
    SegmentCursor,
    checked_idx_entries,
    checked_index_entry,
    create_segment_file,
    list_segments,
    pack_idx,
    read_idx,
    record_in_segment,
    segment_holding,
    segment_name,
)
from .store import FSYNC_MODES, LogStore, should_stop

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "SEGMENT_HEADER_SIZE",
    "FileLog",
    "RecoveryReport",
    "Segment",
    "list_segments",
    "read_idx",
    "segment_name",
]

log = logging.getLogger("mykey.log")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class FileLog(LogStore):
    """Segmented file log. Open with FileLog.open(); one writer, any number of readers."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        readonly: bool,
        fsync: str = "always",
        fsync_interval_ms: int = 50,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        framing_impl: str | None = None,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValidationError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        self.directory = Path(directory)
        self.readonly = readonly
        self.fsync = fsync
        self.fsync_interval = fsync_interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        self.recovery: RecoveryReport | None = None
        self._frames = framing_module(framing_impl)
        self._last_seq = 0
        self._lock: OwnerLock | None = None
        self._fd: int | None = None
        self._idx_fd: int | None = None
        self._segment: Segment | None = None
        self._offset = 0  # end of the active segment
        self._idx_last_offset = -IDX_STRIDE
        # A batch start known near the end of the log, (first seq, segment, offset): the writer's
        # last batch, or where a reader's last refresh stopped. Reading from a sequence at or past
        # it starts there rather than at the segment's index entry (which may be a million records back).
        self._known_batch: tuple[int, Path, int] | None = None
        self._closed = False
        self._failed: str | None = None
        self._mutex = threading.Lock()
        self._dirty = False  # the active segment has writes not yet fdatasynced
        self._unsynced: list[Path] = []  # fsync="never": closed segments to fdatasync in sync()/close()
        self._syncer: threading.Thread | None = None
        self._stop_syncer = threading.Event()

    # --- opening ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        readonly: bool = False,
        create: bool = True,
        fsync: str = "always",
        fsync_interval_ms: int = 50,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        framing_impl: str | None = None,
        cut_damaged_tail: bool = False,
        keep_through: int = 0,
    ) -> FileLog:
        """Open the log in `directory` as the writer (default) or as a reader (readonly=True).

        cut_damaged_tail=True (operator override) also cuts a complete but damaged final batch.
        keep_through: sequences known to be acknowledged (applied by the index, covered by a
        signed checkpoint); recovery refuses to cut any of them.
        """
        if readonly and cut_damaged_tail:
            raise ValidationError("cut_damaged_tail needs the writer: open without readonly=True")
        self = cls(
            directory,
            readonly=readonly,
            fsync=fsync,
            fsync_interval_ms=fsync_interval_ms,
            segment_bytes=segment_bytes,
            framing_impl=framing_impl,
        )
        d = self.directory
        if readonly:
            if not d.is_dir():
                raise LogError(f"no log at {d}; create one with `mykey init` or open it as the writer")
            check_private_dir(d, what="log directory")
            self.refresh()
            return self
        if not d.is_dir():
            if not create:
                raise LogError(f"no log at {d}; pass create=True or run `mykey init`")
            private_dir(d)
        check_private_dir(d, what="log directory", tighten=True)
        try:
            self._take_lock()
            self._open_writer(cut_damaged_tail, keep_through)
        except BaseException:
            self._release()
            raise
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="mykey-log-fsync", daemon=True)
            self._syncer.start()
        return self

    def _take_lock(self) -> None:
        path = self.directory / "LOCK"

        def held_by(holder: str) -> LogLockedError:
            return LogLockedError(f"another writer (pid {holder}) holds {path}; stop it, or open the log read-only")

        self._lock = OwnerLock.acquire(path, held_by=held_by, mode=SEGMENT_MODE)

    def _open_writer(self, cut_damaged_tail: bool, keep_through: int) -> None:
        for tmp in self.directory.glob("*.seg" + TMP_SUFFIX):
            tmp.unlink()  # a segment whose creation a crash interrupted; it was never in place
        segs = list_segments(self.directory)
        if not segs:
            self._start_segment(1)
            self._last_seq = 0
            return
        seg = segs[-1]
        last_seq, end, self.recovery = recover_tail(
            self.directory, seg, self._frames, cut_damaged_tail=cut_damaged_tail, keep_through=keep_through
        )
        self._segment = seg
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self._offset = end
        self._last_seq = last_seq
        self._rewrite_idx(seg, end)

    def _rewrite_idx(self, seg: Segment, end: int) -> None:
        """Make the index exact again: keep only the entries that point at a real batch before end, in order."""
        entries = checked_idx_entries(seg, end)
        write_atomic(seg.idx_path, pack_idx(entries), mode=SEGMENT_MODE, sync=False)  # a hint: no fsync needed
        self._idx_fd = os.open(seg.idx_path, os.O_WRONLY | os.O_APPEND)
        self._idx_last_offset = entries[-1][1] if entries else -IDX_STRIDE

    def _start_segment(self, first_seq: int) -> None:
        """Roll to a new segment (and index) for batches from first_seq on; the old one is done."""
        seg = Segment(first_seq, self.directory / segment_name(first_seq))
        try:
            if self._fd is not None and self._dirty and self.fsync == "interval":
                os.fdatasync(self._fd)  # sync at the roll: sync() only reaches the active segment
                self._dirty = False
            idx_fd = os.open(seg.idx_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, SEGMENT_MODE)
            try:
                create_segment_file(seg)
            except BaseException:
                os.close(idx_fd)
                raise
        except OSError as exc:
            if exc.errno == errno.EIO or self._dirty:  # the roll-time fdatasync failed
                self._failed = str(exc)
            raise LogError(
                f"could not start segment {seg.path.name} ({exc}); nothing was appended. "
                "Free disk space or check the disk"
            ) from exc
        # The new segment is in place: from here on, nothing more is written to the old one.
        if self._dirty and self._segment is not None:  # fsync="never": synced by sync() or close()
            self._unsynced.append(self._segment.path)
        for fd in (self._fd, self._idx_fd):
            if fd is not None:
                os.close(fd)
        self._segment = seg
        self._fd = None
        self._idx_fd = idx_fd
        self._offset = SEGMENT_HEADER_SIZE
        self._idx_last_offset = -IDX_STRIDE
        self._dirty = False
        try:
            fsync_dir(self.directory)
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._failed = str(exc)
            raise LogError(
                f"could not start segment {seg.path.name} ({exc}); nothing was appended. Reopen the log"
            ) from exc

    # --- writing ---------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def append(
        self,
        events: Sequence[Event],
        actor: Actor = SYSTEM,
        *,
        expected_last_seq: int | None = None,
        ts: int | None = None,
    ) -> list[Envelope]:
        """Atomically append a batch of events; see LogStore.append."""
        if self.readonly:
            raise LogError("this log handle is read-only; open it without readonly=True to append")
        if self._closed:
            raise LogError("the log is closed; open it again")
        if self._failed:
            raise LogError(f"the log stopped after an I/O error ({self._failed}); reopen it to recover")
        if not events:
            return []
        actor.check()
        for ev in events:
            check_event(ev)
        ts = now_us() if ts is None else ts
        with self._mutex:
            if expected_last_seq is not None and expected_last_seq != self._last_seq:
                raise ConcurrencyError(
                    f"expected last sequence {expected_last_seq} but the log is at {self._last_seq}; "
                    "re-read the state and retry the command"
                )
            first = self._last_seq + 1
            envs = [Envelope(first + i, ts, actor, ev.VERSION, ev) for i, ev in enumerate(events)]
            payloads = [encode_envelope(e) for e in envs]
            for i, p in enumerate(payloads):
                if len(p) > framing.MAX_RECORD:
                    raise ValidationError(
                        f"event {i + 1} of the batch ({type(events[i]).__name__}) encodes to {len(p)} bytes, "
                        f"over the log's record limit of {framing.MAX_RECORD} bytes; nothing was appended"
                    )
            frame = self._frames.encode_batch(first, payloads)
            if self._offset + len(frame) > self.segment_bytes and self._offset > SEGMENT_HEADER_SIZE:
                self._start_segment(first)
            self._write_frame(frame, first, first + len(envs) - 1)
        return envs

    def _write_frame(self, frame: bytes, first_seq: int, last_seq: int) -> None:
        """Write one framed batch (fdatasync for "always"), then record it; the index hint is best-effort."""
        fd, seg = self._fd, self._segment
        assert fd is not None and seg is not None
        start = self._offset
        syncing = False
        try:
            view = memoryview(frame)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync == "always":
                syncing = True
                os.fdatasync(fd)
            else:
                self._dirty = True
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                self._failed = str(exc)
            else:
                # After a failed fsync the kernel may have dropped dirty pages of earlier writes
                # too: the only safe way on is to reopen (which re-reads what the disk holds).
                if syncing or exc.errno == errno.EIO:
                    self._failed = str(exc)
            raise LogError(f"append failed ({exc}); nothing was appended. Free disk space or check the disk") from exc
        # The batch is written (and durable for "always"): record it before anything else can fail.
        self._offset = start + len(frame)
        self._last_seq = last_seq
        self._known_batch = (first_seq, seg.path, start)
        if self._idx_fd is not None and start - self._idx_last_offset >= IDX_STRIDE:
            self._write_idx_hint(self._idx_fd, seg, first_seq, start)

    def _write_idx_hint(self, idx_fd: int, seg: Segment, first_seq: int, offset: int) -> None:
        """Append an index entry; on failure stop hinting this segment (readers validate hints anyway)."""
        try:
            if os.write(idx_fd, IDX_ENTRY.pack(first_seq, offset)) != IDX_ENTRY.size:
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            log.warning(
                "could not write an index hint for %s (%s); no more hints for this segment, readers scan instead",
                seg.name,
                exc,
            )
            try:
                os.close(idx_fd)
            except OSError:
                pass
            self._idx_fd = None
        else:
            self._idx_last_offset = offset

    def _sync_loop(self) -> None:
        while not self._stop_syncer.wait(self.fsync_interval):
            try:
                self.sync()
            except Exception as exc:  # pragma: no cover - disk failure
                self._failed = str(exc)
                log.error("log fsync failed: %s", exc)

    def sync(self) -> None:
        """fdatasync every segment with unsynced writes now (a no-op for readers)."""
        with self._mutex:
            try:
                if self._fd is not None and self._dirty:
                    os.fdatasync(self._fd)
                    self._dirty = False
                self._sync_closed_segments()
            except OSError as exc:
                self._failed = str(exc)  # unsynced writes may be gone: appends stop until a reopen
                raise LogError(f"fsync of the log failed ({exc}); reopen the log to recover") from exc

    def _sync_closed_segments(self) -> None:
        while self._unsynced:
            fsync_path(self._unsynced[0])
            self._unsynced.pop(0)

    # --- reading ---------------------------------------------------------

    def refresh(self) -> int:
        """Find the last committed sequence number by reading the tail; returns it."""
        if not self.readonly:
            return self._last_seq
        segs = list_segments(self.directory)
        if not segs:
            return self._last_seq
        # A segment exists only once every earlier sequence was written (it may hold no batch yet).
        last = segs[-1].first_seq - 1
        hint = max(self._last_seq + 1, checked_index_entry(segs[-1], ALL)[1])
        with SegmentCursor(self.directory, self._frames, *self._start_of(hint)) as cursor:
            for first_seq, payloads in cursor.batches():
                last = first_seq + len(payloads) - 1
            self._known_batch = cursor.position  # the next refresh goes on from here
        self._last_seq = max(self._last_seq, last)
        return self._last_seq

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Committed (seq, record bytes) in [from_seq, to_seq]; see LogStore.read_raw."""
        return self._records(self._iter_batches(from_seq, follow=False), from_seq, to_seq)

    def follow_raw(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Committed records from from_seq on, waiting at the tail until stop."""
        return self._records(self._iter_batches(from_seq, True, poll_interval, stop), from_seq, None)

    def read_batches(self, from_seq: int = 1) -> Iterator[tuple[int, list[bytes]]]:
        """Whole committed batches (first_seq, payloads) from the one holding from_seq."""
        return self._iter_batches(from_seq, follow=False)

    def follow_batches(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, list[bytes]]]:
        """Whole committed batches from the one holding from_seq, waiting at the tail until stop."""
        return self._iter_batches(from_seq, True, poll_interval, stop)

    @staticmethod
    def _records(
        batches: Iterator[tuple[int, list[bytes]]], from_seq: int, to_seq: int | None
    ) -> Iterator[tuple[int, bytes]]:
        """The records of batches in [from_seq, to_seq]."""
        hi = ALL if to_seq is None else to_seq
        for first_seq, payloads in batches:
            if first_seq > hi:
                return
            for i in range(max(0, from_seq - first_seq), len(payloads)):
                if first_seq + i > hi:
                    return
                yield first_seq + i, payloads[i]

    def record_at(self, seq: int) -> tuple[str, int, bytes] | None:
        """(segment name, file offset, stored bytes) of record seq, reading only its batch.

        None if seq is not committed or its batch is damaged (`mykey log verify` says more).
        Only this record's CRC is checked.
        """
        if seq < 1:
            return None
        return record_in_segment(*self._start_of(seq), seq)

    def _start_of(self, seq: int) -> tuple[Segment, int, int]:
        """(segment holding seq, offset of a batch at or before seq there, that batch's first seq)."""
        segs = list_segments(self.directory)
        if not segs:
            raise LogError(f"no log segments in {self.directory}; run `mykey init`")
        seg = segment_holding(segs, seq)
        known = self._known_batch
        if (known is not None and known[0] <= seq and seg.path == known[1]
                and (not self.readonly or known[2] <= seg.path.stat().st_size)):  # not cut under a reader
            return seg, known[2], known[0]
        offset, first_seq = checked_index_entry(seg, seq)
        return seg, offset, first_seq

    def _iter_batches(
        self,
        from_seq: int,
        follow: bool,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, list[bytes]]]:
        if from_seq < 1:
            raise ValidationError("sequence numbers start at 1")
        with SegmentCursor(self.directory, self._frames, *self._start_of(from_seq)) as cursor:
            while True:
                for first_seq, payloads in cursor.batches():
                    if first_seq + len(payloads) > from_seq:  # skip batches wholly before from_seq
                        yield first_seq, payloads
                if not follow or should_stop(stop):
                    return
                time.sleep(poll_interval)
                if should_stop(stop):
                    return

    # --- closing ---------------------------------------------------------

    def close(self) -> None:
        """Flush (in every fsync mode), release the writer lock and close files."""
        if self._closed:
            return
        self._stop_syncer.set()
        if self._syncer is not None:
            self._syncer.join()
        try:
            if not self._failed and self.fsync != "always":
                self._sync_closed_segments()
                if self._fd is not None:
                    os.fdatasync(self._fd)
                    self._dirty = False
        finally:
            self._release()
            self._closed = True

    def _release(self) -> None:
        for name in ("_fd", "_idx_fd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
