"""MYKEY_PURE: one switch, read in one place, choosing the LMDB binding and the framing together."""

from __future__ import annotations

import re
from pathlib import Path

import mykey
import pytest
from mykey.datadir import DataDir
from mykey.errors import ValidationError
from mykey.index import envguard
from mykey.index.binding import binding, native_import_error
from mykey.index.store import Index, current_generation
from mykey.log import framing
from mykey.log.accel import framing_module

NATIVE_BUILT = native_import_error() is None


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", " Yes ", "on"])
def test_pure_values_make_both_choices_pure(monkeypatch, tmp_path, value):
    monkeypatch.setenv("MYKEY_PURE", value)
    assert binding().NAME == "pure"
    assert framing_module() is framing
    data = DataDir(tmp_path)
    with Index.open(data) as idx:  # what the index then really opens with
        assert idx.binding.NAME == "pure"
        assert envguard.holder(str(current_generation(data))) == "pure"


@pytest.mark.skipif(not NATIVE_BUILT, reason="the native modules are not built")
@pytest.mark.parametrize("value", [None, "", "0", "false", "No", "off"])
def test_other_documented_values_take_the_native_modules(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("MYKEY_PURE", raising=False)
    else:
        monkeypatch.setenv("MYKEY_PURE", value)
    assert binding().NAME == "native"
    assert framing_module() is not framing
    assert framing_module().__name__ == "mykey.log._framing"


@pytest.mark.parametrize("value", ["2", "maybe", "pure", "ture", "1 0"])
def test_a_value_not_understood_is_refused_by_both_choices(monkeypatch, tmp_path, value):
    monkeypatch.setenv("MYKEY_PURE", value)
    for choose in (binding, framing_module, lambda: Index.open(DataDir(tmp_path))):
        with pytest.raises(ValidationError, match=r"MYKEY_PURE=.* is not understood; set it to 1 .* or 0"):
            choose()


def test_the_switch_is_read_only_by_mykey_native():
    """No module but mykey/native.py reads MYKEY_PURE from the environment."""
    root = Path(mykey.__file__).parent
    reads = re.compile(r"""(environ\b[^\n]*|getenv\([^\n]*)["']MYKEY_PURE["']""")
    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if reads.search(p.read_text()))
    assert readers == ["native.py"]
