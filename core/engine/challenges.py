"""The engine's challenges for proof of possession: a ChallengeStore (see mykey.auth.challenges).

The engine keeps them in the machine's shared store (DATA/challenges), so a challenge a
gateway worker issued is consumed once whichever process sees it; ChallengeBook, the
per-process store, is what an engine holds until that store is opened.
"""

from __future__ import annotations

from ..auth.challenges import (
    TTL,
    ChallengeStore,
    MemoryChallengeStore,
    open_challenge_store,
)

CHALLENGE_TTL = TTL["create"]  # seconds a create or renew challenge stays usable
ChallengeBook = MemoryChallengeStore

__all__ = ["CHALLENGE_TTL", "ChallengeBook", "ChallengeStore", "open_challenge_store"]
