"""Point-in-time replay: the index as a terminal saw it at a sequence number or a time.

``replay`` builds a full index into a new directory that ``Resolver.open`` accepts;
``resolve_as_of`` answers a few lookups by folding only the events that touch
them; ``diff_live_index`` compares the live index with a fresh replay of the log.
Only whole log batches are ever replayed: a terminal never saw half a command.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from .. import fs
from ..datadir import DataDir
from ..domain import events as ev
from ..domain.ids import BUSINESS_ID_RE
from ..domain.status import MyKeyState, Status
from ..domain.transitions import STATE_AFTER
from ..errors import NoIndexError, ReplayError, ValidationError
from ..index.binding import binding as default_binding
from ..index.store import (
    build_generation,
    diff_indexes,
    open_live_readonly,
    open_readonly,
    read_meta_last_seq,
)
from ..log.backend import open_log
from ..log.store import LogStore

__all__ = ["parse_as_of", "as_of_seq", "replay", "resolve_as_of", "diff_live_index"]

REPLAY_GENERATION = "index-000001"
REPLAY_INFO = "REPLAY.json"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Head(msgspec.Struct, array_like=True, gc=False):
    """The first two fields of an envelope: enough to place a batch in time."""

    seq: int
    ts: int


_head = msgspec.msgpack.Decoder(_Head)


def parse_as_of(as_of: int | str) -> tuple[str, int]:
    """("seq", n) for a sequence number, or ("ts", µs since the epoch UTC) for an ISO-8601 time.

    A time without a UTC offset is taken as UTC.
    """
    if isinstance(as_of, bool):
        raise ValidationError("--as-of must be a sequence number or an ISO-8601 time")
    if isinstance(as_of, int):
        if as_of < 0:
            raise ValidationError(f"sequence number {as_of} is negative; use 0 (nothing yet) or more")
        return "seq", as_of
    if not isinstance(as_of, str) or not as_of.strip():
        raise ValidationError("--as-of must be a sequence number or an ISO-8601 time")
    text = as_of.strip()
    if text.isdigit():
        return "seq", int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"--as-of {text!r} is neither a sequence number nor an ISO-8601 time; "
            "use e.g. 1234 or 2025-03-04T14:02:00+09:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return "ts", (when - _EPOCH) // timedelta(microseconds=1)


def as_of_seq(log: LogStore, as_of: int | str) -> int:
    """The last sequence number a terminal could have seen at ``as_of`` (a whole-batch boundary)."""
    kind, value = parse_as_of(as_of)
    last = 0
    if kind == "seq":
        if value == 0:
            return 0
        for first_seq, payloads in log.read_batches(value):  # starts with the batch holding value
            end = first_seq + len(payloads) - 1
            return value if end == value else first_seq - 1
        return min(value, log.refresh())  # value is past the end of the log
    for first_seq, payloads in log.read_batches(1):
        if _head.decode(payloads[0]).ts > value:
            break
        last = first_seq + len(payloads) - 1
    return last


def replay(data: DataDir, as_of: int | str, into: Path) -> int:
    """Build the index as it stood at ``as_of`` into the new directory ``into``; returns its last seq.

    ``into`` becomes a data-dir-like directory (``into/index`` -> a generation) that
    ``Resolver.open(into)`` opens.
    """
    into = Path(into)
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ReplayError(f"{into} exists and is not an empty directory; choose a new directory for the replay")
    if into.resolve() == data.root.resolve():
        raise ReplayError("the replay must go into its own directory, not the live data directory")
    log = open_log(data, readonly=True)
    try:
        seq = as_of_seq(log, as_of)
        fs.private_dir(into)
        gen = build_generation(data, log, to_seq=seq, into=into / REPLAY_GENERATION)
    finally:
        log.close()
    os.symlink(gen.name, into / "index")
    info = {"source": str(data.root.resolve()), "as_of": str(as_of), "last_seq": seq}
    fs.write_atomic(into / REPLAY_INFO, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return seq


# --------------------------------------------------------------- resolve_as_of

_SVC_TYPES = (ev.ServiceIdRegistered, ev.ServiceIdLinked, ev.ServiceIdUnlinked)
_STATE = STATE_AFTER  # what each event does to a MyKey ID's state: the one table in the domain


def _matching(log: LogStore, upto: int, needles: set[bytes]) -> list[tuple[int, ev.Envelope]]:
    """Decoded events up to ``upto`` whose stored bytes contain any needle (a cheap pre-filter)."""
    if not needles or upto <= 0:
        return []
    pattern = re.compile(b"|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)))
    found = []
    search = pattern.search
    for seq, rec in log.read_raw(1, upto):
        if search(rec):
            found.append((seq, ev.decode_envelope(rec)))
    return found


def resolve_as_of(
    data: DataDir, as_of: int | str, business_id: str, service_ids: Sequence[str | bytes]
) -> list[Status]:
    """What ``Resolver.resolve`` would have answered at ``as_of``, from the log alone (no index copy).

    Folds only the events of these service keys and of the MyKey IDs they were linked to.
    """
    if type(business_id) is not str or not BUSINESS_ID_RE.match(business_id):
        raise ValidationError(f"business_id {business_id!r} is not a business ID (a letter and 4 digits)")
    wanted: list[str | None] = []
    for sid in service_ids:
        try:
            s = sid.decode("ascii") if isinstance(sid, bytes) else sid
            s.encode("ascii")
        except (UnicodeError, AttributeError):
            s = None  # cannot be registered: unknown
        wanted.append(s or None)
    targets = {s for s in wanted if s}
    log = open_log(data, readonly=True)
    try:
        upto = as_of_seq(log, as_of)
        events = [
            (seq, env.body)
            for seq, env in _matching(log, upto, {s.encode("ascii") for s in targets})
            if type(env.body) in _SVC_TYPES and env.body.business_id == business_id and env.body.service_id in targets
        ]
        people = {b.mykey_id for _, b in events if type(b) is ev.ServiceIdLinked}
        events += [
            (seq, env.body)
            for seq, env in _matching(log, upto, {m.encode("ascii") for m in people})
            if type(env.body) in _STATE and env.body.mykey_id in people
        ]
    finally:
        log.close()
    events.sort(key=lambda e: e[0])
    # The same rules as mykey.index.projection, restricted to these keys.
    state: dict[str, MyKeyState] = {}
    svc: dict[str, Status] = {}
    links: dict[str, set[str]] = {}
    for _seq, b in events:
        t = type(b)
        if t in _STATE:
            state[b.mykey_id] = _STATE[t]
            if t is not ev.MyKeyCreated:
                for sid, people_of in links.items():
                    if b.mykey_id in people_of and sid in svc:
                        svc[sid] = _STATE[t].status
        elif t is ev.ServiceIdRegistered:
            svc[b.service_id] = Status.UNLINKED
        elif t is ev.ServiceIdLinked:
            if b.service_id in svc and b.mykey_id in state:
                svc[b.service_id] = state[b.mykey_id].status
            links.setdefault(b.service_id, set()).add(b.mykey_id)
        else:  # unlinked
            if b.service_id in svc:
                svc[b.service_id] = Status.UNLINKED
            links.get(b.service_id, set()).discard(b.mykey_id)
    return [svc.get(s, Status.UNKNOWN) if s else Status.UNKNOWN for s in wanted]


# ------------------------------------------------------------------------ diff


def _workdir(data: DataDir) -> str | None:
    return str(data.root) if os.access(data.root, os.W_OK) else None


def diff_live_index(data: DataDir, *, limit: int = 100, attempts: int = 3) -> list[str]:
    """Differences between the live index and a fresh replay of the log to the same point (none if healthy).

    Opens the live index read-only: call it from a process that does not have it open.
    """
    binding = default_binding()
    try:
        live, live_dbs, _gen = open_live_readonly(data, binding)
    except NoIndexError:
        raise ReplayError(f"no live index in {data.root}; run `mykey init` or `mykey rebuild` first") from None
    try:
        for _ in range(attempts):
            with live.begin() as txn:
                live_last = read_meta_last_seq(txn, live_dbs)
            log = open_log(data, readonly=True)
            try:
                with tempfile.TemporaryDirectory(prefix=".audit-diff-", dir=_workdir(data)) as tmp:
                    built = build_generation(data, log, to_seq=live_last, into=Path(tmp) / "replay")
                    fresh, fresh_dbs = open_readonly(built, binding)
                    try:
                        diffs = diff_indexes(live, live_dbs, fresh, fresh_dbs, limit=limit)
                    finally:
                        fresh.close()
            finally:
                log.close()
            with live.begin() as txn:
                moved = read_meta_last_seq(txn, live_dbs) != live_last
            if not diffs or not moved:
                return [
                    d.replace("only in the first index", "only in the live index").replace(
                        "only in the second index", "only in the replay of the log"
                    )
                    for d in diffs
                ]
        raise ReplayError(
            "the live index kept moving while it was compared; retry when the engine is idle, or stop it"
        )
    finally:
        live.close()
