"""`mykey client`: the reference client, talking to a running gateway over HTTP.

As a terminal (``--terminal ID --key TERMINAL.key``): status lookups, identify and first-use
links by a person's card, bulk registration. As a person (no terminal): their own history,
its proofs checked offline against the platform's published checkpoint key. The card is
simulated by a certificate file and its key file (``--cert USER.pem --card-key USER.key``).
"""

from __future__ import annotations

import argparse

from ..errors import ValidationError
from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "client",
        help="talk to a mykey gateway as a terminal, or as a person (the reference client)",
        parents=[common],
        description="The reference client: a terminal signs in to the gateway with its key, then asks; "
        "a person asks for their own history with their card (no terminal).",
    )
    p.add_argument("--gateway", metavar="URL", help="the gateway's base URL, e.g. http://127.0.0.1:8750 (all but "
                   "`status-list check`, which works offline)")
    p.add_argument("--terminal", metavar="TERMINAL_ID", help="this terminal's ID, e.g. A0001-T0001 (terminal commands)")
    p.add_argument("--key", metavar="TERMINAL.key", help="this terminal's private key file, PEM (terminal commands)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway (default 30)")
    g = p.add_subparsers(dest="client_command", metavar="SUBCOMMAND")
    g.required = True
    s = g.add_parser("status", help="print the status of service IDs, one per line", parents=[common])
    s.add_argument("service_ids", nargs="+", metavar="SERVICE_ID")
    s.set_defaults(func=cmd_status)
    s = g.add_parser("identify", help="who is at the terminal: this business's service IDs of the card's holder",
                     parents=[common])
    _card_args(s)
    s.set_defaults(func=cmd_identify)
    s = g.add_parser("link", help="link a service ID to the card's holder (first-use registration)", parents=[common])
    s.add_argument("service_id", metavar="SERVICE_ID")
    _card_args(s)
    s.set_defaults(func=cmd_link)
    s = g.add_parser("register", help="bulk-register service IDs from a CSV file (header service_id,customer_id)",
                     parents=[common])
    s.add_argument("file", metavar="FILE.csv")
    s.set_defaults(func=cmd_register)
    s = g.add_parser("history", help="a person's own history (no terminal), every proof checked offline",
                     parents=[common])
    _card_args(s)
    s.add_argument("--checkpoint-key", required=True, metavar="VKEY",
                   help="the platform's published checkpoint verifier key (a copy of DATA/keys/checkpoint.vkey, "
                   "or its text); never take it from the gateway you are checking")
    s.set_defaults(func=cmd_history)
    s = g.add_parser("status-list", help="fetch this business's signed status list; check service IDs offline",
                     parents=[common])
    sl = s.add_subparsers(dest="status_list_command", metavar="SUBCOMMAND")
    sl.required = True
    f = sl.add_parser("fetch", parents=[common], help="save the list, its key set and the positions of service IDs",
                      description="Writes FILE (the token), FILE.jwks.json (the pinned key set) and FILE.idx.json "
                      "(the positions of the SERVICE_IDs named, merged with those saved before). A list not signed "
                      "by the pinned key set, or a gateway serving another key set, is refused and nothing is "
                      "written.")
    f.add_argument("--out", required=True, metavar="FILE", help="where to keep the list")
    f.add_argument("--jwks", metavar="FILE", help="the platform's status-list key set, obtained out of band: the "
                   "list must be signed by it, and it is pinned as FILE.jwks.json (default: the key set pinned by "
                   "an earlier fetch, or at the first fetch the one the gateway serves)")
    f.add_argument("service_ids", nargs="*", metavar="SERVICE_ID", help="service IDs whose positions to keep")
    f.set_defaults(func=cmd_status_list_fetch)
    c = sl.add_parser("check", parents=[common], help="answer service IDs from a fetched list, offline",
                      description="Verifies the list's signature (against FILE.jwks.json or --jwks), typ, sub and "
                      "exp, then reads each service ID's entry at its position (from FILE.idx.json, or given as "
                      "SERVICE_ID=IDX). An expired or wrongly signed list is refused (exit 1).")
    c.add_argument("file", metavar="FILE")
    c.add_argument("service_ids", nargs="+", metavar="SERVICE_ID[=IDX]")
    c.add_argument("--jwks", metavar="FILE", help="a key set obtained out of band (default FILE.jwks.json)")
    c.set_defaults(func=cmd_status_list_check)


def _card_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--cert", required=True, metavar="USER.pem", help="the card's certificate (PEM, may carry intermediates)")
    s.add_argument("--card-key", required=True, metavar="USER.key", help="the card's private key (stands in for the card)")


