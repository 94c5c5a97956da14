"""`mykey snapshot | restore`: bootstrap a new node from a compacted index snapshot plus the log's tail."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..datadir import DataDir
from ..index.snapshot import restore_snapshot, write_snapshot
from ..log.backend import log_initialized, open_log
from .files import check_new_output_path
from .output import EXIT_REFUSED, Output


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "snapshot",
        help="write a compacted, checksummed copy of the index (with its log position) for a new node",
        parents=[common],
        description="Copies the live index (consistent even while it is being written) into one checksummed file "
        "that `mykey restore` installs on a new node, which then follows the log from there.",
    )
    p.add_argument("--out", required=True, type=Path, help="the snapshot file to create (never replaced)")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser(
        "restore",
        help="install an index snapshot into a new data directory (then `mykey project --follow` or `mykey serve`)",
        parents=[common],
    )
    p.add_argument("file", type=Path, help="a file `mykey snapshot` wrote")
    p.add_argument("--no-log-check", action="store_true",
                   help="do not check the snapshot against the log (when the log cannot be reached now)")
    p.set_defaults(func=cmd_restore)


def cmd_snapshot(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    check_new_output_path(args.out, data)
    if not log_initialized(data):
        out.refused(f"no mykey data in {data.root}; pass --data DIR (and --log URL for a replicated log)")
        return EXIT_REFUSED
    with open_log(data, readonly=True) as log:
        info = write_snapshot(data, log, args.out)
    where = f" (stream {info.log['stream']} message {info.stream_seq})" if info.stream_seq is not None else ""
    out.result(
        f"snapshot of the index at event {info.last_seq}{where}: {args.out}, {info.data_bytes / 1e6:.1f} MB, "
        f"sha256 {info.data_sha256[:16]}...",
        file=str(args.out), last_seq=info.last_seq, stream_seq=info.stream_seq, data_bytes=info.data_bytes,
        data_sha256=info.data_sha256,
    )
    return 0


def cmd_restore(args: argparse.Namespace, out: Output) -> int:
    data = DataDir(args.data)
    if args.no_log_check:
        info = restore_snapshot(args.file, data, None)
    else:
        with open_log(data, readonly=True) as log:
            info = restore_snapshot(args.file, data, log)
    out.result(
        f"restored the index at event {info.last_seq} into {data.root}; `mykey project --follow` or `mykey serve` "
        "applies the log from there. Copy DATA/keys from another node before this node may write",
        last_seq=info.last_seq, stream_seq=info.stream_seq, data_dir=str(data.root),
    )
    return 0
