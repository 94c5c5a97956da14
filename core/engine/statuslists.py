"""Status lists: positions for service IDs (the write side) and the signed lists built from the index.

Positions. The writer gives every service ID it registers a position drawn uniformly at
random (``secrets``) among the business's positions never given, in [0, capacity) with
capacity = ``statuslist.capacity(given + new)``, a power of two at least twice the count,
so a draw is free with probability >= 1/2. The position is in the ServiceIdRegistered event
(every node agrees) and is never given again. Service IDs registered before positions existed
get theirs with ServiceStatusIdxAssigned events (``assign_status_positions``, run by
`mykey status-list assign`, attributed to the operator).

Lists. ``StatusListStore.token(business)`` answers the business's signed list from
DATA/statuslists/<business>.json (the token and the log position it reflects, written
atomically, so every gateway worker serves the same bytes). A list younger than
``refresh`` seconds is served as it is; an older one is rebuilt first if any event since
touched the business's statuses: the packed array (kept in memory, or read back from the
token itself) is patched at the positions of the service IDs those events name, looked up
in the same index snapshot, then compressed and signed again. A list is also signed again
when half its validity is gone. The maximum staleness of a served list is therefore
``refresh`` seconds plus the index's lag behind the log. One process rebuilds a list at a
time (DATA/statuslists/<business>.lock); the others serve the previous one meanwhile.
"""

from __future__ import annotations

import json
import secrets
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .. import fs
from ..audit.statuslist_keys import ensure_status_list_key
from ..datadir import DataDir
from ..domain import events as ev
from ..domain import statuslist as sl
from ..errors import LockHeldError, StatusListError, StatusListFormatError
from ..index.readmodel import Snapshot
from .base import EngineCore

REFRESH = 60  # seconds: a served list is at most this old (plus the index's lag) when statuses changed
VALID_FOR = 86_400  # seconds a list token is valid (exp - iat): how long a terminal may answer offline
MAX_PATCH_EVENTS = 200_000  # beyond this many events since the last build, build from scratch
LOCK_WAIT = 30.0  # seconds a process without any list waits for another one building it


def draw_positions(state: Snapshot, business_id: str, n: int) -> list[int]:
    """n distinct positions the business has never given, uniformly random (secrets)."""
    if n <= 0:
        return []
    mask = sl.capacity(state.status_positions(business_id) + n) - 1  # a power of two
    chosen: dict[int, None] = {}
    while len(chosen) < n:
        draws = array("I", secrets.token_bytes(4 * (n - len(chosen))))
        fresh = [p for p in dict.fromkeys(d & mask for d in draws) if p not in chosen]
        for p, taken in zip(fresh, state.positions_taken(business_id, fresh), strict=True):
            if not taken:
                chosen[p] = None
    return list(chosen)


class StatusListCommands(EngineCore):
    def assign_status_positions(self, *, actor: ev.Actor | None = None, chunk: int = ev.MAX_IDX_BATCH) -> int:
        """Give a position to every service ID registered without one (before status lists); how many.

        Idempotent: a second run finds none. Attributed to actor (default this engine's operator).
        """
        by_business: dict[str, list[str]] = {}
        with self._read() as state:
            for business_id, service_id in state.services_without_position():
                by_business.setdefault(business_id, []).append(service_id)
            plans = []
            for business_id, sids in by_business.items():
                rec = state.business(business_id)
                numeric = bool(rec and rec.numeric_service_ids)
                positions = draw_positions(state, business_id, len(sids))
                for i in range(0, len(sids), chunk):
                    plans.append(ev.ServiceStatusIdxAssigned(
                        business_id, tuple(sids[i : i + chunk]), tuple(positions[i : i + chunk]), numeric
                    ))
        per_commit = 20  # events in one log batch: 200,000 service IDs, a few MB
        for i in range(0, len(plans), per_commit):
            self._commit(plans[i : i + per_commit], actor or self.operator)
        return sum(len(sids) for sids in by_business.values())


# --- building and keeping the lists -------------------------------------------------------


class Snapshots(Protocol):
    def snapshot(self) -> AbstractContextManager[Snapshot]: ...


