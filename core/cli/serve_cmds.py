"""`mykey serve`: the terminal gateway (HTTP API for business terminals) over the data directory."""

from __future__ import annotations

import argparse
import ipaddress

from ..errors import ValidationError
from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the terminal gateway's HTTP API (stop with Ctrl-C or SIGTERM)",
        parents=[common],
        description="Serve the terminal gateway: N worker processes answer the HTTP API from the index; "
        "one writer process holds the Engine. The API is described at /openapi.json.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8750, help="TCP port (default 8750)")
    p.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: the number of cores)")
    p.add_argument("--token-ttl", type=_positive_int, default=300, metavar="SECONDS",
                   help="how long a session token lasts (default 300)")
    p.add_argument("--rate-limit", type=float, default=50.0, metavar="PER_SECOND",
                   help="requests a second per terminal in each worker (default 50; sign-ins: 1 a second, "
                   "bursts of 10; 0: no limits)")
    p.add_argument("--burst", type=float, default=100.0, help="requests a terminal may send at once (default 100)")
    p.add_argument("--writer-idle", type=float, default=2.0, metavar="SECONDS",
                   help="the writer lets go of the log after this long without a write (default 2)")
    p.add_argument("--people-rate", type=float, default=1.0, metavar="PER_SECOND",
                   help="a person's requests (no terminal: /v1/people/...) a second per client address in each "
                   "worker (default 1, bursts of --people-burst; 0: no limit)")
    p.add_argument("--people-burst", type=float, default=10.0, help="a client address's burst (default 10)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                   help="the address of a reverse proxy in front of the gateway whose X-Forwarded-For header "
                   "names the client (repeat for several); from any other peer the header is ignored")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def _address(text: str) -> str:
    """An IP address, normalised (so ::1 and 0:0:0:0:0:0:0:1 compare equal to what the socket reports)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValidationError(f"--trusted-proxy {text!r} is not an IP address") from None


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from ..gateway.server import ServeOptions, serve

    options = ServeOptions(
        host=args.host,
        port=args.port,
        workers=args.workers,
        token_ttl=args.token_ttl,
        rate=args.rate_limit,
        burst=args.burst,
        writer_idle=args.writer_idle,
        access_log=args.access_log,
        people_rate=args.people_rate,
        people_burst=args.people_burst,
        trusted_proxies=frozenset(_address(a) for a in args.trusted_proxy),
    )
    return serve(args.data, options)
