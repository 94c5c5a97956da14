"""`mykey bench ...`: run the benchmark suite (`python -m bench`) with the same arguments.

The suite lives in bench/ beside the package in a source checkout (the package
directory is core/, so the repository root is core/..); it runs from there, so
bench-results.json lands in the repository root unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .output import EXIT_REFUSED, Output


def repo_root() -> Path | None:
    """The source checkout holding bench/ next to the mykey package, or None."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "bench" / "__main__.py").is_file() else None


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark mykey against SQLite, Redis, py-lmdb, a dict and plain C (python -m bench)",
        description="Runs `python -m bench ARGS` from the repository root; `mykey bench --help` shows its options.",
        add_help=False,
    )
    p.set_defaults(func=cmd_bench, bench_args=[])

    # Every argument after `bench` belongs to the runner, options included (`--quick`,
    # `--help`), which argparse.REMAINDER does not pass through when they come first.
    def pass_through(args=None, namespace=None):
        ns = namespace if namespace is not None else argparse.Namespace()
        ns.func = cmd_bench
        ns.bench_args = list(sys.argv[1:] if args is None else args)
        return ns, []

    p.parse_known_args = pass_through  # type: ignore[method-assign]


def cmd_bench(args: argparse.Namespace, out: Output) -> int:
    root = repo_root()
    if root is None:
        out.refused(
            "the benchmark suite (bench/) is not next to this mykey installation; "
            "run `mykey bench` from a source checkout installed with `pip install -e .`"
        )
        return EXIT_REFUSED
    extra = ["--json"] if getattr(args, "json", False) and "--json" not in args.bench_args else []
    cmd = [sys.executable, "-m", "bench", *args.bench_args, *extra]
    return subprocess.run(cmd, cwd=root).returncode
