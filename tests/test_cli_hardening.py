"""The CLI under hostile or careless input: one clear line and exit 1 or 2, never a traceback;
outputs never overwrite or follow symlinks into the data directory; init is all or nothing;
a lost subject key is refused, not silently replaced; nothing printed can drive a terminal."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from mykey.audit.keys import KEY_FILE, VKEY_FILE
from mykey.cli import main
from mykey.datadir import DataDir
from mykey.engine import Engine
from mykey.errors import KeyFileError
from mykey.log.backend import open_log

MYKEY = "ABCDEFGH"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory, pki):
    """An initialised data directory with a MyKey ID, a business, a signed checkpoint; and good input files."""
    root = tmp_path_factory.mktemp("cli-hardening")
    f = root / "files"
    f.mkdir()
    (f / "ca.pem").write_bytes(pki.root.cert_pem())
    (f / "inter.pem").write_bytes(pki.inter.cert_pem())
    user = pki.user()
    cert, key = user.write(f, "user")
    cert.write_bytes(pki.chain(user))
    data = root / "data"
    d = ["--data", str(data)]
    assert main(["init", *d, "--trust-anchor", str(f / "ca.pem")]) == 0
    assert main(["trust", "add", *d, str(f / "inter.pem"), "--intermediate"]) == 0
    assert main(["create", *d, "--cert", str(cert), "--key", str(key), "--id", MYKEY]) == 0
    assert main(["business", "add", *d, "--name", "Library", "--municipality", "131016"]) == 0
    assert main(["audit", "prove", "1", *d, "--out", str(f / "proof.json")]) == 0
    shutil.copy(data / "keys" / VKEY_FILE, f / "log.vkey")
    (f / "ids.csv").write_text("service_id,customer_id\nS1,\n")
    return {"root": root, "data": data, "files": f, "cert": cert, "key": key, "user": user}


def bad_files(directory: Path, pki) -> dict[str, Path]:
    """A table of bad inputs: each a file (or path) no command may choke on."""
    directory.mkdir(exist_ok=True)
    ed = ed25519.Ed25519PrivateKey.generate()
    user = pki.user()
    enc = user.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret"))
    contents = {
        "garbage": b"\x00\x01garbage\xff" * 20,
        "empty": b"",
        "invalid-utf8": b"\xff\xfe\xfa\xc3\x28 not text",
        "nested-json": b"[" * 200_000,
        "nested-object": b'{"kind":' * 100_000,
        "huge-number": b'{"kind": "mykey.inclusion-proof.v1", "leaf_index": ' + b"9" * 100_000 + b"}",
        "json-list": b"[1, 2, 3]",
        "encrypted-key": enc,
        "ed25519-key": ed.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        "certificate": user.cert_pem(),
        "pem-garbage": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "crl": pki.inter.crl([], number=1),
        "nul-text": b"abc\x00def",
        "csv-bad": b"service_id,customer_id\n\"unterminated\n",
    }
    out = {}
    for name, data in contents.items():
        out[name] = directory / name
        out[name].write_bytes(data)
    out["directory"] = directory / "a-directory"
    out["directory"].mkdir(exist_ok=True)
    out["missing"] = directory / "no-such-file"
    return out


# Inputs that are valid for a command (a CRL for `crl apply`), or accepted by rules outside
# this test's scope (a leaf certificate as an intermediate: the leaf profile is checked elsewhere).
JSON_TOO = {"garbage", "nested-json", "encrypted-key", "directory", "missing"}  # --json checked for these
VALID_FOR = {"crl apply": {"crl"}, "trust add --intermediate": {"certificate"}}


def file_commands(world) -> list[tuple[str, list[str]]]:
    """Every CLI command that reads a file, with BAD in the place of one file (the rest good)."""
    d = ["--data", str(world["data"])]
    f = world["files"]
    cert, key = str(world["cert"]), str(world["key"])
    return [
        ("trust add", ["trust", "add", *d, "BAD"]),
        ("trust add --intermediate", ["trust", "add", *d, "BAD", "--intermediate"]),
        ("create --cert", ["create", *d, "--cert", "BAD", "--key", key]),
        ("create --key", ["create", *d, "--cert", cert, "--key", "BAD"]),
        ("renew --cert", ["renew", *d, MYKEY, "--cert", "BAD", "--key", key]),
        ("renew --key", ["renew", *d, MYKEY, "--cert", cert, "--key", "BAD"]),
        ("service import", ["service", "import", *d, "A0001", "BAD"]),
        ("service link --cert", ["service", "link", *d, "A0001", "S1", "--cert", "BAD", "--card-key", key]),
        ("service link --card-key", ["service", "link", *d, "A0001", "S1", "--cert", cert, "--card-key", "BAD"]),
        ("crl apply", ["crl", "apply", *d, "BAD"]),
        ("audit check-proof FILE", ["audit", "check-proof", "BAD", "--public-key", str(f / "log.vkey")]),
        ("audit check-proof --public-key", ["audit", "check-proof", str(f / "proof.json"), "--public-key", "BAD"]),
        ("audit verify --public-key", ["audit", "verify", *d, "--public-key", "BAD"]),
    ]


def test_no_command_reading_a_file_ever_shows_a_traceback(world, pki, capsys, tmp_path):
    bad = bad_files(tmp_path / "bad", pki)
    before = log_size(world["data"])
    failures = []
    for label, argv in file_commands(world):
        for name, path in bad.items():
            if name in VALID_FOR.get(label, ()):
                continue
            for json_mode in (False, True) if name in JSON_TOO else (False,):
                args = [str(path) if a == "BAD" else a for a in argv] + (["--json"] if json_mode else [])
                try:
                    code = main(args)
                except BaseException as exc:  # noqa: BLE001 - exactly what must not happen
                    capsys.readouterr()
                    failures.append(f"{label} / {name}: raised {type(exc).__name__}: {exc}")
                    continue
                out, err = capsys.readouterr()
                if code not in (1, 2):
                    failures.append(f"{label} / {name}: exit {code}: {err or out}")
                elif json_mode:
                    if json.loads(out.splitlines()[-1])["ok"] is not False:
                        failures.append(f"{label} / {name}: JSON says ok")
                elif len(err.strip().splitlines()) != 1 or "Traceback" in err:
                    failures.append(f"{label} / {name}: not one line: {err!r}")
    assert failures == [], "\n".join(failures)
    assert log_size(world["data"]) == before  # nothing was recorded


def log_size(data: Path) -> int:
    with open_log(data, readonly=True) as log:
        return log.last_seq


def test_key_file_errors_say_what_is_wrong(world, pki, capsys, tmp_path):
    bad = bad_files(tmp_path / "bad", pki)
    d = ["--data", str(world["data"])]
    expect = {
        "encrypted-key": "encrypted",
        "ed25519-key": "Ed25519",
        "certificate": "not a private key",
        "garbage": "not a private key",
    }
    for name, words in expect.items():
        code, _, err = run(capsys, "create", *d, "--cert", str(world["cert"]), "--key", str(bad[name]))
        assert code == 1 and words in err and str(bad[name]) in err, (name, err)


def test_a_subprocess_prints_one_line_for_a_nested_proof(world, pki, tmp_path):
    bad = bad_files(tmp_path / "bad", pki)
    for name in ("nested-json", "invalid-utf8"):
        r = subprocess.run(
            [sys.executable, "-m", "mykey", "audit", "check-proof", str(bad[name]),
             "--public-key", str(world["files"] / "log.vkey")],
            capture_output=True, text=True, check=False,
        )
        assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "mykey", "audit", "check-proof", "-", "--public-key", str(world["files"] / "log.vkey")],
        input="[" * 200_000, capture_output=True, text=True, check=False,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


# ------------------------------------------------------------------ item 14: proof outputs


@pytest.mark.parametrize("command", [["audit", "prove", "1"], ["audit", "prove-consistency", "1", "LAST"]])
def test_proof_outputs_never_overwrite_or_follow_symlinks(world, capsys, tmp_path, command):
    data = world["data"]
    d = ["--data", str(data)]
    command = [str(log_size(data)) if a == "LAST" else a for a in command]
    keys = DataDir(data).keys
    signing_key = keys / KEY_FILE
    key_bytes = signing_key.read_bytes()

    existing = tmp_path / "existing.json"
    existing.write_text("keep me")
    to_key = tmp_path / "to-key.json"
    to_key.symlink_to(signing_key)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(keys / "new-file")
    linked_dir = tmp_path / "keys-dir"
    linked_dir.symlink_to(keys)
    for target in (existing, to_key, dangling, keys / "proof.json", linked_dir / "proof.json", data / "proof.json"):
        code, out, err = run(capsys, *command, *d, "--out", str(target))
        assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, (target, out, err)
    assert existing.read_text() == "keep me"
    assert signing_key.read_bytes() == key_bytes
    assert not (keys / "new-file").exists() and not (keys / "proof.json").exists()
    assert not (data / "proof.json").exists()

    fresh = tmp_path / "fresh.json"
    code, out, _ = run(capsys, *command, *d, "--out", str(fresh))
    assert code == 0 and "wrote" in out
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert json.loads(fresh.read_text())["kind"].startswith("mykey.")
    code, _, err = run(capsys, *command, *d, "--out", str(fresh))  # a second time: never over the first
    assert code == 1 and "exists" in err


# ------------------------------------------------------------------ item 16: init is all or nothing


def test_init_with_a_bad_trust_anchor_leaves_nothing(tmp_path, capsys, pki):
    good = tmp_path / "good.pem"
    good.write_bytes(pki.root.cert_pem())
    user = tmp_path / "user.pem"
    user.write_bytes(pki.user().cert_pem())
    garbage = tmp_path / "bad.pem"
    garbage.write_bytes(b"not a certificate")
    for bad in (garbage, user, tmp_path / "missing.pem", tmp_path):
        data = tmp_path / "data"
        code, _, err = run(capsys, "init", "--data", str(data), "--trust-anchor", str(good), "--trust-anchor", str(bad))
        assert code == 1 and len(err.splitlines()) == 1, err
        assert not data.exists(), (bad, list(data.iterdir()))
    empty = tmp_path / "empty"  # a directory made beforehand (a mount point, say) stays, empty
    empty.mkdir()
    code, _, _ = run(capsys, "init", "--data", str(empty), "--trust-anchor", str(good), "--trust-anchor", str(garbage))
    assert code == 1 and list(empty.iterdir()) == []
    code, out, _ = run(capsys, "init", "--data", str(empty), "--trust-anchor", str(good), "--trust-anchor", str(good))
    assert code == 0 and "1 trust anchor(s) added" in out


def test_init_on_an_existing_directory_adds_all_anchors_or_none(tmp_path, capsys, pki):
    data = tmp_path / "data"
    assert main(["init", "--data", str(data)]) == 0
    before = log_size(data)
    good = tmp_path / "good.pem"
    good.write_bytes(pki.root.cert_pem())
    other = tmp_path / "other.pem"
    other.write_bytes(pki.other.cert_pem())
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"junk")
    code, _, _ = run(capsys, "init", "--data", str(data), "--trust-anchor", str(good), "--trust-anchor", str(bad))
    assert code == 1 and log_size(data) == before and (data / "log").is_dir()
    code, out, _ = run(capsys, "init", "--data", str(data), "--trust-anchor", str(good), "--trust-anchor", str(other))
    assert code == 0 and "2 trust anchor(s) added" in out and log_size(data) == before + 2


# ------------------------------------------------------------------ item 18: the subject key


def test_a_lost_subject_key_is_refused_while_mykey_ids_exist(tmp_path, capsys, pki):
    from .conftest import create_user

    data = tmp_path / "data"
    with Engine.open(data) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        create_user(e, pki)
    subject_key = DataDir(data).keys / "subject.key"
    subject_key.unlink()
    with pytest.raises(KeyFileError, match="subject.key is missing.*Restore"):
        Engine.open(data)
    assert not subject_key.exists()  # never silently replaced
    code, _, err = run(capsys, "business", "add", "--data", str(data), "--name", "Lib", "--municipality", "131016")
    assert code == 1 and "subject.key" in err and "backup" in err
    assert not subject_key.exists()


def test_a_subject_key_is_made_while_no_mykey_id_exists(tmp_path):
    data = tmp_path / "data"
    with Engine.open(data) as e:
        e.register_business("Library", "131016")
    subject_key = DataDir(data).keys / "subject.key"
    subject_key.unlink()
    Engine.open(data).close()
    assert len(subject_key.read_bytes()) == 32


# ------------------------------------------------------------------ item 17: printing


def test_file_names_are_printed_escaped(tmp_path, capsys):
    d = ["--data", str(tmp_path / "data")]
    assert main(["init", *d]) == 0
    capsys.readouterr()
    name = tmp_path / "evil\x1b[2J\x1b]0;pwned\x07\u202etxt.crl"
    code, out, err = run(capsys, "crl", "apply", *d, str(name))
    assert code == 1
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in err + out
    assert "\\u001b[2J" in err and "\\u202e" in err
    code, out, _ = run(capsys, "--json", "crl", "apply", *d, str(name))
    assert out.isascii() and json.loads(out)["message"].endswith(str(name).split("/")[-1])


def test_the_os_account_is_the_operator(tmp_path, monkeypatch):
    import pwd

    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    data = tmp_path / "data"
    with Engine.open(data) as e:
        e.register_business("Library", "131016")
    with open_log(data, readonly=True) as log:
        (env,) = list(log.read(1))
    assert env.actor.id == pwd.getpwuid(os.getuid()).pw_name != "mallory"
