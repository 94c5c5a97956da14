"""`mykey demo`: the main demo on the embedded default data directory."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from mykey_dev.demo import DemoConfig, Phase, format_result, run_demo

from .output import Output
from .progress import bar


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    config = DemoConfig(
        businesses=max(2, args.businesses),
        users=max(10, args.users),
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

    out.line(f"mykey demo in {args.data} (replacing any earlier demo there)")
    res = run_demo(args.data, config, progress=progress, on_phase=on_phase)
    out.line(format_result(res))
    out.result(
        f"demo done: {res.last_seq:,} events; {res.lookups_per_second:,.0f} lookups/s",
        phases=[asdict(p) | {"rate": p.rate} for p in res.phases],
        statuses=dict(res.status_counts),
        lookups_per_second=res.lookups_per_second,
        index_bytes=res.index_bytes,
        log_bytes=res.log_bytes,
        example_table=res.example_table,
    )
    return 0
