"""SIGKILLs of the writer, the projector and resolvers (`make torture`: over a thousand of each)."""

from __future__ import annotations

import pytest

from . import killloop

pytestmark = pytest.mark.usefixtures("quiet")


def test_killing_the_writer_never_loses_an_acknowledged_command(faults_pki, fast_path):
    stats = killloop.writer_kills(faults_pki, fast_path, 25, seed=1, fresh_every=15)
    assert stats.kills == 25 and stats.commands > 25


def test_killing_the_projector_never_loses_an_applied_batch(faults_pki, fast_path):
    stats = killloop.projector_kills(faults_pki, fast_path, 20, seed=2, template_commands=60)
    assert stats.kills == 20 and stats.commands > 20


def test_killing_resolvers_leaves_the_index_and_the_writer_unharmed(faults_pki, fast_path):
    stats = killloop.resolver_kills(faults_pki, fast_path, 25, seed=3)
    assert stats.kills == 25 and stats.acknowledged > 0


@pytest.mark.parametrize("binding_name", ["native", "pure"])
def test_killed_resolvers_do_not_use_up_the_reader_slots(faults_pki, fast_path, binding_name):
    # LMDB keeps a reader slot per process that has a read transaction; a process killed with
    # SIGKILL leaves its slot taken until someone calls mdb_reader_check. While any process
    # (the engine, a projector, another gateway) keeps the index open, 126 killed gateway
    # processes leave no slot, and every new Resolver fails with MDB_READERS_FULL.
    from mykey.index.binding import binding_by_name

    killloop.stale_reader_slots(faults_pki, fast_path, binding_by_name(binding_name), kills=130)
