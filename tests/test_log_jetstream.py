"""The JetStream log (mykey.log.jetstream) against real nats-servers on loopback: the LogStore contract
on R1 and R3 streams, with one message per batch and with batches spread over many messages."""

from __future__ import annotations

import pytest
from mykey.log.contract import LogStoreContract
from mykey.log.jetstream import JetStreamLog

from .nats_fixtures import unique_stream

SETUPS = {
    # name: (cluster fixture, replicas, max_msg_bytes)
    "r1": ("nats_single", 1, None),
    "r1-small-msgs": ("nats_single", 1, 1024),  # ~12 events a message: batches span many messages
    "r3-small-msgs": ("nats_cluster", 3, 1024),
}


@pytest.fixture(params=list(SETUPS))
def open_store(request):
    fixture, replicas, max_bytes = SETUPS[request.param]
    cluster = request.getfixturevalue(fixture)
    opened: list[JetStreamLog] = []
    state = {"url": None}

    def new_url() -> str:
        return cluster.log_url(stream=unique_stream(), replicas=replicas, max_msg_bytes=max_bytes)

    state["url"] = new_url()

    def factory(readonly: bool = False, fresh: bool = False) -> JetStreamLog:
        if fresh:
            state["url"] = new_url()
        log = JetStreamLog.open(state["url"], readonly=readonly)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()


class TestJetStreamContract(LogStoreContract):
    """The JetStream log holds to the LogStore contract."""
