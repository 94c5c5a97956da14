"""Single-use, short-lived challenges for a card's proof of possession, bound to what they authorise.

A challenge is the bytes a card signs. They say what the signature is for, so a
signature made for one thing cannot be used for another:

    mykey:create:<nonce>                                    make a MyKey ID
    mykey:renew:<nonce>                                     move a MyKey ID to a renewed certificate
    mykey:identify:<business>:<terminal>:<nonce>            tell this business who is at its terminal
    mykey:link:<business>:<terminal>:<service_id>:<nonce>   link this service ID of this business
    mykey:history:<nonce>                                   show the holder their own history

<terminal> is the terminal the challenge was issued to, or "-" when none was (the
operator's command line). <nonce> is 32 random bytes in hex. A challenge is usable
once, until it expires (TTL seconds after issue): consuming it removes it whether or
not what follows succeeds.

Issued challenges are kept in a ChallengeStore. LmdbChallengeStore (DATA/challenges)
is shared by every process of a machine, so a challenge issued by one gateway worker
is consumed once whichever worker or writer sees it; only a digest of each challenge
is stored, never the service ID in it. With a NATS log the same store keeps them in a
JetStream key-value bucket instead, shared by every node (mykey.auth.onetime_kv).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..datadir import DataDir
from ..domain import ids
from ..errors import ChallengeError, ValidationError
from . import onetime

PURPOSES = ("create", "renew", "identify", "link", "history")
UNBOUND = ("create", "renew", "history")  # purposes bound to no business, service ID or terminal
TTL = {"create": 300.0, "renew": 300.0, "identify": 120.0, "link": 120.0, "history": 120.0}  # seconds a challenge stays usable
NONCE_BYTES = 32
NO_TERMINAL = "-"
MAX_OPEN_CHALLENGES = 1_000_000  # per machine (LmdbChallengeStore)
MAX_OPEN_IN_MEMORY = 100_000  # per process (MemoryChallengeStore)
_NAME = b"challenges"
_PREFIX = "mykey"


@dataclass(frozen=True)
class Challenge:
    """What a challenge says: its purpose, what it is bound to, and its nonce."""

    purpose: str
    nonce: str
    business_id: str | None = None
    terminal_id: str | None = None  # None: issued to no terminal (the operator's command line)
    service_id: str | None = None

    def encode(self) -> bytes:
        """The bytes the card signs."""
        parts = [_PREFIX, self.purpose]
        if self.purpose in ("identify", "link"):
            parts += [self.business_id or "", self.terminal_id or NO_TERMINAL]
        if self.purpose == "link":
            parts.append(self.service_id or "")
        return ":".join([*parts, self.nonce]).encode("ascii")

    @classmethod
    def parse(cls, raw: bytes) -> Challenge:
        """The challenge these bytes spell; ChallengeError if they are not one."""
        bad = ChallengeError("that is not a mykey challenge; ask for a new one and sign it unchanged")
        try:
            text = bytes(raw).decode("ascii")
        except (TypeError, ValueError):
            raise bad from None
        head = text.split(":", 4)
        if len(head) < 3 or head[0] != _PREFIX or head[1] not in PURPOSES:
            raise bad
        purpose = head[1]
        try:
            if purpose in UNBOUND:
                if len(head) != 3:
                    raise bad
                found = cls(purpose, head[2])
            elif purpose == "identify":
                if len(head) != 5 or ":" in head[4]:
                    raise bad
                found = cls(purpose, head[4], head[2], _terminal(head[3]))
            else:
                if len(head) != 5:
                    raise bad
                service_id, _, nonce = head[4].rpartition(":")
                found = cls(purpose, nonce, head[2], _terminal(head[3]), service_id)
            found._check()
        except ValidationError:
            raise bad from None
        return found

    def _check(self) -> None:
        """Formats of the nonce and of what the challenge is bound to (ValidationError)."""
        if len(self.nonce) != 2 * NONCE_BYTES or any(c not in "0123456789abcdef" for c in self.nonce):
            raise ValidationError("the challenge nonce must be 64 lower-case hex digits")
        if self.purpose in ("identify", "link"):
            ids.check_business_id(self.business_id)
            if self.terminal_id is not None:
                ids.check_terminal_id(self.terminal_id)
                if self.terminal_id.split("-")[0] != self.business_id:
                    raise ValidationError(f"terminal {self.terminal_id} does not belong to business {self.business_id}")
        if self.purpose == "link":
            # The business's declaration of 12-digit IDs is checked when linking; here only the shape.
            ids.check_service_id(self.service_id, numeric_declared=True)

    def require(
        self,
        purpose: str,
        *,
        business_id: str | None = None,
        service_id: str | None = None,
        terminal_id: str | None = None,
    ) -> None:
        """ChallengeError unless the challenge was issued for this purpose, business, service ID and terminal."""
        if self.purpose != purpose:
            raise ChallengeError(f"that challenge was issued to {self.purpose}, not to {purpose}; ask for a new one")
        if self.business_id != business_id:
            raise ChallengeError("that challenge was issued for another business; ask for a new one")
        if self.service_id != service_id:
            raise ChallengeError(
                f"that challenge names service ID {self.service_id}, not {service_id}; ask for a new one naming it"
            )
        if self.terminal_id != terminal_id:
            where = f"terminal {self.terminal_id}" if self.terminal_id else "no terminal"
            raise ChallengeError(f"that challenge was issued to {where}; ask for a new one from this terminal")


def _terminal(text: str) -> str | None:
    return None if text == NO_TERMINAL else text


def _digest(challenge: bytes) -> bytes:
    return hashlib.sha256(challenge).digest()


class ChallengeStore(ABC):
    """Issues challenges and consumes each at most once. Subclasses keep them (_put, _take, _count)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def issue(
        self,
        purpose: str,
        *,
        business_id: str | None = None,
        service_id: str | None = None,
        terminal_id: str | None = None,
    ) -> bytes:
        """A fresh challenge for purpose, bound to what it authorises (see the module docstring)."""
        return self.issue_expiring(purpose, business_id=business_id, service_id=service_id, terminal_id=terminal_id)[0]

    def issue_expiring(
        self,
        purpose: str,
        *,
        business_id: str | None = None,
        service_id: str | None = None,
        terminal_id: str | None = None,
    ) -> tuple[bytes, float]:
        """issue(), and the unix time at which the challenge stops being usable."""
        if purpose not in PURPOSES:
            raise ValidationError(f"challenge purpose must be one of {', '.join(PURPOSES)}")
        if purpose in UNBOUND:
            if (business_id, service_id, terminal_id) != (None, None, None):
                raise ValidationError(f"a {purpose} challenge is bound to no business, service ID or terminal")
        elif business_id is None:
            raise ValidationError(f"a {purpose} challenge names the business it is for")
        elif (purpose == "link") != (service_id is not None):
            raise ValidationError("a link challenge names the service ID to link; an identify challenge names none")
        c = Challenge(purpose, secrets.token_hex(NONCE_BYTES), business_id, terminal_id, service_id)
        c._check()
        raw = c.encode()
        now = self._clock()
        expiry = now + TTL[purpose]
        self._put(_digest(raw), expiry, now)
        return raw, expiry

    def consume(self, challenge: bytes, purpose: str) -> Challenge:
        """Use the challenge up (even if what follows fails); ChallengeError if it cannot serve purpose.

        Returns what it is bound to; the caller checks that against the request (Challenge.require).
        """
        if not isinstance(challenge, (bytes, bytearray)) or not challenge:
            raise ChallengeError("the challenge must be the bytes that were issued; ask for a new one")
        now = self._clock()
        expiry = self._take(_digest(bytes(challenge)), now)
        if expiry is None:
            raise ChallengeError("unknown or already used challenge; ask for a new one and sign it")
        if now > expiry:
            raise ChallengeError("the challenge expired; ask for a new one and sign it")
        found = Challenge.parse(challenge)
        if found.purpose != purpose:
            raise ChallengeError(f"that challenge was issued to {found.purpose}, not to {purpose}; ask for a new one")
        return found

    def expect(
        self,
        challenge: bytes,
        purpose: str,
        *,
        business_id: str | None = None,
        service_id: str | None = None,
        terminal_id: str | None = None,
    ) -> None:
        """ChallengeError, and the challenge used up, unless it says exactly this purpose and binding.

        Cheap (no store access when it matches): call it before verifying the proof; consume()
        then checks the challenge was issued and is unused.
        """
        try:
            Challenge.parse(challenge).require(
                purpose, business_id=business_id, service_id=service_id, terminal_id=terminal_id
            )
        except ChallengeError:
            self.discard(challenge)
            raise

    def discard(self, challenge: bytes) -> None:
        """Use the challenge up without using it (a request that misused it)."""
        if isinstance(challenge, (bytes, bytearray)) and challenge:
            self._take(_digest(bytes(challenge)), self._clock())

    def close(self) -> None:
        """Release what the store holds. Idempotent."""

    def __enter__(self) -> ChallengeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- storage: a digest of each issued challenge with its expiry -------------------

    @abstractmethod
    def _put(self, key: bytes, expiry: float, now: float) -> None:
        """Keep key until expiry."""

    @abstractmethod
    def _take(self, key: bytes, now: float) -> float | None:
        """Remove key; its expiry if it was there, else None (once, whatever processes ask at once)."""


