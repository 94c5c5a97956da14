"""Progress bars for long CLI phases (tqdm on stderr; silent with --json or off a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


def bar(desc: str, total: int | None, *, enabled: bool = True, unit: str = "ev") -> tqdm:
    """A progress bar on stderr; disabled when not wanted so output stays clean."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )


def advancer(b: tqdm) -> Callable[[int], None]:
    return b.update
