"""The status list benchmark in its quick mode: it runs, checks its own incremental list, and reports."""

from __future__ import annotations

from bench import status_list


def test_the_quick_status_list_bench_reports_every_figure():
    text, figures = status_list.run(quick=True)
    for heading in ("## Sizes", "## Build, update, check", "offline checks per second", "13.7"):
        assert heading in text
    one = next(r for r in figures["sizes"] if r["pct"] == 1)
    assert abs(one["one_bit_l9_bytes"] / 1024 - 13.7) < 0.5  # the draft's published 1-bit size
    assert one["l9_bytes"] <= one["l6_bytes"] < one["ids_zlib_bytes"]
    b = figures["build"]
    assert b["entries"] == 262_144 and b["checks_per_s"] > 10_000
