"""Prometheus metrics shared by the gateway's worker processes (prometheus_client multiprocess mode).

The server makes a fresh directory for the run and names it in PROMETHEUS_MULTIPROC_DIR
before it forks the workers; each worker writes its own counters there (memory-mapped
files) and whichever worker answers ``GET /metrics`` adds them all up. The directory is
removed when the gateway stops. Counters of a worker that died stay counted.

Metrics (all prefixed ``mykey_gateway_``):

- ``requests_total{endpoint,status}`` and ``request_duration_seconds{endpoint}``;
- ``index_lag_events``: log events the index has not applied yet (as of the last
  ``/readyz`` or ``/metrics`` request);
- ``sessions_issued_total``;
- ``refusals_total{reason}``: refused requests by problem type (token-expired, rate-limited, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def use_directory(path: Path) -> None:
    """Make this process (and the processes it forks or starts) write metrics under path."""
    os.environ[ENV_VAR] = str(path)


class Metrics:
    """One worker's metric objects (made after the fork, in the worker)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, values

        if not os.environ.get(ENV_VAR):
            raise RuntimeError(f"{ENV_VAR} is not set: the gateway server sets it before starting workers")
        # Chosen here, not when prometheus_client was imported, so the import order does not matter.
        values.ValueClass = values.MultiProcessValue()
        self.requests = Counter(
            "mykey_gateway_requests", "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"], registry=None,
        )
        self.latency = Histogram(
            "mykey_gateway_request_duration_seconds", "Time from request to response, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=None,
        )
        self.index_lag = Gauge(
            "mykey_gateway_index_lag_events", "Log events the index has not applied yet",
            multiprocess_mode="mostrecent", registry=None,
        )
        self.sessions = Counter("mykey_gateway_sessions_issued", "Session tokens issued", registry=None)
        self.refusals = Counter(
            "mykey_gateway_refusals", "Requests refused, by reason (problem type)", ["reason"], registry=None
        )
        self._children: dict[tuple[str, int], tuple] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (endpoint, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    @staticmethod
    def render() -> bytes:
        """Every worker's metrics, added up, in the Prometheus text format."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
