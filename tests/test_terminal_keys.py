"""Terminals make their own keys; the platform is given, and keeps, only public keys."""

from __future__ import annotations

import json
import os
import stat

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mykey.cli import main
from mykey.client import keys as terminal_keys
from mykey.domain import events as ev
from mykey.engine import Engine
from mykey.errors import TerminalKeyError, ValidationError
from mykey.index import keys as k

from .conftest import engine_authenticator, engine_resolver


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_writes_a_private_key_0600_and_its_public_half(tmp_path):
    old = os.umask(0)
    try:
        private, public = terminal_keys.write_key_pair(tmp_path / "t.key")
    finally:
        os.umask(old)
    assert (private, public) == (tmp_path / "t.key", tmp_path / "t.key.pub")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    pem = private.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key = terminal_keys.load_private_key(private)
    assert isinstance(key, Ed25519PrivateKey)
    assert public.read_bytes() == terminal_keys.public_pem(key)
    with pytest.raises(TerminalKeyError, match="never replaced"):
        terminal_keys.write_key_pair(private)
    assert private.read_bytes() == pem
    # Half a pair in the way: nothing is written.
    (tmp_path / "u.key.pub").write_bytes(b"x")
    with pytest.raises(TerminalKeyError, match="u.key.pub exists"):
        terminal_keys.write_key_pair(tmp_path / "u.key")
    assert not (tmp_path / "u.key").exists()


def test_a_key_file_of_the_wrong_kind_is_refused(tmp_path):
    other = tmp_path / "ec.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(TerminalKeyError, match="not an unencrypted Ed25519 private key in PEM \\(a "):
        terminal_keys.load_private_key(other)
    (tmp_path / "junk.key").write_bytes(b"junk")
    with pytest.raises(TerminalKeyError, match="keygen"):
        terminal_keys.load_private_key(tmp_path / "junk.key")
    with pytest.raises(TerminalKeyError, match=r"cannot read the terminal's key file .*keygen"):
        terminal_keys.load_private_key(tmp_path / "missing.key")


def test_keygen_refuses_to_write_inside_the_data_directory(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["init", "--data", str(data)]) == 0
    code, _, err = run(capsys, "terminal", "keygen", "--data", str(data), "--out", str(data / "keys" / "t.key"))
    assert code == 1 and "never lives on the platform" in err
    assert not (data / "keys" / "t.key").exists()


def test_a_terminal_is_enrolled_by_its_public_key_and_authenticates_with_its_own_key(tmp_path, capsys):
    data = tmp_path / "data"
    d = ["--data", str(data)]
    assert main(["init", *d]) == 0
    assert main(["business", "add", *d, "--name", "Library", "--municipality", "131016"]) == 0
    terminal = tmp_path / "terminal"  # the terminal's machine
    terminal.mkdir()
    assert main(["terminal", "keygen", "--out", str(terminal / "t.key")]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "terminal", "enrol", *d, "A0001", "--public-key", str(terminal / "t.key.pub"))
    assert (code, out.strip()) == (0, "enrolled terminal A0001-T0001")
    code, out, _ = run(capsys, "--json", "terminal", "enrol", *d, "A0001", "--public-key",
                       str(terminal / "t.key.pub"), "--can-register")
    assert code == 0 and json.loads(out)["terminal_id"] == "A0001-T0002" and json.loads(out)["can_register"]
    code, _, err = run(capsys, "terminal", "enrol", *d, "A0001", "--public-key", str(terminal / "t.key"))
    assert code == 1 and "never leaves the terminal" in err

    key = terminal_keys.load_private_key(terminal / "t.key")
    with Engine.open(data) as e:
        with e.read_model.snapshot() as state:
            assert state.terminal("A0001-T0001").can_register is False
            assert state.terminal("A0001-T0002").can_register is True
        enrolled = [env for env in e.log.read() if isinstance(env.body, ev.TerminalEnrolled)]
        assert [(env.v, env.body.can_register) for env in enrolled] == [(2, False), (2, True)]
        assert [env.actor.kind for env in enrolled] == ["operator", "operator"]
        with engine_resolver(e) as r, engine_authenticator(e, r) as auth:
            message, signature = terminal_keys.authentication(key, "A0001-T0001")
            assert auth.authenticate("A0001-T0001", message, signature) == "A0001"
    # No private key anywhere under DATA: only the platform's own checkpoint signing key.
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    pem = (terminal / "t.key").read_bytes()
    for path in data.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert seed not in content and pem not in content, path
            assert b"PRIVATE KEY" not in content or path.name == "checkpoint.key", path
    assert not (data / "terminal-keys").exists()


def test_the_engine_takes_public_keys_only(engine):
    bid = engine.register_business("Library", "131016")
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ids = [engine.enrol_terminal(bid, form) for form in (raw, der, terminal_keys.public_pem(key))]
    with engine.read_model.snapshot() as state:
        assert {state.terminal(t).public_key for t in ids} == {raw}
    before = engine.log.last_seq
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for bad, why in ((terminal_keys.private_pem(key), "private key"), (ec_public, "Ed25519"), (b"junk", "Ed25519")):
        with pytest.raises(ValidationError, match=why):
            engine.enrol_terminal(bid, bad)
    with pytest.raises(ValidationError, match="can_register"):
        engine.enrol_terminal(bid, raw, can_register="yes")
    assert engine.log.last_seq == before


def test_a_v1_terminal_enrolment_reads_as_one_that_may_not_register():
    body = ["term.enrolled", "A0001-T0001", "A0001", b"k" * 32]
    record = msgspec.msgpack.encode([7, 1_700_000_000_000_000, ["operator", "op"], 1, body])
    env = ev.decode_envelope(record)
    assert env.v == ev.TerminalEnrolled.VERSION == 2
    assert env.body == ev.TerminalEnrolled("A0001-T0001", "A0001", b"k" * 32, False)
    # An index record written before the flag existed reads the same way.
    old = msgspec.msgpack.encode(["A0001", b"k" * 32, True])
    assert k.decode(k.TerminalRecord, old) == k.TerminalRecord("A0001", b"k" * 32, True, False)
