"""The engine's challenges for proof of possession: a ChallengeStore (see mykey.auth.challenges).

The engine keeps them in the machine's shared store (DATA/challenges, opened with the
engine and closed with it), so a challenge a gateway worker issued is consumed once
whichever process sees it.
"""

from __future__ import annotations

from ..auth.challenges import (
    TTL,
    ChallengeStore,
    open_challenge_store,
)

CHALLENGE_TTL = TTL["create"]  # seconds a create or renew challenge stays usable

__all__ = ["CHALLENGE_TTL", "ChallengeStore", "open_challenge_store"]
