"""Projection handlers: events about records the index lacks, and the handler registry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.errors import IndexError_, ProjectionError
from mykey.index import projection
from mykey.index.keys import DB_NAMES
from mykey.index.store import Index

OP = ev.Actor("operator", "test")
MK = "ABCD2345"
FP = bytes(range(32))

# Events that refer to a record the index must already hold, and what the error names.
LACKING = {
    "suspend": (ev.MyKeySuspended(MK, "lost"), f"MyKey ID {MK}"),
    "resume": (ev.MyKeyResumed(MK), f"MyKey ID {MK}"),
    "invalidate": (ev.MyKeyInvalidated(MK, "dead"), f"MyKey ID {MK}"),
    "renew": (ev.CertificateRenewed(MK, FP, "CN=ca", "0a", bytes(32)), f"MyKey ID {MK}"),
    "deactivate": (ev.BusinessDeactivated("A0009", "gone"), "business A0009"),
    "revoke-terminal": (ev.TerminalRevoked("A0001-T1", "lost"), "terminal A0001-T1"),
    "link-unknown-service": (ev.ServiceIdLinked("A0001", "S404", MK), "service ID A0001/S404"),
    "link-unknown-mykey": (ev.ServiceIdLinked("A0001", "S1", MK), f"MyKey ID {MK}"),
}


@pytest.mark.parametrize("case", sorted(LACKING))
def test_event_about_a_missing_record_says_rebuild_and_changes_nothing(tmp_path, binding, case):
    body, names = LACKING[case]
    setup = [ev.BusinessRegistered("A0001", "Lib", "131016"), ev.ServiceIdRegistered("A0001", "S1")]
    envs = [ev.Envelope(i + 1, 0, OP, 1, b) for i, b in enumerate(setup)]
    with Index.open(DataDir(tmp_path), binding=binding) as idx:
        idx.apply(envs)
        before = _contents(idx)
        with pytest.raises(ProjectionError) as info:
            idx.apply([ev.Envelope(3, 0, OP, 1, body)])
        assert isinstance(info.value, IndexError_)
        msg = str(info.value)
        assert "event 3" in msg and type(body).__name__ in msg and names in msg
        assert "mykey rebuild" in msg
        assert idx.last_seq == 2  # the batch's transaction was aborted
        assert _contents(idx) == before


def _contents(idx: Index) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every item of every database of the index."""
    with idx.env.begin() as txn:
        return {name: list(projection.scan(txn, getattr(idx.dbs, name.decode()))) for name in DB_NAMES}


def test_handler_registry_check_names_what_is_missing_or_extra():
    projection.check_handlers(projection.HANDLERS, ev.EVENT_TYPES)  # complete today
    fewer = {t: h for t, h in projection.HANDLERS.items() if t is not ev.FeedAcked}
    with pytest.raises(ProjectionError, match=r"no handler for \['FeedAcked'\]"):
        projection.check_handlers(fewer, ev.EVENT_TYPES)

    class NotAnEvent:
        pass

    more = {**projection.HANDLERS, NotAnEvent: projection.HANDLERS[ev.FeedAcked]}
    with pytest.raises(ProjectionError, match=r"unknown types \['NotAnEvent'\]"):
        projection.check_handlers(more, ev.EVENT_TYPES)


def test_an_event_type_without_a_handler_fails_the_import_even_with_python_O():
    """The check is not an assert: `python -O` strips asserts, not this."""
    code = textwrap.dedent(
        """
        import mykey.domain.events as ev

        class Unhandled(ev._Event, tag="test.unhandled"):
            pass

        ev.EVENT_TYPES = (*ev.EVENT_TYPES, Unhandled)
        try:
            import mykey.index.projection
        except Exception as exc:
            print(type(exc).__name__, exc)
        else:
            print("imported")
        """
    )
    proc = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ProjectionError"), proc.stdout
    assert "Unhandled" in proc.stdout
