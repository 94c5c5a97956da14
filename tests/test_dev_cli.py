"""The development commands (mykey_dev.cli): registered only where mykey_dev is installed,
`mykey bench` passes its arguments to the runner in a source checkout, and the runtime
package works without mykey_dev."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mykey.cli import build_parser, dev_groups, main
from mykey_dev import cli as dev_cli

REPO = Path(__file__).resolve().parent.parent
# Run Python code in a fresh interpreter where `import mykey_dev` fails, as in an installation without it.
WITHOUT_DEV = "import sys; sys.modules['mykey_dev'] = None\n"


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_dev_commands_come_from_mykey_dev():
    assert dev_groups() == [dev_cli]
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert "demo" in commands and "bench" in commands
    assert commands["demo"].get_default("func") is dev_cli.cmd_demo
    assert commands["bench"].get_default("func") is dev_cli.cmd_bench


def test_the_runtime_package_imports_without_mykey_dev():
    code = WITHOUT_DEV + textwrap.dedent("""
        import importlib, pkgutil
        import mykey
        for m in pkgutil.walk_packages(mykey.__path__, "mykey."):
            if m.name != "mykey.__main__" and not m.name.startswith("mykey.cli"):
                importlib.import_module(m.name)
        assert not any(name.startswith("mykey_dev") and sys.modules[name] for name in sys.modules)
        print("ok")
    """)
    r = run_python(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_the_runtime_cli_works_without_mykey_dev(tmp_path):
    code = WITHOUT_DEV + textwrap.dedent(f"""
        from mykey.cli import build_parser, dev_groups, main
        assert dev_groups() == []
        commands = build_parser()._subparsers._group_actions[0].choices
        assert "demo" not in commands and "bench" not in commands, sorted(commands)
        sys.exit(main(["init", "--data", {str(tmp_path / "data")!r}]))
    """)
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "data" / "log").is_dir()


def test_only_a_pass_through_command_takes_unknown_arguments(capsys):
    args, rest = build_parser().parse_known_args(["--json", "bench", "--service-ids", "2e3", "--quick", "-h", "--out=x"])
    assert args.pass_through and rest == ["--service-ids", "2e3", "--quick", "-h", "--out=x"]
    assert main(["init", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_mykey_bench_passes_arguments_to_the_runner(capfd):
    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: python -m bench" in out and "--service-ids" in out
    assert main(["bench", "--no-such-option"]) == 2  # the runner's own usage error
    assert "unrecognized arguments: --no-such-option" in capfd.readouterr().err


def make_checkout(root: Path, name: str = "mykey") -> Path:
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "__main__.py").write_text("")
    (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
    return root


def test_find_checkout(tmp_path):
    assert dev_cli.find_checkout([tmp_path]) is None
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert dev_cli.find_checkout([deep]) is None
    make_checkout(tmp_path / "other", name="not-mykey")
    assert dev_cli.find_checkout([tmp_path / "other"]) is None
    root = make_checkout(tmp_path / "a")
    assert dev_cli.find_checkout([deep]) == root
    assert dev_cli.find_checkout([tmp_path, deep]) == root
    (root / "pyproject.toml").write_text("[project\n")  # unreadable TOML: not a checkout
    assert dev_cli.find_checkout([deep]) is None
    # This repository, from inside it and from the installed mykey_dev (an editable install).
    assert dev_cli.find_checkout([REPO / "tests"]) == REPO
    assert dev_cli.find_checkout([Path(dev_cli.__file__).resolve().parent]) == REPO


def test_mykey_bench_from_anywhere_uses_the_checkout_mykey_dev_came_from(tmp_path):
    code = "from mykey.cli import main; raise SystemExit(main(['bench', '--help']))"
    r = run_python(code, cwd=tmp_path)
    assert r.returncode == 0 and "--service-ids" in r.stdout, r.stderr[-2000:]


def test_mykey_bench_without_a_checkout_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(dev_cli, "find_checkout", lambda starts=None: None)
    assert main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "inside a mykey source checkout" in err and "make bench" in err