class MemoryChallengeStore(ChallengeStore):
    """Challenges held by this process only (tools and tests; a gateway needs LmdbChallengeStore)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._open: dict[bytes, float] = {}

    def _put(self, key: bytes, expiry: float, now: float) -> None:
        if len(self._open) >= MAX_OPEN_IN_MEMORY:
            self._open = {k: e for k, e in self._open.items() if e >= now}
            if len(self._open) >= MAX_OPEN_IN_MEMORY:
                raise ChallengeError("too many open challenges; try again shortly")
        self._open[key] = expiry

    def _take(self, key: bytes, now: float) -> float | None:
        return self._open.pop(key, None)


class LmdbChallengeStore(ChallengeStore):
    """Challenges shared by every process of a machine (DATA/challenges); open with open_challenge_store."""

    def __init__(self, keys: onetime.OneTimeKeys, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._keys: onetime.OneTimeKeys | None = keys

    def _store(self) -> onetime.OneTimeKeys:
        if self._keys is None:
            raise ChallengeError("the challenge store is closed; open it again")
        return self._keys

    def _put(self, key: bytes, expiry: float, now: float) -> None:
        keys = self._store()
        if len(keys) >= MAX_OPEN_CHALLENGES:
            keys.prune(now)
            if len(keys) >= MAX_OPEN_CHALLENGES:
                raise ChallengeError("too many open challenges; try again shortly")
        keys.add(key, expiry, now)

    def _take(self, key: bytes, now: float) -> float | None:
        return self._store().take(key, now)

    def close(self) -> None:
        if self._keys is not None:
            keys, self._keys = self._keys, None
            onetime.release(keys)


def open_challenge_store(
    data: DataDir | str | Path,
    binding: ModuleType | None = None,
    clock: Callable[[], float] = time.time,
    *,
    log: object | None = None,
) -> LmdbChallengeStore:
    """This process's share of the machine's challenges (DATA/challenges); close() it when done.

    binding: the LMDB binding (default: the one mykey.index.binding picks). With a NATS
    log (log: the caller's LogStore, else --log / MYKEY_LOG) the challenges live in the
    cluster's key-value bucket instead, shared by every node (mykey.auth.onetime).
    """
    data = data if isinstance(data, DataDir) else DataDir(Path(data))
    if binding is None:
        from ..index.binding import binding as default_binding

        binding = default_binding()
    return LmdbChallengeStore(onetime.acquire(data.root / "challenges", binding, _NAME, log=log), clock)
