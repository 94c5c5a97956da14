"""Single-use challenges for proof of possession (held in memory by the engine that issued them)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from ..errors import ChallengeError, ValidationError

CHALLENGE_TTL = 300.0  # seconds a challenge stays usable
CHALLENGE_BYTES = 32
CHALLENGE_PURPOSES = ("create", "renew")
MAX_OPEN_CHALLENGES = 100_000


class ChallengeBook:
    """Issued challenges not yet used: challenge -> (expiry, purpose)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._open: dict[bytes, tuple[float, str]] = {}

    def issue(self, purpose: str) -> bytes:
        """A fresh single-use nonce for one purpose ("create" or "renew").

        The purpose is part of the signed bytes (b"mykey:create:" + 32 random bytes, hex), so a
        signature made for one flow cannot be replayed in another. Expires after CHALLENGE_TTL seconds.
        """
        if purpose not in CHALLENGE_PURPOSES:
            raise ValidationError(f"challenge purpose must be one of {', '.join(CHALLENGE_PURPOSES)}")
        now = self._clock()
        if len(self._open) >= MAX_OPEN_CHALLENGES:
            self._open = {c: v for c, v in self._open.items() if v[0] > now}
            if len(self._open) >= MAX_OPEN_CHALLENGES:
                raise ChallengeError("too many open challenges; try again shortly")
        challenge = f"mykey:{purpose}:{secrets.token_hex(CHALLENGE_BYTES)}".encode("ascii")
        self._open[challenge] = (now + CHALLENGE_TTL, purpose)
        return challenge

    def consume(self, challenge: bytes, purpose: str) -> None:
        """Use the challenge up (even if what follows fails); ChallengeError if it cannot serve purpose."""
        entry = self._open.pop(challenge, None)
        if entry is None:
            raise ChallengeError("unknown or already used challenge; call new_challenge() and sign the new one")
        expiry, issued_for = entry
        if self._clock() > expiry:
            raise ChallengeError("the challenge expired; call new_challenge() and sign the new one")
        if issued_for != purpose:
            raise ChallengeError(f"that challenge was issued to {issued_for}, not to {purpose}; ask for a new one")
