"""Everything that affects a MyKey ID's state, in one place (pure: states and facts in, answers out).

The state machine is one table: valid <-> suspended, and valid/suspended -> invalid,
which is final (a new MyKey ID needs a new creation). Around it, the rules that
depend on facts the engine looks up and passes in:

- a MyKey ID whose current certificate (or the CA that issued it) is revoked cannot
  be resumed: only a renewal onto a sound certificate brings it back;
- a renewal lifts a suspension only if a CRL caused it (an operator's suspension stays);
- a CRL suspends only valid MyKey IDs;
- an invalid MyKey ID cannot be linked or renewed, and is not "live" (its certificate
  may get a new MyKey ID);
- a card speaks for its holder (links, identification) only while the MyKey ID is valid;
- which events the sync feed carries, under which label, and the state each leaves.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from ..errors import (
    IllegalTransitionError,
    InvalidMyKeyError,
    ResumeBlockedError,
    SuspendedMyKeyError,
    UnknownCardError,
    ValidationError,
)
from . import events as ev
from .status import MyKeyState

V, S, I = MyKeyState.VALID, MyKeyState.SUSPENDED, MyKeyState.INVALID


class Action(Enum):
    """What an operator (or a rule) can do to a MyKey ID's state."""

    SUSPEND = "suspend"
    RESUME = "resume"
    INVALIDATE = "invalidate"

    @property
    def label(self) -> str:
        return self.value


# (current state, action) -> next state
TRANSITIONS: dict[tuple[MyKeyState, Action], MyKeyState] = {
    (V, Action.SUSPEND): S,
    (S, Action.RESUME): V,
    (V, Action.INVALIDATE): I,
    (S, Action.INVALIDATE): I,
}
ACTIONS = tuple(Action)


def parse_action(value: Action | str) -> Action:
    """An Action from itself or its name ("suspend", "resume", "invalidate")."""
    try:
        return Action(value)
    except ValueError:
        raise ValidationError(
            f"{value!r} is not a MyKey ID action; use one of {', '.join(a.label for a in Action)}"
        ) from None

# The reason recorded when a CRL suspends a MyKey ID (a renewal lifts such suspensions).
REVOKED_REASON = "certificate revoked"


def next_state(
    current: MyKeyState, action: Action, *, certificate_revoked: bool = False, mykey_id: str = "a MyKey ID"
) -> MyKeyState:
    """The state after action, or the refusal saying what is allowed.

    certificate_revoked: the MyKey ID's current certificate, or the CA that issued it,
    is revoked; a resume is then refused (ResumeBlockedError): renew the certificate.
    """
    try:
        new = TRANSITIONS[(current, action)]
    except KeyError:
        allowed = [a.label for (s, a) in TRANSITIONS if s == current]
        hint = f"allowed from {current.label}: {', '.join(allowed)}" if allowed else f"{current.label} is final"
        raise IllegalTransitionError(f"cannot {action.label} a MyKey ID that is {current.label} ({hint})") from None
    if action is Action.RESUME and certificate_revoked:
        raise ResumeBlockedError(
            f"the certificate of {mykey_id} is revoked; it can be resumed only by renewing the certificate"
        )
    return new


def transition_event(action: Action, mykey_id: str, reason: str = "") -> ev.Event:
    """The event that records action (a resume carries no reason)."""
    if action is Action.SUSPEND:
        return ev.MyKeySuspended(mykey_id, reason)
    if action is Action.RESUME:
        return ev.MyKeyResumed(mykey_id)
    return ev.MyKeyInvalidated(mykey_id, reason)


def is_live(state: MyKeyState) -> bool:
    """A live MyKey ID holds its certificate: no second MyKey ID may be made from it."""
    return state is not I


def check_linkable(state: MyKeyState, mykey_id: str) -> None:
    """Service IDs may be linked to valid and suspended MyKey IDs, never to an invalid one.

    What authorises a link is a separate rule: the person's card (check_card_holder), or
    an operator's attributed decision after checking the person in person.
    """
    if state is I:
        raise InvalidMyKeyError(f"MyKey ID {mykey_id} is invalid; it cannot be linked")


def check_card_holder(state: MyKeyState) -> None:
    """A card speaks for its holder only while their MyKey ID is valid (to link, or to be identified).

    A suspended MyKey ID's card authorises nothing: it may be lost or revoked. The
    refusal never names the MyKey ID (it goes back to the terminal that relayed the card).
    """
    if state is S:
        raise SuspendedMyKeyError(
            "the MyKey ID of this card is suspended; the holder must have it resumed (or the certificate renewed) first"
        )
    if state is I:
        raise UnknownCardError("the MyKey ID of this card was invalidated; the holder can create a new one with the card")


def check_renewable(state: MyKeyState, mykey_id: str) -> None:
    """An invalid MyKey ID cannot move to a new certificate."""
    if state is I:
        raise InvalidMyKeyError(f"MyKey ID {mykey_id} is invalid; create a new MyKey ID instead")


def crl_suspends(state: MyKeyState) -> bool:
    """A CRL revoking the current certificate suspends a valid MyKey ID (others keep their state)."""
    return state is V


def crl_suspension(mykey_id: str, why: str) -> ev.MyKeySuspended:
    """The suspension a CRL causes; why is the revocation reason (or which CA was revoked)."""
    return ev.MyKeySuspended(mykey_id, f"{REVOKED_REASON} ({why})", by_crl=True)


def resumes_on_renewal(state: MyKeyState, suspended_by_crl: bool) -> bool:
    """A renewal replaces the revoked certificate: it lifts a CRL's suspension, and only that."""
    return state is S and suspended_by_crl


class FeedChange(NamedTuple):
    """How the sync feed shows an event: its label and the MyKey ID's state after it."""

    change: str  # created | suspended | resumed | invalidated | renewed
    state: MyKeyState | None  # None: the event leaves the state as it was


# The MyKey-level changes the sync feed carries to linked systems (no certificates, no service IDs).
FEED_CHANGES: dict[type, FeedChange] = {
    ev.MyKeyCreated: FeedChange("created", V),
    ev.MyKeySuspended: FeedChange("suspended", S),
    ev.MyKeyResumed: FeedChange("resumed", V),
    ev.MyKeyInvalidated: FeedChange("invalidated", I),
    ev.CertificateRenewed: FeedChange("renewed", None),
}


def feed_change(body: ev.Event) -> FeedChange | None:
    """The feed's view of one event body, or None if the feed does not carry it."""
    return FEED_CHANGES.get(type(body))


# The state each state-setting event leaves its MyKey ID in (the projection and replay apply it).
STATE_AFTER: dict[type, MyKeyState] = {t: c.state for t, c in FEED_CHANGES.items() if c.state is not None}


def state_after(body: ev.Event) -> MyKeyState | None:
    """The state a MyKey-level event leaves its MyKey ID in (None: the event does not set it)."""
    return STATE_AFTER.get(type(body))
