"""RFC 9457 problem details: every error the gateway answers, as ``application/problem+json``.

A problem's ``type`` is ``urn:mykey:problem:<kind>`` with one of the kinds below (the
OpenAPI document lists them); ``title`` is fixed per kind, ``detail`` says what
happened this time and what to do. The kind is also the refusal reason in the metrics.
"""

from __future__ import annotations

import msgspec

from ..errors import HttpProblem

TYPE_PREFIX = "urn:mykey:problem:"
CONTENT_TYPE = "application/problem+json"

# kind -> (HTTP status, title)
KINDS: dict[str, tuple[int, str]] = {
    "malformed-request": (400, "Malformed request"),
    "token-missing": (401, "Session token required"),
    "token-invalid": (401, "Session token not valid"),
    "token-expired": (401, "Session token expired"),
    "terminal-auth-failed": (401, "Terminal authentication failed"),
    "terminal-revoked": (403, "Terminal revoked"),
    "business-deactivated": (403, "Business deactivated"),
    "wrong-business": (403, "Not this business's"),
    "registration-not-allowed": (403, "Registration not allowed"),
    "challenge-invalid": (403, "Challenge not valid"),
    "card-refused": (403, "Card refused"),
    "mykey-not-valid": (403, "MyKey ID not valid"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "conflict": (409, "Conflict"),
    "body-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "rate-limited": (429, "Too many requests"),
    "internal-error": (500, "Internal error"),
    "not-ready": (503, "Not ready"),
    "writer-unavailable": (503, "Writer unavailable"),
}

_encode = msgspec.json.Encoder().encode


def problem(
    kind: str, detail: str, *, headers: tuple[tuple[str, str], ...] = (), extra: dict | None = None
) -> HttpProblem:
    """The HttpProblem of a kind (its status comes from KINDS)."""
    return HttpProblem(KINDS[kind][0], kind, detail, headers=headers, extra=extra)


def problem_body(exc: HttpProblem) -> bytes:
    """The problem JSON for exc: type, its kind's title, status, detail and any extension members."""
    title = KINDS.get(exc.kind, (exc.status, "Error"))[1]
    doc = {"type": TYPE_PREFIX + exc.kind, "title": title, "status": exc.status, "detail": exc.detail}
    return _encode({**exc.extra, **doc})
