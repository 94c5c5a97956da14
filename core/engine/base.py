"""What every command stands on: the log (any LogStore), the index, its read model and the one write path.

Each command reads the state it validates against from one read-model snapshot
(never a second copy in memory), decides, appends all of its events as one atomic
log batch, then applies them to the index. A refused command raises a specific
error and appends nothing. On open, whatever the log holds beyond the index is
replayed first.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Self

from ..datadir import DataDir, ensure_subject_key
from ..domain import events as ev
from ..domain.ids import check_actor_id
from ..errors import EngineHaltedError, IndexAheadError, ValidationError
from ..index.readmodel import ReadModel, Snapshot
from ..index.store import Index
from ..log.backend import open_log
from ..log.store import LogStore
from .challenges import open_challenge_store


def operator_for_account(uid: int, name: str | None) -> ev.Actor:
    """The operator actor for an OS account: its name, or uid:N when the name is no valid actor id.

    A name that is not 1-64 printable ASCII characters, or that spells an Individual Number,
    is never recorded; the uid stands in for it.
    """
    if name is not None:
        try:
            return ev.Actor("operator", check_actor_id(name))
        except ValidationError:
            pass
    return ev.Actor("operator", f"uid:{uid}")


def _operator_actor() -> ev.Actor:
    """Who runs this process, from the OS (its real uid), never from LOGNAME/USER, which any caller sets."""
    uid = os.getuid()
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (e.g. an arbitrary uid in a container)
        name = None
    return operator_for_account(uid, name)


class EngineCore:
    """The write side of mykey over one data directory (holds the log's and the index's writer locks).

    Commands run one at a time: use an Engine from one thread (gateways resolve through
    Resolver objects, which are safe to share between threads).
    """

    def __init__(
        self,
        data: DataDir,
        log: LogStore,
        index: Index,
        *,
        clock: Callable[[], float] = time.time,
        operator: ev.Actor | None = None,
        trail=None,
    ) -> None:
        self.data = data
        self.log = log
        self.index = index
        self.read_model = ReadModel(index.env, index.dbs)
        self.clock = clock
        self.operator = operator or _operator_actor()
        self.trail = trail
        self._checkpoint_from: int | None = None
        self._halted: str | None = None  # set when the index could not follow the log
        with self.read_model.snapshot() as state:
            records = state.mykeys()
            try:
                has_mykeys = next(records, None) is not None
            finally:
                records.close()
        self._subject_key = ensure_subject_key(data, in_use=has_mykeys)
        # The machine's shared store: a challenge a gateway worker issued is consumed once here too.
        self.challenges = open_challenge_store(data, index.binding, lambda: self.clock())

    # --- opening ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        log: LogStore | str | None = None,
        fsync: str = "always",
        binding: ModuleType | None = None,
        clock: Callable[[], float] = time.time,
        operator: ev.Actor | None = None,
        audit: bool = True,
        checkpoint_on_close: bool = False,
    ) -> Self:
        """Open (creating if needed) the data directory; replays log events the index lacks.

        log: None for the data directory's log (DATA/log, or $MYKEY_LOG), a log location
        (see mykey.log.backend.open_log), or an open LogStore, which the engine then owns
        and closes. checkpoint_on_close signs an audit checkpoint at close() when events
        were appended (the CLI does, so every change is covered by a signed checkpoint at once).
        """
        data = DataDir(Path(data_dir))
        try:
            index = Index.open(data, binding=binding)
        except BaseException:
            if isinstance(log, LogStore):
                log.close()
            raise
        trail = None
        try:
            if not isinstance(log, LogStore):
                # Recovery may cut a torn tail, never events the index applied or a checkpoint signed.
                from ..audit.checkpoints import signed_size

                keep = max(index.last_seq, signed_size(data))
                log = open_log(data, url=log, fsync=fsync, keep_through=keep)
            if index.last_seq > log.last_seq:
                raise IndexAheadError(
                    f"the index has applied events up to sequence {index.last_seq} but the log ends at "
                    f"{log.last_seq}: the log lost events. Restore the log from a replica or backup; or, if it "
                    "ran with fsync='interval' or 'never' and the machine crashed, accept the loss with "
                    "`mykey rebuild`"
                )
            index.catch_up(log)
            if audit:
                from ..audit.keys import ensure_signing_key
                from ..audit.trail import AuditTrail

                ensure_signing_key(data)
                trail = AuditTrail.open(data, log)
            engine = cls(data, log, index, clock=clock, operator=operator, trail=trail)
        except BaseException:
            try:
                if trail is not None:
                    trail.close()
            finally:
                index.close()
                if isinstance(log, LogStore):
                    log.close()
            raise
        engine._checkpoint_from = log.last_seq if checkpoint_on_close else None
        return engine

    def close(self) -> None:
        """Close the audit trail (signing a checkpoint if asked to), the challenges, the index and the log."""
        try:
            if self.trail is not None:
                try:
                    if self._checkpoint_from is not None and self.log.last_seq > self._checkpoint_from:
                        self.trail.checkpoint()
                finally:
                    self.trail.close()
                    self.trail = None
        finally:
            try:
                try:
                    self.challenges.close()
                finally:
                    self.index.close()
            finally:
                self.log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading and the one write path ------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Snapshot]:
        """The state a command validates against: one read transaction (close it before _commit)."""
        with self.read_model.snapshot() as state:
            yield state

    def _commit(self, events: Sequence[ev.Event], actor: ev.Actor) -> list[ev.Envelope]:
        """Append one atomic batch (validated against the state the index shows), then apply it."""
        if self._halted is not None:
            raise EngineHaltedError(self._halted)
        envs = self.log.append(events, actor, expected_last_seq=self.index.last_seq)
        try:
            self.index.apply(envs)
        except Exception as exc:
            try:
                self.index.catch_up(self.log)  # the events are in the log: apply them from there
            except Exception:
                self._halted = (
                    f"the command was recorded in the log (sequence {envs[0].seq}-{envs[-1].seq}) but the index "
                    f"could not apply it ({exc}); close and reopen the engine, which replays it"
                )
                raise EngineHaltedError(self._halted) from exc
        if self.trail is not None:
            self.trail.catch_up()  # if this fails, the next open catches the trail up from the log
        return envs

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=timezone.utc)
