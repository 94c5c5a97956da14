"""Commands that change the platform: each opens the Engine (the log's single writer)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..datadir import DataDir
from ..domain import certs
from ..domain.ids import check_actor_id
from ..engine import Engine, feed_items
from ..errors import MykeyError
from ..fs import write_unique
from ..index.readmodel import ReadModel
from ..log.backend import log_initialized, open_log
from .output import EXIT_REFUSED, Output
from .progress import bar


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    def cmd(parent, name: str, help: str, func, **kw):
        p = parent.add_parser(name, help=help, parents=[common], **kw)
        p.set_defaults(func=func)
        return p

    def group(name: str, help: str):
        p = sub.add_parser(name, help=help, parents=[common])
        g = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        g.required = True
        return g

    p = cmd(sub, "init", "create the data directory (log, index, audit key) and trust anchors", cmd_init)
    p.add_argument("--trust-anchor", action="append", default=[], metavar="CA.pem", help="root CA certificate (repeatable)")

    g = group("trust", "manage trusted CA certificates")
    p = cmd(g, "add", "trust a root CA (or --intermediate CA) certificate", cmd_trust_add)
    p.add_argument("cert", metavar="CA.pem")
    p.add_argument("--intermediate", action="store_true", help="an intermediate CA that chains to a trusted root")

    g = group("business", "register and deactivate businesses")
    p = cmd(g, "add", "register a business and issue its business ID", cmd_business_add)
    p.add_argument("--name", required=True)
    p.add_argument("--municipality", required=True, help="local government code, e.g. 131016")
    p.add_argument("--numeric-service-ids", action="store_true",
                   help="declare that this business's own service IDs are 12-digit numbers")
    p = cmd(g, "deactivate", "deactivate a business (its terminals stop authenticating)", cmd_business_deactivate)
    p.add_argument("business")
    p.add_argument("--reason", required=True)

    g = group("terminal", "enrol and revoke terminals")
    p = cmd(g, "enrol", "enrol a terminal; writes its private key file (mode 0600)", cmd_terminal_enrol)
    p.add_argument("business")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the key (default DATA/terminal-keys)")
    p = cmd(g, "revoke", "revoke a terminal", cmd_terminal_revoke)
    p.add_argument("terminal")
    p.add_argument("--reason", default="revoked")

    p = cmd(sub, "create", "create a MyKey ID from a certificate, signing the challenge locally", cmd_create)
    p.add_argument("--cert", required=True, metavar="USER.pem", help="user certificate (PEM; may include intermediates)")
    p.add_argument("--key", required=True, metavar="USER.key", help="its private key (as a card reader would use)")
    p.add_argument("--id", default=None, help="the MyKey ID to ask for (default: a random free one)")

    p = cmd(sub, "suggest", "print free MyKey ID candidates", cmd_suggest)
    p.add_argument("-n", type=int, default=5)

    p = cmd(sub, "show", "show a MyKey ID's state and where it is linked (for its holder)", cmd_show)
    p.add_argument("mykey")

    g = group("service", "register, import, link and unlink service IDs")
    p = cmd(g, "import", "bulk-register service IDs from CSV (service_id,customer_id); all or nothing", cmd_service_import)
    p.add_argument("business")
    p.add_argument("file", metavar="FILE.csv")
    p = cmd(g, "register", "register one service ID, unlinked", cmd_service_register)
    p.add_argument("business")
    p.add_argument("service_id")
    p.add_argument("--customer", default=None, help="the business's opaque customer ID")
    p = cmd(g, "link", "link a service ID to a MyKey ID (registering it on first use)", cmd_service_link)
    p.add_argument("business")
    p.add_argument("service_id")
    p.add_argument("mykey")
    p = cmd(g, "unlink", "unlink a service ID from its MyKey ID", cmd_service_unlink)
    p.add_argument("business")
    p.add_argument("service_id")

    for name, helptext in (("suspend", "suspend a MyKey ID"), ("invalidate", "invalidate a MyKey ID (final)")):
        p = cmd(sub, name, helptext, cmd_transition)
        p.add_argument("mykey")
        p.add_argument("--reason", required=True)
    p = cmd(sub, "resume", "resume a suspended MyKey ID", cmd_transition)
    p.add_argument("mykey")

    p = cmd(sub, "renew", "move a MyKey ID to a renewed certificate (same subject)", cmd_renew)
    p.add_argument("mykey")
    p.add_argument("--cert", required=True, metavar="NEW.pem")
    p.add_argument("--key", required=True, metavar="NEW.key")

    g = group("crl", "certificate revocation lists")
    p = cmd(g, "apply", "verify a CRL and suspend MyKey IDs whose certificate it revokes", cmd_crl_apply)
    p.add_argument("file", metavar="FILE")

    p = cmd(sub, "feed", "print MyKey-level changes for a linked system, from its last acknowledged position", cmd_feed)
    p.add_argument("consumer")
    p.add_argument("--after", type=int, default=None, help="start after this sequence number instead")
    p.add_argument("--follow", action="store_true", help="keep printing changes as they happen")
    p.add_argument("--ack", action="store_true", help="acknowledge what was printed (needs the writer lock)")


def open_engine(args: argparse.Namespace) -> Engine:
    data = DataDir(args.data)
    if not log_initialized(data):
        raise MykeyError(f"no mykey data in {data.root}; run `mykey init` or pass --data DIR")
    return Engine.open(data.root, checkpoint_on_close=True)


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    existed = log_initialized(data)
    with Engine.open(data.root, checkpoint_on_close=True) as e:
        added = []
        for path in args.trust_anchor:
            added += e.add_trust_anchor(Path(path).read_bytes())
        last = e.log.last_seq
    what = "opened existing" if existed else "created"
    out.result(f"{what} {data.root} (log at sequence {last}); {len(added)} trust anchor(s) added",
               data=str(data.root), trust_anchors=added, last_seq=last)
    return 0


def cmd_trust_add(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        added = e.add_trust_anchor(Path(args.cert).read_bytes(), intermediate=args.intermediate)
    kind = "intermediate" if args.intermediate else "trust anchor"
    out.result(f"added {len(added)} {kind}(s)" if added else "already trusted: nothing added", fingerprints=added)
    return 0


def cmd_business_add(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        bid = e.register_business(args.name, args.municipality, numeric_service_ids=args.numeric_service_ids)
    out.result(f"registered business {bid}", business_id=bid)
    return 0


def cmd_business_deactivate(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        e.deactivate_business(args.business, args.reason)
    out.result(f"deactivated business {args.business}", business_id=args.business)
    return 0


def cmd_terminal_enrol(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    directory = Path(args.out) if args.out else data.terminal_keys
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".probe-{os.getpid()}"
    probe.write_bytes(b"")  # fail before enrolling if the key cannot be written
    probe.unlink()
    with open_engine(args) as e:
        cred = e.enrol_terminal(args.business)
    path = write_unique(directory, cred.terminal_id, ".key", cred.private_key_pem)  # never over an existing file
    out.result(f"enrolled terminal {cred.terminal_id}; private key written to {path} (mode 0600)",
               terminal_id=cred.terminal_id, business_id=cred.business_id, key_file=str(path))
    return 0


def cmd_terminal_revoke(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        e.revoke_terminal(args.terminal, args.reason)
    out.result(f"revoked terminal {args.terminal}", terminal_id=args.terminal)
    return 0


def _credential(cert_path: str, key_path: str) -> tuple[bytes, Callable[[bytes], bytes]]:
    """The certificate bytes and a signer standing in for the card (its key file)."""
    cert_bytes = Path(cert_path).read_bytes()
    certs.load_certificates(cert_bytes)  # refuse a file that holds no certificate before using the key
    key = load_pem_private_key(Path(key_path).read_bytes(), None)
    return cert_bytes, lambda challenge: certs.sign_challenge(key, challenge)


def cmd_create(args: argparse.Namespace, out: Output) -> int:
    cert_bytes, sign = _credential(args.cert, args.key)
    with open_engine(args) as e:
        challenge = e.new_challenge()
        mykey_id = e.create_mykey(cert_bytes, sign(challenge), challenge, requested_id=args.id)
    out.result(f"created MyKey ID {mykey_id}", mykey_id=mykey_id)
    return 0


def cmd_suggest(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        ids = e.suggest_mykey_ids(args.n)
    out.result(" ".join(ids), candidates=ids)
    return 0


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        view = e.mykey(args.mykey)
    data = asdict(view)
    data["state"] = view.state.label
    reason = f" ({view.reason})" if view.reason else ""
    out.result(
        f"{view.mykey_id} {view.state.label}{reason}; certificate serial {view.cert_serial}; "
        f"linked at {', '.join(view.businesses) or 'no business'}",
        **data,
    )
    return 0


def cmd_service_import(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e, bar("read CSV", None, enabled=not out.json_mode, unit="row") as b:
        n = e.import_service_ids_csv(args.business, args.file, progress=b.update)
    out.result(f"registered {n} service IDs for {args.business}", business_id=args.business, registered=n)
    return 0


def cmd_service_register(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        e.register_service_ids(args.business, [(args.service_id, args.customer)])
    out.result(f"registered service ID {args.service_id} for {args.business}", business_id=args.business)
    return 0


def cmd_service_link(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        e.link_service_id(args.business, args.service_id, args.mykey)
    out.result(f"linked {args.business} service ID {args.service_id} to {args.mykey}")
    return 0


def cmd_service_unlink(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        e.unlink_service_id(args.business, args.service_id)
    out.result(f"unlinked {args.business} service ID {args.service_id}")
    return 0


def cmd_transition(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        state = e.transition(args.mykey, args.command, getattr(args, "reason", ""))
    out.result(f"{args.mykey} is now {state.label}", mykey_id=args.mykey, state=state.label)
    return 0


def cmd_renew(args: argparse.Namespace, out: Output) -> int:
    cert_bytes, sign = _credential(args.cert, args.key)
    with open_engine(args) as e:
        challenge = e.new_challenge("renew")
        e.renew_certificate(args.mykey, cert_bytes, sign(challenge), challenge)
        state = e.mykey(args.mykey).state
    serial = certs.load_certificates(cert_bytes)[0].serial_number
    out.result(f"renewed the certificate of {args.mykey} (serial {serial:x}); it is {state.label}",
               mykey_id=args.mykey, state=state.label)
    return 0


def cmd_crl_apply(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        report = e.apply_crl(Path(args.file).read_bytes())
    if report.already_applied:
        line = f"CRL {report.number} of {report.issuer} was already applied; nothing changed"
    else:
        line = (f"applied CRL {report.number} of {report.issuer}: {report.entries} entries, "
                f"{report.newly_revoked} newly revoked, {len(report.suspended)} MyKey ID(s) suspended")
    out.result(line, **asdict(report))
    return 0


def _feed_position(data: DataDir, consumer: str) -> int:
    """The consumer's acknowledged position, read from the live index (no writer lock needed)."""
    model = ReadModel.open_live(data)
    if model is None:
        return 0
    with model, model.snapshot() as state:
        return state.feed_position(consumer)


def cmd_feed(args: argparse.Namespace, out: Output) -> int:
    check_actor_id(args.consumer, "consumer")
    data = DataDir(args.data)
    if not log_initialized(data):
        out.refused(f"no mykey data in {data.root}; run `mykey init` or pass --data DIR")
        return EXIT_REFUSED
    start = (_feed_position(data, args.consumer) if args.after is None else args.after) + 1
    with open_log(data, readonly=True) as log:
        envs = log.follow(start) if args.follow else log.read(start)
        last = None
        for item in feed_items(envs):
            out.line(f"{item.seq} {item.time.isoformat(timespec='seconds')} {item.change} {item.mykey_id}"
                     + (f" {item.state}" if item.state else ""))
            out.record({"seq": item.seq, "time": item.time.isoformat(), "change": item.change,
                        "mykey_id": item.mykey_id, "state": item.state})
            last = item.seq
        upto = log.refresh() if last is None else last
    if args.ack:
        with open_engine(args) as e:
            e.ack(args.consumer, max(upto, e.feed_position(args.consumer)))
        out.line(f"acknowledged up to {upto}")
    return 0
