"""Identifier formats and the Individual Number guard (pure functions, no I/O).

Every id that enters mykey passes through here. A 12-digit value with a valid
Individual Number (個人番号) check digit is refused everywhere: mykey must never
store one. The only exception is a business that declared, in its attributable
registration event, that its own service IDs are 12-digit numbers.
"""

from __future__ import annotations

import re
import secrets
import unicodedata

from ..errors import IndividualNumberError, ValidationError

BUSINESS_ID_RE = re.compile(r"[A-Z][0-9]{4}\Z")
# Unambiguous upper-case alphanumerics: no 0/O, 1/I/L.
MYKEY_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
MYKEY_ID_LEN = 8
MYKEY_ID_RE = re.compile(f"[{MYKEY_ALPHABET}]{{{MYKEY_ID_LEN}}}\\Z")
# Service and customer IDs: 1-32 printable ASCII characters, no spaces.
OPAQUE_ID_RE = re.compile(r"[\x21-\x7e]{1,32}\Z")
TERMINAL_ID_RE = re.compile(r"[A-Z][0-9]{4}-T[0-9]{4,8}\Z")
ACTOR_ID_RE = re.compile(r"[\x21-\x7e]{1,64}\Z")
MUNICIPALITY_RE = re.compile(r"[0-9]{5,6}\Z")
# Digit groups joined by single spaces or hyphens (1234 5678 9018, 1234-5678-9018).
_DIGIT_RUN_RE = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_GROUP_SEP_RE = re.compile(r"[ -]")
_SEPARATORS = str.maketrans("", "", " -")
MAX_SERVICE_ID_LEN = 32

_WEIGHTS = (6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def individual_number_check_digit(first11: str) -> int:
    """Check digit of an Individual Number from its first 11 digits."""
    r = sum(int(d) * w for d, w in zip(first11, _WEIGHTS, strict=True)) % 11
    return 0 if r <= 1 else 11 - r


def is_individual_number(value: str) -> bool:
    """True if value is 12 ASCII digits whose last digit is a valid check digit."""
    return (
        len(value) == 12
        and value.isascii()
        and value.isdigit()
        and individual_number_check_digit(value[:11]) == int(value[11])
    )


def _refuse_individual_number(field: str, value: str) -> None:
    if len(value) < 12:
        return  # too short to hold 12 digits (the common case: keep it cheap)
    if is_individual_number(value) or (
        ("-" in value or " " in value) and is_individual_number(value.translate(_SEPARATORS))
    ):
        raise IndividualNumberError(
            f"{field} looks like an Individual Number (12 digits with a valid check digit); "
            "mykey never stores one. Use the service's own customer number instead, or register "
            "the business with numeric 12-digit service IDs declared."
        )


def check_business_id(value: str, field: str = "business_id") -> str:
    """Validate a business ID: one upper-case letter and four digits (e.g. A0001)."""
    if not isinstance(value, str) or not BUSINESS_ID_RE.match(value):
        raise ValidationError(f"{field} {value!r} is not a business ID: expected a letter and 4 digits, e.g. A0001")
    return value


def check_mykey_id(value: str, field: str = "mykey_id") -> str:
    """Validate a MyKey ID: 8 characters from the unambiguous alphabet."""
    if not isinstance(value, str) or not MYKEY_ID_RE.match(value):
        raise ValidationError(
            f"{field} {value!r} is not a MyKey ID: expected {MYKEY_ID_LEN} characters from {MYKEY_ALPHABET}"
        )
    return value


def _check_opaque(value: str, field: str) -> None:
    """A business's own identifier (service or customer ID): printable ASCII without spaces."""
    if not isinstance(value, str) or not OPAQUE_ID_RE.match(value):
        raise ValidationError(
            f"{field} {value!r} is not valid: use 1-{MAX_SERVICE_ID_LEN} printable ASCII characters without spaces"
        )


def check_service_id(value: str, field: str = "service_id", *, numeric_declared: bool = False) -> str:
    """Validate a service ID; 12-digit Individual-Number-shaped values need a declared business."""
    _check_opaque(value, field)
    if not numeric_declared or not value.isdigit():
        # A declaration covers the business's plain 12-digit IDs, not separated forms.
        _refuse_individual_number(field, value)
    return value


def check_customer_id(value: str | None, field: str = "customer_id") -> str | None:
    """Validate an optional opaque customer ID (never an Individual Number)."""
    if value is None:
        return None
    _check_opaque(value, field)
    _refuse_individual_number(field, value)
    return value


def check_terminal_id(value: str, field: str = "terminal_id") -> str:
    """Validate a terminal ID: its business ID, '-T' and 4-8 digits (e.g. A0001-T0001)."""
    if not isinstance(value, str) or not TERMINAL_ID_RE.match(value):
        raise ValidationError(f"{field} {value!r} is not a terminal ID: expected e.g. A0001-T0001")
    return value


def check_actor_id(value: str, field: str = "actor id") -> str:
    """Validate who caused an event: 1-64 printable ASCII characters, never an Individual Number."""
    if not isinstance(value, str) or not ACTOR_ID_RE.match(value):
        raise ValidationError(f"{field} {value!r} is not valid: use 1-64 printable ASCII characters without spaces")
    _refuse_individual_number(field, value)
    return value


def check_municipality(value: str) -> str:
    """Validate a local government code (5 or 6 digits)."""
    if not isinstance(value, str) or not MUNICIPALITY_RE.match(value):
        raise ValidationError(f"municipality code {value!r} is not valid: expected 5 or 6 digits, e.g. 131016")
    return value


def check_text(value: str, field: str, max_len: int, *, allow_empty: bool = True) -> str:
    """Validate free text (reasons, business names): bounded, and no Individual Number inside."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be text")
    if len(value) > max_len:
        raise ValidationError(f"{field} is {len(value)} characters; the limit is {max_len}. Shorten it")
    if not allow_empty and not value.strip():
        raise ValidationError(f"{field} must not be empty")
    if any(ch in value for ch in "\x00\r\n"):
        raise ValidationError(f"{field} must be a single line without control characters")
    # NFKC folds full-width digits (１２３…) into ASCII before looking for numbers.
    for candidate in twelve_digit_candidates(unicodedata.normalize("NFKC", value)):
        _refuse_individual_number(field, candidate)
    return value


def twelve_digit_candidates(text: str) -> list[str]:
    """Every way text can spell a 12-digit number: a 12-digit group, or adjacent groups of 12 digits in all."""
    out = []
    for m in _DIGIT_RUN_RE.finditer(text):
        groups = _GROUP_SEP_RE.split(m.group())
        for i, group in enumerate(groups):
            if len(group) == 12:
                out.append(group)
            total = len(group)
            for j in range(i + 1, len(groups)):
                total += len(groups[j])
                if total == 12:
                    out.append("".join(groups[i : j + 1]))
                if total >= 12:
                    break
    return out


def random_mykey_id() -> str:
    """A random MyKey ID (uniqueness is the caller's check against the index)."""
    return "".join(secrets.choice(MYKEY_ALPHABET) for _ in range(MYKEY_ID_LEN))
