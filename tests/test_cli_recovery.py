"""Commands that open the log as the writer never let recovery cut acknowledged events.

An acknowledged event is one the live index applied or a signed checkpoint covers. If the
log lost such an event's bytes (a torn last batch after a crash with fsync off, a disk
fault), cutting it would silently drop what was acknowledged: every writer refuses instead
and names the way out (restore the log, or accept the loss with `log repair`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mykey import Engine
from mykey.cli import main
from mykey.log.segments import list_segments


def _tear_last_batch(log_dir: Path) -> bytes:
    """Cut the last few bytes off the last segment: an incomplete (torn) final batch."""
    seg = list_segments(log_dir)[-1].path
    data = seg.read_bytes()
    seg.write_bytes(data[:-5])
    return data


@pytest.mark.parametrize("command", [["rebuild"], ["audit", "checkpoint"]])
def test_writer_commands_refuse_to_cut_acknowledged_events(tmp_path, capsys, command):
    data = tmp_path / "data"
    assert main(["--data", str(data), "init"]) == 0
    with Engine.open(data, checkpoint_on_close=True) as e:  # the index applies it, a checkpoint signs it
        e.register_business("Library", "131016")
    before = _tear_last_batch(data / "log")
    code = main(["--data", str(data), *command])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "lost" in (out + err) or "acknowledged" in (out + err) or "restore" in (out + err).lower()
    seg = list_segments(data / "log")[-1].path
    assert len(seg.read_bytes()) == len(before) - 5  # nothing more was cut
    assert not (data / "log" / "torn").exists() or not any((data / "log" / "torn").iterdir())
