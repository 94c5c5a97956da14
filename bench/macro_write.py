"""Write-side measurements of the macro benchmark: appending events, and the peers.

- mykey: FileLog.append of batches of ServiceIdRegistered events (validated,
  encoded, framed with CRCs), fsync="always" (fdatasync per batch) or "never".
- plain SQLite: the same msgpack records inserted with executemany, one
  transaction per batch, WAL, synchronous=FULL (durable per commit, like
  fsync="always") or synchronous=OFF (like "never").
- eventsourcing: its Application.save of an aggregate's pending events through
  its SQLite recorder (WAL, SQLite's default synchronous=FULL: durable).

Every run starts from an empty store; events are made before the clock starts.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mykey.domain import events as ev

ACTOR = ev.Actor("operator", "bench")


def make_events(n: int, offset: int = 0) -> list[ev.ServiceIdRegistered]:
    return [ev.ServiceIdRegistered("A0001", f"W{offset + i:09d}", None) for i in range(n)]


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _fresh(workdir: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))


def mykey_append(workdir: Path, batch: int, fsync: str, n_events: int) -> float:
    """Events per second appending n_events in batches (one atomic append each)."""
    from mykey.log.filelog import FileLog

    batches = _chunks(make_events(n_events), batch)
    d = _fresh(workdir, "w-mykey-")
    log = FileLog.open(d / "log", fsync=fsync)
    try:
        append = log.append
        t0 = time.perf_counter()
        for b in batches:
            append(b, ACTOR)
        took = time.perf_counter() - t0
    finally:
        log.close()
        shutil.rmtree(d, ignore_errors=True)
    return n_events / took


def sqlite_insert(workdir: Path, batch: int, durable: bool, n_events: int) -> float:
    """Events per second inserting the same encoded records into SQLite, one transaction per batch."""
    batches = _chunks(make_events(n_events), batch)
    d = _fresh(workdir, "w-sqlite-")
    con = sqlite3.connect(d / "events.sqlite", isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        con.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        encode, Envelope, now = ev.encode_envelope, ev.Envelope, ev.now_us
        sql = "INSERT INTO events VALUES (?, ?)"
        seq = 1
        t0 = time.perf_counter()
        for b in batches:
            ts = now()
            rows = [(seq + i, encode(Envelope(seq + i, ts, ACTOR, e.VERSION, e))) for i, e in enumerate(b)]
            con.execute("BEGIN")
            con.executemany(sql, rows)
            con.execute("COMMIT")
            seq += len(b)
        took = time.perf_counter() - t0
    finally:
        con.close()
        shutil.rmtree(d, ignore_errors=True)
    return n_events / took


_es_classes: tuple | None = None


def _eventsourcing_classes():
    global _es_classes
    if _es_classes is None:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event

        class ServiceRegistry(Aggregate):
            """One business's service IDs, as an eventsourcing aggregate."""

            def __init__(self, business_id: str) -> None:
                self.business_id = business_id
                self.registered = 0

            @event("ServiceIdRegistered")
            def register(self, service_id: str, customer_id: str | None = None) -> None:
                self.registered += 1

        class Registry(Application):
            pass

        _es_classes = (ServiceRegistry, Registry)
    return _es_classes


def eventsourcing_save(workdir: Path, batch: int, n_events: int) -> float:
    """Events per second with eventsourcing: `batch` events triggered on an aggregate, then app.save()."""
    ServiceRegistry, Registry = _eventsourcing_classes()
    d = _fresh(workdir, "w-es-")
    app = Registry(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(d / "es.sqlite")})
    try:
        agg = ServiceRegistry("A0001")
        app.save(agg)  # the creation event, before the clock starts
        ids = [f"W{i:09d}" for i in range(n_events)]
        t0 = time.perf_counter()
        for s in range(0, n_events, batch):
            for sid in ids[s:s + batch]:
                agg.register(sid)
            app.save(agg)
        took = time.perf_counter() - t0
        stored = app.recorder.max_notification_id()
        if stored != n_events + 1:
            raise RuntimeError(f"eventsourcing stored {stored} events, expected {n_events + 1}")
    finally:
        app.close()
        shutil.rmtree(d, ignore_errors=True)
    return n_events / took


def eventsourcing_synchronous(workdir: Path) -> str:
    """The journal mode and synchronous level eventsourcing's SQLite connections use."""
    _ServiceRegistry, Registry = _eventsourcing_classes()
    d = _fresh(workdir, "w-es-")
    app = Registry(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(d / "es.sqlite")})
    try:
        with app.recorder.datastore.transaction(commit=False) as c:
            c.execute("PRAGMA journal_mode")
            mode = c.fetchone()[0]
            c.execute("PRAGMA synchronous")
            sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(c.fetchone()[0], "?")
        return f"journal_mode={mode}, synchronous={sync}"
    finally:
        app.close()
        shutil.rmtree(d, ignore_errors=True)


def repeat(fn: Callable[[], float], times: int) -> list[float]:
    fn()  # warm-up (imports, page cache, file system metadata)
    return [fn() for _ in range(times)]
