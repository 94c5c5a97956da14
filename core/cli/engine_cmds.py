"""Commands that change the platform: each opens the Engine (the log's single writer)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from ..client import keys as client_keys
from ..datadir import DataDir
from ..domain import certs
from ..domain.ids import check_actor_id
from ..engine import Engine
from ..engine.crl_sync import CrlSource, parse_duration, run_every, sync_round
from ..engine.feed import read_live_feed
from ..errors import MykeyError, TerminalKeyError, ValidationError
from ..log.backend import log_initialized
from .files import created_or_removed, load_card_key, trust_anchor_bundle
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
    p = cmd(g, "remove", "stop trusting a CA; MyKey IDs under it are suspended as under a revoked CA", cmd_trust_remove)
    p.add_argument("ca", metavar="FINGERPRINT|CA.pem", help="the CA's SHA-256 fingerprint (hex, or its first 8+ digits) or certificate file")
    p.add_argument("--reason", required=True)
    p = cmd(g, "successor", "let renewals move MyKey IDs from CA OLD's certificates to CA NEW's", cmd_trust_successor)
    p.add_argument("old", metavar="OLD", help="fingerprint of a trusted CA, or a CA certificate file")
    p.add_argument("new", metavar="NEW", help="fingerprint or certificate file of a trusted CA")
    p.add_argument("--reason", required=True)
    cmd(g, "list", "list the trusted CA certificates (fingerprint, role, subject, expiry)", cmd_trust_list)

    g = group("business", "register and deactivate businesses")
    p = cmd(g, "add", "register a business and issue its business ID", cmd_business_add)
    p.add_argument("--name", required=True)
    p.add_argument("--municipality", required=True, help="local government code, e.g. 131016")
    p.add_argument("--numeric-service-ids", action="store_true",
                   help="declare that this business's own service IDs are 12-digit numbers")
    p.add_argument("--no-first-use", dest="first_use", action="store_false",
                   help="no registration at first use: a person's link is refused for a service ID the business "
                   "has not registered (it registers its IDs itself, e.g. in bulk)")
    p = cmd(g, "deactivate", "deactivate a business (its terminals stop authenticating)", cmd_business_deactivate)
    p.add_argument("business")
    p.add_argument("--reason", required=True)

    g = group("terminal", "make terminal keys (on the terminal), enrol and revoke terminals")
    p = cmd(g, "keygen", "on the terminal: make its key pair, FILE (private, mode 0600) and FILE.pub", cmd_terminal_keygen)
    p.add_argument("--out", required=True, metavar="FILE", help="the private key file to create (never replaced)")
    p = cmd(g, "enrol", "enrol a terminal by its public key (FILE.pub from `terminal keygen`)", cmd_terminal_enrol)
    p.add_argument("business")
    p.add_argument("--public-key", required=True, metavar="FILE.pub", help="the terminal's public key")
    p.add_argument("--can-register", action="store_true",
                   help="allow this terminal to bulk-register its business's service IDs")
    p = cmd(g, "revoke", "revoke a terminal", cmd_terminal_revoke)
    p.add_argument("terminal")
    p.add_argument("--reason", default="revoked")

    p = cmd(sub, "create", "create a MyKey ID from a certificate, signing the challenge locally", cmd_create)
    p.add_argument("--cert", required=True, metavar="USER.pem", help="user certificate (PEM; may include intermediates)")
    p.add_argument("--key", required=True, metavar="USER.key", help="its private key (as a card reader would use)")
    p.add_argument("--id", default=None, help="the MyKey ID to ask for (default: a random free one)")
    _crl_policy_flags(p)

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
    p = cmd(g, "link", "link a service ID to the person: by their card, or in person with a reason "
            "(registering it on first use)", cmd_service_link)
    p.add_argument("business")
    p.add_argument("service_id")
    p.add_argument("--cert", metavar="USER.pem", help="the person's card certificate (PEM; may include intermediates)")
    p.add_argument("--card-key", metavar="USER.key", help="its private key (as the card reader would use it)")
    p.add_argument("--mykey", metavar="ID", help="with --in-person: the MyKey ID, after checking the person in person")
    p.add_argument("--in-person", action="store_true", help="no card: link on your attributed decision (needs --reason)")
    p.add_argument("--reason", help="with --in-person: how the person was checked (recorded)")
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
    p.add_argument("--approved-by-operator", action="store_true",
                   help="the operator (this OS account) approves the renewal after an in-person check, although "
                        "the current certificate is still usable (or the subject changed); needs --reason")
    p.add_argument("--reason", default=None, help="why the operator approves (recorded)")
    _crl_policy_flags(p)

    g = group("crl", "certificate revocation lists")
    p = cmd(g, "apply", "verify a CRL and suspend MyKey IDs whose certificate it revokes", cmd_crl_apply)
    p.add_argument("file", metavar="FILE")
    p = cmd(g, "sync", "fetch the CRL of every trusted CA (URL or directory) and apply what is new", cmd_crl_sync)
    p.add_argument("--from", dest="source", required=True, metavar="URL|DIR",
                   help="base URL or directory holding <CA key id in hex>.crl; CRL distribution points of the "
                        "CA certificates are fetched too (see docs/pki.md)")
    p.add_argument("--every", default=None, metavar="DURATION",
                   help="repeat every DURATION (e.g. 6h) until Ctrl-C or SIGTERM")

    g = group("consumer", "register linked systems that read the sync feed")
    p = cmd(g, "add", "register a feed consumer that sees the people linked in one municipality", cmd_consumer_add)
    p.add_argument("consumer", metavar="NAME")
    p.add_argument("--municipality", required=True, help="local government code, e.g. 131016")

    p = cmd(sub, "feed", "print a registered consumer's feed (pseudonyms), from its last acknowledged position",
            cmd_feed)
    p.add_argument("consumer")
    p.add_argument("--after", type=int, default=None, help="start after this sequence number instead")
    p.add_argument("--follow", action="store_true", help="keep printing changes as they happen")
    p.add_argument("--ack", action="store_true", help="acknowledge what was printed (needs the writer lock)")


def _crl_policy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept-stale-crl", action="store_true",
                   help="accept a certificate although its issuer's latest applied CRL is past its nextUpdate")
    p.add_argument("--crl-max-age", default="7d", metavar="DURATION",
                   help="a CRL without nextUpdate is stale this long after it was issued (default 7d)")
    p.add_argument("--require-crl", action="store_true",
                   help="refuse a certificate whose issuing CA has no applied CRL at all")


def _crl_policy(args: argparse.Namespace) -> certs.CrlPolicy | None:
    """The CRL freshness policy the command's flags ask for (None: the engine's default)."""
    if not hasattr(args, "crl_max_age"):
        return None
    return certs.CrlPolicy(refuse_stale=not args.accept_stale_crl, require_crl=args.require_crl,
                           max_age=timedelta(seconds=parse_duration(args.crl_max_age)))


def open_engine(args: argparse.Namespace) -> Engine:
    data = DataDir(args.data)
    if not log_initialized(data):
        raise MykeyError(f"no mykey data in {data.root}; run `mykey init` or pass --data DIR")
    return Engine.open(data.root, checkpoint_on_close=True, crl_policy=_crl_policy(args))


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    bundle = trust_anchor_bundle(args.trust_anchor)  # every file checked before anything is created
    existed = log_initialized(data)
    all_or_nothing = nullcontext() if existed else created_or_removed(data.root)
    with all_or_nothing, Engine.open(data.root, checkpoint_on_close=True) as e:
        added = e.add_trust_anchor(bundle) if bundle else []  # one batch
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


def _ca_arg(value: str) -> bytes | str:
    """A CA named on the command line: a certificate file's bytes, or a fingerprint."""
    return Path(value).read_bytes() if Path(value).is_file() else value


