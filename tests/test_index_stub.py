"""The type stubs of the Cython modules (core/index/_lmdb.pyi, core/log/_framing.pyi) against them and their twins.

`mypy.stubtest` compares the stub with the Cython module mykey.index._lmdb as Python
sees it: the names it exports, its classes, and every method's parameters (names,
kinds, defaults). What stubtest cannot check for a Cython module:

- constructors: Cython's ``__init__`` of a ``cdef class`` is a slot wrapper without a
  signature, so Env's keywords are checked by calling the Env with every one of them;
- types: the module carries no annotations, so argument and return types in the stub
  are checked only by the tests that use the bindings;
- the pure twin: stubtest checks one module against one stub, so the twin's public
  names and signatures are compared with the stub here (both bindings must offer
  exactly the interface the stub describes).
"""

import __future__

import inspect
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import mykey
import pytest
from mykey.index import _lmdb_pure as pure
from mykey.index.binding import binding_by_name, native_import_error

STUB = Path(mykey.__file__).parent / "index" / "_lmdb.pyi"
CLASSES = ("Env", "Txn", "Cursor", "Reader")
# Made by Env.begin(), Txn.cursor() and Env.reader(): their constructors are not interface.
INTERNAL_CONSTRUCTORS = {"Txn", "Cursor", "Reader"}
needs_native = pytest.mark.skipif(native_import_error() is not None, reason="native binding not built")


def _stub_module() -> ModuleType:
    """The stub executed as a Python module (its functions carry the stub's signatures)."""
    source = STUB.read_text()
    code = compile(source, str(STUB), "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    module = ModuleType("_lmdb_stub")
    exec(code, module.__dict__)
    return module


def _public(cls: type) -> dict[str, object]:
    """Public methods and properties of a class (and __init__, __enter__, __exit__)."""
    return {
        name: value
        for name, value in vars(cls).items()
        if (not name.startswith("_") or name in ("__init__", "__enter__", "__exit__")) and name != "__doc__"
        and (callable(value) or isinstance(value, property))
    }


@needs_native
def test_stubtest_finds_no_mismatch_with_the_native_module(tmp_path):
    pytest.importorskip("mypy.stubtest")
    # mypy finds the package by its import name: point it at the source tree.
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "mykey").symlink_to(Path(mykey.__file__).parent)
    config = tmp_path / "mypy.ini"
    config.write_text(
        f"[mypy]\nmypy_path = {tmp_path / 'path'}\n"
        # Only the stub is under test; the rest of the package is read for its names.
        "[mypy-mykey.*]\nignore_errors = True\n[mypy-mykey.index._lmdb,mykey.log._framing]\nignore_errors = False\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config), "mykey.index._lmdb",
         "mykey.log._framing"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_stub_exports_what_both_bindings_export():
    stub = _stub_module()
    for binding in (pure, *(() if native_import_error() else (binding_by_name("native"),))):
        assert sorted(stub.__all__) == sorted(binding.__all__), binding.NAME
        for name in stub.__all__:
            assert hasattr(binding, name), (binding.NAME, name)
        for name in ("LmdbError", "DbNotFoundError", "MapFullError", "MapResizedError",
                     "EnvNotFoundError", "EnvAlreadyOpenError"):
            assert getattr(binding, name) is getattr(stub, name), name  # the very classes of mykey.errors


@pytest.mark.parametrize("cls", CLASSES)
def test_pure_twin_has_the_stubs_interface(cls, tmp_path):
    stub_members = _public(getattr(_stub_module(), cls))
    pure_members = _public(getattr(pure, cls))
    stub_methods = {n for n, v in stub_members.items() if not isinstance(v, property)}
    pure_methods = set(pure_members)
    if cls in INTERNAL_CONSTRUCTORS:
        stub_methods.discard("__init__")
        pure_methods.discard("__init__")
    assert pure_methods == stub_methods
    for name in sorted(stub_methods):
        want = inspect.signature(stub_members[name])
        got = inspect.signature(pure_members[name])
        assert [(p.name, p.kind) for p in got.parameters.values()] == [
            (p.name, p.kind) for p in want.parameters.values()
        ], f"{cls}.{name}{got} != stub {cls}.{name}{want}"
        for p in want.parameters.values():
            if p.default is not Ellipsis:
                assert got.parameters[p.name].default == p.default, f"{cls}.{name}({p.name}=...)"
    # Properties in the stub are attributes of the twin's objects.
    props = {n for n, v in stub_members.items() if isinstance(v, property)}
    with pure.Env(str(tmp_path / "env"), map_size=1 << 20) as env:
        db = env.open_db(b"x")
        txn = env.begin()
        objects = {"Env": env, "Txn": txn, "Cursor": txn.cursor(db), "Reader": env.reader()}
        for name in props:
            assert hasattr(objects[cls], name), f"{cls}.{name}"
        txn.abort()


@pytest.mark.parametrize("name", ["native", "pure"])
def test_env_accepts_every_keyword_of_the_stub(name, tmp_path):
    """stubtest cannot see Cython constructors: call Env with each keyword the stub names."""
    if name == "native" and native_import_error() is not None:
        pytest.skip(f"the Cython binding is not built ({native_import_error()}); run `make build`")
    binding = binding_by_name(name)
    params = inspect.signature(_stub_module().Env.__init__).parameters
    assert [p for p in params if p not in ("self", "path")] == [
        "readonly", "map_size", "max_dbs", "nordahead", "create", "sync", "metasync"
    ]
    kw = {"readonly": False, "map_size": 2 << 20, "max_dbs": 3, "nordahead": True, "create": True,
          "sync": False, "metasync": False}
    with binding.Env(tmp_path / "env", **kw) as env:
        assert env.path == str(tmp_path / "env") and env.readonly is False
        assert env.info()["map_size"] == 2 << 20
        for db in (b"a", b"b", b"c"):
            env.open_db(db)
        with pytest.raises(binding.LmdbError, match="max_dbs"):
            env.open_db(b"d")  # max_dbs=3 was taken
    with binding.Env(tmp_path / "env", readonly=True, create=False) as env:
        assert env.readonly is True


def test_framing_stub_matches_the_pure_twin():
    """The Cython framing's stub names exactly what the pure twin offers, with the same signatures."""
    from mykey.log import framing

    source = (Path(mykey.__file__).parent / "log" / "_framing.pyi").read_text()
    code = compile(source, "_framing.pyi", "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    stub = ModuleType("_framing_stub")
    exec(code, stub.__dict__)
    names = [n for n in vars(stub) if not n.startswith("_") and n not in ("Buffer",)]
    for name in names:
        assert hasattr(framing, name), name
        if callable(getattr(stub, name)):
            assert list(inspect.signature(getattr(stub, name)).parameters) == list(
                inspect.signature(getattr(framing, name)).parameters), name
