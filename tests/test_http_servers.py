"""The HTTP server comparison (python -m bench.http_servers) end to end at its quick size:
every stack serves the same app, answers a sample correctly (a wrong token refused) before
it is timed, the table and the worker CPU split are printed, and no server is left running."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench.http_servers import ENDPOINTS, SAMPLE, STACKS

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None,
                                reason="wrk (the HTTP load generator) is not installed: apt-get install -y wrk")


def test_quick_run(tmp_path):
    out = tmp_path / "http-servers.json"
    before = set(psutil.pids())
    proc = subprocess.run([sys.executable, "-m", "bench.http_servers", "--quick", "--json", str(out)], cwd=REPO,
                          env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["failures"] == []
    # Every stack answered every sampled ID as the dataset says, and refused a wrong and a missing token.
    assert doc["checked"] == {stack: 2 * (SAMPLE + 2) for stack in STACKS}
    rows = {(r["workers"], r["mode"], r["stack"]): r for r in doc["rows"]}
    assert set(rows) == {(w, m, s) for w in (1, 2) for m in ENDPOINTS for s in STACKS}
    for (w, mode, stack), r in rows.items():
        assert r["requests"] > 0 and r["errors"] == 0 and r["p50_ms"] <= r["p99_ms"]
        assert len(r["worker_cpu_s"]) == w and sum(r["worker_cpu_s"]) > 0, (w, mode, stack, r["worker_cpu_s"])
        line = f"| {w} | {ENDPOINTS[mode]} | {stack} | {r['rps']:,.0f} "
        assert line in proc.stdout, line
        if stack == STACKS[0]:
            assert r["vs_rsgi"] == 1.0
    assert "busiest worker's share" in proc.stdout
    # Every server was stopped, its workers with it, and the work directory removed.
    left = [p for p in psutil.process_iter(["pid", "cmdline"])
            if p.info["pid"] not in before and "bench.http_servers:" in " ".join(p.info["cmdline"] or [])]
    assert left == []
    assert not list(tmp_path.glob("mykey-http-bench-*"))
