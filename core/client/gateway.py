"""The reference terminal client of the mykey gateway (``mykey client``), for terminal vendors to embed.

    from mykey.client.gateway import GatewayClient

    with GatewayClient("https://gw.example", "A0001-T0001", "A0001-T0001.key") as gw:
        gw.status("123456")                      # -> "valid"
        gw.statuses(["123456", "999999"])        # -> [("123456", "valid"), ("999999", "unknown")]

It signs in once (an Ed25519 signature over ``terminal_auth_message``), keeps the session
token, and signs in again shortly before it expires, or when the gateway says it has
expired. One keep-alive HTTP connection pool (httpx) serves every call. A refusal raises
GatewayRefusedError carrying the gateway's problem JSON; an unreachable gateway raises
GatewayError. Use one client from one thread (or one per thread).
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..auth.terminals import terminal_auth_message
from ..errors import (
    GatewayError,
    GatewayProtocolError,
    GatewayRefusedError,
)
from .keys import load_private_key

MAX_BATCH = 1000  # service IDs per POST /v1/status (the gateway's documented maximum)
REFRESH_MARGIN = 10.0  # sign in again when the token has less than this many seconds left
_RETRY_KINDS = ("urn:mykey:problem:token-expired", "urn:mykey:problem:token-invalid")


@dataclass(frozen=True)
class Session:
    token: str
    business_id: str
    expires_at: int


def _quote_path(service_id: str) -> str:
    # Everything but letters and digits is escaped: "/", "%", "?" and "#" must not be read as
    # URL syntax, and "." or ".." would be removed as dot segments.
    return quote(service_id, safe="").replace(".", "%2E").replace("-", "%2D").replace("_", "%5F").replace("~", "%7E")


class GatewayClient:
    """A terminal's connection to a gateway: signs in, re-signs when the token expires, asks."""

    def __init__(
        self,
        gateway: str,
        terminal_id: str,
        key: Ed25519PrivateKey | str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway = gateway.rstrip("/")
        self.terminal_id = terminal_id
        self._key = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key)
        self._http = http or httpx.Client(base_url=self.gateway, timeout=timeout)
        self._owns_http = http is None
        self._clock = clock
        self.session: Session | None = None
        self.sign_ins = 0

    # --- session ---------------------------------------------------------------

    def sign_in(self) -> Session:
        """Authenticate the terminal (POST /v1/sessions) and keep the new token."""
        now = int(self._clock())
        nonce = secrets.token_bytes(16)
        message = terminal_auth_message(self.terminal_id, now, nonce)
        body = {
            "terminal_id": self.terminal_id,
            "time": now,
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "signature": base64.b64encode(self._key.sign(message)).decode("ascii"),
        }
        doc = self._send("POST", "/v1/sessions", json=body)
        try:
            self.session = Session(str(doc["token"]), str(doc["business_id"]), int(doc["expires_at"]))
        except (KeyError, TypeError, ValueError):
            raise GatewayProtocolError(f"the gateway's session answer is not one: {doc!r}") from None
        self.sign_ins += 1
        return self.session

    @property
    def business_id(self) -> str:
        return (self.session or self.sign_in()).business_id

    def _token(self) -> str:
        session = self.session
        if session is None or session.expires_at - self._clock() < REFRESH_MARGIN:
            session = self.sign_in()
        return session.token

    # --- requests -----------------------------------------------------------------

    def _send(self, method: str, path: str, *, json: Any = None, token: str | None = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else None
        try:
            resp = self._http.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.gateway}: {exc}") from None
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if resp.is_success and doc is not None:
            return doc
        problem = doc if isinstance(doc, dict) else {"detail": resp.text[:200]}
        raise GatewayRefusedError(resp.status_code, problem)

    def _authorised(self, method: str, path: str, *, json: Any = None) -> Any:
        """Send with the session token; sign in again once if the gateway says it expired."""
        try:
            return self._send(method, path, json=json, token=self._token())
        except GatewayRefusedError as exc:
            if exc.status != 401 or exc.problem.get("type") not in _RETRY_KINDS:
                raise
        self.sign_in()
        return self._send(method, path, json=json, token=self._token())

    def status(self, service_id: str) -> str:
        """The status word of one of this business's service IDs (GET /v1/status/{service_id})."""
        return str(self._authorised("GET", "/v1/status/" + _quote_path(service_id))["status"])

    def statuses(self, service_ids: Iterable[str]) -> list[tuple[str, str]]:
        """(service_id, status word) for each, in order; batches of MAX_BATCH (POST /v1/status)."""
        ids = list(service_ids)
        out: list[tuple[str, str]] = []
        for start in range(0, len(ids), MAX_BATCH):
            chunk: Sequence[str] = ids[start : start + MAX_BATCH]
            doc = self._authorised("POST", "/v1/status", json={"service_ids": chunk})
            out.extend((str(item["service_id"]), str(item["status"])) for item in doc["statuses"])
        return out

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
