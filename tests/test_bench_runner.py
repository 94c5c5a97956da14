"""Smoke test of the macro benchmark runner (`python -m bench`), a few seconds: its arguments,
one tiny read-side run (dataset build, the mykey peer and one other, the tables and
bench-results.json), a wrong answer caught, and the write-side measurements at a tiny size.

The runner's full end-to-end run (every side, every peer) is `make bench-check`
(bench/check_runner.py).
"""

from __future__ import annotations

import json

import pytest

from bench import macro_write
from bench.__main__ import WORKERS, count, parse_args
from bench.check_runner import run_bench

TINY = ("--service-ids", "500", "--quick", "--only", "read", "--peers", "dict", "--repeat", "1")


def test_arguments():
    assert [count(s) for s in ("1000000", "1e6", "1_000_000", "1,000,000")] == [1_000_000] * 4
    args = parse_args(["--quick", "--peers", "dict,sqlite"])
    assert args.repeat == 3 and args.peer_list == ["mykey", "dict", "sqlite"]
    assert parse_args([]).repeat == 5 and parse_args([]).peer_list == WORKERS
    for bad in (["--scale", "--service-ids", "1e6"], ["--peers", "dict,nope"], ["--repeat", "0"], ["--service-ids", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(bad)
        assert exc.value.code == 2, bad


def test_a_tiny_run(tmp_path):
    out = tmp_path / "r.json"
    proc = run_bench(*TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for heading in ("# mykey benchmark", "## Headline", "## Read side at 500 service IDs",
                    "## Ratios at 500 service IDs", "## Sizes on disk and peak RSS per process"):
        assert heading in proc.stdout, heading
    doc = json.loads(out.read_text())
    assert doc["problems"] == [] and doc["write"] is None
    (size,) = doc["sizes"]
    assert size["dataset"]["service_ids"] == 500
    assert {r["label"] for r in size["rows"]} == {"mykey resolve_many (Cython)", "Python dict"}
    assert all(r["agree"] and len(r["ns_per_lookup"]["runs"]) == 1 for r in size["rows"])


def test_a_wrong_answer_is_caught(tmp_path):
    out = tmp_path / "r.json"
    proc = run_bench(*TINY, "--out", str(out), env={"MYKEY_BENCH_FAULT": "Python dict"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "ANSWERS DISAGREE" in proc.stdout and "answers differ" in proc.stdout
    doc = json.loads(out.read_text())
    assert any("Python dict" in p for p in doc["problems"])
    assert all(r["agree"] for r in doc["sizes"][0]["rows"] if r["label"] != "Python dict")


def test_write_side_measurements(tmp_path):
    assert macro_write.mykey_append(tmp_path, 10, "never", 50) > 0
    assert macro_write.sqlite_insert(tmp_path, 10, False, 50) > 0
    assert list(tmp_path.iterdir()) == []  # every run cleans up after itself
