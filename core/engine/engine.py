"""The Engine: every flow of the MyKey platform as a validated command that emits events.

The commands are grouped by flow, one module each; this module puts them together:

- ``base``: opening (any LogStore, the index, the audit trail), the read model and the one write path;
- ``mykeys``: MyKey ID creation, suspension/resume/invalidation, certificate renewal;
- ``businesses``: businesses and terminals;
- ``services``: service ID registration (rows or CSV), linking, unlinking;
- ``revocation``: trusted CAs and CRLs;
- ``feed``: the sync feed for linked systems;
- ``statuslists``: status list positions and the signed lists.

The rules about a MyKey ID's state live in ``mykey.domain.transitions``; the engine
looks up the facts they need and asks.
"""

from __future__ import annotations

from ..errors import IndexAheadError
from .base import EngineCore
from .businesses import BusinessCommands
from .feed import FeedCommands, FeedItem
from .mykeys import MyKeyCommands, MyKeyView
from .revocation import CrlReport, RevocationCommands
from .services import ServiceCommands
from .statuslists import StatusListCommands

__all__ = [
    "CrlReport",
    "Engine",
    "EngineCore",
    "FeedItem",
    "IndexAheadError",
    "MyKeyView",
]


class Engine(RevocationCommands, MyKeyCommands, BusinessCommands, ServiceCommands, FeedCommands, StatusListCommands):
    """The write side of mykey over one data directory (holds the log's and the index's writer locks).

    Open with ``Engine.open(data_dir, log=None | location | LogStore, ...)``. Commands run
    one at a time: use an Engine from one thread (gateways resolve through Resolver
    objects, which are safe to share between threads).
    """
