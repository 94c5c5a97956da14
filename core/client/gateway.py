"""The reference terminal client of the mykey gateway (``mykey client``), for terminal vendors to embed.

    from mykey.client.gateway import Card, GatewayClient, PersonClient, check_history

    with GatewayClient("https://gw.example", "A0001-T0001", "A0001-T0001.key") as gw:
        gw.status("123456")                      # -> "valid"
        gw.statuses(["123456", "999999"])        # -> [("123456", "valid"), ("999999", "unknown")]
        gw.status_answers(["123456"])            # -> [StatusAnswer("123456", "valid", idx=48211)]: with the
                                                 #    position in the business's status list
        card = Card(certificate_pem, sign)       # what the card reader gives: its certificate, its signing
        gw.identify(card)                        # -> [("123456", "valid")]: this business's IDs of the holder
        gw.link("654321", card)                  # -> "valid": first-use registration, by the card
        gw.register_service_ids("members.csv")   # -> rows registered (terminals enrolled --can-register)

    with PersonClient("https://gw.example") as me:          # a person, no terminal
        history = me.history(card)
        check_history(history, "checkpoint.vkey")           # every proof, offline; ProofError if one fails

It signs in once (an Ed25519 signature over ``terminal_auth_message``), keeps the session
token, and signs in again shortly before it expires, or when the gateway says it has
expired. One keep-alive HTTP connection pool (httpx) serves every call. A refusal raises
GatewayRefusedError carrying the gateway's problem JSON; an unreachable gateway raises
GatewayError. Use one client from one thread (or one per thread).

The card: a real terminal puts its card reader behind ``Card`` (the certificate it reads,
and a function that has the card sign a challenge); the reference CLI simulates it with a
certificate file and a key file. The client asks the gateway for a challenge, has the card
sign it, and sends both; the challenge says what the signature is for (identify at this
business and terminal, link this service ID, or show the holder their history), so the
gateway cannot use it for anything else.
"""

from __future__ import annotations

import base64
import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..audit.checkpoint import VerifierKey, parse_signed_checkpoint, peek_checkpoint
from ..audit.history import event_body
from ..audit.keys import public_key_arg
from ..audit.proofs import InclusionProofDoc, check_proof
from ..auth.terminals import terminal_auth_message
from ..errors import (
    CheckpointError,
    GatewayError,
    GatewayProtocolError,
    GatewayRefusedError,
    ProofError,
)
from .keys import load_private_key

MAX_BATCH = 1000  # service IDs per POST /v1/status (the gateway's documented maximum)
REFRESH_MARGIN = 10.0  # sign in again when the token has less than this many seconds left
_RETRY_KINDS = ("urn:mykey:problem:token-expired", "urn:mykey:problem:token-invalid")


UPLOAD_CHUNK = 256 * 1024  # bytes per chunk of a streamed CSV upload


@dataclass(frozen=True)
class StatusAnswer:
    """A status answer: the service ID, its status word, and its position in the business's
    status list (None: it has none, or the service ID is not registered)."""

    service_id: str
    status: str
    idx: int | None = None


def _answer(item: dict[str, Any], service_id: str) -> StatusAnswer:
    idx = item.get("idx")
    return StatusAnswer(service_id, str(item["status"]), idx if isinstance(idx, int) else None)


@dataclass(frozen=True)
class Session:
    token: str
    business_id: str
    expires_at: int


@dataclass(frozen=True)
class Card:
    """A person's card as a card reader presents it: its certificate and a way to have it sign.

    certificate: the user certificate, PEM (optionally followed by intermediate CA
    certificates) or DER; sign: signs a challenge with the card's key (RSA PKCS#1 v1.5
    or ECDSA over SHA-256, what the card does for proof of possession).
    """

    certificate: bytes
    sign: Callable[[bytes], bytes]

    def proof(self, challenge: bytes) -> dict[str, str]:
        """The request members carrying the card's proof over challenge."""
        cert = self.certificate
        pem = cert.decode("ascii") if cert.lstrip().startswith(b"-----") else ssl.DER_cert_to_PEM_cert(cert)
        return {
            "certificate": pem,
            "signature": base64.b64encode(self.sign(challenge)).decode("ascii"),
            "challenge": challenge.decode("ascii"),
        }


NOT_READY_TRIES = 3  # tries of a request the gateway answers 503 not-ready


def _is_not_ready(resp: httpx.Response) -> bool:
    try:
        return resp.json().get("type") == "urn:mykey:problem:not-ready"
    except (ValueError, AttributeError):
        return False


def _retry_after(resp: httpx.Response) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _send(http: httpx.Client, gateway: str, method: str, path: str, *, token: str | None = None, **kw: Any) -> Any:
    """One request; the JSON answer, or GatewayRefusedError with the gateway's problem JSON."""
    headers = {**kw.pop("headers", {}), **({"authorization": f"Bearer {token}"} if token else {})}
    for attempt in range(NOT_READY_TRIES):
        try:
            resp = http.request(method, path, headers=headers or None, **kw)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {gateway}: {exc}") from None
        # 503 not-ready: the gateway did nothing (its index or the log's servers were not there);
        # asking again after Retry-After is safe for any request. Other answers are final.
        if resp.status_code != 503 or attempt == NOT_READY_TRIES - 1 or not _is_not_ready(resp):
            break
        time.sleep(min(5.0, _retry_after(resp)))
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if resp.is_success and doc is not None:
        return doc
    problem = doc if isinstance(doc, dict) else {"detail": resp.text[:200]}
    raise GatewayRefusedError(resp.status_code, problem)


