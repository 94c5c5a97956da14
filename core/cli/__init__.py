"""The `mykey` command line: one module per command group, all sharing one parser.

Exit codes: 0 success, 1 refused (the command was understood but not carried
out, or a file it was given cannot be used), 2 usage error, 3 internal error (a
bug: one line, never a traceback, unless MYKEY_DEBUG=1). Every command prints a
one-line result, or JSON with --json; nothing printed can drive a terminal (see
output.printable).

The development commands (`mykey demo`, `mykey bench`) come from the separate
package mykey_dev and appear only where it is installed; the runtime package
never needs it. A command that sets ``pass_through=True`` in its defaults gets
every argument after its name unparsed, as ``args.rest``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType

from ..datadir import default_data_dir
from ..errors import MykeyError
from ..log.backend import set_log_location
from . import audit_cmds, engine_cmds, index_cmds, log_cmds
from .output import EXIT_INTERNAL, EXIT_REFUSED, EXIT_USAGE, Output, printable_document

GROUPS = [audit_cmds, engine_cmds, index_cmds, log_cmds]
# The terminal gateway and its reference client (they import their packages only when run).
from . import client_cmds, serve_cmds  # noqa: E402

GROUPS += [serve_cmds, client_cmds]
from . import statuslist_cmds  # noqa: E402

GROUPS += [statuslist_cmds]
DEV_PACKAGE = "mykey_dev"


def dev_groups() -> list[ModuleType]:
    """The development command groups when mykey_dev is installed, else none (imported only here)."""
    if find_spec(DEV_PACKAGE) is None:
        return []
    return [importlib.import_module(f"{DEV_PACKAGE}.cli")]


class Parser(argparse.ArgumentParser):
    """argparse, printing usage errors (which quote what was typed) escaped like every other output."""

    def _print_message(self, message: str, file=None) -> None:  # type: ignore[no-untyped-def]
        super()._print_message(printable_document(message) if message else message, file)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every command has --help)."""
    common = Parser(add_help=False)
    common.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data directory (env MYKEY_DATA, default ./mykey-data)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON output")
    common.add_argument(
        "--log",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the event log: nats://HOST:PORT[,nats://HOST:PORT][?stream=NAME] for a NATS JetStream cluster "
        "(env MYKEY_LOG; default: the file log in DATA/log)",
    )
    parser = Parser(
        prog="mykey",
        description="mykey: event-sourced core of a MyKey ID platform.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in [*GROUPS, *dev_groups()]:
        group.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character gets an escape
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if rest and not getattr(args, "pass_through", False):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    args.rest = rest
    args.data = Path(getattr(args, "data", None) or default_data_dir())
    args.json = bool(getattr(args, "json", False))
    out = Output(json_mode=args.json)
    set_log_location(getattr(args, "log", None))  # every open_log of this command uses it
    try:
        return int(args.func(args, out) or 0)
    except MykeyError as exc:
        out.refused(str(exc), error=type(exc).__name__)
        return EXIT_REFUSED
    except OSError as exc:  # a file named on the command line cannot be read or written
        out.refused(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), error=type(exc).__name__)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so in one line
        if os.environ.get("MYKEY_DEBUG"):
            raise
        out.refused(
            f"internal error ({type(exc).__name__}: {exc}); please report it with the command you ran "
            "(MYKEY_DEBUG=1 shows where it happened)",
            error="InternalError",
        )
        return EXIT_INTERNAL
    finally:
        set_log_location(None)
