"""Session tokens: what a terminal sends on every request after one signed authentication.

A terminal signs once (``POST /v1/sessions``, one Ed25519 verification of ~100 µs) and
gets a short-lived bearer token bound to its terminal ID and business ID::

    v1.<terminal_id>.<business_id>.<expires_at>.<base64url HMAC-SHA256>

The MAC is over a context string and the four fields, under the gateway key
(DATA/keys/gateway.key, 32 random bytes, mode 0600, made once). Every worker holds the
key, so any worker verifies any token without shared state; deleting the key file and
restarting the gateway invalidates every token. The token says nothing the terminal does
not know already, and cannot be changed without the key. Expiry is checked here;
revocation is not: the gateway reads the terminal's and its business's records on every
request, so a revoked terminal or a deactivated business stops at once.
"""

from __future__ import annotations

import base64
import hmac
import secrets

from ..datadir import DataDir
from ..errors import KeyFileError
from ..fs import write_exclusive
from .problems import problem

TOKEN_CONTEXT = b"mykey-gateway-token/v1\n"
TOKEN_VERSION = "v1"
GATEWAY_KEY_BYTES = 32
DEFAULT_TOKEN_TTL = 300  # seconds


def ensure_gateway_key(data: DataDir) -> bytes:
    """The gateway's token MAC key (DATA/keys/gateway.key, mode 0600); made on first use."""
    path = data.keys / "gateway.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        data.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            write_exclusive(path, secrets.token_bytes(GATEWAY_KEY_BYTES))
        except FileExistsError:  # another process made it first: use theirs
            pass
        key = path.read_bytes()
    if len(key) != GATEWAY_KEY_BYTES:
        raise KeyFileError(
            f"{path} is damaged (not {GATEWAY_KEY_BYTES} bytes); delete it and restart the gateway "
            "(terminals then sign in again)"
        )
    return key


MAX_CACHED = 10_000  # verified tokens a signer remembers (each terminal holds one or two at a time)


class TokenSigner:
    """Issues and verifies session tokens under one key (one HMAC-SHA256, or a dict lookup when seen)."""

    __slots__ = ("_key", "_seen", "ttl")

    def __init__(self, key: bytes, ttl: int = DEFAULT_TOKEN_TTL) -> None:
        if len(key) < 16:
            raise ValueError("the token key must have at least 16 bytes")
        self._key = key
        self.ttl = ttl
        # Tokens whose MAC checked out: token -> (terminal_id, business_id, expires_at). Expiry is
        # still checked on every use; the cache only saves recomputing the MAC of a known token.
        self._seen: dict[str, tuple[str, str, int]] = {}

    def _mac(self, body: str) -> str:
        digest = hmac.digest(self._key, TOKEN_CONTEXT + body.encode("ascii"), "sha256")
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, terminal_id: str, business_id: str, now: float) -> tuple[str, int]:
        """A token for the terminal of business_id, and when it expires (Unix seconds)."""
        expires_at = int(now) + self.ttl
        body = f"{TOKEN_VERSION}.{terminal_id}.{business_id}.{expires_at}"
        return f"{body}.{self._mac(body)}", expires_at

    def verify(self, token: str, now: float) -> tuple[str, str]:
        """(terminal_id, business_id) of a genuine, unexpired token; HttpProblem 401 otherwise."""
        seen = self._seen.get(token)
        if seen is None:
            seen = self._check(token)
            if len(self._seen) >= MAX_CACHED:
                self._seen.clear()
            self._seen[token] = seen
        if seen[2] <= now:
            raise problem("token-expired", "the session token expired; sign in again (POST /v1/sessions)")
        return seen[0], seen[1]

    def _check(self, token: str) -> tuple[str, str, int]:
        body, _, mac = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_VERSION or not token.isascii() or not parts[3].isdigit():
            raise problem("token-invalid", "the bearer token is not a mykey session token; sign in again")
        if not hmac.compare_digest(self._mac(body), mac):
            raise problem("token-invalid", "the bearer token is not valid here; sign in again")
        return parts[1], parts[2], int(parts[3])
