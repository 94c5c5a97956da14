"""`mykey status-list build | assign`: a business's signed status list from the data directory."""

from __future__ import annotations

import argparse

from .. import fs
from ..datadir import DataDir
from ..domain import ids
from ..domain.statuslist import list_uri
from ..errors import MykeyError, NotFoundError
from ..index.readmodel import ReadModel
from ..log.backend import open_log
from .output import Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status-list", help="signed status lists of businesses (offline checks by terminals)",
                       parents=[common])
    g = p.add_subparsers(dest="status_list_command", metavar="SUBCOMMAND")
    g.required = True
    s = g.add_parser("build", help="write a business's current signed status list (a JWT) to a file",
                     parents=[common],
                     description="Reads the index (and the log, to patch the last list), signs with "
                     "DATA/keys/status-list.key (made on first use; its public JWKS is "
                     "DATA/keys/status-list.jwks.json). Works beside a running gateway.")
    s.add_argument("business", help="business ID, e.g. A0001")
    s.add_argument("--out", required=True, metavar="FILE", help="where to write the token")
    s.set_defaults(func=cmd_build)
    s = g.add_parser("assign", help="give status list positions to service IDs registered before positions existed",
                     parents=[common])
    s.set_defaults(func=cmd_assign)


def cmd_build(args: argparse.Namespace, out: Output) -> int:
    from ..engine.statuslists import StatusListStore

    data = DataDir(args.data)
    ids.check_business_id(args.business)
    model = ReadModel.open_live(data)
    if model is None:
        raise MykeyError(f"no index in {data.root}; run `mykey init` or pass --data DIR")
    with model, open_log(data, readonly=True) as log:
        with model.snapshot() as snap:
            if snap.business(args.business) is None:
                raise NotFoundError(f"business {args.business} is not registered")
            missing = sum(1 for bid, _ in snap.services_without_position() if bid == args.business)
        built = StatusListStore(data, model, log).token(args.business, current=True)
    fs.write_atomic(args.out, built.body)
    note = f"; {missing} service IDs have no position yet: run `mykey status-list assign`" if missing else ""
    out.result(f"wrote the status list of {args.business} ({len(built.body)} bytes, as of event {built.seq}) "
               f"to {args.out}{note}", business_id=args.business, sub=list_uri(args.business), bytes=len(built.body),
               seq=built.seq, etag=built.etag, without_position=missing, out=str(args.out))
    return 0


def cmd_assign(args: argparse.Namespace, out: Output) -> int:
    from .engine_cmds import open_engine

    with open_engine(args) as e:
        n = e.assign_status_positions()
    out.result(f"gave status list positions to {n} service IDs", assigned=n)
    return 0