def _card(args: argparse.Namespace):
    from ..client.gateway import Card
    from .engine_cmds import _credential

    certificate, sign = _credential(args.cert, args.card_key)
    return Card(certificate, sign)


def _terminal(args: argparse.Namespace):
    from ..client.gateway import GatewayClient

    _gateway(args)
    if not args.terminal or not args.key:
        raise ValidationError(f"`mykey client {args.client_command}` runs as a terminal: pass --terminal ID --key FILE")
    return GatewayClient(args.gateway, args.terminal, args.key, timeout=args.timeout)


def _gateway(args: argparse.Namespace) -> str:
    if not args.gateway:
        raise ValidationError(f"`mykey client {args.client_command}` talks to a gateway: pass --gateway URL")
    return args.gateway


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    with _terminal(args) as gw:
        answers = gw.status_answers(args.service_ids) if len(args.service_ids) > 1 else [
            gw.status_answer(args.service_ids[0])
        ]
    for a in answers:
        out.line(f"{a.service_id} {a.status}")
        out.record({"service_id": a.service_id, "status": a.status, "idx": a.idx})
    return 0


def cmd_identify(args: argparse.Namespace, out: Output) -> int:
    card = _card(args)
    with _terminal(args) as gw:
        found = gw.identify(card)
        business = gw.business_id
    if not found:
        out.result(f"the card's holder has no service ID at {business}", business_id=business, service_ids=[])
        return 0
    for sid, status in found:
        out.line(f"{sid} {status}")
    out.record({"business_id": business, "service_ids": [{"service_id": s, "status": st} for s, st in found]})
    return 0


def cmd_link(args: argparse.Namespace, out: Output) -> int:
    card = _card(args)
    with _terminal(args) as gw:
        status = gw.link(args.service_id, card)
        business = gw.business_id
    out.result(f"linked service ID {args.service_id} of {business} to the card's holder ({status})",
               business_id=business, service_id=args.service_id, status=status)
    return 0


def cmd_register(args: argparse.Namespace, out: Output) -> int:
    with _terminal(args) as gw:
        n = gw.register_service_ids(args.file)
        business = gw.business_id
    out.result(f"registered {n} service IDs for {business}", business_id=business, registered=n)
    return 0


def cmd_history(args: argparse.Namespace, out: Output) -> int:
    from ..audit.history import format_history
    from ..client.gateway import PersonClient, check_history

    card = _card(args)
    with PersonClient(_gateway(args), timeout=args.timeout) as me:
        history = me.history(card)
    checked = check_history(history, args.checkpoint_key)
    proven = sum(1 for e in history["events"] if e.get("proof"))
    summary = (f"{proven} of {len(history['events'])} events proven against the signed checkpoint, checked offline "
               f"with {args.checkpoint_key}")
    if out.json_mode:
        out.result(summary, **history, checked=checked)
        return 0
    for line in format_history(history):
        out.line(line)
    out.line(summary)
    return 0


def cmd_status_list_fetch(args: argparse.Namespace, out: Output) -> int:
    import json
    from pathlib import Path

    from ..client.statuslist import save
    from ..errors import StatusListFormatError

    with _terminal(args) as gw:
        token, etag = gw.status_list()
        jwks = gw.jwks()
        positions = gw.positions(args.service_ids) if args.service_ids else {}
        business = gw.business_id
    assert token is not None
    pinned = None
    if args.jwks:
        try:
            pinned = json.loads(Path(args.jwks).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise StatusListFormatError(f"cannot read the key set {args.jwks} ({exc}); pass the platform's "
                                        "published status-list key set (a JWKS JSON file)") from None
    known = save(Path(args.out), token, jwks, business, positions, pinned=pinned)
    missing = sorted(sid for sid, idx in positions.items() if idx is None)
    note = f"; no position for {', '.join(missing)} (unknown to {business})" if missing else ""
    out.result(f"saved the status list of {business} ({len(token)} bytes) to {args.out}; {known} positions known"
               f"{note}", business_id=business, out=args.out, bytes=len(token), etag=etag, positions=known,
               without_position=missing)
    return 0


def cmd_status_list_check(args: argparse.Namespace, out: Output) -> int:
    from pathlib import Path

    from ..client.statuslist import check

    verified, answers = check(Path(args.file), args.service_ids, jwks_path=Path(args.jwks) if args.jwks else None)
    for a in answers:
        out.line(f"{a.service_id} {a.status}" + ("" if a.idx is None else f" (idx {a.idx})"))
        out.record({"service_id": a.service_id, "status": a.status, "idx": a.idx, "list": verified.sub,
                    "iat": verified.iat, "exp": verified.exp})
    return 0
