"""Signed checkpoints (mykey.checkpoint) and offline proof documents (mykey.proofs)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mykey.audit import checkpoint as ckpt
from mykey.audit import merkle
from mykey.audit.checkpoint import Checkpoint
from mykey.audit.merkle_store import MerkleStore
from mykey.audit.proofs import (
    ConsistencyProofDoc,
    InclusionProofDoc,
    build_consistency_doc,
    build_inclusion_doc,
    check_proof,
    load_proof_doc,
)
from mykey.errors import CheckpointError, MykeyError, ProofError

# golang.org/x/mod/sumdb/note reference vector (Ed25519 is deterministic, so our
# signer must reproduce Go's note byte for byte).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT
    + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

ORIGIN = "mykey.example/log"


def _go_key() -> Ed25519PrivateKey:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert raw[0] == 1
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return ckpt.generate_signing_key()


def _cp(size: int = 1000, ts: int = 1764150000) -> Checkpoint:
    return Checkpoint(origin=ORIGIN, size=size, root_hash=bytes(range(32)), timestamp=ts)


# ---------------------------------------------------------------- signed-note format


def test_go_reference_vector() -> None:
    k = _go_key()
    assert ckpt.verifier_key("PeterNeumann", k) == GO_VKEY
    assert ckpt.sign_note(GO_TEXT, "PeterNeumann", k) == GO_NOTE
    vk = ckpt.parse_vkey(GO_VKEY)
    assert vk.name == "PeterNeumann" and vk.key_id.hex() == "c74f20a3"
    assert ckpt.open_note(GO_NOTE, vk.name, vk.public_key) == GO_TEXT
    with pytest.raises(CheckpointError, match="does not verify"):
        ckpt.open_note(GO_NOTE.replace("cryptography", "cryptographY"), vk.name, vk.public_key)


def test_round_trip_and_exact_format(key: Ed25519PrivateKey) -> None:
    cp = _cp()
    note = ckpt.sign_checkpoint(cp, ORIGIN, key)
    lines = note.split("\n")
    assert lines[:5] == [ORIGIN, "1000", base64.b64encode(bytes(range(32))).decode(), "time 1764150000", ""]
    assert lines[5].startswith("\u2014 " + ORIGIN + " ")
    assert lines[6:] == [""]
    sig = base64.b64decode(lines[5].split(" ")[2])
    assert len(sig) == 4 + 64 and sig[:4] == ckpt.key_id(ORIGIN, key)
    assert ckpt.parse_signed_checkpoint(note, ORIGIN, key.public_key()) == cp
    assert ckpt.parse_signed_checkpoint(note.encode(), ORIGIN, key.public_key(), expected_origin=ORIGIN) == cp
    assert ckpt.peek_checkpoint(note) == cp
    empty = Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT, 0)
    assert ckpt.parse_signed_checkpoint(ckpt.sign_checkpoint(empty, ORIGIN, key), ORIGIN, key.public_key()) == empty


def test_key_id_definition(key: Ed25519PrivateKey) -> None:
    import hashlib

    raw = ckpt._raw_public(key.public_key())
    assert ckpt.key_id(ORIGIN, key) == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]


@pytest.mark.parametrize(
    "old,new",
    [
        ("\n1000\n", "\n1001\n"),  # size
        ("time 1764150000", "time 1764150001"),  # time
        (ORIGIN + "\n", "mykey.example/other\n"),  # origin (first line)
    ],
)
def test_tampered_body_fails(key: Ed25519PrivateKey, old: str, new: str) -> None:
    note = ckpt.sign_checkpoint(_cp(), ORIGIN, key)
    bad = note.replace(old, new, 1)
    assert bad != note
    with pytest.raises(CheckpointError, match="does not verify"):
        ckpt.parse_signed_checkpoint(bad, ORIGIN, key.public_key())


def test_tampered_root_signature_key_and_name(key: Ed25519PrivateKey) -> None:
    note = ckpt.sign_checkpoint(_cp(), ORIGIN, key)
    text, sigline = note[: note.rindex("\n\n") + 1], note[note.rindex("\n\n") + 2 :]
    # root hash changed
    lines = text.split("\n")
    lines[2] = base64.b64encode(bytes(32)).decode()
    with pytest.raises(CheckpointError, match="does not verify"):
        ckpt.parse_signed_checkpoint("\n".join(lines) + "\n" + sigline, ORIGIN, key.public_key())
    # signature bytes changed (key ID intact)
    name, blob = sigline[2:-1].split(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[10] ^= 1
    bad = text + f"\n\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(CheckpointError, match="does not verify"):
        ckpt.parse_signed_checkpoint(bad, ORIGIN, key.public_key())
    # another key, or the right key under another name: the signature is unknown -> rejected
    other = ckpt.generate_signing_key()
    with pytest.raises(CheckpointError, match="no signature from the trusted key"):
        ckpt.parse_signed_checkpoint(note, ORIGIN, other.public_key())
    with pytest.raises(CheckpointError, match="no signature from the trusted key"):
        ckpt.parse_signed_checkpoint(note, "mykey.example/other", key.public_key())
    # renaming the signer on the line also breaks the key ID match
    with pytest.raises(CheckpointError, match="no signature from the trusted key"):
        ckpt.parse_signed_checkpoint(note.replace("\u2014 " + ORIGIN, "\u2014 evil.example"), ORIGIN, key.public_key())
    with pytest.raises(CheckpointError, match="another log"):
        ckpt.parse_signed_checkpoint(note, ORIGIN, key.public_key(), expected_origin="x.example/log")


def test_unknown_signatures_are_ignored(key: Ed25519PrivateKey) -> None:
    cp = _cp()
    witness = ckpt.generate_signing_key()
    note = ckpt.sign_checkpoint(cp, ORIGIN, key)
    text = note[: note.rindex("\n\n") + 1]
    wit_line = ckpt.sign_note(text, "witness.example/w1", witness).split("\n\n")[-1]
    cosigned = note + wit_line
    assert ckpt.parse_signed_checkpoint(cosigned, ORIGIN, key.public_key()) == cp
    assert ckpt.parse_signed_checkpoint(cosigned, "witness.example/w1", witness.public_key()) == cp


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.rstrip("\n"),  # no final newline
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n.replace("\u2014", "-"),  # not an em dash
        lambda n: n.replace("\u2014 ", "\u2014"),
        lambda n: n + "\u2014 x\n",  # malformed extra signature line
        lambda n: n.replace("1000", "01000"),  # leading zero (and bad signature)
        lambda n: n.replace("time", "\ttime"),  # control character
        lambda n: n.split("\n\n")[0] + "\n\n",  # no signatures
    ],
)
def test_malformed_notes(key: Ed25519PrivateKey, mangle) -> None:  # type: ignore[no-untyped-def]
    note = ckpt.sign_checkpoint(_cp(), ORIGIN, key)
    with pytest.raises(CheckpointError):
        ckpt.parse_signed_checkpoint(mangle(note), ORIGIN, key.public_key())


@pytest.mark.parametrize(
    "text,match",
    [
        (f"{ORIGIN}\n01\n{base64.b64encode(bytes(32)).decode()}\ntime 1\n", "leading zeroes"),
        (f"{ORIGIN}\n1\n{base64.b64encode(bytes(31)).decode()}\ntime 1\n", "31 bytes"),
        (f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode().rstrip('=')}\ntime 1\n", "base64"),
        (f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\n", "exactly one extension"),
        (f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\ntime 1\nextra\n", "exactly one extension"),
        (f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\ntime -1\n", "unix seconds"),
        (f"{ORIGIN}\n1\n", "needs origin"),
        (f"\n1\n{base64.b64encode(bytes(32)).decode()}\ntime 1\n", "origin line is empty"),
        (f"{ORIGIN}\n{'9' * 5000}\n{base64.b64encode(bytes(32)).decode()}\ntime 1\n", "decimal"),
    ],
)
def test_malformed_checkpoint_bodies_even_when_signed(key: Ed25519PrivateKey, text: str, match: str) -> None:
    note = ckpt.sign_note(text, ORIGIN, key)
    with pytest.raises(CheckpointError, match=match):
        ckpt.parse_signed_checkpoint(note, ORIGIN, key.public_key())


def test_invalid_checkpoints_are_not_signed(key: Ed25519PrivateKey) -> None:
    for cp in (
        Checkpoint("", 1, bytes(32), 1),
        Checkpoint("a\nb", 1, bytes(32), 1),
        Checkpoint(ORIGIN, -1, bytes(32), 1),
        Checkpoint(ORIGIN, 1, bytes(31), 1),
        Checkpoint(ORIGIN, 1, bytes(32), -5),
    ):
        with pytest.raises(CheckpointError):
            ckpt.sign_checkpoint(cp, ORIGIN, key)
    with pytest.raises(CheckpointError, match="may not contain"):
        ckpt.sign_checkpoint(_cp(), "bad name", key)
    with pytest.raises(CheckpointError, match="may not contain"):
        ckpt.sign_checkpoint(_cp(), "bad+name", key)
    assert issubclass(CheckpointError, MykeyError) and issubclass(ProofError, MykeyError)


# ------------------------------------------------------------------------- keys


def test_vkey_round_trip_and_tampering(key: Ed25519PrivateKey) -> None:
    vkey = ckpt.verifier_key(ORIGIN, key)
    name, hex_id, material = vkey.split("+", 2)
    assert name == ORIGIN and hex_id == ckpt.key_id(ORIGIN, key).hex() and len(hex_id) == 8
    vk = ckpt.parse_vkey(vkey)
    assert str(vk) == vkey
    wrong_alg = base64.b64encode(bytes([2]) + base64.b64decode(material)[1:]).decode()
    assert ckpt._raw_public(vk.public_key) == ckpt._raw_public(key.public_key())
    for bad in (
        vkey.replace(ORIGIN, "mykey.example/other", 1),  # name changed: ID mismatch
        f"{name}+{'0' * 8}+{material}",  # ID changed
        f"{name}+{hex_id}+{wrong_alg}",  # signature type byte
        f"{name}+{hex_id}+{material[:-4]}",
        f"{name}+{hex_id}",
        f"{name}+zzzzzzzz+{material}",
    ):
        with pytest.raises(CheckpointError):
            ckpt.parse_vkey(bad)


def test_private_key_file(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "log.key"
    old_umask = os.umask(0)  # the key is 0600 whatever the umask
    try:
        ckpt.save_private_key(key, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    loaded = ckpt.load_private_key(path)
    assert ckpt.verifier_key(ORIGIN, loaded) == ckpt.verifier_key(ORIGIN, key)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        ckpt.save_private_key(ckpt.generate_signing_key(), path)
    assert ckpt.verifier_key(ORIGIN, ckpt.load_private_key(path)) == ckpt.verifier_key(ORIGIN, key)  # untouched
    ckpt.save_private_key(ckpt.generate_signing_key(), path, overwrite=True)
    assert ckpt.verifier_key(ORIGIN, ckpt.load_private_key(path)) != ckpt.verifier_key(ORIGIN, key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["log.key"]  # no temporary file left behind
    target = tmp_path / "elsewhere"
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        ckpt.save_private_key(key, tmp_path / "link.key")  # never written through a symlink
    assert not target.exists()
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(CheckpointError, match="not an unencrypted PEM"):
        ckpt.load_private_key(tmp_path / "junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        ckpt.load_private_key(tmp_path / "missing")
    pem = ckpt.public_key_text(key)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert ckpt._raw_public(ckpt.load_public_key_text(pem)) == ckpt._raw_public(key.public_key())


# --------------------------------------------------------------- proof documents


@pytest.fixture()
def signed_tree(tmp_path: Path, key: Ed25519PrivateKey):  # type: ignore[no-untyped-def]
    data = [f"event-{i}".encode() for i in range(100)]
    store = MerkleStore.open(tmp_path / "tree")
    store.append_leaves(data[:37])
    old_note = ckpt.sign_checkpoint(Checkpoint(ORIGIN, 37, store.root(), 1764150000), ORIGIN, key)
    store.append_leaves(data[37:])
    new_note = ckpt.sign_checkpoint(Checkpoint(ORIGIN, 100, store.root(), 1764153600), ORIGIN, key)
    yield store, data, old_note, new_note
    store.close()


def test_inclusion_doc_round_trip(signed_tree, key: Ed25519PrivateKey) -> None:  # type: ignore[no-untyped-def]
    store, data, _, new_note = signed_tree
    doc = build_inclusion_doc(store, 41, data[41], new_note, seq=42)
    text = doc.to_json()
    assert json.loads(text)["kind"] == "mykey.inclusion-proof.v1"
    again = InclusionProofDoc.from_json(text)
    assert again == doc and load_proof_doc(text) == doc
    vkey = ckpt.verifier_key(ORIGIN, key)
    msg = check_proof(text, vkey)
    assert msg.startswith("OK inclusion: leaf 41 (seq 42) is in mykey.example/log at tree size 100")
    assert "\n" not in msg
    assert check_proof(doc, key.public_key()).startswith("OK")  # bare key, named after the origin
    assert check_proof(doc.to_dict(), ckpt.parse_vkey(vkey)).startswith("OK")
    with pytest.raises(ProofError, match="leaf_data is not leaf 41"):
        build_inclusion_doc(store, 41, data[40], new_note)


def test_inclusion_doc_tampering(signed_tree, key: Ed25519PrivateKey) -> None:  # type: ignore[no-untyped-def]
    store, data, old_note, new_note = signed_tree
    vkey = ckpt.verifier_key(ORIGIN, key)
    d = build_inclusion_doc(store, 41, data[41], new_note).to_dict()

    def bad(**changes) -> dict:  # type: ignore[no-untyped-def,type-arg]
        return {**d, **changes}

    cases = [
        (bad(leaf_data=base64.b64encode(b"event-X").decode()), "not proven"),
        (bad(leaf_index=40), "not proven"),
        (bad(tree_size=99), "claims tree size 99"),
        (bad(hashes=[d["hashes"][0][:-1] + "0" if d["hashes"][0][-1] != "0" else d["hashes"][0][:-1] + "1"] + d["hashes"][1:]), "not proven"),
        (bad(hashes=d["hashes"][:-1]), "too few"),
        (bad(checkpoint=old_note), "claims tree size 100"),  # a genuine but different checkpoint
        (bad(checkpoint=d["checkpoint"].replace("\n100\n", "\n101\n")), "does not verify"),
        (bad(hashes=["xyz"]), "64 lowercase hex"),
        (bad(kind="something"), "expected"),
        ({k: v for k, v in d.items() if k != "tree_size"}, "missing the field 'tree_size'"),
    ]
    for doc, match in cases:
        with pytest.raises(ProofError, match=match):
            check_proof(doc, vkey)
    with pytest.raises(ProofError, match="checkpoint rejected"):
        check_proof(d, ckpt.verifier_key(ORIGIN, ckpt.generate_signing_key()))
    with pytest.raises(ProofError, match="not valid JSON"):
        check_proof("{nope", vkey)


def test_consistency_doc_round_trip_and_tampering(signed_tree, key: Ed25519PrivateKey) -> None:  # type: ignore[no-untyped-def]
    store, _, old_note, new_note = signed_tree
    vkey = ckpt.verifier_key(ORIGIN, key)
    doc = build_consistency_doc(store, old_note, new_note)
    again = ConsistencyProofDoc.from_json(doc.to_json())
    assert again == doc
    msg = check_proof(doc.to_json(), vkey)
    assert msg.startswith("OK consistency: mykey.example/log at size 100") and "old root signed" in msg
    unsigned_old = build_consistency_doc(store, None, new_note, old_size=37)
    assert "compare it with the one you hold" in check_proof(unsigned_old, vkey)

    d = doc.to_dict()
    flipped = ("1" if d["old_root"][0] == "0" else "0") + d["old_root"][1:]
    cases = [
        ({**d, "old_root": flipped}, "old checkpoint signs"),
        ({**d, "old_root": flipped, "old_checkpoint": None}, "not proven to extend"),
        ({**d, "old_size": 36, "old_checkpoint": None}, "not proven to extend"),
        ({**d, "new_size": 99}, "claims new size 99"),
        ({**d, "hashes": d["hashes"][1:]}, "not proven to extend"),
        ({**d, "hashes": list(reversed(d["hashes"]))}, "not proven to extend"),
        ({**d, "old_checkpoint": new_note}, "old checkpoint signs"),
    ]
    for bad, match in cases:
        with pytest.raises(ProofError, match=match):
            check_proof(bad, vkey)
