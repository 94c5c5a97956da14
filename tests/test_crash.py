"""Crash safety: a writer killed with SIGKILL at random moments never loses an acknowledged batch."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mykey.log.filelog import FileLog
from mykey.log.verify import verify_log

WRITER = textwrap.dedent(
    """
    import random, sys
    from mykey.domain import events as ev
    from mykey.log.filelog import FileLog
    path, seed, impl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    log = FileLog.open(path, segment_bytes=256 * 1024, framing_impl=impl)
    batch = log.last_seq
    while True:
        # Mostly small batches; now and then a large import-sized one.
        n = rng.choice([1, 3, 17, 100, 500, 500, 5000])
        batch += 1
        envs = log.append([ev.ServiceIdRegistered("A0001", f"b{batch}x{i}x{n}") for i in range(n)])
        sys.stdout.write(f"{envs[-1].seq}\\n")
        sys.stdout.flush()
    """
)


def run_and_kill(path: Path, seed: int, impl: str, rng: random.Random) -> int:
    """Start a writer, let it run for a random moment once it has started appending, SIGKILL it.

    Returns the highest acknowledged seq.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(seed), impl],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    buf = b""
    fd = child.stdout.fileno()

    def read_until(deadline: float, stop_at_first_ack: bool) -> bool:
        nonlocal buf
        while time.monotonic() < deadline:
            if stop_at_first_ack and b"\n" in buf:
                return True
            ready, _, _ = select.select([fd], [], [], 0.01)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return False
                buf += chunk
        return b"\n" in buf

    # However slow the machine, the kill lands while the writer is appending, not while it starts.
    started = read_until(time.monotonic() + 60, stop_at_first_ack=True)
    if started:
        read_until(time.monotonic() + rng.uniform(0.05, 0.4), stop_at_first_ack=False)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    buf += child.stdout.read()
    err = child.stderr.read().decode()
    assert started, f"the writer did not start appending: {err[-2000:]}"
    assert "Traceback" not in err, err
    return max((int(line) for line in buf.split(b"\n") if line.strip()), default=0)


@pytest.mark.parametrize("impl", ["native", "pure"])
def test_sigkill_never_loses_an_acknowledged_batch(tmp_path, impl):
    rng = random.Random(20261126)
    acked = 0
    for round_ in range(10):
        acked = max(acked, run_and_kill(tmp_path, round_, impl, rng))
        log = FileLog.open(tmp_path)  # recovery runs here
        assert log.last_seq >= acked, f"round {round_}: acknowledged {acked}, log has {log.last_seq}"
        # Gap-free, and every batch that is present is whole: batch b of size n has its n events in order.
        counts: dict[str, list[int]] = {}
        expected = 1
        for seq, payload in log.read_raw():
            assert seq == expected
            expected += 1
        for env in log.read(max(1, acked - 50_000)):
            batch, i, n = env.body.service_id[1:].split("x")
            got = counts.setdefault(batch, [int(i), int(n)])  # the window may start mid-batch
            assert got[0] == int(i)
            got[0] += 1
        assert all(c == n for c, n in counts.values()), "a batch is only partly present"
        log.close()
        report = verify_log(tmp_path, decode=False)
        assert report.ok and report.last_seq == expected - 1
    assert acked > 0
