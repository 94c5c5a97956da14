"""pytest fixtures for the JetStream log: real nats-servers on free loopback ports (loaded by conftest).

The servers are started from the pip-installed binary (mykey_dev.nats), each in its
own process group with PR_SET_PDEATHSIG, and stopped by the fixtures' finalizers (and
at interpreter exit) even when a test fails; if the test process itself is killed, the
kernel kills them.
"""

from __future__ import annotations

import atexit
import itertools
import uuid

import pytest

_started: list = []
_names = itertools.count(1)


def _stop_all() -> None:
    for cluster in _started:
        cluster.stop()


atexit.register(_stop_all)


def _need_nats() -> None:
    pytest.importorskip("nats", reason="the [nats] extra is not installed")
    from mykey_dev.nats import server_binary

    try:
        server_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def start_cluster(directory, nodes: int, **kw):
    """A started LocalCluster, stopped at exit whatever happens (callers also stop it in a finalizer)."""
    _need_nats()
    from mykey_dev.nodes import start_local_cluster

    cluster = start_local_cluster(directory, nodes, **kw)  # tried again on fresh ports after a port race
    _started.append(cluster)
    return cluster


def module_cluster(prefix: str, nodes: int = 3):
    """A module-scoped pytest fixture: a started cluster of nodes in a temporary directory, always stopped."""

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory):
        cl = start_cluster(tmp_path_factory.mktemp(prefix), nodes)
        try:
            yield cl
        finally:
            cl.stop()

    return cluster


def all_running(cluster):
    """Every node of cluster running (resumed or restarted: a failed test may have left one down) and ready."""
    import signal

    for node in cluster.nodes:
        if node.running:
            node.signal(signal.SIGCONT)
        else:
            node.start()
    cluster.wait_ready(60)
    return cluster


def unique_stream(prefix: str = "T") -> str:
    """A stream name no other test uses."""
    return f"{prefix}{next(_names)}_{uuid.uuid4().hex[:6]}"


def _serve(tmp_path_factory, name: str, nodes: int):
    cluster = start_cluster(tmp_path_factory.mktemp(name), nodes)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def nats_single(tmp_path_factory):
    """One JetStream server (no clustering): streams on it are R1."""
    yield from _serve(tmp_path_factory, "nats1", 1)


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory):
    """A 3-node JetStream cluster for tests that do not harm it (R3 streams)."""
    yield from _serve(tmp_path_factory, "nats3", 3)


@pytest.fixture
def js_open():
    """Open JetStream logs (JetStreamLog.open, or a subclass's: cls=) and close them all at the end."""
    from mykey.log.jetstream import JetStreamLog

    opened: list = []

    def open_(url: str, cls=JetStreamLog, **kw):
        log = cls.open(url, **kw)
        opened.append(log)
        return log

    yield open_
    for log in opened:
        log.close()
