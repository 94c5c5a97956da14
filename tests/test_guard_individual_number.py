"""The Individual Number guard against disguises, through every input path.

Hypothesis generates valid Individual Numbers (12 digits, check digit per the
domain rule) and disguises them: digits from other scripts, separators of every
kind between digit groups, invisible format characters, letters and text around
them. None may be stored, whether it arrives through the Python API, the CLI, a
CSV import or the operator's name. Ordinary numbers (11 or 13 digits, phone
numbers, dates) still pass.
"""

from __future__ import annotations

import csv
import itertools
import os
import pwd
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from mykey.cli import main
from mykey.client import keys as terminal_keys
from mykey.domain import events as ev
from mykey.domain import ids
from mykey.engine import Engine
from mykey.errors import IndividualNumberError, ValidationError
from mykey.log.backend import open_log

from .conftest import create_user
from .strategies import individual_numbers

MYKEY = "ABCDEFGH"

# Zero of each decimal digit block used to spell digits in other scripts (all category Nd).
SCRIPT_ZEROS = {
    "ascii": 0x30,
    "full-width": 0xFF10,
    "arabic-indic": 0x660,
    "extended arabic-indic": 0x6F0,
    "devanagari": 0x966,
    "bengali": 0x9E6,
    "thai": 0xE50,
    "tibetan": 0xF20,
    "mongolian": 0x1810,
    "mathematical bold": 0x1D7CE,
}
SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
KANJI = "〇一二三四五六七八九"
# Runs of non-alphanumerics that people (or attackers) put between digit groups.
SEPARATORS = [
    " ", "  ", "\t", ".", "_", "-", "/", ":", ",", "+", "(", ")", "#", "*", "=", "~",
    "\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2212", "\u30fc", "\uff70", "\uff0d", "\u3000",
    "\u00a0", "\u30fb", "\u301c", "\u0301", " - ", "._.",
]
ASCII_SEPARATORS = [s for s in SEPARATORS if s.isascii() and s.isprintable() and " " not in s]
# Invisible format characters (category Cf): the guard drops them before looking for numbers.
FORMAT_CHARS = ["\u00ad", "\u200b", "\u200c", "\u200d", "\u200e", "\u2060", "\ufeff", "\u202e", "\u2066", "\u061c"]
WORDS = st.sampled_from(["my number", "Nr.", "番号", "card", "X", "tel", "رقم", "संख्या", "ID:"])


def spell(digit: str, script: str) -> str:
    d = int(digit)
    if script == "superscript":
        return SUPERSCRIPTS[d]
    if script == "kanji":
        return KANJI[d]
    return chr(SCRIPT_ZEROS[script] + d)


