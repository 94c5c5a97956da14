"""Full disks (a small tmpfs, as root) and injected I/O errors (`make torture`: many more rounds)."""

from __future__ import annotations

import pytest

from . import diskfull

pytestmark = pytest.mark.usefixtures("quiet")


@pytest.fixture
def mountable():
    try:
        with diskfull.small_fs(64):
            pass
    except diskfull.NeedsRoot as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("phase", diskfull.PHASES)
def test_a_full_disk_stops_the_writer_cleanly_and_loses_nothing(faults_pki, mountable, phase):
    stats = diskfull.FaultStats()
    for seed in range(2):
        stats.add(diskfull.full_disk_round(faults_pki, seed * 3 + diskfull.PHASES.index(phase), phase))
    assert stats.failures >= 1 and stats.acknowledged > 0


@pytest.mark.parametrize("target", range(len(diskfull.TARGETS)), ids=[t[2] for t in diskfull.TARGETS])
def test_an_io_error_stops_the_writer_cleanly_and_loses_nothing(faults_pki, fast_path, target):
    stats = diskfull.io_error_round(faults_pki, 100 + target, fast_path, target=target, power_samples=2)
    assert stats.acknowledged > 0 and stats.power_states > 0


def test_the_small_file_system_is_unmounted_however_the_block_ends():
    try:
        with pytest.raises(RuntimeError):
            with diskfull.small_fs(64) as mnt:
                (mnt / "x").write_bytes(b"x")
                raise RuntimeError("a failing test")
    except diskfull.NeedsRoot as exc:
        pytest.skip(str(exc))
    assert not mnt.exists()
    with open("/proc/mounts") as f:
        assert str(mnt) not in f.read()
