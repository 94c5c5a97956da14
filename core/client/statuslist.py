"""The terminal's side of status lists: keep a fetched list, then answer offline from it.

``mykey client status-list fetch --out FILE [SERVICE_ID...]`` stores three files:

- ``FILE``: the list token exactly as the gateway served it (application/statuslist+jwt);
- ``FILE.jwks.json``: the gateway's public key set (``/.well-known/jwks.json``);
- ``FILE.idx.json``: ``{"business_id": ..., "idx": {service ID: position}}``, the positions of
  the service IDs the terminal asked about (merged with those already there). A position is
  given once and never changes, so the map only grows.

``check FILE SERVICE_ID...`` (no network) verifies the token against FILE.jwks.json (signature,
typ, sub naming the map's business, exp), then reads each service ID's entry at its position.
A service ID may be given as ``SERVICE_ID=IDX`` when its position is known otherwise. A
service ID without a known position answers ``unknown``: the list never vouches for a service
ID it was not given a position for. The first fetch pins the gateway's key set in
FILE.jwks.json (trust on first use); a later fetch is refused if the gateway serves another key
set. Pass the platform's key set obtained out of band with ``--jwks`` (to fetch and to check) to
trust nothing the gateway says about its own key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .. import fs
from ..domain import statuslist as sl
from ..errors import StatusListFormatError, StatusListSignatureError, ValidationError


class OfflineAnswer(NamedTuple):
    service_id: str
    idx: int | None
    status: str  # valid | invalid | suspended | unlinked | unknown


def sidecars(path: Path) -> tuple[Path, Path]:
    """(JWKS file, position map file) kept beside a list file."""
    return path.with_name(path.name + ".jwks.json"), path.with_name(path.name + ".idx.json")


def load_positions(path: Path) -> tuple[str | None, dict[str, int]]:
    """(business ID, {service ID: position}) from a list's position map (empty when there is none)."""
    _jwks, idx_path = sidecars(path)
    try:
        doc = json.loads(idx_path.read_text("utf-8"))
    except FileNotFoundError:
        return None, {}
    except (OSError, ValueError) as exc:
        raise StatusListFormatError(f"{idx_path} is not a position map ({exc}); fetch the list again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("idx"), dict):
        raise StatusListFormatError(f"{idx_path} is not a position map; fetch the list again")
    return doc.get("business_id"), {str(k): int(v) for k, v in doc["idx"].items()}


def _keys(jwks: Mapping[str, Any]) -> list[str]:
    """A key set's public keys, comparable (order and formatting aside)."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    return sorted(json.dumps(k, sort_keys=True) for k in keys) if isinstance(keys, list) else []


def save(path: Path, token: bytes, jwks: Mapping[str, Any], business_id: str, positions: Mapping[str, int | None],
         *, pinned: Mapping[str, Any] | None = None) -> int:
    """Store a fetched list, its key set and the known positions (merged); how many positions are known.

    The key set is pinned: the first fetch keeps it beside the list (or pinned, a key set obtained
    out of band, is kept), and a later fetch whose list is not signed by the pinned keys is refused,
    so a gateway that starts serving another key cannot make the terminal trust lists signed with it.
    Nothing is written when the list is refused.
    """
    jwks_path, idx_path = sidecars(path)
    if pinned is None and jwks_path.exists():
        try:
            pinned = json.loads(jwks_path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise StatusListFormatError(f"cannot read the pinned key set {jwks_path} ({exc}); get the "
                                        "platform's published status-list key out of band and pass --jwks FILE") from None
    if pinned is not None:
        sl.verify(token, pinned, now=time.time())  # signed by the pinned key (StatusListSignatureError if not)
        if _keys(pinned) != _keys(jwks):
            raise StatusListSignatureError(
                f"the gateway serves a status-list key set other than the one pinned in {jwks_path}; check the "
                "platform's published key out of band, then pass it with --jwks FILE (or delete the pinned file)")
        jwks = pinned
    old_business, known = load_positions(path) if idx_path.exists() else (None, {})
    if old_business not in (None, business_id):
        known = {}  # another business's map: it says nothing about this list
    known.update({sid: idx for sid, idx in positions.items() if idx is not None})
    fs.write_atomic(jwks_path, (json.dumps(dict(jwks), indent=2) + "\n").encode("utf-8"), mode=0o644)
    doc = {"business_id": business_id, "idx": dict(sorted(known.items()))}
    fs.write_atomic(idx_path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    fs.write_atomic(path, token)
    return len(known)


def parse_ids(args: Iterable[str]) -> list[tuple[str, int | None]]:
    """SERVICE_ID or SERVICE_ID=IDX arguments."""
    out = []
    for arg in args:
        sid, eq, idx = arg.rpartition("=") if "=" in arg else (arg, "", "")
        if eq and not idx.isdigit():
            raise ValidationError(f"{arg!r}: write SERVICE_ID=IDX with IDX a non-negative integer")
        out.append((sid, int(idx)) if eq else (arg, None))
    return out


def check(path: Path, service_ids: Iterable[str], *, jwks_path: Path | None = None,
          now: float | None = None) -> tuple[sl.VerifiedList, list[OfflineAnswer]]:
    """Verify the stored list and answer each service ID from it (offline; see the module docstring)."""
    own_jwks, _ = sidecars(path)
    jwks_path = jwks_path or own_jwks
    try:
        with open(path, "rb") as f:
            token = f.read(sl.MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise StatusListFormatError(f"cannot read the status list {path} ({exc.strerror or exc}); fetch it with "
                                    "`mykey client ... status-list fetch --out FILE`") from None
    try:
        jwks = json.loads(jwks_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise StatusListFormatError(f"cannot read the key set {jwks_path} ({exc}); fetch the list again") from None
    business, known = load_positions(path)
    verified = sl.verify(token, jwks, now=time.time() if now is None else now,
                         sub=None if business is None else sl.list_uri(business))
    answers = []
    for sid, given in parse_ids(service_ids):
        idx = given if given is not None else known.get(sid)
        if idx is None:
            answers.append(OfflineAnswer(sid, None, "unknown"))
        else:
            answers.append(OfflineAnswer(sid, idx, verified.status(idx).label))
    return verified, answers
