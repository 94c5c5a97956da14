"""`mykey rebuild | project | resolve`: the index and the hot path from the command line."""

from __future__ import annotations

import argparse

from ..audit.checkpoints import acknowledged_size
from ..datadir import DataDir
from ..domain.status import statuses
from ..index.projector import run_projector
from ..index.resolver import Resolver
from ..index.store import rebuild
from ..log.backend import log_location, open_log
from .output import EXIT_REFUSED, Output
from .progress import bar


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("rebuild", help="rebuild the index from the log and swap it in atomically", parents=[common])
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("project", help="apply log events the index lacks (a projector process)", parents=[common])
    p.add_argument("--follow", action="store_true", help="keep following the log's tail")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between polls of the tail (default 0.05)")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("resolve", help="print the status of service IDs of a business, one per line", parents=[common])
    p.add_argument("business", help="business ID, e.g. A0001")
    p.add_argument("service_ids", nargs="+", metavar="SERVICE_ID")
    p.add_argument("--as-of", default=None, help="answer as the index stood at a sequence number or ISO time")
    p.set_defaults(func=cmd_resolve)


def _need_log(data: DataDir, out: Output) -> bool:
    if log_location() is None and not data.log.is_dir():  # the embedded log, never created here
        out.refused(f"no mykey data in {data.root}; run `mykey init` or pass --data DIR")
        return False
    return True


def cmd_rebuild(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    if not _need_log(data, out):
        return EXIT_REFUSED
    # As the writer (no engine may append while we rebuild); recovery keeps what was acknowledged.
    with open_log(data, keep_through=acknowledged_size(data)) as log:
        with bar("rebuild", log.last_seq, enabled=not out.json_mode) as b:
            gen = rebuild(data, log, progress=b.update)
        out.result(f"rebuilt index {gen.name} from {log.last_seq} events", generation=str(gen), last_seq=log.last_seq)
    return 0


def cmd_project(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    if not _need_log(data, out):
        return EXIT_REFUSED
    with bar("project", None, enabled=not out.json_mode) as b:
        last = run_projector(data, follow=args.follow, poll_interval=args.poll, progress=b.update)
    out.result(f"index is at sequence {last}", last_seq=last)
    return 0


def cmd_resolve(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    if args.as_of is not None:
        from ..audit.replay import resolve_as_of

        answers = resolve_as_of(data, args.as_of, args.business, args.service_ids)
    else:
        with Resolver.open(data.root) as r:
            answers = statuses(r.resolve_many(args.business, args.service_ids))
    idxs = _positions(data, args.business, args.service_ids) if out.json_mode else [None] * len(answers)
    for sid, st, idx in zip(args.service_ids, answers, idxs, strict=True):
        out.line(f"{sid} {st.label}")
        out.record({"service_id": sid, "status": st.label, "idx": idx})
    return 0


def _positions(data: DataDir, business_id: str, service_ids: list[str]) -> list[int | None]:
    """Each service ID's status list position (positions never change: read from the live index)."""
    ascii_ids = [sid if sid.isascii() else "" for sid in service_ids]
    with Resolver.open(data.root) as r, r.snapshot() as snap:
        found = snap.status_idxs(business_id, [s for s in ascii_ids if s])
    it = iter(found)
    return [next(it) if s else None for s in ascii_ids]
