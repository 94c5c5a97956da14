"""Log speed: append N small events in batches with each fsync mode, then read them back.

    python -m bench.log_throughput --events 1000000 --batch 1000

Targets (issue 2): >= 500,000 events/s appending with fsync="always" per batch of
1,000, and >= 1,000,000 events/s reading back from sequence 1 with decoding.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mykey.domain import events as ev
from mykey.log.accel import framing_module
from mykey.log.filelog import FileLog


def make_batches(n: int, batch: int) -> list[list[ev.ServiceIdRegistered]]:
    return [
        [ev.ServiceIdRegistered("A0001", f"{b * batch + i:010d}", None) for i in range(batch)]
        for b in range(n // batch)
    ]


def append_rate(path: Path, batches, fsync: str, impl: str | None) -> float:
    log = FileLog.open(path, fsync=fsync, framing_impl=impl)
    t0 = time.perf_counter()
    for b in batches:
        log.append(b)
    log.close()
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def read_rate(path: Path, impl: str | None) -> tuple[float, int]:
    log = FileLog.open(path, readonly=True, framing_impl=impl)
    t0 = time.perf_counter()
    n = 0
    for _env in log.read(1):
        n += 1
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=float, default=1e6)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir on the same disk as /tmp)")
    args = ap.parse_args(argv)
    n = int(args.events)
    batches = make_batches(n, args.batch)
    impls = ["native", "pure"] if framing_module().__name__.endswith("_framing") else ["pure"]
    rows = []
    for impl in impls:
        for fsync in ("always", "interval", "never"):
            rates, reads = [], []
            for _ in range(args.repeat):
                d = Path(tempfile.mkdtemp(dir=args.dir, prefix="mykey-bench-log-"))
                try:
                    rates.append(append_rate(d / "log", batches, fsync, impl))
                    if fsync == "always":
                        r, got = read_rate(d / "log", impl)
                        assert got == n, (got, n)
                        reads.append(r)
                finally:
                    shutil.rmtree(d)
            rows.append((f"append {impl} fsync={fsync} batch={args.batch}", rates))
            if reads:
                rows.append((f"read+decode {impl} from seq 1", reads))
    print(f"{n:,} events of ~60 bytes; median of {args.repeat} (min-max)")
    print(f"{'operation':<48} {'events/s':>12} {'min':>12} {'max':>12}")
    for name, rates in rows:
        print(f"{name:<48} {statistics.median(rates):>12,.0f} {min(rates):>12,.0f} {max(rates):>12,.0f}")


if __name__ == "__main__":
    main()
