"""The periodic revocation check: fetch the CRL of every trusted CA, from a base URL or a directory
the PKI drops files into, and apply what is new (``mykey crl sync --from URL|DIR [--every 6h]``).

Where the CRLs of a trusted CA certificate are looked for:

- ``<base>/<key-id>.crl``: the CRL the CA issues, where key-id is the lower-case hex SHA-1 key
  identifier of the CA's public key (RFC 5280 method 1; for most CAs the same as the subject key
  identifier its certificate carries);
- with a URL base, also every http(s) URI in the CA certificate's CRL distribution points: the
  CRL that covers the CA certificate itself (its issuer's CRL; for a self-signed root, its own).

A fetched file gets no trust from where it came from: each one is verified and applied by
``apply_crl`` (signature by a trusted CA, current, not older than one applied already), and the
same CRL again changes nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from cryptography import x509

from ..domain import certs
from ..errors import CertificateError, CommandRefused, NoIndexError, ValidationError
from ..index.readmodel import ReadModel, TrustedCas

if TYPE_CHECKING:  # pragma: no cover
    import httpx

    from .revocation import CrlReport

MAX_CRL_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT = 30.0  # seconds per request
_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "6h", "1d" or a plain number of seconds (at least 1)."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None or int(m.group(1)) < 1:
        raise ValidationError(f"{text!r} is not a duration; use e.g. 90s, 30m, 6h or 1d")
    return float(int(m.group(1)) * _UNIT[m.group(2)])


@dataclass(frozen=True)
class CrlSource:
    """Where CRLs are fetched from: an http(s) base URL, or a local directory."""

    base: str

    @property
    def is_url(self) -> bool:
        return urlsplit(self.base).scheme in ("http", "https")

    @classmethod
    def parse(cls, text: str) -> CrlSource:
        if urlsplit(text).scheme in ("http", "https"):
            if not urlsplit(text).netloc:
                raise ValidationError(f"{text!r} names no host; use e.g. https://pki.example/crl/")
            return cls(text.rstrip("/") + "/")
        if "://" in text:
            raise ValidationError(f"{text!r}: CRLs are fetched over http(s) or read from a directory")
        if not Path(text).is_dir():
            raise ValidationError(f"{text} is not a directory; give the directory the PKI drops CRL files into, or a URL")
        return cls(str(Path(text)))


class CrlLocation(NamedTuple):
    """One place to fetch a CRL from, and the trusted CA that led to it (CA names are public)."""

    ca: str
    where: str


def _distribution_points(cert: x509.Certificate) -> list[str]:
    try:
        dps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        name.value
        for dp in dps
        for name in (dp.full_name or ())
        if isinstance(name, x509.UniformResourceIdentifier) and urlsplit(name.value).scheme in ("http", "https")
    ]


def crl_locations(source: CrlSource, cas: TrustedCas) -> list[CrlLocation]:
    """Where to look for the CRLs of every trusted CA: roots first, each place once."""
    out: list[CrlLocation] = []
    seen: set[str] = set()
    for der in [*cas.anchors, *cas.intermediates]:
        cert = certs.load_certificate(der)
        ca = cert.subject.rfc4514_string()
        name = certs.key_id(cert).hex() + ".crl"
        places = [source.base + name] if source.is_url else [str(Path(source.base) / name)]
        if source.is_url:
            places += _distribution_points(cert)
        for where in places:
            if where not in seen:
                seen.add(where)
                out.append(CrlLocation(ca, where))
    return out


@dataclass
class Fetched:
    """What one location gave: the CRL bytes, nothing (not published there), or a problem."""

    location: CrlLocation
    data: bytes | None = None
    problem: str | None = None


def _fetch_url(client: httpx.Client, url: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    import httpx

    try:
        with client.stream("GET", url) as r:
            if r.status_code == 404:
                return None, None
            if r.status_code != 200:
                return None, f"HTTP {r.status_code}"
            buf = bytearray()
            for chunk in r.iter_bytes():
                buf += chunk
                if len(buf) > max_bytes:
                    return None, f"larger than {max_bytes} bytes"
            return bytes(buf), None
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _read_file(path: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    p = Path(path)
    try:
        if not p.is_file():
            return None, None
        if p.stat().st_size > max_bytes:
            return None, f"larger than {max_bytes} bytes"
        return p.read_bytes(), None
    except OSError as exc:
        return None, f"{exc.strerror or exc}"


def fetch_crls(
    locations: Iterable[CrlLocation], *, client: httpx.Client | None = None, max_bytes: int = MAX_CRL_BYTES
) -> list[Fetched]:
    """Fetch every location (URLs with one httpx client, files from disk); never raises for one place."""
    locations = list(locations)
    urls = [loc for loc in locations if urlsplit(loc.where).scheme in ("http", "https")]
    own = None
    if urls and client is None:
        import httpx

        own = client = httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=True, max_redirects=3)
    try:
        out = []
        for loc in locations:
            if urlsplit(loc.where).scheme in ("http", "https"):
                assert client is not None
                data, problem = _fetch_url(client, loc.where, max_bytes)
            else:
                data, problem = _read_file(loc.where, max_bytes)
            out.append(Fetched(loc, data, problem))
        return out
    finally:
        if own is not None:
            own.close()


@dataclass
class SyncItem:
    """The outcome at one location: applied, unchanged (applied before), not published, or failed."""

    ca: str
    where: str
    outcome: str
    detail: str = ""
    number: int | None = None
    suspended: list[str] = field(default_factory=list)


@dataclass
class SyncReport:
    """What one sync round did, location by location."""

    items: list[SyncItem]

    @property
    def suspended(self) -> list[str]:
        return [mk for item in self.items for mk in item.suspended]

    def count(self, outcome: str) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)

    def summary(self) -> str:
        return (
            f"{len(self.items)} location(s): {self.count('applied')} CRL(s) applied, {self.count('unchanged')} "
            f"unchanged, {self.count('not published')} not published, {self.count('failed')} failed; "
            f"{len(self.suspended)} MyKey ID(s) suspended"
            + (f" ({', '.join(self.suspended)})" if self.suspended else "")
        )


def apply_fetched(apply_crl: Callable[[bytes], CrlReport], fetched: Iterable[Fetched]) -> SyncReport:
    """Apply each fetched CRL (through the engine's apply_crl); a refused one is reported, not raised."""
    items = []
    for f in fetched:
        loc = f.location
        if f.problem is not None:
            items.append(SyncItem(loc.ca, loc.where, "failed", f.problem))
            continue
        if f.data is None:
            items.append(SyncItem(loc.ca, loc.where, "not published"))
            continue
        try:
            report = apply_crl(f.data)
        except (CertificateError, CommandRefused) as exc:
            items.append(SyncItem(loc.ca, loc.where, "failed", str(exc)))
            continue
        outcome = "unchanged" if report.already_applied else "applied"
        detail = f"CRL {report.number} of {report.issuer}: {report.newly_revoked} newly revoked"
        items.append(SyncItem(loc.ca, loc.where, outcome, detail, report.number, list(report.suspended)))
    return SyncReport(items)


def sync_round(data_dir: str | Path, source: CrlSource, open_engine: Callable, *, client: httpx.Client | None = None) -> SyncReport:
    """One round for a process that does not hold the engine open: read the trusted CAs from the live
    index (no writer lock), fetch without any lock, then open the engine only to apply."""
    model = ReadModel.open_live(data_dir)
    if model is None:
        raise NoIndexError(f"no index in {data_dir}; run `mykey init` first")
    with model, model.snapshot() as state:
        cas = state.trusted_cas()
    fetched = fetch_crls(crl_locations(source, cas), client=client)
    with open_engine() as engine:
        return apply_fetched(engine.apply_crl, fetched)


def run_every(round_: Callable[[], object], interval: float, stop: threading.Event) -> int:
    """Run round_ now and then every interval seconds until stop is set; returns the rounds run."""
    rounds = 0
    while not stop.is_set():
        round_()
        rounds += 1
        stop.wait(interval)
    return rounds
