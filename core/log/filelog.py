"""The embedded LogStore: segmented, CRC-framed, fsync'ed files in DATA/log/.

Layout: ``{first_seq:020d}.seg`` segments (a 16-byte file header, then batches as
framed by mykey.framing), each with a sparse ``.idx`` of (first_seq, offset)
pairs so a reader finds a sequence number without scanning, and ``LOCK`` (the
single writer's OS lock). Segments roll at batch boundaries once they pass
``segment_bytes``.

Durability (fsync modes):
- ``always``: append returns after fdatasync; an acknowledged batch survives
  process and OS crashes and power loss.
- ``interval``: a background thread fdatasyncs every ``fsync_interval_ms``;
  survives a process crash; an OS crash or power loss may lose the last interval.
- ``never``: no fsync until close(); survives a process crash only.
In every mode a batch is atomic: after any crash it is wholly present or absent.

Recovery on open (writer): the tail of the newest segment is scanned. A torn
tail is cut off, saved under ``log/torn/`` and reported; torn means (a) an
incomplete final batch, (b) an invalid batch header with no valid header after it
(garbage or zeros appended), or (c) a complete final batch whose damaged region
holds a run of >= 512 zero bytes (blocks left unwritten by a power loss). Any
other damage is never skipped: opening fails with CorruptLogError naming segment,
offset and sequence number. A complete final batch that is damaged otherwise was
written in full (with fsync="always", acknowledged), so it is corruption; only an
operator cuts it (``cut_damaged_tail=True``, ``mykey log repair --cut-damaged-tail``).

New segments are created under a temporary name (header written and fsynced) and
renamed into place, so a reader never sees a segment without its header, and the
writer never appends to a segment once a newer one exists.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
    CorruptLogError,
    LogError,
    LogLockedError,
    ValidationError,
)
from . import framing
from .accel import framing_module
from .store import FSYNC_MODES, LogStore, should_stop

log = logging.getLogger("mykey.log")

SEGMENT_MAGIC = b"MKLOG\x00\x01\x00"  # format version 1
SEGMENT_HEADER = struct.Struct("<8sQ")  # magic, first_seq
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 16
IDX_ENTRY = struct.Struct("<QQ")  # first_seq of a batch, its offset
IDX_STRIDE = 64 * 1024  # write an index entry at most every this many bytes
READ_CHUNK = 4 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
TMP_SUFFIX = ".tmp"  # a segment being created: "<name>.seg.tmp", never listed
ZERO_RUN = b"\0" * 512  # a damaged region holding this is unwritten blocks, i.e. torn
_ALL = 1 << 62
_GAP = -1  # pseudo parse status: a whole batch that does not start at the expected sequence

# How damage found at the end of the parsed part of the newest segment is treated.
TORN = "torn"  # cut on open and reported
DAMAGED_FINAL = "damaged final batch"  # complete and damaged: refused unless the operator cuts it
DAMAGED_MIDDLE = "damaged, valid data follows"  # never cut


@dataclass(frozen=True)
class RecoveryReport:
    """What recovery cut from the tail of the newest segment, and why."""

    segment: str
    offset: int
    dropped_bytes: int
    reason: str
    saved_to: str | None
    first_seq: int = 0  # the first sequence number that was cut (if the cut bytes held any)
    operator_cut: bool = False  # True when cut_damaged_tail cut a complete damaged batch

    def __str__(self) -> str:
        what = "cut damaged final batch" if self.operator_cut else "truncated torn tail"
        return (
            f"{what} of {self.segment} at offset {self.offset} (from sequence {self.first_seq}): "
            f"{self.dropped_bytes} bytes ({self.reason}); saved to {self.saved_to}"
        )


@dataclass(frozen=True)
class Segment:
    first_seq: int
    path: Path

    @property
    def idx_path(self) -> Path:
        return self.path.with_suffix(".idx")


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def list_segments(directory: Path) -> list[Segment]:
    """Segments in the log directory, oldest first (temporary files being created are not listed)."""
    segs = []
    for p in directory.glob("*.seg"):
        if p.suffix == ".seg" and p.stem.isdigit():
            segs.append(Segment(int(p.stem), p))
    segs.sort(key=lambda s: s.first_seq)
    return segs


def _records_follow(data: bytes, start: int) -> bool:
    """True if CRC-valid, non-empty records are framed from start on (a batch whose header is damaged)."""
    p = start
    while len(data) - p >= framing.RECORD_HEAD_SIZE:
        n, crc = framing.RECORD_HEAD.unpack_from(data, p)
        if n == 0 or n > len(data) - p - framing.RECORD_HEAD_SIZE:
            return False
        if framing.crc32(data[p + framing.RECORD_HEAD_SIZE : p + framing.RECORD_HEAD_SIZE + n]) != crc:
            return False
        return True  # one real record is enough: garbage does not carry a matching CRC
    return False


def _unwritten_tail(data: bytes, base: int, damaged_at: int) -> bool:
    """True if data ends in zeros covering damaged_at that look like unwritten blocks.

    After a power loss the blocks of the last write may read as zeros: a zero run of a
    sector or more, or zeros from a 512-aligned file offset to the end.
    """
    if data.find(ZERO_RUN, damaged_at) != -1:
        return True
    zeros_from = len(data.rstrip(b"\0"))  # where the trailing zeros begin
    return damaged_at <= zeros_from < len(data) and (base + zeros_from) % 512 == 0


def classify_damage(data: bytes, pos: int, status: int, err_off: int, base: int = 0) -> tuple[str, int]:
    """How damage at data[pos] (the end of the newest segment's valid part) is treated.

    base is the file offset of data[0]. Returns (TORN, DAMAGED_FINAL or DAMAGED_MIDDLE,
    offset in data of the next valid batch or -1).
    """
    if status == framing.INCOMPLETE:
        return TORN, -1
    if status == framing.BAD_HEADER:
        later = framing.find_header(data, pos + 1)
        if later != -1:
            return DAMAGED_MIDDLE, later
        header = data[pos : pos + framing.HEADER_SIZE]
        if header.strip(b"\0") and _records_follow(data, pos + framing.HEADER_SIZE):
            return DAMAGED_FINAL, -1  # a written batch whose header was damaged afterwards
        return TORN, -1  # garbage or unwritten blocks after the last batch
    # BAD_RECORD or _GAP: the header is valid and the body wholly present.
    head = framing.parse_header(data, pos)
    assert head is not None
    bend = pos + framing.HEADER_SIZE + head[2]
    later = framing.find_header(data, bend)
    if later != -1:
        return DAMAGED_MIDDLE, later
    if status == framing.BAD_RECORD and _unwritten_tail(data[:bend], base, err_off):
        return TORN, -1
    return DAMAGED_FINAL, -1


def damage_reason(status: int, base: int, err_off: int) -> str:
    """Words for a parse status at file offset base + err_off."""
    if status == framing.INCOMPLETE:
        return "incomplete final batch"
    if status == framing.BAD_HEADER:
        return "bad batch header"
    if status == _GAP:
        return "sequence gap"
    return f"CRC or framing error in record at offset {base + err_off}"


def read_idx(seg: Segment) -> list[tuple[int, int]]:
    """The segment's sparse index entries (first_seq, offset); a torn last entry is ignored."""
    try:
        data = seg.idx_path.read_bytes()
    except FileNotFoundError:
        return []
    n = len(data) // IDX_ENTRY.size
    return [IDX_ENTRY.unpack_from(data, i * IDX_ENTRY.size) for i in range(n)]


def checked_index_entry(seg: Segment, seq: int) -> tuple[int, int]:
    """(offset, first_seq) of the last indexed batch at or before seq that really is there.

    The index is a hint written without fsync: every entry is checked against the
    batch header it points at; when none checks out, the segment start is used.
    """
    entries = read_idx(seg)
    j = bisect.bisect_right([e[0] for e in entries], seq) - 1
    if j < 0:
        return SEGMENT_HEADER_SIZE, seg.first_seq
    with open(seg.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for first_seq, offset in reversed(entries[: j + 1]):
            if not SEGMENT_HEADER_SIZE <= offset <= size - framing.HEADER_SIZE or first_seq < seg.first_seq:
                continue
            f.seek(offset)
            head = framing.parse_header(f.read(framing.HEADER_SIZE), 0)
            if head is not None and head[0] == first_seq:
                return offset, first_seq
    return SEGMENT_HEADER_SIZE, seg.first_seq


def _check_segment_header(seg: Segment, head: bytes) -> None:
    if len(head) < SEGMENT_HEADER_SIZE:
        raise CorruptLogError(f"{seg.path}: segment header is missing; restore the file from a backup")
    magic, first = SEGMENT_HEADER.unpack_from(head)
    if magic != SEGMENT_MAGIC or first != seg.first_seq:
        raise CorruptLogError(
            f"{seg.path}: bad segment header (magic {magic!r}, first seq {first}); "
            "the file is not a mykey log segment or is damaged"
        )


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
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._idx_fd: int | None = None
        self._segment: Segment | None = None
        self._offset = 0  # end of the active segment
        self._idx_last_offset = -IDX_STRIDE
        self._last_batch: tuple[int, Path, int] | None = None  # writer: (first seq, segment, offset)
        self._closed = False
        self._failed: str | None = None
        self._mutex = threading.Lock()
        self._dirty = False  # the active segment has writes not yet fdatasynced
        self._unsynced: list[Path] = []  # fsync="never": closed segments to fdatasync in sync()/close()
        self._cut_damaged_tail = False
        self._keep_through = 0  # recovery never cuts sequences at or below this
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
        self._cut_damaged_tail = cut_damaged_tail
        self._keep_through = keep_through
        d = self.directory
        if readonly:
            if not d.is_dir():
                raise LogError(f"no log at {d}; create one with `mykey init` or open it as the writer")
            self.refresh()
            return self
        if not d.is_dir():
            if not create:
                raise LogError(f"no log at {d}; pass create=True or run `mykey init`")
            d.mkdir(parents=True, exist_ok=True)
        try:
            self._take_lock()
            self._open_writer()
        except BaseException:
            self._release()
            raise
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="mykey-log-fsync", daemon=True)
            self._syncer.start()
        return self

    def _take_lock(self) -> None:
        path = self.directory / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LogLockedError(
                    f"another writer (pid {holder}) holds {path}; stop it, or open the log read-only"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_writer(self) -> None:
        for tmp in self.directory.glob("*.seg" + TMP_SUFFIX):
            tmp.unlink()  # a segment whose creation a crash interrupted; it was never in place
        segs = list_segments(self.directory)
        if not segs:
            self._start_segment(1)
            self._last_seq = 0
            return
        seg = segs[-1]
        last_seq, end = self._recover(seg)
        self._segment = seg
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self._offset = end
        self._last_seq = last_seq
        self._rewrite_idx(seg, end)

    def _recover(self, seg: Segment) -> tuple[int, int]:
        """Scan the newest segment's tail; cut a torn tail. Returns (last_seq, end offset)."""
        with open(seg.path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
            if len(head) < SEGMENT_HEADER_SIZE and len(head) == f.seek(0, 2):
                # A crash while creating the segment (older versions wrote the header in place).
                self._create_segment_file(seg)
                self._fsync_dir()
                return seg.first_seq - 1, SEGMENT_HEADER_SIZE
            _check_segment_header(seg, head)
            start, expected = checked_index_entry(seg, _ALL)
            f.seek(start)
            data = f.read()
        last_seq, pos, status, err_off, err_rec = self._scan(data, expected)
        end = start + pos
        if status == framing.OK:
            return last_seq, end
        kind, later = classify_damage(data, pos, status, err_off, start)
        reason = damage_reason(status, start, err_off)
        seq = last_seq + 1 + max(err_rec, 0)
        where = f"{seg.path.name}: damaged batch at offset {end} (sequence {seq}): {reason}"
        if kind == DAMAGED_MIDDLE:
            raise CorruptLogError(
                f"{where}, and valid data follows at offset {start + later}. The log is not truncated; "
                "restore the segment from a replica or backup (see `mykey log verify`)."
            )
        if kind == DAMAGED_FINAL and not self._cut_damaged_tail:
            head = framing.parse_header(data, pos)
            lost = f"sequences {head[0]}..{head[0] + head[1] - 1}" if head else f"the batch from sequence {seq}"
            raise CorruptLogError(
                f"{where}. It is the final batch and it was written in full, so it may have been "
                "acknowledged: this is corruption, not a torn write, and nothing was truncated. Restore "
                f"the segment from a replica or backup; or, accepting the loss of {lost}, stop every "
                "writer and run `mykey log repair --cut-damaged-tail` (it saves the batch under log/torn/)."
            )
        if last_seq < self._keep_through:
            raise CorruptLogError(
                f"{where}. Cutting it would drop sequences {last_seq + 1}..{self._keep_through}, which the "
                "index applied or a signed checkpoint covers, so they were acknowledged: nothing was "
                "truncated. Restore the segment from a replica or backup."
            )
        self.recovery = self._truncate_tail(seg, end, data[pos:], reason, last_seq + 1, kind == DAMAGED_FINAL)
        return last_seq, end

    def _scan(self, data: bytes, expected: int) -> tuple[int, int, int, int, int]:
        """Walk batches in data; returns (last_seq, stop pos, status, err_offset, err_record)."""
        pos = 0
        frames = self._frames
        while True:
            batches, npos, status, err_off, err_rec = frames.parse_batches(data, pos, _ALL)
            for off, first_seq, payloads in batches:
                if first_seq != expected:
                    return expected - 1, off, _GAP, off, -1
                expected += len(payloads)
            return expected - 1, npos, status, err_off, err_rec

    def _truncate_tail(
        self, seg: Segment, end: int, dropped: bytes, reason: str, first_seq: int, operator_cut: bool
    ) -> RecoveryReport:
        torn = self.directory / "torn"
        torn.mkdir(exist_ok=True)
        saved = torn / f"{seg.path.stem}-{end}.bin"
        n = 1
        while saved.exists():  # never overwrite an earlier cut's copy
            n += 1
            saved = torn / f"{seg.path.stem}-{end}.{n}.bin"
        saved.write_bytes(dropped)
        for path in (saved, torn, self.directory):  # the copy is durable before the original bytes go
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(seg.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)
        report = RecoveryReport(seg.path.name, end, len(dropped), reason, str(saved), first_seq, operator_cut)
        log.warning("log recovery: %s", report)
        return report

    def _rewrite_idx(self, seg: Segment, end: int) -> None:
        entries = [(s, o) for s, o in read_idx(seg) if o < end]
        # Keep only entries that are in order; the scan validated the tail.
        data = b"".join(IDX_ENTRY.pack(s, o) for s, o in entries)
        tmp = seg.idx_path.with_suffix(".idx.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, seg.idx_path)
        self._idx_fd = os.open(seg.idx_path, os.O_WRONLY | os.O_APPEND)
        self._idx_last_offset = entries[-1][1] if entries else -IDX_STRIDE

    def _create_segment_file(self, seg: Segment) -> None:
        """Write seg's header to a temporary file, fsync it and rename it into place (fsync the directory after)."""
        tmp = seg.path.with_name(seg.path.name + TMP_SUFFIX)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, SEGMENT_HEADER.pack(SEGMENT_MAGIC, seg.first_seq))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, seg.path)

    def _start_segment(self, first_seq: int) -> None:
        """Roll to a new segment (and index) for batches from first_seq on; the old one is done."""
        seg = Segment(first_seq, self.directory / segment_name(first_seq))
        try:
            if self._fd is not None and self._dirty and self.fsync == "interval":
                os.fdatasync(self._fd)  # sync at the roll: sync() only reaches the active segment
                self._dirty = False
            idx_fd = os.open(seg.idx_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            try:
                self._create_segment_file(seg)
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
            self._fsync_dir()
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._failed = str(exc)
            raise LogError(
                f"could not start segment {seg.path.name} ({exc}); nothing was appended. Reopen the log"
            ) from exc

    def _fsync_dir(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

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
            frame = self._frames.encode_batch(first, [encode_envelope(e) for e in envs])
            if self._offset + len(frame) > self.segment_bytes and self._offset > SEGMENT_HEADER_SIZE:
                self._start_segment(first)
            self._write_frame(frame, first, first + len(envs) - 1)
        return envs

    def _write_frame(self, frame: bytes, first_seq: int, last_seq: int) -> None:
        """Write one framed batch (fdatasync for "always"), then record it; the index hint is best-effort."""
        fd = self._fd
        assert fd is not None
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
        self._last_batch = (first_seq, self._segment.path, start)
        if self._idx_fd is not None and start - self._idx_last_offset >= IDX_STRIDE:
            self._write_idx_hint(first_seq, start)

    def _write_idx_hint(self, first_seq: int, offset: int) -> None:
        """Append an index entry; on failure stop hinting this segment (readers validate hints anyway)."""
        try:
            if os.write(self._idx_fd, IDX_ENTRY.pack(first_seq, offset)) != IDX_ENTRY.size:
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            log.warning(
                "could not write an index hint for %s (%s); no more hints for this segment, readers scan instead",
                self._segment.path.name,
                exc,
            )
            try:
                os.close(self._idx_fd)
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
            fd = os.open(self._unsynced[0], os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self._unsynced.pop(0)

    # --- reading ---------------------------------------------------------

    def refresh(self) -> int:
        """Find the last committed sequence number by reading the tail; returns it."""
        if not self.readonly:
            return self._last_seq
        segs = list_segments(self.directory)
        # A segment exists only once every earlier sequence was written (it may hold no batch yet).
        last = segs[-1].first_seq - 1 if segs else 0
        for _seq, _payload in self.read_raw(self._tail_hint(), None):
            last = _seq
        self._last_seq = max(self._last_seq, last)
        return self._last_seq

    def _tail_hint(self) -> int:
        segs = list_segments(self.directory)
        if not segs:
            return 1
        _offset, first_seq = checked_index_entry(segs[-1], 1 << 62)
        return max(self._last_seq + 1, first_seq)

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Committed (seq, record bytes) in [from_seq, to_seq]; see LogStore.read_raw."""
        return self._iter(from_seq, to_seq, follow=False)

    def follow_raw(
        self,
        from_seq: int = 1,
        *,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Committed records from from_seq on, waiting at the tail until stop."""
        return self._iter(from_seq, None, follow=True, poll_interval=poll_interval, stop=stop)

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

    def _iter(
        self,
        from_seq: int,
        to_seq: int | None,
        *,
        follow: bool,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        if from_seq < 1:
            raise ValidationError("sequence numbers start at 1")
        hi = _ALL if to_seq is None else to_seq
        for first_seq, payloads in self._iter_batches(from_seq, follow, poll_interval, stop):
            if first_seq > hi:
                return
            skip = from_seq - first_seq if first_seq < from_seq else 0
            seq = first_seq + skip
            for i in range(skip, len(payloads)):
                if seq > hi:
                    return
                yield seq, payloads[i]
                seq += 1

    def record_at(self, seq: int) -> tuple[str, int, bytes] | None:
        """(segment name, file offset, stored bytes) of record seq, reading only its batch.

        None if seq is not committed or its batch is damaged (`mykey log verify` says more).
        Only this record's CRC is checked.
        """
        if seq < 1:
            return None
        segs, i, offset, expected = self._locate(seq)
        path = segs[i].path
        with open(path, "rb") as f:
            f.seek(offset)
            while True:  # hop from batch header to batch header up to the batch holding seq
                head_bytes = f.read(framing.HEADER_SIZE)
                head = framing.parse_header(head_bytes, 0)
                if head is None or head[0] != expected:
                    return None
                first_seq, count, body_len = head
                if seq < first_seq + count:
                    body = f.read(body_len)
                    rpos = 0
                    for _ in range(seq - first_seq):
                        if body_len - rpos < framing.RECORD_HEAD_SIZE:
                            return None
                        rpos += framing.RECORD_HEAD_SIZE + framing.RECORD_HEAD.unpack_from(body, rpos)[0]
                    if body_len - rpos < framing.RECORD_HEAD_SIZE:
                        return None
                    n, crc = framing.RECORD_HEAD.unpack_from(body, rpos)
                    payload = body[rpos + framing.RECORD_HEAD_SIZE : rpos + framing.RECORD_HEAD_SIZE + n]
                    if len(payload) != n or framing.crc32(payload) != crc:
                        return None
                    return path.name, offset + framing.HEADER_SIZE + rpos, payload
                expected += count
                offset += framing.HEADER_SIZE + body_len
                f.seek(offset)

    def _locate(self, from_seq: int) -> tuple[list[Segment], int, int, int]:
        """(segments, index of the segment holding from_seq, start offset, first seq there)."""
        segs = list_segments(self.directory)
        if not segs:
            raise LogError(f"no log segments in {self.directory}; run `mykey init`")
        i = max(0, bisect.bisect_right([s.first_seq for s in segs], from_seq) - 1)
        last = self._last_batch
        if last is not None and last[0] <= from_seq and segs[i].path == last[1]:
            return segs, i, last[2], last[0]
        offset, first_seq = checked_index_entry(segs[i], from_seq)
        return segs, i, offset, first_seq

    def _iter_batches(
        self,
        from_seq: int,
        follow: bool,
        poll_interval: float = 0.05,
        stop: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, list[bytes]]]:
        segs, i, offset, expected = self._locate(from_seq)
        frames = self._frames
        while True:
            seg = segs[i]
            f = open(seg.path, "rb")
            try:
                if offset == SEGMENT_HEADER_SIZE:
                    _check_segment_header(seg, f.read(SEGMENT_HEADER_SIZE))
                f.seek(offset)
                buf = b""  # bytes of an incomplete batch carried to the next read
                base = offset  # file offset of buf[0]
                chunk_size = 64 * 1024
                final_pass = False  # a newer segment exists: read this one to its end once more
                retried_at = -1  # damage is re-read once from its batch start before it counts
                rechecked_at = -1  # ... and once more if a newer segment appeared meanwhile
                while True:
                    chunk = f.read(chunk_size)
                    chunk_size = min(chunk_size * 4, READ_CHUNK)
                    if chunk:
                        buf = buf + chunk if buf else chunk
                        batches, pos, status, err_off, err_rec = frames.parse_batches(buf, 0, _ALL)
                        for _off, first_seq, payloads in batches:
                            if first_seq != expected:
                                raise CorruptLogError(
                                    f"{seg.path.name}: sequence gap at offset {base + _off}: batch starts at "
                                    f"{first_seq}, expected {expected}; run `mykey log verify`"
                                )
                            expected += len(payloads)
                            if expected > from_seq:  # skip batches wholly before from_seq
                                yield first_seq, payloads
                        base += pos
                        buf = buf[pos:]
                        if status == framing.OK or status == framing.INCOMPLETE:
                            continue
                        if retried_at != base:
                            # Bytes carried from an earlier read may predate a truncation by the
                            # writer (a failed append): judge damage only on a fresh read.
                            retried_at = base
                            buf = b""
                            f.seek(base)
                            continue
                        # Damage that is a torn tail of the newest segment (the writer cuts it on
                        # open) ends the readable log; anything else is corruption.
                        rest = buf + f.read()
                        newest = i == len(list_segments(self.directory)) - 1
                        if not newest and rechecked_at != base:
                            # A newer segment appeared since our fresh read: a restarted writer may
                            # have cut this tail before rolling. Judge on one more read.
                            rechecked_at = base
                            buf = b""
                            f.seek(base)
                            continue
                        kind = classify_damage(rest, 0, status, err_off - pos, base)[0] if newest else DAMAGED_MIDDLE
                        if kind != TORN:
                            what = "bad batch header" if status == framing.BAD_HEADER else "record CRC or framing error"
                            where = base if status == framing.BAD_HEADER else base + err_off - pos
                            hint = (
                                "; it is the final batch: restore the segment from a replica, or run "
                                "`mykey log repair --cut-damaged-tail`"
                                if kind == DAMAGED_FINAL
                                else "; run `mykey log verify` and restore the segment"
                            )
                            raise CorruptLogError(
                                f"{seg.path.name}: {what} at offset {where} (sequence "
                                f"{expected + max(err_rec, 0)}){hint}"
                            )
                        buf = b""
                    # End of this file for now.
                    if final_pass:
                        if buf:
                            raise CorruptLogError(
                                f"{seg.path.name}: {len(buf)} bytes of an incomplete batch at offset {base} "
                                "in a segment that is not the newest; run `mykey log verify`"
                            )
                        break
                    segs = list_segments(self.directory)
                    if i + 1 < len(segs):
                        # The writer never appends to a segment once a newer one exists, but it may
                        # have appended here since our last read: read to the end once more.
                        final_pass = True
                        buf = b""
                        f.seek(base)
                        continue
                    if not follow or should_stop(stop):
                        return
                    time.sleep(poll_interval)
                    if should_stop(stop):
                        return
                    if buf and os.fstat(f.fileno()).st_size < base + len(buf):
                        buf = b""  # the writer cut a failed append: read it again
                    f.seek(base + len(buf))
            finally:
                f.close()
            i += 1
            offset = SEGMENT_HEADER_SIZE

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
        for name in ("_fd", "_idx_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)