def cmd_trust_remove(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        removal = e.remove_trust_anchor(_ca_arg(args.ca), args.reason)
    kind = "intermediate" if removal.intermediate else "trust anchor"
    out.result(f"removed {kind} {removal.fingerprint}; {len(removal.suspended)} MyKey ID(s) suspended",
               **asdict(removal))
    return 0


def cmd_trust_successor(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        added = e.designate_successor_ca(_ca_arg(args.old), _ca_arg(args.new), args.reason)
    out.result("successor designated" if added else "already designated: nothing changed", designated=added)
    return 0


def cmd_trust_list(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        cas = e.trusted_cas()
    for role, ders in (("anchor", cas.anchors), ("intermediate", cas.intermediates)):
        for der in ders:
            c = certs.load_certificate(der)
            ref = certs.cert_ref(c)
            row = {"fingerprint": ref.fingerprint.hex(), "role": role, "subject": c.subject.rfc4514_string(),
                   "key_id": ref.key_id.hex(), "not_after": c.not_valid_after_utc.isoformat()}
            out.line(f"{row['fingerprint']} {role} {row['subject']!r} key id {row['key_id']} until {row['not_after']}")
            out.record(row)
    return 0


def cmd_business_add(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        bid = e.register_business(args.name, args.municipality, numeric_service_ids=args.numeric_service_ids,
                                  first_use_registration=args.first_use)
    out.result(f"registered business {bid}", business_id=bid, first_use_registration=args.first_use)
    return 0


def cmd_business_deactivate(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        e.deactivate_business(args.business, args.reason)
    out.result(f"deactivated business {args.business}", business_id=args.business)
    return 0


def cmd_terminal_keygen(args: argparse.Namespace, out: Output) -> int:
    path = Path(args.out)
    data = args.data.resolve()
    if path.resolve() == data or data in path.resolve().parents:
        raise TerminalKeyError(
            f"{path} is inside the data directory {args.data}: a terminal's private key never lives on the "
            "platform. Run `mykey terminal keygen` on the terminal and give the operator only FILE.pub"
        )
    private, public = client_keys.write_key_pair(path)
    out.result(f"wrote the private key {private} (mode 0600) and the public key {public}; keep the private key "
               f"on this terminal and have {public} enrolled with `mykey terminal enrol BUSINESS --public-key`",
               key_file=str(private), public_key_file=str(public))
    return 0


def cmd_terminal_enrol(args: argparse.Namespace, out: Output) -> int:
    public_key = Path(args.public_key).read_bytes()
    with open_engine(args) as e:
        terminal_id = e.enrol_terminal(args.business, public_key, can_register=args.can_register)
    out.result(f"enrolled terminal {terminal_id}", terminal_id=terminal_id, business_id=args.business,
               can_register=args.can_register)
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
    key = load_card_key(key_path)
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
    card = args.cert is not None or args.card_key is not None
    if args.in_person:
        if card or not args.mykey or not args.reason:
            raise ValidationError("--in-person links --mykey ID with a --reason, and takes no card (--cert, --card-key)")
        with open_engine(args) as e:
            status = e.link_in_person(args.business, args.service_id, args.mykey, args.reason)
        out.result(f"linked {args.business} service ID {args.service_id} to {args.mykey} in person ({status.label})",
                   business_id=args.business, service_id=args.service_id, status=status.label, authority="in-person")
        return 0
    if not (args.cert and args.card_key) or args.mykey or args.reason:
        raise ValidationError(
            "link with the person's card (--cert USER.pem --card-key USER.key), or in person "
            "(--mykey ID --in-person --reason R); the card names its MyKey ID itself"
        )
    cert_bytes, sign = _credential(args.cert, args.card_key)
    with open_engine(args) as e:
        challenge = e.link_challenge(args.business, args.service_id)
        status = e.link_with_card(args.business, args.service_id, cert_bytes, sign(challenge), challenge)
    out.result(f"linked {args.business} service ID {args.service_id} to the card's holder ({status.label})",
               business_id=args.business, service_id=args.service_id, status=status.label, authority="card")
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
    if args.approved_by_operator and not (args.reason or "").strip():
        raise MykeyError("--approved-by-operator needs --reason R: say why the renewal is approved")
    approval = args.reason if args.approved_by_operator else None
    cert_bytes, sign = _credential(args.cert, args.key)
    with open_engine(args) as e:
        challenge = e.new_challenge("renew")
        e.renew_certificate(args.mykey, cert_bytes, sign(challenge), challenge, operator_approval=approval)
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


def cmd_crl_sync(args: argparse.Namespace, out: Output) -> int:
    source = CrlSource.parse(args.source)
    interval = parse_duration(args.every) if args.every else None
    data = DataDir(args.data)
    if not log_initialized(data):
        raise MykeyError(f"no mykey data in {data.root}; run `mykey init` or pass --data DIR")

    def one_round() -> None:
        report = sync_round(data.root, source, lambda: open_engine(args))
        for item in report.items:
            if item.outcome in ("applied", "failed"):
                out.line(f"{item.outcome}: {item.where} ({item.ca}): {item.detail}")
        out.result(report.summary(), items=[asdict(i) for i in report.items], suspended=report.suspended)
        sys.stdout.flush()

    if interval is None:
        one_round()
        return 0
    stop = threading.Event()

    def guarded_round() -> None:
        try:
            one_round()
        except (MykeyError, OSError) as exc:  # e.g. another command holds the writer lock: try next time
            out.refused(f"this round failed ({exc}); retrying in {args.every}", error=type(exc).__name__)
            sys.stderr.flush()

    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        rounds = run_every(guarded_round, interval, stop)
    except KeyboardInterrupt:
        rounds = None
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.line(f"stopped after {rounds} round(s)" if rounds is not None else "stopped")
    return 0


def cmd_consumer_add(args: argparse.Namespace, out: Output) -> int:
    with open_engine(args) as e:
        e.register_consumer(args.consumer, args.municipality)
    out.result(f"registered feed consumer {args.consumer} (municipality {args.municipality})",
               consumer=args.consumer, municipality=args.municipality)
    return 0


FOLLOW_POLL_SECONDS = 0.5


def cmd_feed(args: argparse.Namespace, out: Output) -> int:
    check_actor_id(args.consumer, "consumer")
    data = DataDir(args.data)
    if not log_initialized(data):
        out.refused(f"no mykey data in {data.root}; run `mykey init` or pass --data DIR")
        return EXIT_REFUSED
    after = args.after
    while True:
        items, upto = read_live_feed(data, args.consumer, after)  # the live index, read-only: no writer lock
        for item in items:
            out.line(f"{item.seq} {item.time.isoformat(timespec='seconds')} {item.change} {item.pseudonym}"
                     + (f" {item.state}" if item.state else ""))
            out.record({"seq": item.seq, "time": item.time.isoformat(), "change": item.change,
                        "pseudonym": item.pseudonym, "state": item.state})
        after = upto
        if not args.follow:
            break
        time.sleep(FOLLOW_POLL_SECONDS)
    if args.ack:
        with open_engine(args) as e:
            e.ack(args.consumer, max(upto, e.feed_position(args.consumer)))
        out.line(f"acknowledged up to {upto}")
    return 0
