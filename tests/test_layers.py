"""The package layout is the architecture: a package imports only from the layers below it.

Layers, bottom to top (same line: same layer, may not import each other unless listed):
errors < fs, native < datadir < domain < log < index < audit < auth < engine, client < gateway < cli.
Read from the source with ast, so a new upward import fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mykey

CORE = Path(mykey.__file__).parent
# Rank of each top-level module or sub-package of mykey; an import may only go to a lower rank.
RANK = {
    "errors": 0,
    "fs": 1,
    "native": 1,
    "datadir": 2,
    "domain": 3,
    "log": 4,
    "index": 5,
    "audit": 6,
    "auth": 7,
    "engine": 8,
    "client": 8,  # the terminal side: never imports the engine (nor the engine it)
    "gateway": 9,
    "cli": 10,
}


def _unit(path: Path) -> str:
    rel = path.relative_to(CORE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.suffix == ".py" else rel.stem


def _imported_units(path: Path) -> set[str]:
    """The mykey units (top-level module or sub-package) a module imports, at any depth in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(CORE)
    package = ["mykey", *rel.parts[:-1]]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            else:
                target = (node.module or "").split(".")
            if target[:1] != ["mykey"]:
                continue
            if len(target) == 1:  # from mykey import x / from .. import x
                out.update(alias.name for alias in node.names)
            else:
                out.add(target[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mykey" and len(parts) > 1:
                    out.add(parts[1])
    return out


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in CORE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py") or p.parent != CORE}
    units.discard("__init__")
    assert units <= set(RANK), f"give these a layer in RANK: {sorted(units - set(RANK))}"


def test_no_package_imports_one_above_it():
    upward = []
    for path in sorted(CORE.rglob("*.py")):
        if path.parent == CORE and path.name in ("__init__.py", "__main__.py"):
            continue  # the public face and `python -m mykey` sit on top of everything
        unit = _unit(path)
        for target in _imported_units(path):
            if target in RANK and target != unit and RANK[target] >= RANK[unit]:
                upward.append(f"{path.relative_to(CORE)} imports mykey.{target}")
    assert not upward, "imports that run upward or sideways:\n" + "\n".join(upward)


def test_runtime_package_never_imports_dev_tooling():
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "mykey_dev" for n in names):
                offenders.append(str(path.relative_to(CORE)))
    assert not offenders, f"the runtime package imports mykey_dev in {offenders}"
