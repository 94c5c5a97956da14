"""`mykey client`: the reference terminal client, talking to a running gateway over HTTP."""

from __future__ import annotations

import argparse

from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "client",
        help="talk to a mykey gateway as a terminal (the reference client)",
        parents=[common],
        description="The reference terminal client: signs in to the gateway with the terminal's key, then asks.",
    )
    p.add_argument("--gateway", required=True, metavar="URL", help="the gateway's base URL, e.g. http://127.0.0.1:8750")
    p.add_argument("--terminal", required=True, metavar="TERMINAL_ID", help="this terminal's ID, e.g. A0001-T0001")
    p.add_argument("--key", required=True, metavar="TERMINAL.key", help="this terminal's private key file (PEM)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the gateway (default 10)")
    g = p.add_subparsers(dest="client_command", metavar="SUBCOMMAND")
    g.required = True
    s = g.add_parser("status", help="print the status of service IDs, one per line", parents=[common])
    s.add_argument("service_ids", nargs="+", metavar="SERVICE_ID")
    s.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from ..client.gateway import GatewayClient

    with GatewayClient(args.gateway, args.terminal, args.key, timeout=args.timeout) as gw:
        answers = gw.statuses(args.service_ids) if len(args.service_ids) > 1 else [
            (args.service_ids[0], gw.status(args.service_ids[0]))
        ]
    for sid, status in answers:
        out.line(f"{sid} {status}")
        out.record({"service_id": sid, "status": status})
    return 0
