"""The index throughput benchmark (python -m bench.perf_targets) end to end at its quick size:
every peer answers, every answer agrees with the truth, and every target is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_quick(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "perf-targets.json"
    full_env = {**os.environ, **env}
    full_env.pop("MYKEY_PURE", None)
    proc = subprocess.run([sys.executable, "-m", "bench.perf_targets", "--quick", "--out", str(out),
                           "--workdir", str(tmp_path / "work")], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=300)
    return proc, out


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    proc, out = run_quick(tmp_path_factory.mktemp("perf"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_every_target_is_reported(quick):
    text, doc = quick
    assert doc["quick"] and doc["problems"] == []
    for what in ("resolve_many ÷ pure twin", "resolve_many ÷ Python dict loop", "resolve_many ÷ C mdb_get loop",
                 "cache-missing page visits per key", "resolve one at a time ÷ C mdb_get per call",
                 "two threads ÷ one thread", "projection (catch-up), events/s", "`mykey rebuild`",
                 "`mykey audit verify`", "after `mykey service import`", "after `mykey rebuild`"):
        assert what in text, what
    assert "QUICK MODE" in text


def test_every_peer_ran_and_the_walk_never_gave_up(quick):
    _text, doc = quick
    (size,) = doc["sizes"]
    peers = size["read_imported"]["peers"]
    assert set(peers) == {"resolve_many", "resolve_many, input sorted", "resolve_many, LMDB cursor", "pure twin",
                          "Python dict loop", "C mdb_get loop", "resolve, one at a time",
                          "C mdb_get, batches of one"}
    walks, fallbacks = size["read_imported"]["walks"]
    assert walks > 0 and fallbacks == 0
    assert size["write"]["events"] > 2 * size["service_ids"]
    assert size["sizes_rebuilt"]["svc"]["entries"] == size["service_ids"]


def test_a_wrong_answer_fails_the_run(tmp_path):
    proc, out = run_quick(tmp_path, MYKEY_PERF_FAULT="resolve_many")
    assert proc.returncode == 1
    assert "ANSWERS DISAGREE" in proc.stdout and "resolve_many answered differently" in proc.stdout
