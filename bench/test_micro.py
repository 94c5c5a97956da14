"""Micro-benchmarks (pytest-benchmark) of mykey's hot paths.

    pytest bench/ --benchmark-only                 # measure
    pytest bench/ --benchmark-disable              # CI: run each once, so they never rot

Event encode/decode, log append per fsync mode, log read, projection apply, and
resolve / resolve_many through the Cython binding and its pure (py-lmdb) twin.
Data sizes are small so the CI pass takes a few seconds. Each binding gets its
own data directory: one process never opens an environment through two bindings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.index.binding import binding_by_name
from mykey.index.projection import apply_envelopes
from mykey.log.filelog import FileLog

from bench.macro_dataset import ACTOR, Spec, build

BINDINGS = ["native", "pure"]
SPEC = Spec(service_ids=20_000, mykeys=6_000, businesses=20)


def _envelope(seq: int = 1) -> ev.Envelope:
    body = ev.ServiceIdLinked("A0001", f"S{seq:09d}", "ABCDEFGH")
    return ev.Envelope(seq, ev.now_us(), ACTOR, body.VERSION, body)


def _registrations(n: int, start: int = 0) -> list[ev.ServiceIdRegistered]:
    return [ev.ServiceIdRegistered("A0001", f"S{start + i:09d}", None) for i in range(n)]


# --- events -----------------------------------------------------------------------------------


def test_event_encode(benchmark):
    env = _envelope()
    out = benchmark(ev.encode_envelope, env)
    assert ev.decode_envelope(out) == env


def test_event_decode(benchmark):
    env = _envelope()
    raw = ev.encode_envelope(env)
    assert benchmark(ev.decode_envelope, raw) == env


# --- the log ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 100])
@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_log_append(benchmark, tmp_path, fsync, batch):
    log = FileLog.open(tmp_path / "log", fsync=fsync)
    events = _registrations(batch)
    try:
        envs = benchmark(log.append, events, ACTOR)
        assert len(envs) == batch and log.last_seq % batch == 0
    finally:
        log.close()


@pytest.fixture(scope="module")
def written_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("log") / "log"
    log = FileLog.open(path, fsync="never")
    for b in range(10):
        log.append(_registrations(1_000, b * 1_000), ACTOR)
    log.close()
    return path


@pytest.mark.parametrize("framing", ["native", "pure"])
def test_log_read(benchmark, written_log, framing):
    log = FileLog.open(written_log, readonly=True, framing_impl=framing)

    def read_all() -> int:
        n = 0
        for _env in log.read(1):
            n += 1
        return n

    assert benchmark(read_all) == 10_000


# --- projection -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def projection_batch() -> list[ev.Envelope]:
    """1,000 registrations, the MyKey IDs they link to, and the links, as envelopes."""
    spec = Spec(service_ids=1_000, mykeys=300, businesses=1)
    events = [e for batch in spec.event_batches() for e in batch]
    return [ev.Envelope(i + 1, 0, ACTOR, e.VERSION, e) for i, e in enumerate(events)]


@pytest.mark.parametrize("binding", BINDINGS)
def test_projection_apply(benchmark, tmp_path, projection_batch, binding):
    from mykey.index import keys as k
    from mykey.index.store import open_dbs

    b = binding_by_name(binding)
    env = b.Env(str(tmp_path / "index"), map_size=1 << 30, max_dbs=len(k.DB_NAMES) + 2, sync=False)
    try:
        dbs = open_dbs(env, create=True)

        def apply_once() -> int:
            txn = env.begin(write=True)
            try:
                return apply_envelopes(txn, dbs, projection_batch)
            finally:
                txn.abort()  # every round starts from the same empty index

        assert benchmark(apply_once) == len(projection_batch)
    finally:
        env.close()


# --- resolve -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BINDINGS)
def resolver(request, tmp_path_factory):
    """A Resolver over a 20,000-service-ID index built and read through one binding."""
    from mykey.index.resolver import Resolver

    root = tmp_path_factory.mktemp(f"data-{request.param}")
    build(SPEC, root, binding=request.param)
    r = Resolver.open(DataDir(root).root, binding=binding_by_name(request.param))
    yield r
    r.close()


def test_resolve(benchmark, resolver):
    (bid, ids), = SPEC.queries(1, 1, salt=7)
    sid = ids[0].decode()
    assert benchmark(resolver.resolve, bid, sid) == SPEC.expected([(bid, ids)])[0]


@pytest.mark.parametrize("batch", [100, 10_000])
def test_resolve_many(benchmark, resolver, batch):
    queries = SPEC.queries(batch, 1, salt=batch)
    (bid, ids), = queries
    assert benchmark(resolver.resolve_many, bid, ids) == SPEC.expected(queries)
