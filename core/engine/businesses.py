"""Business and terminal flows (2): registration, deactivation, terminal enrolment and revocation."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..domain import events as ev
from ..domain import ids
from ..errors import AlreadyExistsError, CommandRefused, InactiveError, NotFoundError
from .base import EngineCore
from .lookups import require_business

LAST_BUSINESS_ID = "Z9999"


@dataclass(frozen=True)
class TerminalCredential:
    """A new terminal's ID and its private key (PEM); the platform keeps only the public key."""

    terminal_id: str
    business_id: str
    private_key_pem: bytes = field(repr=False)


def next_business_id(taken: list[str]) -> str:
    """The ID after the highest one issued (taken is sorted); when Z9999 is taken, the lowest free one."""
    if not taken:
        return "A0001"
    last = taken[-1]
    if last != LAST_BUSINESS_ID:
        letter, num = last[0], int(last[1:])
        return f"{letter}{num + 1:04d}" if num < 9999 else f"{chr(ord(letter) + 1)}0001"
    used = set(taken)
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        for num in range(1, 10000):
            if f"{letter}{num:04d}" not in used:
                return f"{letter}{num:04d}"
    raise CommandRefused("all business IDs A0001-Z9999 are used")


class BusinessCommands(EngineCore):
    def register_business(
        self,
        name: str,
        municipality_code: str,
        *,
        numeric_service_ids: bool = False,
        business_id: str | None = None,
        actor: ev.Actor | None = None,
    ) -> str:
        """Register a business (facility) and issue its business ID (the next free one).

        numeric_service_ids declares that its own service IDs are 12-digit numbers;
        business_id asks for a specific free ID (e.g. when migrating existing businesses).
        """
        with self._read() as state:
            if business_id is not None:
                ids.check_business_id(business_id)
                if state.business(business_id) is not None:
                    raise AlreadyExistsError(f"business ID {business_id} is taken; omit it to get the next free one")
            bid = business_id or next_business_id(state.business_ids())
        self._commit([ev.BusinessRegistered(bid, name, municipality_code, numeric_service_ids)], actor or self.operator)
        return bid

    def deactivate_business(self, business_id: str, reason: str, *, actor: ev.Actor | None = None) -> None:
        """Deactivate a business; its terminals stop authenticating at once."""
        with self._read() as state:
            require_business(state, business_id)
        self._commit([ev.BusinessDeactivated(business_id, reason)], actor or self.operator)

    def enrol_terminal(self, business_id: str, *, actor: ev.Actor | None = None) -> TerminalCredential:
        """Enrol a terminal: a new Ed25519 key pair; only the public key is stored."""
        with self._read() as state:
            rec = require_business(state, business_id)
        terminal_id = f"{business_id}-T{rec.terminals + 1:04d}"
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._commit([ev.TerminalEnrolled(terminal_id, business_id, public)], actor or self.operator)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return TerminalCredential(terminal_id, business_id, pem)

    def revoke_terminal(self, terminal_id: str, reason: str = "revoked", *, actor: ev.Actor | None = None) -> None:
        """Revoke a terminal's credential; its next authentication fails."""
        ids.check_terminal_id(terminal_id)
        with self._read() as state:
            rec = state.terminal(terminal_id)
        if rec is None:
            raise NotFoundError(f"terminal {terminal_id} is not enrolled")
        if not rec.active:
            raise InactiveError(f"terminal {terminal_id} is already revoked")
        self._commit([ev.TerminalRevoked(terminal_id, reason)], actor or self.operator)
