"""Identifier formats and the Individual Number guard."""

import pytest
from hypothesis import given
from mykey.domain import ids
from mykey.errors import IndividualNumberError, ValidationError

from .strategies import individual_numbers, opaque_ids


def test_known_individual_number_is_valid():
    assert ids.is_individual_number("123456789018")
    assert not ids.is_individual_number("123456789017")
    assert not ids.is_individual_number("12345678901")
    assert not ids.is_individual_number("1234567890180")
    assert not ids.is_individual_number("１２３４５６７８９０１８")  # full-width digits


def test_check_digit_rule_by_hand():
    # r = sum mod 11; check = 0 if r <= 1 else 11 - r
    first = "12345678901"
    r = sum(int(d) * w for d, w in zip(first, (6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2))) % 11
    assert ids.individual_number_check_digit(first) == (0 if r <= 1 else 11 - r) == 8


@given(individual_numbers())
def test_every_id_field_refuses_individual_numbers(number):
    for check in (ids.check_service_id, ids.check_customer_id, ids.check_actor_id):
        with pytest.raises(IndividualNumberError):
            check(number)
    with pytest.raises(IndividualNumberError):
        ids.check_text(f"customer said {number} at the desk", "reason", 256)
    # Declared numeric businesses may use such values as service IDs.
    assert ids.check_service_id(number, numeric_declared=True) == number


@given(opaque_ids.filter(lambda s: not ids.contains_individual_number(s)))
def test_opaque_ids_accepted(value):
    assert ids.check_service_id(value) == value


@pytest.mark.parametrize("bad", ["", "a b", "x" * 33, "caf\u00e9", "tab\t", None, 12345])
def test_bad_service_ids(bad):
    with pytest.raises(ValidationError):
        ids.check_service_id(bad)


@pytest.mark.parametrize("bad", ["a0001", "A001", "A00011", "AA001", "", "A000\n"])
def test_bad_business_ids(bad):
    with pytest.raises(ValidationError, match="business ID"):
        ids.check_business_id(bad)


@pytest.mark.parametrize("bad", ["ABCDEFG", "ABCDEFGHJ", "ABCDEFG0", "ABCDEFGI", "abcdefgh", "ABCDEFGO"])
def test_bad_mykey_ids(bad):
    with pytest.raises(ValidationError, match="MyKey ID"):
        ids.check_mykey_id(bad)


def test_random_mykey_ids_are_valid():
    for _ in range(200):
        ids.check_mykey_id(ids.random_mykey_id())


def test_text_limits():
    with pytest.raises(ValidationError, match="limit"):
        ids.check_text("x" * 300, "reason", 256)
    with pytest.raises(ValidationError, match="single line"):
        ids.check_text("a\nb", "reason", 256)
    # A 13-digit run is not an Individual Number.
    assert ids.check_text("order 1234567890180", "reason", 256)


@given(individual_numbers())
def test_individual_numbers_in_disguise_are_refused(number):
    spaced = f"{number[:4]} {number[4:8]} {number[8:]}"
    hyphened = f"{number[:4]}-{number[4:8]}-{number[8:]}"
    full_width = "".join(chr(0xFF10 + int(d)) for d in number)
    for text in (f"my number is {spaced}", f"no. {hyphened}!", f"番号{full_width}です"):
        with pytest.raises(IndividualNumberError):
            ids.check_text(text, "reason", 256)
    with pytest.raises(IndividualNumberError):
        ids.check_service_id(hyphened)
    with pytest.raises(IndividualNumberError):
        ids.check_customer_id(hyphened)


def test_longer_digit_runs_are_not_individual_numbers():
    assert ids.check_text("tel 03-1234-5678", "reason", 256)
    assert ids.check_text("order 1234567890180", "reason", 256)


@pytest.mark.parametrize(
    "text",
    ["x 2024 123456789018", "card 123456789018 2 times", "123456789018 123456789018", "ids 1 123456789018",
     "a 1234 5678 9018 b", "99-1234-5678-9018"],
)
def test_individual_numbers_next_to_other_digits_are_refused(text):
    with pytest.raises(IndividualNumberError):
        ids.check_text(text, "reason", 256)


def test_a_numeric_declaration_covers_only_plain_12_digit_ids():
    assert ids.check_service_id("123456789018", numeric_declared=True)
    with pytest.raises(IndividualNumberError):
        ids.check_service_id("1234-5678-9018", numeric_declared=True)
