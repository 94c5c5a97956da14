"""Identifier formats and the Individual Number guard (pure functions, no I/O).

Every id and every text that enters mykey passes through here. An Individual Number
(個人番号: 12 digits with a valid check digit) is refused everywhere, however it is
spelled (the rule is written above ``contains_individual_number``): mykey must never
store one. The only exception is a business that declared, in its attributable
registration event, that its own service IDs are 12-digit numbers; it covers that
business's plain 12-digit service IDs only. Text fields also refuse control, format
and line-separator characters (``first_control_character``).
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
    if contains_individual_number(value):
        raise IndividualNumberError(
            f"{field} holds an Individual Number (12 digits with a valid check digit, perhaps spelled with "
            "separators or other scripts); mykey never stores one. Use the service's own customer number "
            "instead, or register the business with numeric 12-digit service IDs declared. If this is another "
            "number, put a word between its digit groups."
        )


# --- the Individual Number guard ---------------------------------------------------
#
# Before looking for numbers, a value is folded: every character with a decimal digit
# value (category Nd in every script, superscript and circled digits) and the kanji
# numerals 〇一二三四五六七八九 become ASCII digits; format characters (category Cf:
# zero-width, soft hyphen, bidi marks) are dropped; letters stay letters; anything else
# (spaces, tabs, punctuation, dashes, symbols, marks, U+30FC) is a separator.
#
# A *group* is a maximal run of digits. A number may be spelled across groups joined
# only by separators. Refused: any group, or consecutive groups joined by separators,
# with exactly 12 digits in total and a valid check digit. Letters end a number
# (X123456789018 holds the group 123456789018; 1234a5678b9018 holds three short
# groups). A window cutting through a group is not a candidate: inside 1234567890180
# the digits run on, so it is a 13-digit number, not an Individual Number.

_KANJI_DIGITS = {ord(c): str(d) for d, c in enumerate("〇一二三四五六七八九")}
_LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Nl", "No"})  # Lm (e.g. U+30FC) separates
# A group, then more groups each after a run of separators (on ASCII or folded text).
_SPELLED_RE = re.compile(r"[0-9]+(?:[^0-9A-Za-z]+[0-9]+)*")
_GROUP_RE = re.compile(r"[0-9]+")
_ASCII_DIGITS = b"0123456789"
_FOLD_CACHE_MAX = 65536


class _Fold(dict):  # type: ignore[type-arg]
    """str.translate table folding any character to an ASCII digit, "a" (letter), " " (separator) or nothing."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        digit = unicodedata.digit(ch, None)
        if digit is not None:
            out = str(digit)
        elif cp in _KANJI_DIGITS:
            out = _KANJI_DIGITS[cp]
        else:
            cat = unicodedata.category(ch)
            out = "" if cat == "Cf" else "a" if cat in _LETTER_CATEGORIES else " "
        if len(self) < _FOLD_CACHE_MAX:
            self[cp] = out
        return out


_FOLD = _Fold()


def digit_value(ch: str) -> int | None:
    """The digit a character spells for the guard (any script, kanji numerals), else None."""
    out = _FOLD[ord(ch)]
    return int(out) if out.isdigit() else None


def fold_digits(value: str) -> str:
    """value folded for the guard: ASCII digits, "a" for letters, " " for separators, format characters gone."""
    return value if value.isascii() else value.translate(_FOLD)


def twelve_digit_candidates(text: str) -> list[str]:
    """Every 12-digit number text spells: a group, or consecutive groups joined by separators, of 12 digits."""
    out = []
    for m in _SPELLED_RE.finditer(fold_digits(text)):
        groups = _GROUP_RE.findall(m.group())
        for i in range(len(groups)):
            total = 0
            for j in range(i, len(groups)):
                total += len(groups[j])
                if total == 12:
                    out.append("".join(groups[i : j + 1]))
                if total >= 12:
                    break
    return out


def contains_individual_number(value: str) -> bool:
    """True if value spells an Individual Number anywhere (see the rule above)."""
    if len(value) < 12:
        return False  # the common case: too short to hold 12 digits of any script
    folded = fold_digits(value)
    raw = folded.encode("ascii")
    if len(raw) - len(raw.translate(None, _ASCII_DIGITS)) < 12:
        return False  # fewer than 12 digits in all (bytes.translate: the fastest count)
    return any(is_individual_number(c) for c in twelve_digit_candidates(folded))


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
    if not (numeric_declared and len(value) == 12 and value.isdigit()):
        # A declaration covers the business's plain 12-digit IDs, not separated or embedded forms.
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
    """Validate free text (reasons, business names): bounded, printable, and no Individual Number inside."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be text")
    if len(value) > max_len:
        raise ValidationError(f"{field} is {len(value)} characters; the limit is {max_len}. Shorten it")
    if not allow_empty and not value.strip():
        raise ValidationError(f"{field} must not be empty")
    _refuse_individual_number(field, value)
    bad = first_control_character(value)
    if bad is not None:
        raise ValidationError(
            f"{field} must be a single line of printable text; it holds U+{ord(value[bad]):04X} "
            f"({unicodedata.name(value[bad], 'a control character')}) at position {bad}. Remove it"
        )
    return value


# Refused in text: C0/C1 controls and DEL (Cc), format characters such as bidi overrides,
# zero-width characters and the soft hyphen (Cf), surrogates (Cs), line and paragraph
# separators (Zl, Zp).
REFUSED_TEXT_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ASCII_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def first_control_character(value: str) -> int | None:
    """Position of the first character text fields refuse (see REFUSED_TEXT_CATEGORIES), else None."""
    if value.isascii():
        m = _ASCII_CONTROL_RE.search(value)
        return None if m is None else m.start()
    if value.isprintable():
        return None  # isprintable is False for every refused category (and a few allowed spaces)
    for i, ch in enumerate(value):
        if unicodedata.category(ch) in REFUSED_TEXT_CATEGORIES:
            return i
    return None


def random_mykey_id() -> str:
    """A random MyKey ID (uniqueness is the caller's check against the index)."""
    return "".join(secrets.choice(MYKEY_ALPHABET) for _ in range(MYKEY_ID_LEN))