@st.composite
def partitions(draw, number: str) -> list[str]:
    """The number cut into 1-12 consecutive groups."""
    cuts = sorted(draw(st.sets(st.integers(1, 11), max_size=11)))
    bounds = [0, *cuts, 12]
    return [number[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def disguised_text(draw) -> tuple[str, str]:
    """(the number, free text spelling it in disguise)."""
    number = draw(individual_numbers())
    scripts = st.sampled_from([*SCRIPT_ZEROS, "superscript", "kanji"])
    mixed = draw(st.booleans())
    one = draw(scripts)
    out = []
    for i, group in enumerate(draw(partitions(number))):
        if i:
            out.append(draw(st.sampled_from(SEPARATORS)))
        for digit in group:
            if draw(st.integers(0, 5)) == 0:
                out.append(draw(st.sampled_from(FORMAT_CHARS)))
            out.append(spell(digit, draw(scripts) if mixed else one))
    body = "".join(out)
    before = draw(st.sampled_from(["", "X", "my number ", "番号：", "ref#"]))
    after = draw(st.sampled_from(["", "X", " thanks", "です", ".", " (2024)"]))
    text = f"{draw(WORDS)} {before}{body}{after}"
    return number, text


@st.composite
def disguised_id(draw, max_len: int = 32) -> tuple[str, str]:
    """(the number, an ASCII id without spaces spelling it: groups, separators, letters around)."""
    number = draw(individual_numbers())
    seps = draw(st.lists(st.sampled_from(ASCII_SEPARATORS), min_size=11, max_size=11))
    groups = draw(partitions(number))
    body = groups[0] + "".join(seps[i] + g for i, g in enumerate(groups[1:]))
    before = draw(st.sampled_from(["", "X", "C-", "svc_", "AB", "id."]))
    after = draw(st.sampled_from(["", "X", "-a", "_z", "Q"]))
    value = before + body + after
    if len(value) > max_len:
        value = body[:max_len] if len(body) <= max_len else number
    return number, value


@given(disguised_text())
def test_disguises_keep_the_number(case):
    """The disguise generator really spells a valid Individual Number (or the tests below prove nothing)."""
    number, text = case
    assert ids.is_individual_number(number)
    digits = "".join(str(d) for d in map(ids.digit_value, text) if d is not None)
    assert number in digits


# ------------------------------------------------------------------- the guard itself


@given(disguised_text())
def test_disguised_numbers_in_text_are_refused(case):
    _, text = case
    assert ids.contains_individual_number(text), text
    with pytest.raises(IndividualNumberError):
        ids.check_text(text, "reason", 1024)


@given(disguised_id())
def test_disguised_numbers_in_id_fields_are_refused(case):
    _, value = case
    for check in (ids.check_service_id, ids.check_customer_id):
        with pytest.raises(IndividualNumberError):
            check(value)
    with pytest.raises(IndividualNumberError):
        ids.check_actor_id(value)
    if not plain(value):  # a numeric declaration covers only plain 12-digit service IDs
        with pytest.raises(IndividualNumberError):
            ids.check_service_id(value, numeric_declared=True)


@pytest.mark.parametrize(
    "value",
    ["X123456789018", "123456789018X", "1234.5678.9018", "1234_5678_9018", "1234/5678/9018", "a1234-5678-9018b",
     "C1234.5678.9018", "1.2.3.4.5.6.7.8.9.0.1.8", "123456789018-1"],
)
def test_the_review_findings_in_id_fields(value):
    for check in (ids.check_service_id, ids.check_customer_id, ids.check_actor_id):
        with pytest.raises(IndividualNumberError):
            check(value)


@pytest.mark.parametrize(
    "text",
    ["1234\t5678\t9018", "1234  5678  9018", "1234\u20105678\u20109018", "1234\u22125678\u22129018",
     "1234\u30fc5678\u30fc9018", "١٢٣٤٥٦٧٨٩٠١٨", "१२३४५६७८९०१८", "1234\u200b5678\u200b9018",
     "1234\u00ad5678\u00ad9018", "１２３４　５６７８　９０１８", "一二三四五六七八九〇一八", "name 123456789018X"],
)
def test_the_review_findings_in_text(text):
    assert ids.contains_individual_number(text)


@given(st.text(alphabet="0123456789", min_size=13, max_size=20))
def test_longer_digit_runs_are_not_individual_numbers(run):
    """A 12-digit window inside a longer run of digits is not one: the run is the number."""
    assert not ids.contains_individual_number(run)
    assert ids.check_text(f"order {run}", "reason", 256)
    assert ids.check_service_id(run[:32])


@given(st.lists(st.text(alphabet="0123456789", min_size=1, max_size=11), min_size=1, max_size=6),
       st.sampled_from(["-", " ", ".", "_", "\u2212"]))
def test_fewer_than_twelve_digits_pass(groups, sep):
    digits = "".join(groups)[:11]
    assert not ids.contains_individual_number(sep.join([digits[:3], digits[3:]]))
    assert not ids.contains_individual_number(digits)


@pytest.mark.parametrize(
    "text",
    ["tel 03-1234-5678", "order 1234567890180", "2024-01-05 09:30", "order 1234-5678-90180", "12345678901",
     "1234a5678b9018", "123456789018123", "0120-123-456 (free call)", "ISBN 978-4-10-109205-8"],
)
def test_ordinary_numbers_pass(text):
    assert not ids.contains_individual_number(text)


def test_groups_summing_to_twelve_are_one_number_wherever_they_stand():
    """Windows are whole groups: extra groups around a spelled number do not hide it."""
    assert ids.contains_individual_number("99-1234-5678-9018")
    assert ids.contains_individual_number("1234 5678 9018 77")
    assert not ids.contains_individual_number("99-1234-5678-9017")  # wrong check digit


def test_the_declaration_covers_only_plain_twelve_digit_service_ids():
    assert ids.check_service_id("123456789018", numeric_declared=True)
    for value in ("1234.5678.9018", "X123456789018", "1234_5678_9018", "12345678901８"):
        with pytest.raises(ValidationError):
            ids.check_service_id(value, numeric_declared=True)
    with pytest.raises(IndividualNumberError):  # never a customer ID
        ids.check_customer_id("123456789018")


# --------------------------------------------------------------------- every input path


@pytest.fixture(scope="module")
def platform(tmp_path_factory, pki):
    """A data directory with a business (A0001), a numeric-declared business (A0002), a terminal and MyKey ID ABCDEFGH."""
    data = tmp_path_factory.mktemp("guard") / "data"
    with Engine.open(data) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        create_user(e, pki, requested_id=MYKEY)
        e.register_business("Library", "131016")
        e.register_business("Water works", "131016", numeric_service_ids=True)
        e.enrol_terminal("A0001", terminal_keys.public_pem(terminal_keys.generate()))
        e.register_service_ids("A0001", [("S1", None)])
        e.link_in_person("A0001", "S1", MYKEY, "photo ID checked at the desk")
    return data


def last_seq(data: Path) -> int:
    with open_log(data, readonly=True) as log:
        return log.last_seq


def all_values(data: Path) -> list[str]:
    """Every string stored in the log: bodies and actors."""
    out = []
    with open_log(data, readonly=True) as log:
        for env in log.read(1):
            out.append(env.actor.id)
            for name in env.body.__struct_fields__:
                value = getattr(env.body, name)
                if isinstance(value, str):
                    out.append(value)
    return out


def plain(value: str) -> bool:
    return len(value) == 12 and value.isascii() and value.isdigit()


def refused_everywhere(e: Engine, mykey_id: str, text: str, id_value: str) -> None:
    """Every Engine command taking text or ids refuses the disguised number; nothing is appended."""
    before = e.log.last_seq
    attempts = [
        lambda: e.register_business(text, "131016"),
        lambda: e.deactivate_business("A0001", text),
        lambda: e.revoke_terminal("A0001-T0001", text),
        lambda: e.register_service_ids("A0001", [(id_value, None)]),
        lambda: e.register_service_ids("A0001", [("S2", id_value)]),
        lambda: e.register_service_ids("A0002", [("S2", id_value)]),
        lambda: e.link_in_person("A0001", id_value, mykey_id, "photo ID checked at the desk"),
        lambda: e.link_in_person("A0001", "S9", mykey_id, text),
        lambda: e.link_challenge("A0001", id_value),
        lambda: e.unlink_service_id("A0001", id_value),
        lambda: e.ack(id_value, 0),
        lambda: e.register_business("Library", "131016", actor=ev.Actor("operator", id_value)),
        lambda: e.suspend(mykey_id, text),
        lambda: e.invalidate(mykey_id, text),
    ]
    if not plain(id_value):
        attempts.append(lambda: e.register_service_ids("A0002", [(id_value, None)]))
    for attempt in attempts:
        with pytest.raises(ValidationError):
            attempt()
    assert e.log.last_seq == before


@settings(max_examples=40)
@given(disguised_text(), disguised_id())
def test_python_api_stores_none(platform, text_case, id_case):
    with Engine.open(platform) as e:
        refused_everywhere(e, MYKEY, text_case[1], id_case[1])


@settings(max_examples=15)
@given(disguised_text(), disguised_id())
def test_cli_stores_none(platform, capsys, text_case, id_case):
    text, value = text_case[1], id_case[1]
    before = last_seq(platform)
    d = ["--data", str(platform)]
    for argv in (
        ["business", "add", *d, "--name", text, "--municipality", "131016"],
        ["business", "deactivate", *d, "A0001", "--reason", text],
        ["terminal", "revoke", *d, "A0001-T0001", "--reason", text],
        ["service", "register", *d, "A0001", value],
        ["service", "register", *d, "A0001", "S3", "--customer", value],
        ["service", "link", *d, "A0001", value, "--in-person", "--mykey", MYKEY, "--reason", "desk check"],
        ["service", "link", *d, "A0001", "S9", "--in-person", "--mykey", MYKEY, "--reason", text],
        ["service", "unlink", *d, "A0001", value],
        ["suspend", *d, MYKEY, "--reason", text],
        ["invalidate", *d, MYKEY, "--reason", text],
        ["feed", *d, value, "--ack"],
    ):
        assert main(argv) == 1, argv
        assert "Traceback" not in capsys.readouterr().err
    assert last_seq(platform) == before


@settings(max_examples=25)
@given(st.lists(disguised_id(), min_size=1, max_size=3), st.booleans())
def test_csv_import_stores_none(platform, tmp_path_factory, capsys, cases, as_customer):
    path = tmp_path_factory.mktemp("csv") / "ids.csv"
    rows = [["service_id", "customer_id"], ["OK-1", "C-1"]]
    for i, (_, value) in enumerate(cases):
        rows.append([f"OK-{i + 2}", value] if as_customer else [value, ""])
    with open(path, "w", newline="", encoding="ascii") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    before = last_seq(platform)
    with Engine.open(platform) as e, pytest.raises(IndividualNumberError, match="line 3"):
        e.import_service_ids_csv("A0001", path)
    assert main(["service", "import", "--data", str(platform), "A0001", str(path)]) == 1
    assert "Individual Number" in capsys.readouterr().err
    assert last_seq(platform) == before


def os_account() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@given(individual_numbers())
@settings(max_examples=10)
def test_environment_names_never_become_the_actor(platform, number):
    """USER and LOGNAME are whatever the caller's environment says; attribution uses the OS account."""
    old = {k: os.environ.get(k) for k in ("USER", "LOGNAME", "USERNAME", "LNAME")}
    try:
        for k in old:
            os.environ[k] = number
        with Engine.open(platform) as e:
            assert e.operator == ev.Actor("operator", os_account())
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_cli_records_the_os_account_not_the_environment(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "USER": "123456789018", "LOGNAME": "mallory", "USERNAME": "eve", "LNAME": "x"}
    for argv in (["init"], ["business", "add", "--name", "Lib", "--municipality", "131016"]):
        r = subprocess.run([sys.executable, "-m", "mykey", *argv, "--data", str(data)], env=env,
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
    with open_log(data, readonly=True) as log:
        actors = [e.actor for e in log.read(1)]
    assert actors[-1] == ev.Actor("operator", os_account())
    assert "123456789018" not in all_values(data) and "mallory" not in all_values(data)


def test_an_account_name_that_is_no_valid_actor_falls_back_to_the_uid():
    from mykey.engine.base import operator_for_account

    assert operator_for_account(1000, "alice") == ev.Actor("operator", "alice")
    for name in ("123456789018", "x1234.5678.9018", "bad name", "", "ü" * 3, "x" * 65):
        assert operator_for_account(1000, name) == ev.Actor("operator", "uid:1000")
    assert operator_for_account(1000, None) == ev.Actor("operator", "uid:1000")
