"""The MyKey ID state machine as one table (pure).

valid <-> suspended, and valid/suspended -> invalid, which is final: a new MyKey
ID needs a new creation.
"""

from __future__ import annotations

from ..errors import IllegalTransitionError
from .status import MyKeyState

V, S, I = MyKeyState.VALID, MyKeyState.SUSPENDED, MyKeyState.INVALID

# (current state, action) -> next state
TRANSITIONS: dict[tuple[MyKeyState, str], MyKeyState] = {
    (V, "suspend"): S,
    (S, "resume"): V,
    (V, "invalidate"): I,
    (S, "invalidate"): I,
}
ACTIONS = ("suspend", "resume", "invalidate")


def next_state(current: MyKeyState, action: str) -> MyKeyState:
    """The state after action, or IllegalTransitionError saying what is allowed."""
    try:
        return TRANSITIONS[(current, action)]
    except KeyError:
        allowed = [a for (s, a) in TRANSITIONS if s == current]
        hint = f"allowed from {current.label}: {', '.join(allowed)}" if allowed else f"{current.label} is final"
        raise IllegalTransitionError(f"cannot {action} a MyKey ID that is {current.label} ({hint})") from None