class LogReader(Protocol):
    @property
    def last_seq(self) -> int: ...

    def read(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[ev.Envelope]: ...

    def refresh(self) -> int: ...


@dataclass
class BuiltList:
    """A signed list: its token, the log position it reflects, when it was built, and (once read) its array."""

    business_id: str
    token: str
    seq: int
    built: float
    array: bytearray | None = None

    @property
    def etag(self) -> str:
        return sl.etag(self.token)

    @property
    def body(self) -> bytes:
        return self.token.encode("ascii")


_SVC_EVENTS = (ev.ServiceIdRegistered, ev.ServiceIdLinked, ev.ServiceIdUnlinked)
_STATE_EVENTS = (ev.MyKeySuspended, ev.MyKeyResumed, ev.MyKeyInvalidated)


def changed_service_ids(snap: Snapshot, business_id: str, envs: Iterator[ev.Envelope]) -> set[str]:
    """The business's service IDs whose list entry these events may have changed (links read from snap)."""
    sids: set[str] = set()
    people: set[str] = set()
    for env in envs:
        b = env.body
        t = type(b)
        if t in _SVC_EVENTS:
            if b.business_id == business_id:
                sids.add(b.service_id)
        elif t in _STATE_EVENTS:
            people.add(b.mykey_id)
        elif t is ev.ServiceStatusIdxAssigned and b.business_id == business_id:
            sids.update(b.service_ids)
    for mykey_id in people:
        sids.update(sid for bid, sid in snap.mykey_links(mykey_id) if bid == business_id)
    return sids


def build_array(snap: Snapshot, business_id: str) -> bytearray:
    """The business's packed list from scratch: every position it gave, from one snapshot."""
    code = sl.VALUE_OF_CODE
    return sl.pack(sl.capacity(snap.status_positions(business_id)),
                   ((idx, code[c]) for idx, c in snap.status_list_entries(business_id)))


def patch_array(array: bytearray, snap: Snapshot, business_id: str, service_ids: set[str]) -> bytearray:
    """array with the entries of these service IDs as snap shows them (grown if the list grew)."""
    size = sl.capacity(snap.status_positions(business_id)) // sl.PER_BYTE
    if len(array) < size:
        array.extend(bytes(size - len(array)))
    code = sl.VALUE_OF_CODE
    for idx, c in snap.service_status_entries(business_id, sorted(service_ids)):
        sl.put(array, idx, code[c])
    return array


class StatusListStore:
    """The signed lists of a data directory's businesses (see the module's docstring)."""

    def __init__(self, data: DataDir, snapshots: Snapshots, log: LogReader | None, *,
                 refresh: float = REFRESH, valid_for: int = VALID_FOR, clock: Callable[[], float] = time.time,
                 key: Any = None) -> None:
        self.data = data
        self.snapshots = snapshots
        self.log = log
        self.refresh = refresh
        self.valid_for = valid_for
        self.clock = clock
        self._key = key
        self._lists: dict[str, BuiltList] = {}
        self.dir = data.root / "statuslists"

    def key(self):
        if self._key is None:
            self._key = ensure_status_list_key(self.data)
        return self._key

    def jwks(self) -> dict[str, Any]:
        from ..audit.statuslist_keys import status_list_jwks

        return status_list_jwks(self.key())

    def _path(self, business_id: str):
        return self.dir / f"{business_id}.json"

    def _load(self, business_id: str) -> BuiltList | None:
        """The stored list (kept in memory while the file is unchanged)."""
        try:
            raw = self._path(business_id).read_bytes()
        except FileNotFoundError:
            return None
        have = self._lists.get(business_id)
        try:
            meta = json.loads(raw)
            if have is not None and have.token == meta["token"]:
                return have
            got = BuiltList(business_id, str(meta["token"]), int(meta["seq"]), float(meta["built"]))
        except (ValueError, KeyError, TypeError):
            return None  # damaged: built again from scratch
        self._lists[business_id] = got
        return got

    def _fresh(self, have: BuiltList | None, last_seq: int, now: float, current: bool = False) -> bool:
        if have is None or now - have.built >= self.valid_for / 2:
            return False
        return have.seq >= last_seq or (not current and now - have.built < self.refresh)

    def token(self, business_id: str, *, current: bool = False) -> BuiltList:
        """The business's signed list, rebuilt first if it is stale (see the module's docstring).

        current=True: as of the index now, whatever the list's age (`mykey status-list build`).
        """
        now = self.clock()
        have = self._load(business_id)
        with self.snapshots.snapshot() as snap:
            if self._fresh(have, snap.last_seq, now, current):
                assert have is not None
                return have
        fs.private_dir(self.dir)
        lock = None
        deadline = time.monotonic() + LOCK_WAIT
        while lock is None:
            try:
                lock = fs.OwnerLock.acquire(self.dir / f"{business_id}.lock")
            except LockHeldError:
                if have is not None and not current:
                    return have  # another process is rebuilding it: serve the previous one meanwhile
                if time.monotonic() > deadline:
                    raise StatusListError(f"another process has been building the list of {business_id} for "
                                          f"{LOCK_WAIT:g} s; retry later") from None
                time.sleep(0.05)
        try:
            return self._rebuild(business_id, self.clock(), current)
        finally:
            lock.release()

    def _rebuild(self, business_id: str, now: float, current: bool = False) -> BuiltList:
        have = self._load(business_id)  # another process may have built it meanwhile
        with self.snapshots.snapshot() as snap:
            last = snap.last_seq
            if self._fresh(have, last, now, current):
                assert have is not None
                return have
            array = self._patched(have, snap, business_id, last)
        claims = sl.claims(business_id, array, iat=int(now), ttl=int(self.refresh), valid_for=self.valid_for)
        built = BuiltList(business_id, sl.sign(claims, self.key()), last, now, array)
        meta = {"business_id": business_id, "seq": last, "built": now, "token": built.token}
        fs.write_atomic(self._path(business_id), json.dumps(meta).encode("ascii"), sync=False)
        self._lists[business_id] = built
        return built

    def _patched(self, have: BuiltList | None, snap: Snapshot, business_id: str, last: int) -> bytearray:
        if have is None or self.log is None or last - have.seq > MAX_PATCH_EVENTS or have.seq > last:
            return build_array(snap, business_id)
        array = have.array
        if array is None:
            try:
                array = bytearray(previous_array(have.token))
            except StatusListFormatError:
                return build_array(snap, business_id)
        array = bytearray(array)  # the served list's array stays as it was
        if last > have.seq:
            if self.log.last_seq < last:
                self.log.refresh()  # a reader's view of the log: see the tail the index applied
            envs = list(self.log.read(have.seq + 1, last))
            if not envs or envs[-1].seq != last or envs[0].seq != have.seq + 1:
                return build_array(snap, business_id)  # the log could not show every event since
            patch_array(array, snap, business_id, changed_service_ids(snap, business_id, iter(envs)))
        return array


def previous_array(token: str) -> bytes:
    """The packed array inside one of our own tokens (read back without verifying: we wrote it)."""
    import base64

    try:
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        return sl.decompress(sl.unb64u(payload["status_list"]["lst"]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise StatusListFormatError("the stored list is damaged") from None
