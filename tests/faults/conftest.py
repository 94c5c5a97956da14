"""Fixtures of the fault tests: a scratch directory in memory, the workload's PKI."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def fast_path(tmp_path) -> Path:
    """A scratch directory on tmpfs when there is one: the harness models the disk itself,
    so real fsyncs (slow on a shared disk) would only cost time."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="mykey-faults-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def quiet():
    """Silence the warnings recovery logs for every repair (thousands of states)."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture(scope="session")
def faults_pki():
    from .workload import Pki

    return Pki()
