"""Native (Cython) modules or their pure-Python twins: the MYKEY_PURE switch, read in one place.

MYKEY_PURE=1 (or true/yes/on) makes every choice take the pure twin (the test suite
runs both); unset or 0 (false/no/off) takes the Cython module when it is built.
Any other value is refused rather than guessed, so one process never mixes bindings.
"""

from __future__ import annotations

import os

from .errors import ValidationError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def pure_requested() -> bool:
    """True when MYKEY_PURE asks for the pure-Python twins."""
    value = os.environ.get("MYKEY_PURE", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValidationError(f"MYKEY_PURE={value!r} is not understood; set it to 1 (pure-Python twins) or 0 (Cython)")
