"""The data directory's stored checkpoints: one signed note per tree size in DATA/checkpoints/.

File ``<size, 20 digits>.ckpt`` holds the signed checkpoint note (the format is in
``mykey.audit.checkpoint``) for that tree size. Only the trail writes them (``store_checkpoint``);
everything else here reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import fs
from ..datadir import DataDir
from ..errors import AuditError, CheckpointError, NoCheckpointError, NoIndexError
from ..index.store import open_live_readonly, read_meta_last_seq
from .checkpoint import Checkpoint, VerifierKey, parse_signed_checkpoint

__all__ = [
    "CHECKPOINT_SUFFIX",
    "checkpoint_path",
    "list_checkpoints",
    "signed_size",
    "read_checkpoint",
    "latest_checkpoint",
    "store_checkpoint",
    "verified_checkpoint",
]

CHECKPOINT_SUFFIX = ".ckpt"
_CKPT_NAME = re.compile(r"([0-9]{20})\.ckpt\Z")


def checkpoint_path(data: DataDir, size: int) -> Path:
    """Where the checkpoint for tree size ``size`` is stored."""
    return data.checkpoints / f"{size:020d}{CHECKPOINT_SUFFIX}"


def list_checkpoints(data: DataDir) -> list[tuple[int, Path]]:
    """Stored checkpoints as (size from the file name, path), smallest first."""
    if not data.checkpoints.is_dir():
        return []
    out = []
    for p in data.checkpoints.iterdir():
        m = _CKPT_NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    out.sort()
    return out


def signed_size(data: DataDir) -> int:
    """The tree size of the newest stored checkpoint (0 if none): events the platform signed for."""
    cps = list_checkpoints(data)
    return cps[-1][0] if cps else 0


def acknowledged_size(data: DataDir) -> int:
    """Events known to be acknowledged: applied by the live index or covered by a signed checkpoint.

    A log backend's recovery must never discard these (the ``keep_through`` of ``open_log``).
    Opens the live index read-only, so call it only from a process that does not hold it open
    (the Engine, which holds it, uses its own index's last_seq).
    """
    try:
        env, dbs, _gen = open_live_readonly(data)
    except NoIndexError:
        applied = 0
    else:
        try:
            with env.begin() as txn:
                applied = read_meta_last_seq(txn, dbs)
        finally:
            env.close()
    return max(applied, signed_size(data))


def read_checkpoint(data: DataDir, size: int) -> str:
    """The signed checkpoint note stored for tree size ``size``."""
    path = checkpoint_path(data, size)
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        have = ", ".join(str(s) for s, _ in list_checkpoints(data)[-10:]) or "none"
        raise NoCheckpointError(
            f"no checkpoint for tree size {size} (stored sizes, latest 10: {have}); run `mykey audit checkpoint`"
        ) from None


def latest_checkpoint(data: DataDir) -> str:
    """The signed checkpoint note with the largest tree size."""
    cps = list_checkpoints(data)
    if not cps:
        raise NoCheckpointError(f"no signed checkpoints in {data.checkpoints}; run `mykey audit checkpoint` first")
    return cps[-1][1].read_text("utf-8")


def store_checkpoint(data: DataDir, size: int, note: str) -> Path:
    """Store the signed note for tree size ``size`` (atomically, durably; public, but in DATA: 0600)."""
    fs.private_dir(data.checkpoints)
    path = checkpoint_path(data, size)
    fs.write_atomic(path, note.encode("utf-8"))
    return path


def verified_checkpoint(note: str, vk: VerifierKey, where: str) -> Checkpoint:
    """The checkpoint in a stored ``note``, its signature checked with the log's own verifier key."""
    try:
        return parse_signed_checkpoint(note, vk.name, vk.public_key, expected_origin=vk.name)
    except CheckpointError as exc:
        raise AuditError(f"{where}: {exc}") from None
