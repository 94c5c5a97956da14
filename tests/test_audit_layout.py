"""The audit package's layering: one home per concept, imports pointing one way, LogStore only."""

from __future__ import annotations

import ast
from pathlib import Path

import mykey.audit

PACKAGE = Path(mykey.audit.__file__).parent
# The order of the package docstring: a module may import only modules before it.
ORDER = ["merkle", "merkle_store", "checkpoint", "checkpoints", "keys", "replay", "trail", "proofs", "verify", "history", "statuslist_keys"]


def relative_imports(module: str) -> list[tuple[int, str]]:
    """(level, dotted module) of every relative import in the module, at any depth."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text("utf-8"))
    return [(n.level, n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]


def test_every_module_is_in_the_documented_order():
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(ORDER)
    doc = mykey.audit.__doc__ or ""
    assert [m for m in ORDER if f"``{m}``" in doc] == ORDER
    assert sorted(ORDER, key=lambda m: doc.index(f"``{m}``")) == ORDER


def test_modules_import_only_modules_before_them():
    for i, module in enumerate(ORDER):
        for level, target in relative_imports(module):
            if level == 1:
                assert target.split(".")[0] in ORDER[:i], f"{module} imports .{target}"


def test_only_verify_knows_the_file_log():
    for module in ORDER:
        file_log = [t for level, t in relative_imports(module) if level == 2 and t.startswith("log.") and t not in (
            "log.store", "log.backend")]
        assert file_log == ([] if module != "verify" else ["log.damage", "log.filelog", "log.verify"]), module
