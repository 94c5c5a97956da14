"""`make torture` itself: a stopped run goes on with the parts it had not finished."""

from __future__ import annotations

import json
import logging

from . import torture


def test_a_resumed_run_reprints_the_finished_parts_and_starts_afresh_after(tmp_path, capsys):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"scale": 0.5, "done": {"disk": "full disk: figures of the earlier run"}}))
    try:
        assert torture.main(["--scale", "0.5", "--only", "disk", "--resume", str(state)]) == 0
    finally:
        logging.disable(logging.NOTSET)  # main quiets logging for the whole process
    out = capsys.readouterr().out
    assert "full disk: figures of the earlier run (done before" in out
    assert "lost acknowledged events: 0" in out
    assert not state.exists()  # the whole run is done: the next one starts afresh


def test_figures_of_another_scale_are_not_reused(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"scale": 1.0, "done": {"disk": "x"}}))
    assert torture._load_state(state, 0.5) == {}
    assert torture._load_state(state, 1.0) == {"disk": "x"}
    state.write_text("{not json")
    assert torture._load_state(state, 1.0) == {}


def test_an_unknown_part_is_refused_not_run_as_nothing():
    """A typo in --only must not print a green summary of an empty run."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "tests.faults.torture", "--only", "power,bogus"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown part(s) ['bogus']" in r.stderr and "lost acknowledged" not in r.stdout
