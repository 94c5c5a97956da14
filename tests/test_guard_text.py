"""Control characters: refused in every text field, and escaped whenever anything is printed."""

from __future__ import annotations

import json
import unicodedata

import hypothesis.strategies as st
import pytest
from hypothesis import given
from mykey.cli import main
from mykey.cli.output import Output, printable, printable_document
from mykey.client import keys as terminal_keys
from mykey.domain import events as ev
from mykey.domain import ids
from mykey.engine import Engine
from mykey.errors import ValidationError

from .conftest import create_user

REFUSED = [
    "\x00", "\x07", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u00ad", "\u200b", "\u200e", "\u200f",
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u061c",
    "\u2028", "\u2029", "\ufeff", "\U000e0001",
]
ALLOWED = ["図書館　本館", "Café No. 7", "Bibliothèque (Nord)", "مكتبة", "Ölçü – ü", "😀 shop", "\ue000 gaiji"]


@pytest.mark.parametrize("bad", REFUSED, ids=lambda c: f"U+{ord(c):04X}")
def test_control_characters_are_refused_in_text(bad):
    for text in (f"a{bad}b", bad, f"reason {bad}"):
        with pytest.raises(ValidationError, match=f"U\\+{ord(bad):04X}"):
            ids.check_text(text, "reason", 256)


@given(st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=3),
       st.text(max_size=20), st.text(max_size=20))
def test_any_refused_category_anywhere(bad, before, after):
    with pytest.raises(ValidationError):
        ids.check_text(before + bad + after, "business name", 256)


@pytest.mark.parametrize("text", ALLOWED)
def test_ordinary_text_passes(text):
    assert ids.check_text(text, "business name", 128) == text


def test_the_engine_refuses_control_characters_in_every_text_field(tmp_path, pki):
    with Engine.open(tmp_path / "data") as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        mk, _ = create_user(e, pki)
        bid = e.register_business("Library", "131016")
        e.enrol_terminal(bid, terminal_keys.public_pem(terminal_keys.generate()))
        before = e.log.last_seq
        for bad in ("\x1b[2J", "x\u202eevil", "a\u2028b", "\x9b31m"):
            for attempt in (
                lambda text: e.register_business(f"Lib {text}", "131016"),
                lambda text: e.deactivate_business(bid, text),
                lambda text: e.revoke_terminal(f"{bid}-T0001", text),
                lambda text: e.suspend(mk, text),
                lambda text: e.invalidate(mk, text),
                lambda text: e.link_in_person(bid, "S1", mk, f"checked {text}"),
            ):
                with pytest.raises(ValidationError):
                    attempt(bad)
        assert e.log.last_seq == before
        e.register_business(ALLOWED[0], "131016")  # an ideographic space is text, not a control


def test_the_cli_refuses_them_and_echoes_nothing_raw(tmp_path, capsys):
    d = ["--data", str(tmp_path / "data")]
    assert main(["init", *d]) == 0
    capsys.readouterr()
    assert main(["business", "add", *d, "--name", "Lib\x1b]0;owned\x07", "--municipality", "131016"]) == 1
    out, err = capsys.readouterr()
    assert "U+001B" in err and "\x1b" not in out + err and "\x07" not in out + err
    assert main(["show", *d, "AB\x1b[2JCDEF"]) == 1  # echoed in the error: escaped
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    assert main(["init", *d, "extra\x1b[2J"]) == 2  # argparse quotes what was typed
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\\u001b" in err


# ------------------------------------------------------------------ printing


@given(st.text())
def test_printable_never_passes_a_control_character(text):
    shown = printable(text)
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in shown)
    if text.isprintable():
        assert shown == text


@given(st.dictionaries(st.text(max_size=5), st.text()))
def test_an_escaped_json_document_is_the_same_json(d):
    doc = json.dumps(d, ensure_ascii=False, indent=2)
    assert json.loads(printable_document(doc)) == d


def test_every_output_channel_escapes(capsys):
    evil = "name\x1b[31m\u202eevil\x07\x85"
    out = Output(json_mode=False)
    out.result(evil)
    out.line(evil)
    out.refused(evil)
    out.document(f"{evil}\nline two\n")
    stdout, stderr = capsys.readouterr()
    for raw in ("\x1b", "\u202e", "\x07", "\x85"):
        assert raw not in stdout + stderr
    assert stdout.count("name\\u001b[31m\\u202eevil\\u0007\\u0085") == 3 and "line two\n" in stdout
    Output(json_mode=True).result(evil, reason="\x7f")
    line = capsys.readouterr().out
    assert line.isascii() and "\x7f" not in line and json.loads(line)["reason"] == "\x7f"


def test_stored_text_is_escaped_when_shown(tmp_path, capsys, monkeypatch):
    """Text stored before the rule existed (simulated by switching the check off) is shown escaped."""
    data = tmp_path / "data"
    monkeypatch.setattr(ids, "first_control_character", lambda value: None)
    with Engine.open(data) as e:
        e.register_business("Lib", "131016")
        e.deactivate_business("A0001", "closed\x1b[2J\u202e")
    monkeypatch.undo()
    assert main(["log", "show", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\\u001b[2J\\u202e" in out
    assert ev.Actor  # the log itself keeps what was stored