def _challenge_bytes(doc: Any) -> bytes:
    try:
        return str(doc["challenge"]).encode("ascii")
    except (KeyError, TypeError, UnicodeEncodeError):
        raise GatewayProtocolError(f"the gateway's challenge answer is not one: {doc!r}") from None


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

    def _send(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> Any:
        return _send(self._http, self.gateway, method, path, token=token, **kw)

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
        return self.status_answer(service_id).status

    def status_answer(self, service_id: str) -> StatusAnswer:
        """One service ID's status word and status-list position (GET /v1/status/{service_id})."""
        return _answer(self._authorised("GET", "/v1/status/" + _quote_path(service_id)), service_id)

    def statuses(self, service_ids: Iterable[str]) -> list[tuple[str, str]]:
        """(service_id, status word) for each, in order; batches of MAX_BATCH (POST /v1/status)."""
        return [(a.service_id, a.status) for a in self.status_answers(service_ids)]

    def status_answers(self, service_ids: Iterable[str]) -> list[StatusAnswer]:
        """Each service ID's status word and status-list position, in order; batches of MAX_BATCH."""
        ids = list(service_ids)
        out: list[StatusAnswer] = []
        for start in range(0, len(ids), MAX_BATCH):
            chunk: Sequence[str] = ids[start : start + MAX_BATCH]
            doc = self._authorised("POST", "/v1/status", json={"service_ids": chunk})
            out.extend(_answer(item, str(item["service_id"])) for item in doc["statuses"])
        return out

    # --- the card flows -------------------------------------------------------------

    def challenge(self, purpose: str, service_id: str | None = None) -> bytes:
        """A single-use challenge for the card to sign: purpose "identify", or "link" naming service_id."""
        body: dict[str, str] = {"purpose": purpose}
        if service_id is not None:
            body["service_id"] = service_id
        return _challenge_bytes(self._authorised("POST", "/v1/challenges", json=body))

    def identify(self, card: Card) -> list[tuple[str, str]]:
        """(service_id, status) of this business's service IDs linked to the card's holder (often one; may be none)."""
        doc = self._authorised("POST", "/v1/identify", json=card.proof(self.challenge("identify")))
        return [(str(item["service_id"]), str(item["status"])) for item in doc["service_ids"]]

    def link(self, service_id: str, card: Card) -> str:
        """Link service_id to the card's holder (registering it at first use where allowed); its status."""
        body = {**card.proof(self.challenge("link", service_id)), "service_id": service_id}
        return str(self._authorised("POST", "/v1/links", json=body)["status"])

    def register_service_ids(self, csv: str | os.PathLike[str] | bytes | BinaryIO) -> int:
        """Bulk-register a CSV (header service_id,customer_id; a path, bytes or a binary file), all or nothing.

        Streamed in chunks, never read whole. For terminals enrolled with --can-register. A
        refusal's problem JSON names the first bad line (member ``line``).
        """
        if isinstance(csv, bytes):
            return self._upload(lambda: iter([csv]), len(csv))
        if isinstance(csv, (str, os.PathLike)):
            path = Path(csv)

            def from_file() -> Iterator[bytes]:
                with open(path, "rb") as f:
                    yield from iter(lambda: f.read(UPLOAD_CHUNK), b"")

            return self._upload(from_file, path.stat().st_size)
        data = csv.read()  # a file object: read once, it cannot be rewound for a retry
        return self._upload(lambda: iter([data]), len(data))

    def _upload(self, chunks: Callable[[], Iterator[bytes]], size: int) -> int:
        headers = {"content-type": "text/csv", "content-length": str(size)}
        for attempt in (1, 2):
            try:
                doc = self._send("POST", "/v1/service-ids", token=self._token(), content=chunks(), headers=headers)
                return int(doc["registered"])
            except GatewayRefusedError as exc:
                if attempt == 2 or exc.status != 401 or exc.problem.get("type") not in _RETRY_KINDS:
                    raise
                self.sign_in()
        raise AssertionError("unreachable")

    # --- status lists (see mykey.client.statuslist) -------------------------------------------

    def positions(self, service_ids: Iterable[str]) -> dict[str, int | None]:
        """Each service ID's position in this business's status list (None: unknown or none yet)."""
        ids = list(service_ids)
        out: dict[str, int | None] = {}
        for start in range(0, len(ids), MAX_BATCH):
            doc = self._authorised("POST", "/v1/status", json={"service_ids": ids[start : start + MAX_BATCH]})
            out.update((str(item["service_id"]), item.get("idx")) for item in doc["statuses"])
        return out

    def status_list(self, etag: str | None = None) -> tuple[bytes | None, str | None]:
        """(token, ETag) of this business's signed list; token None when it is still the one of etag (304)."""
        headers = {"if-none-match": etag} if etag else {}
        for attempt in (1, 2):
            try:
                resp = self._http.get("/v1/status-list", headers={**headers, "authorization": f"Bearer {self._token()}"})
            except httpx.HTTPError as exc:
                raise GatewayError(f"cannot reach the gateway at {self.gateway}: {exc}") from None
            if resp.status_code == 304:
                return None, resp.headers.get("etag")
            if resp.status_code == 200:
                return resp.content, resp.headers.get("etag")
            try:
                problem = resp.json()
            except ValueError:
                problem = {"detail": resp.text[:200]}
            exc = GatewayRefusedError(resp.status_code, problem if isinstance(problem, dict) else {})
            if attempt == 2 or exc.status != 401 or exc.problem.get("type") not in _RETRY_KINDS:
                raise exc
            self.sign_in()
        raise AssertionError("unreachable")

    def jwks(self) -> dict[str, Any]:
        """The key set status lists are signed with (GET /.well-known/jwks.json, no token)."""
        doc = self._send("GET", "/.well-known/jwks.json")
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise GatewayProtocolError("the gateway's JWKS is not a key set")
        return doc

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the person's own view (no terminal) -----------------------------------------------------


class PersonClient:
    """A person asking the gateway for their own history with their card (no terminal, no token)."""

    def __init__(self, gateway: str, *, timeout: float = 30.0, http: httpx.Client | None = None) -> None:
        self.gateway = gateway.rstrip("/")
        self._http = http or httpx.Client(base_url=self.gateway, timeout=timeout)
        self._owns_http = http is None

    def history(self, card: Card) -> dict[str, Any]:
        """Every event about the card holder's MyKey ID, with inclusion proofs (check them with check_history)."""
        challenge = _challenge_bytes(_send(self._http, self.gateway, "POST", "/v1/people/challenges"))
        doc = _send(self._http, self.gateway, "POST", "/v1/people/history", json=card.proof(challenge))
        if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
            raise GatewayProtocolError("the gateway's history answer is not one")
        return doc

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> PersonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_history(history: dict[str, Any], checkpoint_key: str | os.PathLike[str] | VerifierKey) -> list[str]:
    """Check a history offline against the platform's published checkpoint key; one line per event.

    checkpoint_key: the verifier key (a vkey such as DATA/keys/checkpoint.vkey, its text, a PEM
    public key, or a file holding one) obtained from the platform, not from the gateway being
    checked. Every event the signed checkpoint covers must carry an inclusion proof that
    verifies, whose leaf is that very event (sequence number, type and fields), all against
    the one checkpoint the history names. Raises ProofError at the first that does not.
    """
    key = checkpoint_key if isinstance(checkpoint_key, VerifierKey) else public_key_arg(os.fspath(checkpoint_key))
    header = history.get("checkpoint")
    events = history.get("events") or []
    if header is None:
        if any(e.get("proof") for e in events):
            raise ProofError("the history carries proofs but names no signed checkpoint")
        return [f"seq {e['seq']}: not yet in a signed checkpoint" for e in events]
    size = _checked_checkpoint(header, key)
    lines = []
    for e in events:
        seq, proof = e["seq"], e.get("proof")
        if proof is None:
            if seq <= size:
                raise ProofError(f"event {seq} is covered by the signed checkpoint (size {size}) but has no proof")
            lines.append(f"seq {seq}: newer than the signed checkpoint (size {size}); no proof yet")
            continue
        doc = InclusionProofDoc.from_dict(proof)
        if doc.checkpoint != header["note"] or doc.leaf_index != seq - 1:
            raise ProofError(f"the proof of event {seq} is not against the history's checkpoint, or not for leaf {seq - 1}")
        ok = check_proof(doc, key)
        try:
            leaf = event_body(doc.leaf_data)
        except Exception as exc:  # a leaf that is no event record: the proof is not about this event
            raise ProofError(f"the proven leaf of event {seq} is not an event record: {exc}") from None
        if leaf != (seq, e.get("type"), e.get("body")):
            raise ProofError(f"the proven leaf of event {seq} is another event than the one shown")
        lines.append(f"seq {seq}: {ok}")
    return lines


def _checked_checkpoint(header: dict[str, Any], key: VerifierKey | Ed25519PublicKey) -> int:
    """The size of the history's checkpoint, once its note's signature and its stated fields check out."""
    note = header.get("note")
    try:
        if not isinstance(note, str):
            raise CheckpointError("the checkpoint has no signed note")
        if isinstance(key, VerifierKey):
            name, public = key.name, key.public_key
        else:
            name, public = peek_checkpoint(note).origin, key
        cp = parse_signed_checkpoint(note, name, public)
    except CheckpointError as exc:
        raise ProofError(f"the history's checkpoint is not signed by the platform's key: {exc}") from None
    if (header.get("size"), header.get("root"), header.get("time")) != (cp.size, cp.root_hash.hex(), cp.timestamp):
        raise ProofError("the history states a checkpoint other than the signed note it carries")
    return cp.size
