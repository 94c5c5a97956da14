"""A data directory and everything in it is its owner's only, whatever the umask; one others may write is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from mykey import fs
from mykey.auth.terminals import TerminalAuthenticator
from mykey.client import keys as terminal_keys
from mykey.datadir import DataDir
from mykey.engine import Engine
from mykey.errors import InsecurePermissionsError, KeyFileError
from mykey.index.readmodel import ReadModel
from mykey.index.resolver import Resolver
from mykey.index.store import rebuild
from mykey.log.filelog import FileLog

from .conftest import create_user


@pytest.fixture
def umask0():
    """Run the test with umask 000: nothing may rely on the umask to keep files private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Every directory and file under root (and root itself), by relative path, with its permission bits."""
    out = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):  # a symlink's own mode means nothing
                out[str(path.relative_to(root))] = stat.S_IMODE(st.st_mode)
    return out


def not_private(root: Path) -> dict[str, str]:
    found = modes(root)
    return {
        p: f"{m:04o}" for p, m in found.items()
        if m != (fs.DIR_MODE if (root / p).is_dir() else fs.FILE_MODE)
    }


def test_everything_in_a_data_directory_is_owner_only_under_umask_000(tmp_path, binding, pki, umask0):
    data = tmp_path / "new" / "data"  # parents are made too
    with Engine.open(data, binding=binding, checkpoint_on_close=True) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = e.register_business("Library", "131016")
        e.register_consumer("points", "131016")
        e.enrol_terminal(bid, terminal_keys.public_pem(terminal_keys.generate()))
        mk, _ = create_user(e, pki)
        e.link_in_person(bid, "S1", mk, "seen in person")
        e.feed("points")
    with Resolver.open(data, binding=binding) as r, TerminalAuthenticator.open(data, r, r.binding):
        pass  # makes DATA/auth-nonces
    with FileLog.open(data / "log") as log:
        rebuild(DataDir(data), log, binding=binding)  # a new, compacted index generation
    from mykey.audit.replay import replay

    replay(DataDir(data), 3, tmp_path / "new" / "replay")
    assert {"keys/feed.key", "keys/subject.key", "auth-nonces/data.mdb", "merkle/meta"} <= set(modes(data))
    assert not_private(data) == {}
    assert not_private(tmp_path / "new" / "replay") == {}
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == fs.DIR_MODE


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o777])
def test_a_data_directory_others_may_write_is_refused(tmp_path, binding, mode):
    data = tmp_path / "data"
    Engine.open(data, binding=binding).close()
    os.chmod(data, mode)
    before = modes(data)
    for open_it in (
        lambda: Engine.open(data, binding=binding),
        lambda: Resolver.open(data, binding=binding),
        lambda: ReadModel.open_live(DataDir(data), binding=binding),
    ):
        with pytest.raises(InsecurePermissionsError, match=f"chmod 700 {data}") as exc:
            open_it()
        assert f"{mode:04o}" in str(exc.value)
    assert modes(data) == before  # refused before anything was made or changed
    os.chmod(data, 0o700)
    Engine.open(data, binding=binding).close()


def test_a_log_directory_others_may_write_is_refused(tmp_path):
    log_dir = tmp_path / "log"
    FileLog.open(log_dir).close()
    os.chmod(log_dir, 0o777)
    for readonly in (False, True):
        with pytest.raises(InsecurePermissionsError, match="log directory"):
            FileLog.open(log_dir, readonly=readonly)


def test_the_engine_makes_a_readable_data_directory_owner_only(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # made by hand, readable by everyone
    Engine.open(data).close()
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700


def test_private_dir_ignores_the_umask(tmp_path):
    old = os.umask(0o777)  # even the owner's bits would be masked
    try:
        made = fs.private_dir(tmp_path / "a" / "b", files=fs.LMDB_FILES)
    finally:
        os.umask(old)
    assert made == tmp_path / "a" / "b"
    assert [stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "a", made)] == [0o700, 0o700]
    assert [stat.S_IMODE(os.stat(made / f).st_mode) for f in fs.LMDB_FILES] == [0o600, 0o600]
    (made / "data.mdb").write_bytes(b"kept")
    fs.private_dir(made, files=fs.LMDB_FILES)  # idempotent: an existing file is left alone
    assert (made / "data.mdb").read_bytes() == b"kept"
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        fs.private_dir(tmp_path / "file")


def test_secrets_are_made_once_and_checked(tmp_path, umask0):
    path = tmp_path / "keys" / "x.key"
    with pytest.raises(KeyFileError, match="missing"):
        fs.ensure_secret(path, 32, create=False)
    secret = fs.ensure_secret(path, 32)
    assert len(secret) == 32 and fs.ensure_secret(path, 32, create=False) == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="damaged"):
        fs.ensure_secret(path, 32)
