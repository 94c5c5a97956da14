"""Business and terminal flows (2): registration, deactivation, terminal enrolment and revocation.

A terminal makes its own key pair (``mykey.client.keys``); the platform is given, and
keeps, only the public key. No private key is ever made, seen or written here.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..domain import events as ev
from ..domain import ids
from ..errors import (
    AlreadyExistsError,
    CommandRefused,
    InactiveError,
    NotFoundError,
    ValidationError,
)
from .base import EngineCore
from .lookups import require_business

LAST_BUSINESS_ID = "Z9999"
ED25519_RAW_LEN = 32


def terminal_public_key(data: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key in data: raw, or a SubjectPublicKeyInfo in PEM or DER.

    ValidationError for anything else, and for a private key (which must never leave the terminal).
    """
    if not isinstance(data, bytes):
        raise ValidationError("the terminal's public key must be bytes (its FILE.pub)")
    if len(data) == ED25519_RAW_LEN:
        return data
    if b"PRIVATE KEY" in data:
        raise ValidationError(
            "that is a private key: it never leaves the terminal. Enrol its public key (the FILE.pub "
            "`mykey terminal keygen` wrote), and keep the private key on the terminal"
        )
    try:
        key = (serialization.load_pem_public_key if data.lstrip().startswith(b"-----") else
               serialization.load_der_public_key)(data)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ValidationError(
            "the terminal's public key must be an Ed25519 public key (PEM, DER or 32 raw bytes); "
            "make the key pair on the terminal with `mykey terminal keygen --out FILE`"
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


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
        first_use_registration: bool = True,
        actor: ev.Actor | None = None,
    ) -> str:
        """Register a business (facility) and issue its business ID (the next free one).

        numeric_service_ids declares that its own service IDs are 12-digit numbers;
        business_id asks for a specific free ID (e.g. when migrating existing businesses);
        first_use_registration=False makes a link refuse a service ID the business has not
        registered (it registers its IDs itself, in bulk) instead of registering it at first use.
        """
        if type(first_use_registration) is not bool:
            raise ValidationError("first_use_registration must be True or False")
        with self._read() as state:
            if business_id is not None:
                ids.check_business_id(business_id)
                if state.business(business_id) is not None:
                    raise AlreadyExistsError(f"business ID {business_id} is taken; omit it to get the next free one")
            bid = business_id or next_business_id(state.business_ids())
        registered = ev.BusinessRegistered(bid, name, municipality_code, numeric_service_ids, first_use_registration)
        self._commit([registered], actor or self.operator)
        return bid

    def deactivate_business(self, business_id: str, reason: str, *, actor: ev.Actor | None = None) -> None:
        """Deactivate a business; its terminals stop authenticating at once."""
        with self._read() as state:
            require_business(state, business_id)
        self._commit([ev.BusinessDeactivated(business_id, reason)], actor or self.operator)

    def enrol_terminal(
        self,
        business_id: str,
        public_key: bytes,
        *,
        can_register: bool = False,
        actor: ev.Actor | None = None,
    ) -> str:
        """Enrol a terminal by the public key it made itself; returns its terminal ID.

        public_key: raw 32 bytes, or SubjectPublicKeyInfo PEM/DER (a FILE.pub of
        `mykey terminal keygen`). can_register marks a terminal allowed to bulk-register
        its business's service IDs.
        """
        raw = terminal_public_key(public_key)
        if type(can_register) is not bool:
            raise ValidationError("can_register must be True or False")
        with self._read() as state:
            rec = require_business(state, business_id)
        terminal_id = f"{business_id}-T{rec.terminals + 1:04d}"
        self._commit([ev.TerminalEnrolled(terminal_id, business_id, raw, can_register)], actor or self.operator)
        return terminal_id

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
