"""`mykey audit ...` (checkpoints, proofs, verify, diff, a person's history) and `mykey replay`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..audit.checkpoint import peek_checkpoint
from ..audit.checkpoints import acknowledged_size
from ..audit.history import format_history, subject_history
from ..audit.keys import load_signer, public_key_arg
from ..audit.proofs import (
    MAX_PROOF_DOC,
    check_proof,
    load_proof_doc,
    prove_consistency,
    prove_inclusion,
)
from ..audit.replay import diff_live_index, replay
from ..audit.trail import AuditTrail
from ..audit.verify import verify_data_dir
from ..datadir import DataDir
from ..errors import InputFileError, LogLockedError
from ..log.backend import open_log
from .files import read_input, write_new_output
from .output import EXIT_REFUSED, Output

MAX_KEY_TEXT = 64 * 1024


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "audit", help="signed checkpoints, proofs, verification and a person's own history", parents=[common]
    )
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    asub.required = True

    c = asub.add_parser(
        "checkpoint",
        help="sign (size, root, time) of the log now and store it (needs the log's writer lock)",
        parents=[common],
    )
    c.set_defaults(func=cmd_checkpoint)

    pr = asub.add_parser("prove", help="inclusion proof of one event against a signed checkpoint", parents=[common])
    pr.add_argument("seq", type=int, metavar="SEQ", help="the event's sequence number")
    pr.add_argument("--checkpoint", type=int, metavar="SIZE", help="prove against this checkpoint (default: latest)")
    pr.add_argument("--out", type=Path, metavar="FILE", help="write the proof document here instead of printing it")
    pr.set_defaults(func=cmd_prove)

    pc = asub.add_parser(
        "prove-consistency", help="proof that a signed checkpoint extends an older tree", parents=[common]
    )
    pc.add_argument("old_size", type=int, metavar="OLD_SIZE")
    pc.add_argument("new_size", type=int, metavar="NEW_SIZE", help="a tree size with a stored checkpoint")
    pc.add_argument("--out", type=Path, metavar="FILE", help="write the proof document here instead of printing it")
    pc.set_defaults(func=cmd_prove_consistency)

    ck = asub.add_parser(
        "check-proof", help="verify a proof document offline (no data directory needed)", parents=[common]
    )
    ck.add_argument("file", metavar="FILE", help="proof document (JSON); - reads standard input")
    ck.add_argument(
        "--public-key",
        required=True,
        metavar="KEY",
        help="the log's verifier key: vkey text (name+id+key), a PEM public key, or a file holding one",
    )
    ck.set_defaults(func=cmd_check_proof)

    v = asub.add_parser(
        "verify",
        help="recompute everything from the log: CRCs, sequence, every checkpoint's root and signature",
        parents=[common],
    )
    v.add_argument("--public-key", metavar="KEY", help="trust this verifier key (default: DATA/keys/checkpoint.vkey)")
    v.set_defaults(func=cmd_verify)

    d = asub.add_parser(
        "diff",
        help="compare the live index with a fresh replay of the log (exit 1 on any difference)",
        parents=[common],
    )
    d.add_argument("--limit", type=int, default=100, help="stop after this many differences (default 100)")
    d.set_defaults(func=cmd_diff)

    s = asub.add_parser(
        "subject", help="every event about one MyKey ID, with proofs, and its current state", parents=[common]
    )
    s.add_argument("mykey_id", metavar="MYKEY_ID")
    s.set_defaults(func=cmd_subject)

    r = sub.add_parser(
        "replay",
        help="build the index as it stood at a sequence number or time, into a new directory",
        parents=[common],
    )
    r.add_argument(
        "--as-of",
        required=True,
        metavar="SEQ|ISO",
        help="a sequence number, or an ISO-8601 time (UTC unless it carries an offset, e.g. 2025-03-04T14:02+09:00)",
    )
    r.add_argument("--into", required=True, type=Path, metavar="DIR", help="a new directory; `Resolver` opens it")
    r.set_defaults(func=cmd_replay)


def _emit_doc(args: argparse.Namespace, out: Output, doc, what: str) -> int:  # type: ignore[no-untyped-def]
    text = doc.to_json()
    if args.out is not None:
        write_new_output(args.out, text.encode("utf-8"), DataDir(args.data))  # never over a file, never into DATA
        out.result(f"wrote {what} to {args.out}", file=str(args.out))
    elif out.json_mode:
        out.result(what, proof=doc.to_dict())
    else:
        out.document(text)
    return 0


def _public_key_text(arg: str) -> str:
    """--public-key as text: the content of the file it names (UTF-8), or the argument itself."""
    text = arg.strip()
    if "\n" in text or text.startswith("-----") or not Path(text).is_file():
        return arg
    raw = read_input(text, "verifier key", limit=MAX_KEY_TEXT)
    try:
        key_text = raw.decode("utf-8")
        if "\x00" not in key_text:
            return key_text
    except UnicodeDecodeError:
        pass
    raise InputFileError(
        f"{text} is not a verifier key (not UTF-8 text): pass the vkey text (name+id+key), a PEM public key, "
        "or a file holding one"
    )


def cmd_checkpoint(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    load_signer(data)  # an uninitialised data directory: say `mykey init` before anything is created
    try:
        log = open_log(data, keep_through=acknowledged_size(data))
    except LogLockedError as exc:
        out.refused(
            f"{exc}. A running engine keeps the trail and signs checkpoints itself; run `mykey audit checkpoint` "
            "only while it is stopped"
        )
        return EXIT_REFUSED
    try:
        with AuditTrail.open(data, log) as trail:
            for note in trail.repairs:
                out.line(f"note: {note}")
            text = trail.checkpoint()
    finally:
        log.close()
    if out.json_mode:
        cp = peek_checkpoint(text)
        out.result(f"signed checkpoint of size {cp.size}", size=cp.size, root=cp.root_hash.hex(), note=text)
    else:
        out.document(text)
    return 0


def cmd_prove(args: argparse.Namespace, out: Output) -> int:
    doc = prove_inclusion(DataDir(args.data), args.seq, args.checkpoint)
    return _emit_doc(args, out, doc, f"inclusion proof of sequence {args.seq} in tree size {doc.tree_size}")


def cmd_prove_consistency(args: argparse.Namespace, out: Output) -> int:
    doc = prove_consistency(DataDir(args.data), args.old_size, args.new_size)
    return _emit_doc(args, out, doc, f"consistency proof from size {args.old_size} to {args.new_size}")


def cmd_check_proof(args: argparse.Namespace, out: Output) -> int:
    try:
        raw = read_input(args.file, "proof document", limit=MAX_PROOF_DOC)  # "-": standard input
    except OSError as exc:
        out.refused(f"cannot read {args.file}: {exc.strerror}")
        return EXIT_REFUSED
    key = public_key_arg(_public_key_text(args.public_key))
    doc = load_proof_doc(raw)
    out.result(check_proof(doc, key), kind=doc.kind)
    return 0


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    key = None if args.public_key is None else _public_key_text(args.public_key)
    report = verify_data_dir(DataDir(args.data), key)
    return out.verdict(
        report.notes,
        None if report.problem is None else f"audit failed at {report.problem}",
        f"audit OK: {report.events} events, last sequence {report.last_seq}, "
        f"{report.checkpoints} signed checkpoints match the log",
        also=[str(p) for p in report.problems if p is not report.problem],
        **report.to_dict(),
    )


def cmd_diff(args: argparse.Namespace, out: Output) -> int:
    diffs = diff_live_index(DataDir(args.data), limit=args.limit)
    if diffs:
        for d in diffs:
            out.line(d)
        more = " (or more)" if len(diffs) >= args.limit else ""
        out.refused(
            f"the live index differs from a replay of the log in {len(diffs)} places{more}; "
            "rebuild it with `mykey rebuild`",
            differences=diffs,
        )
        return EXIT_REFUSED
    out.result("the live index equals a fresh replay of the log", differences=[])
    return 0


def cmd_subject(args: argparse.Namespace, out: Output) -> int:
    h = subject_history(DataDir(args.data), args.mykey_id)
    if out.json_mode:
        out.result(f"history of MyKey ID {args.mykey_id}: {len(h['events'])} events", **h)
    else:
        for line in format_history(h):
            out.line(line)
    return 0


def cmd_replay(args: argparse.Namespace, out: Output) -> int:
    seq = replay(DataDir(args.data), args.as_of, args.into)
    out.result(f"replayed the log up to sequence {seq} into {args.into}", last_seq=seq, into=str(args.into))
    return 0
