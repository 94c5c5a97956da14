"""End-to-end check of the macro benchmark runner (`python -m bench --quick`), run by
`make bench-check` (about half a minute on 2 cores): every side and every peer runs,
the tables print, bench-results.json is complete, and every peer's answers agree with
the truth. `make test` runs only the fast smoke test (tests/test_bench_runner.py).

The file name does not start with test_, so `pytest bench` (the micro-benchmarks)
leaves it out; name it to run it: pytest bench/check_runner.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_bench(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MYKEY_PURE", None)
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench-results.json"
    proc = run_bench("--service-ids", "2000", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_prints_the_tables(quick_run):
    proc, _doc = quick_run
    text = proc.stdout
    for heading in ("# mykey benchmark", "- machine:", "## Headline", "## Write side", "## Projection and rebuild",
                    "## Read side at 2,000 service IDs", "## Ratios at 2,000 service IDs",
                    "## Sizes on disk and peak RSS per process"):
        assert heading in text, heading
    for peer in ("mykey resolve_many (Cython)", "mykey resolve, one at a time", "mykey resolve_many (pure twin)",
                 "py-lmdb txn.get loop", "Python dict", "SQLite"):
        assert peer in text, peer
    assert "answers differ" not in text and "ANSWERS DISAGREE" not in text


def test_writes_results_json(quick_run):
    _proc, doc = quick_run
    assert doc["quick"] is True and doc["problems"] == []
    m = doc["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["python"]
    assert m["lmdb_native"].startswith("0.9.") and m["lmdb_pylmdb"]
    write = {(r["peer"], r["batch"], r["fsync"]) for r in doc["write"]["rows"]}
    for batch in (1, 100, 10_000):
        for fsync in ("always", "never"):
            assert ("mykey", batch, fsync) in write and ("SQLite", batch, fsync) in write
    assert ("eventsourcing", 100, "always") in write
    (size,) = doc["sizes"]
    assert size["dataset"]["service_ids"] == 2000
    assert size["build"]["events"] > 2000 and len(size["build"]["rebuild_s"]) >= 1
    for row in doc["write"]["rows"]:
        assert len(row["runs"]) == doc["repeat"] and row["min"] <= row["median"] <= row["max"]


def test_every_peer_answered_and_agreed(quick_run):
    _proc, doc = quick_run
    (size,) = doc["sizes"]
    labels = {r["label"] for r in size["rows"]}
    expected = {"mykey resolve_many (Cython)", "mykey resolve, one at a time", "mykey resolve_many (pure twin)",
                "py-lmdb txn.get loop", "Python dict", "SQLite"}
    if shutil.which("cc"):
        expected.add("plain C mdb_get loop")
    if shutil.which("redis-server"):
        expected.add("Redis pipelined MGET")
    else:
        assert any("redis-server is not installed" in n for n in doc["notes"])
    assert expected <= labels
    sets = {s["name"] for s in size["sets"]}
    assert sets == {"b1", "b100", "b10000", "b100000"}
    for row in size["rows"]:
        assert row["agree"], row["label"]
        assert row["set"] in sets
        assert len(row["ns_per_lookup"]["runs"]) == doc["repeat"]
    # Each query set holds 10% absent IDs.
    for s in size["sets"]:
        if s["batch"] >= 100:
            assert s["absent"] == s["keys"] // 10
