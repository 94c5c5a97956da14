"""`mykey log ...`: inspect, verify and repair the event log."""

from __future__ import annotations

import argparse

import msgspec

from ..audit.checkpoints import acknowledged_size
from ..datadir import DataDir
from ..log.backend import file_log_dir, open_log
from ..log.filelog import FileLog
from ..log.verify import verify_log
from .output import EXIT_REFUSED, Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("log", help="inspect, verify and repair the event log", parents=[common])
    lsub = p.add_subparsers(dest="log_command", metavar="SUBCOMMAND")
    lsub.required = True

    v = lsub.add_parser("verify", help="check every record's CRC, framing, sequence and decoding", parents=[common])
    v.set_defaults(func=cmd_verify)

    r = lsub.add_parser(
        "repair",
        help="open the log as the writer and run recovery (needs the writer lock); prints what was cut",
        parents=[common],
    )
    r.add_argument(
        "--cut-damaged-tail",
        action="store_true",
        help="also cut a complete but damaged final batch (its events are lost; its bytes are kept in log/torn/)",
    )
    r.set_defaults(func=cmd_repair)

    s = lsub.add_parser("show", help="print events (one line each, or JSON lines)", parents=[common])
    s.add_argument("--from", dest="from_seq", type=int, default=1, help="first sequence number (default 1)")
    s.add_argument("--to", dest="to_seq", type=int, default=None, help="last sequence number")
    s.add_argument("--follow", action="store_true", help="keep printing new events as they are appended")
    s.set_defaults(func=cmd_show)


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    log_dir = file_log_dir(DataDir(args.data))
    if not log_dir.is_dir():
        out.refused(f"no log at {log_dir}; pass --data DIR or run `mykey init`")
        return EXIT_REFUSED
    report = verify_log(log_dir)
    return out.verdict(
        report.notes,
        None if report.problem is None else f"log damaged at {report.problem}",
        f"log OK: {report.events} events in {report.batches} batches, {report.segments} segments, "
        f"last sequence {report.last_seq}",
        **report.to_dict(),
    )


def cmd_repair(args: argparse.Namespace, out: Output) -> int:
    log_dir = file_log_dir(DataDir(args.data))
    if not log_dir.is_dir():
        out.refused(f"no log at {log_dir}; pass --data DIR or run `mykey init`")
        return EXIT_REFUSED
    # Never cut what a signed checkpoint covers or the index applied: those events were acknowledged.
    signed = acknowledged_size(DataDir(args.data))
    log = FileLog.open(log_dir, create=False, cut_damaged_tail=args.cut_damaged_tail, keep_through=signed)
    try:
        rec, last = log.recovery, log.last_seq
    finally:
        log.close()
    if rec is None:
        out.result(f"nothing to cut: the log ends cleanly at sequence {last}", cut=None, last_seq=last)
        return 0
    cut = {
        "segment": rec.segment,
        "offset": rec.offset,
        "bytes": rec.dropped_bytes,
        "first_seq": rec.first_seq,
        "reason": rec.reason,
        "saved_to": rec.saved_to,
        "operator_cut": rec.operator_cut,
    }
    out.result(
        f"{rec}; the log now ends at sequence {last}. If the index had applied the cut events, "
        "`mykey` will say so on the next command: accept the loss with `mykey rebuild`",
        cut=cut,
        last_seq=last,
    )
    return 0


def describe(env) -> str:
    body = msgspec.structs.asdict(env.body)
    fields = " ".join(f"{k}={v.hex() if isinstance(v, bytes) else v}" for k, v in body.items())
    return f"{env.seq} {env.time.isoformat(timespec='seconds')} {env.actor.kind}:{env.actor.id} {type(env.body).__name__} {fields}"


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    with open_log(DataDir(args.data), readonly=True) as log:
        it = log.follow(args.from_seq) if args.follow else log.read(args.from_seq, args.to_seq)
        for env in it:
            if args.to_seq is not None and env.seq > args.to_seq:
                break
            if out.json_mode:
                out.record(
                    {
                        "seq": env.seq,
                        "time": env.time.isoformat(),
                        "actor": {"kind": env.actor.kind, "id": env.actor.id},
                        "type": type(env.body).__name__,
                        "v": env.v,
                        "body": msgspec.structs.asdict(env.body),
                    }
                )
            else:
                out.line(describe(env))
    return 0
