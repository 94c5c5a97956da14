"""The `mykey` command line: --help everywhere, one-line results, --json, exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from mykey.cli import build_parser, main


def all_commands(parser=None, prefix=()):
    """Every command path of the CLI, e.g. ('service', 'import')."""
    import argparse

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from all_commands(sub, prefix + (name,))


def test_help_on_every_command(capsys):
    commands = list(all_commands())
    assert ("service", "import") in commands and ("demo",) in commands and ("log", "verify") in commands
    for path in commands:
        if path == ("bench",):
            continue  # `mykey bench --help` passes --help to the runner: checked below
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*path, "--help"])
        assert exc.value.code == 0
        assert "usage: mykey" in capsys.readouterr().out


def test_bench_help_is_the_runners():
    r = subprocess.run([sys.executable, "-m", "mykey", "bench", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--service-ids" in r.stdout


def test_usage_errors_exit_2(capsys):
    assert main(["no-such-command"]) == 2
    assert main(["suspend"]) == 2  # missing MYKEY and --reason
    capsys.readouterr()


def test_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mykey", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: mykey" in r.stdout


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_whole_session(tmp_path, capsys, pki):
    data = str(tmp_path / "data")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.root.cert_pem())
    inter = tmp_path / "inter.pem"
    inter.write_bytes(pki.inter.cert_pem())
    user = pki.user()
    user_cert, user_key = user.write(tmp_path, "user")
    user_cert.write_bytes(pki.chain(user))
    d = ["--data", data]

    assert run(capsys, "init", *d, "--trust-anchor", str(ca))[0] == 0
    code, out, _ = run(capsys, "trust", "add", *d, str(inter), "--intermediate")
    assert code == 0 and "added 1 intermediate" in out
    code, out, _ = run(capsys, "--json", "business", "add", *d, "--name", "Library", "--municipality", "131016")
    assert code == 0 and json.loads(out)["business_id"] == "A0001"
    code, out, _ = run(capsys, "create", *d, "--cert", str(user_cert), "--key", str(user_key), "--id", "ABCDEFGH")
    assert (code, out.strip()) == (0, "created MyKey ID ABCDEFGH")
    csv = tmp_path / "ids.csv"
    csv.write_text("service_id,customer_id\n123456,\n111111,C-7\n")
    code, out, _ = run(capsys, "service", "import", *d, "A0001", str(csv))
    assert code == 0 and "registered 2 service IDs" in out
    code, out, _ = run(capsys, "service", "link", *d, "A0001", "123456", "--cert", str(user_cert),
                       "--card-key", str(user_key))
    assert (code, out.strip()) == (0, "linked A0001 service ID 123456 to the card's holder (valid)")
    code, out, _ = run(capsys, "resolve", *d, "A0001", "123456", "111111", "999")
    assert out.split("\n")[:3] == ["123456 valid", "111111 unlinked", "999 unknown"]
    code, out, _ = run(capsys, "--json", "resolve", *d, "A0001", "123456")
    answer = json.loads(out.splitlines()[0])
    assert isinstance(answer.pop("idx"), int)  # its position in the business's status list
    assert answer == {"service_id": "123456", "status": "valid"}

    code, out, err = run(capsys, "resume", *d, "ABCDEFGH")
    assert code == 1 and "cannot resume" in err
    code, out, _ = run(capsys, "--json", "resume", *d, "ABCDEFGH")
    assert code == 1 and json.loads(out)["ok"] is False and json.loads(out)["error"] == "IllegalTransitionError"
    assert run(capsys, "suspend", *d, "ABCDEFGH", "--reason", "lost")[1].strip() == "ABCDEFGH is now suspended"
    assert run(capsys, "resolve", *d, "A0001", "123456")[1].strip() == "123456 suspended"
    assert run(capsys, "resume", *d, "ABCDEFGH")[0] == 0

    key_file = tmp_path / "terminal" / "t.key"  # on the terminal's machine
    key_file.parent.mkdir()
    code, out, _ = run(capsys, "terminal", "keygen", "--out", str(key_file))
    assert code == 0 and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    code, out, _ = run(capsys, "terminal", "enrol", *d, "A0001", "--public-key", f"{key_file}.pub")
    assert (code, out.strip()) == (0, "enrolled terminal A0001-T0001")
    assert run(capsys, "terminal", "revoke", *d, "A0001-T0001")[0] == 0

    new = pki.inter.renew(user)
    new_cert, new_key = new.write(tmp_path, "new")
    code, out, _ = run(capsys, "renew", *d, "ABCDEFGH", "--cert", str(new_cert), "--key", str(new_key),
                       "--approved-by-operator", "--reason", "holder seen in person")
    assert code == 0 and "renewed" in out
    crl = tmp_path / "crl.der"
    crl.write_bytes(pki.inter.crl([(user, "superseded")], number=5))
    code, out, _ = run(capsys, "crl", "apply", *d, str(crl))
    assert code == 0 and "1 newly revoked, 0 MyKey ID(s) suspended" in out
    code, out, _ = run(capsys, "crl", "apply", *d, str(crl))
    assert "already applied" in out

    code, _, err = run(capsys, "feed", *d, "points")
    assert code == 1 and "consumer add" in err  # not registered
    assert run(capsys, "consumer", "add", *d, "points", "--municipality", "131016")[0] == 0
    code, out, _ = run(capsys, "feed", *d, "points", "--ack")
    assert [line.split()[2] for line in out.splitlines()[:-1]] == ["joined", "suspended", "resumed", "renewed"]
    assert "ABCDEFGH" not in out  # a pseudonym instead
    code, out, _ = run(capsys, "feed", *d, "points")
    assert out == ""
    code, out, _ = run(capsys, "--json", "show", *d, "ABCDEFGH")
    shown = json.loads(out)
    assert shown["state"] == "valid" and shown["businesses"] == ["A0001"]

    assert run(capsys, "log", "verify", *d)[0] == 0
    # Every CLI command that changed something signed a checkpoint: the holder's history is fully proven.
    code, out, _ = run(capsys, "--json", "audit", "subject", *d, "ABCDEFGH")
    history = json.loads(out)
    assert code == 0 and history["events"] and all(e["proof"] for e in history["events"])
    subject = user.cert.subject.rfc4514_string()
    assert subject.split("=", 1)[1] not in out  # the holder's name is never stored or shown
    code, out, _ = run(capsys, "audit", "verify", *d)
    assert code == 0 and "audit OK" in out
    code, out, _ = run(capsys, "rebuild", *d)
    assert code == 0 and "rebuilt index" in out
    assert run(capsys, "resolve", *d, "A0001", "123456")[1].strip() == "123456 valid"

    code, _, err = run(capsys, "business", "add", *d, "--name", "X", "--municipality", "1")
    assert code == 1 and "municipality" in err
    code, _, err = run(capsys, "suspend", "--data", str(tmp_path / "nothing"), "ABCDEFGH", "--reason", "x")
    assert code == 1 and "mykey init" in err


def test_data_dir_from_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MYKEY_DATA", str(tmp_path / "env-data"))
    assert main(["init"]) == 0
    assert (tmp_path / "env-data" / "log").is_dir()
    capsys.readouterr()


def test_demo_never_replaces_real_data(tmp_path, capsys):
    from mykey.engine.engine import Engine
    from mykey.errors import LogLockedError, MykeyError
    from mykey_dev.demo import prepare_data_dir

    real = tmp_path / "real"
    assert main(["init", "--data", str(real)]) == 0
    with pytest.raises(MykeyError, match="not made by `mykey demo`"):
        prepare_data_dir(real)
    assert (real / "log").is_dir() and (real / "keys").is_dir()
    demo = tmp_path / "demo"
    prepare_data_dir(demo)
    Engine.open(demo).close()
    prepare_data_dir(demo)  # a demo's own directory is replaced
    assert sorted(p.name for p in demo.iterdir()) == [".mykey-demo"]
    Engine.open(demo).close()
    with Engine.open(demo):
        with pytest.raises(LogLockedError):
            prepare_data_dir(demo)  # never under a running engine
    capsys.readouterr()


def test_cli_refuses_cleanly(tmp_path, capsys):
    d = ["--data", str(tmp_path / "data")]
    assert main(["init", *d]) == 0
    code, _, err = run(capsys, "crl", "apply", *d, str(tmp_path / "missing.crl"))
    assert code == 1 and "No such file" in err and "Traceback" not in err
    code, _, err = run(capsys, "feed", *d, "pünkte")
    assert code == 1 and "consumer" in err


def test_terminal_keys_are_never_overwritten(tmp_path, capsys):
    key = tmp_path / "terminal.key"
    code, out, _ = run(capsys, "--json", "terminal", "keygen", "--out", str(key))
    assert code == 0 and json.loads(out)["public_key_file"] == f"{key}.pub"
    before = key.read_bytes(), (tmp_path / "terminal.key.pub").read_bytes()
    code, _, err = run(capsys, "terminal", "keygen", "--out", str(key))
    assert code == 1 and "never replaced" in err
    assert (key.read_bytes(), (tmp_path / "terminal.key.pub").read_bytes()) == before
