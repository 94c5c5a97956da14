"""The terminal gateway: the platform's HTTP API for business terminals (`mykey serve`).

- ``server``: starts the writer process and the HTTP workers (granian, RSGI) and stops them;
- ``app``: the RSGI application each worker runs (routing, handlers, problem JSON);
- ``writer``: the single writer process holding the Engine, and the clients workers use;
- ``tokens``: session tokens (an HMAC under the gateway key, checked by every worker);
- ``ratelimit``, ``metrics``: per-terminal token buckets, Prometheus metrics;
- ``openapi.json``: the API contract, served at ``/openapi.json``.

A layer above the engine: it may import engine, auth, index and domain; nothing imports it
but the CLI.
"""
