"""The development commands of the `mykey` CLI: `mykey demo`, `mykey bench` and `mykey nats`.

The runtime CLI (mykey.cli) adds these through ``register`` when mykey_dev is
installed, as it is in a source checkout's ``pip install -e .``; an installation
without mykey_dev (a gateway) has neither command.

`mykey bench ARGS` is a shortcut for ``python -m bench ARGS`` (``make bench``) run
in a mykey source checkout: the benchmark suite (bench/) is not installed with
any package, so the command finds the checkout (the one the current directory is
in, else the one mykey_dev was installed from) and says what to do when there is none.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from mykey.cli.output import EXIT_REFUSED, Output
from mykey.cli.progress import bar

from . import nats
from .demo import DemoConfig, Phase, format_result, run_demo

__all__ = ["find_checkout", "register"]


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `demo`, `bench` and `nats` to the mykey command line."""
    _register_demo(sub, common)
    _register_bench(sub)
    nats.register(sub, common)


# --- mykey demo -----------------------------------------------------------------------------


def _register_demo(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="build a realistic platform (replacing an earlier demo's data) and resolve through a terminal",
        parents=[common],
    )
    p.add_argument("--businesses", type=int, default=d.businesses)
    p.add_argument("--users", type=int, default=d.users, help="users who create MyKey IDs with real certificates")
    p.add_argument("--service-ids", type=lambda s: int(float(s)), default=d.service_ids, help="bulk-imported service IDs (1e6)")
    p.add_argument("--lookups", type=lambda s: int(float(s)), default=d.lookups, help="service IDs the terminal resolves")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--nats", action="store_true",
                   help="run it on a local 3-server NATS cluster (temporary) with two gateway nodes, kill the stream's "
                   "leader server and then the writer node half-way, and show nothing is lost; sizes are capped, "
                   "--data is not used")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    users = max(10, args.users)
    config = DemoConfig(
        businesses=max(2, args.businesses),
        users=users,
        rsa_users=min(DemoConfig.rsa_users, users // 2),  # the rest are suspended, revoked, renewed
        service_ids=max(args.businesses, args.service_ids),
        lookups=max(1, args.lookups),
        seed=args.seed,
    )
    bars = []

    def progress(name: str, total: int):
        b = bar(name, total, enabled=not out.json_mode, unit="")
        bars.append(b)
        return b.update

    def on_phase(phase: Phase) -> None:
        while bars:
            bars.pop().close()
        out.line(f"  {phase.name:<52} {phase.count:>10,} in {phase.seconds:6.2f} s")

    if args.nats:
        from .demo_nats import run_nats_demo

        out.line("mykey demo --nats: a local NATS cluster and two gateway nodes in a temporary directory")
        res = run_nats_demo(config, on_phase=on_phase, say=out.line)
    else:
        out.line(f"mykey demo in {args.data} (replacing any earlier demo there)")
        res = run_demo(args.data, config, progress=progress, on_phase=on_phase)
    for text in format_result(res).split("\n"):
        out.line(text)
    out.result(
        f"demo done: {res.last_seq:,} events; {res.lookups_per_second:,.0f} lookups/s",
        phases=[asdict(p) | {"rate": p.rate} for p in res.phases],
        statuses=dict(res.status_counts),
        lookups_per_second=res.lookups_per_second,
        index_bytes=res.index_bytes,
        log_bytes=res.log_bytes,
        example_table=res.example_table,
        gateway=res.gateway,
        gateway_seconds=res.gateway_seconds,
    )
    return 0


# --- mykey bench ----------------------------------------------------------------------------


def _register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark mykey against SQLite, Redis, py-lmdb, a dict and plain C (python -m bench)",
        description="Runs `python -m bench ARGS` in the mykey source checkout; `mykey bench --help` shows its options.",
        add_help=False,  # --help, like every other argument, goes to the runner
    )
    # pass_through: mykey.cli hands every argument after `bench` to cmd_bench as args.rest.
    p.set_defaults(func=cmd_bench, pass_through=True)


def is_checkout(path: Path) -> bool:
    """Whether path is the root of a mykey source checkout holding the benchmark suite."""
    try:
        project = tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return project.get("name") == "mykey" and (path / "bench" / "__main__.py").is_file()


def find_checkout(starts: Iterable[Path] | None = None) -> Path | None:
    """The first mykey checkout at or above each start (default: the current directory, then this package)."""
    if starts is None:
        starts = (Path.cwd(), Path(__file__).resolve().parent)
    for start in starts:
        for path in (start, *start.parents):
            if is_checkout(path):
                return path
    return None


def cmd_bench(args: argparse.Namespace, out: Output) -> int:
    root = find_checkout()
    if root is None:
        out.refused(
            "the benchmark suite (bench/) is not installed with mykey; run `mykey bench` inside a mykey "
            "source checkout (or `make bench` / `python -m bench` there)"
        )
        return EXIT_REFUSED
    rest = list(getattr(args, "rest", []))
    if getattr(args, "json", False) and "--json" not in rest:
        rest.append("--json")
    return subprocess.run([sys.executable, "-m", "bench", *rest], cwd=root).returncode
