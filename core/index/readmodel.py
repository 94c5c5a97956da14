"""The engine's read model: the state a command validates against, by name, over one read transaction.

``ReadModel.snapshot()`` opens one LMDB read transaction and returns a ``Snapshot``
whose methods answer the questions the engine's rules ask (is this MyKey ID there,
which service IDs are registered, is this certificate revoked, ...) with records and
small named tuples. Key encodings stay in this package: a caller never builds a key
or indexes into a value.

A snapshot sees one committed state of the index: everything a command reads comes
from the same point, whatever commits later. Close it (``with``) before writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from ..datadir import DataDir
from ..domain.status import MyKeyState
from ..errors import IndexError_, IndexSchemaError, NoIndexError
from . import keys as k
from .projection import Dbs, get_business, get_mykey, get_terminal, scan
from .store import open_live_readonly, read_meta_last_seq


class TrustedCas(NamedTuple):
    """The configured CA certificates (DER): roots (anchors) and intermediates."""

    anchors: list[bytes]
    intermediates: list[bytes]


class CertHolder(NamedTuple):
    """A MyKey ID a certificate belongs to, and that MyKey ID's state."""

    mykey_id: str
    state: MyKeyState


class Snapshot:
    """One read transaction over the index; every answer comes from the same committed state."""

    __slots__ = ("_txn", "_dbs")

    def __init__(self, txn, dbs: Dbs) -> None:
        self._txn = txn
        self._dbs = dbs

    # --- bookkeeping -----------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The sequence number of the last event this state reflects."""
        return read_meta_last_seq(self._txn, self._dbs)

    # --- MyKey IDs ---------------------------------------------------------------

    def mykey(self, mykey_id: str) -> k.MyKeyRecord | None:
        """The MyKey ID's record (state, current certificate), or None if there is no such MyKey ID."""
        return get_mykey(self._txn, self._dbs, mykey_id)

    def mykey_exists(self, mykey_id: str) -> bool:
        return self._txn.get(self._dbs.mykey, mykey_id.encode("ascii")) is not None

    def mykeys(self) -> Iterator[tuple[str, k.MyKeyRecord]]:
        """Every MyKey ID with its record, in ID order."""
        for key, raw in scan(self._txn, self._dbs.mykey):
            yield key.decode("ascii"), k.decode(k.MyKeyRecord, raw)

    def mykey_by_ref(self, ref: int) -> str:
        """The MyKey ID a linked service value refers to (SvcValue.ref)."""
        raw = self._txn.get(self._dbs.mkref, k.u64(ref))
        if raw is None:
            raise IndexError_(f"no MyKey ID has reference {ref}: the index is damaged; run `mykey audit diff`")
        return raw.decode("ascii")

    def linked_businesses(self, mykey_id: str) -> list[str]:
        """The business IDs where the MyKey ID has a linked service ID, sorted."""
        prefix = mykey_id.encode("ascii")
        links = scan(self._txn, self._dbs.mksvc, prefix, prefix)
        # key = mykey_id + business_id (5 bytes) + service_id
        return sorted({key[len(prefix) : len(prefix) + 5].decode("ascii") for key, _ in links})

    def linked_service_ids(self, mykey_id: str, business_id: str) -> list[tuple[str, k.SvcValue]]:
        """The business's service IDs linked to the MyKey ID, with their values, in service ID order."""
        mk = mykey_id.encode("ascii")
        prefix = mk + business_id.encode("ascii")
        out = []
        for key, _ in scan(self._txn, self._dbs.mksvc, prefix, prefix):
            skey = key[len(mk) :]  # the service key: business ID + service ID
            record = self._txn.get(self._dbs.svcrec, skey)
            if record is not None:
                status = self._txn.get(self._dbs.svc, skey) or b""
                out.append((k.split_service_key(skey)[1], k.parse_svc_value(status, record)))
        return out

    # --- certificates --------------------------------------------------------------

    def certificate_holders(self, issuer: str, serial: str, fingerprint: bytes) -> Iterator[CertHolder]:
        """The MyKey IDs holding this certificate now, or holding it before a renewal replaced it."""
        for key in (k.cert_serial_key(issuer, serial), k.cert_fp_key(fingerprint), k.former_cert_key(issuer, serial)):
            raw = self._txn.get(self._dbs.cert, key)
            if raw is not None:
                mykey_id = raw.decode("ascii")
                rec = self.mykey(mykey_id)
                if rec is not None:
                    yield CertHolder(mykey_id, rec.state)

    def current_holder(self, issuer: str, serial: str) -> str | None:
        """The MyKey ID whose current certificate this is, or None."""
        raw = self._txn.get(self._dbs.cert, k.cert_serial_key(issuer, serial))
        return None if raw is None else raw.decode("ascii")

    def replaced_by_renewal(self, issuer: str, serial: str) -> bool:
        """True if a renewal already moved some MyKey ID away from this certificate."""
        return self._txn.get(self._dbs.cert, k.former_cert_key(issuer, serial)) is not None

    def is_revoked(self, issuer: str, serial: str) -> bool:
        """True if an applied CRL revoked the certificate (issuer DN, serial in lower-case hex)."""
        return self._txn.get(self._dbs.revoked, k.revoked_key(issuer, serial)) is not None

    # --- trust and CRLs ----------------------------------------------------------------

    def trusted_cas(self) -> TrustedCas:
        anchors: list[bytes] = []
        intermediates: list[bytes] = []
        for key, der in scan(self._txn, self._dbs.trust):
            (intermediates if key[:1] == b"i" else anchors).append(der)
        return TrustedCas(anchors, intermediates)

    def intermediates(self) -> list[bytes]:
        """The trusted intermediate CA certificates (DER)."""
        return [der for _key, der in scan(self._txn, self._dbs.trust, b"i", b"i")]

    def is_trusted(self, fingerprint: bytes, *, intermediate: bool) -> bool:
        """True if the CA certificate with this SHA-256 fingerprint is trusted already (in that role)."""
        return self._txn.get(self._dbs.trust, (b"i" if intermediate else b"a") + fingerprint) is not None

    def crl_applied(self, fingerprint: bytes) -> bool:
        return self._txn.get(self._dbs.crl, b"f" + fingerprint) is not None

    def highest_crl_number(self, issuer: str) -> int | None:
        """The highest CRL number applied for this issuer, or None if none was."""
        raw = self._txn.get(self._dbs.crl, b"i" + k.issuer_digest(issuer))
        return None if raw is None else k.parse_u64(raw)

    # --- businesses, terminals, service IDs ------------------------------------------------

    def business(self, business_id: str) -> k.BusinessRecord | None:
        return get_business(self._txn, self._dbs, business_id)

    def business_ids(self) -> list[str]:
        """Every registered business ID, in order."""
        return [key.decode("ascii") for key, _ in scan(self._txn, self._dbs.business)]

    def terminal(self, terminal_id: str) -> k.TerminalRecord | None:
        return get_terminal(self._txn, self._dbs, terminal_id)

    def service(self, business_id: str, service_id: str) -> k.SvcValue | None:
        """The service ID's status, link and customer ID, or None if it is not registered."""
        skey = k.service_key(business_id, service_id)
        record = self._txn.get(self._dbs.svcrec, skey)
        return None if record is None else k.parse_svc_value(self._txn.get(self._dbs.svc, skey) or b"", record)

    def registered(self, business_id: str, service_ids: Iterable[str]) -> list[bool]:
        """For each (ASCII) service ID of the business, in order: is it registered?"""
        prefix = business_id.encode("ascii")
        keys = [prefix + sid.encode("ascii") for sid in service_ids]
        return [v is not None for v in self._txn.get_many(self._dbs.svc, keys)]

    # --- linked systems ---------------------------------------------------------------------

    def feed_position(self, consumer: str) -> int:
        """The last sequence number the feed consumer acknowledged (0 if none)."""
        raw = self._txn.get(self._dbs.feed, consumer.encode("ascii"))
        return 0 if raw is None else k.parse_u64(raw)

    # --- certificate paths, CA trust and CRL freshness ---------------------------------------

    def recorded_path(self, mykey_id: str) -> k.RecordedPath:
        """The MyKey ID's current certificate path, leaf first (empty if it was recorded before paths were)."""
        raw = self._txn.get(self._dbs.cas, k.path_key(mykey_id))
        return () if raw is None else k.decode(k.RecordedPath, raw)

    def mykeys_under_ca_serial(self, issuer: str, serial: str) -> list[str]:
        """The MyKey IDs whose current path holds the CA certificate (issuer DN, serial in hex)."""
        prefix = k.ca_serial_prefix(issuer, serial)
        return [key[len(prefix) :].decode("ascii") for key, _ in scan(self._txn, self._dbs.cas, prefix, prefix)]

    def mykeys_under_ca(self, fingerprint: bytes) -> list[str]:
        """The MyKey IDs whose current path holds the CA certificate with this SHA-256 fingerprint."""
        prefix = k.ca_fp_prefix(fingerprint)
        return [key[len(prefix) :].decode("ascii") for key, _ in scan(self._txn, self._dbs.cas, prefix, prefix)]

    def trust_removed(self, fingerprint: bytes) -> bool:
        """True if the CA certificate was removed from the trust store (and not trusted again since)."""
        return self._txn.get(self._dbs.cas, k.untrusted_key(fingerprint)) is not None

    def successors(self, key_id: bytes) -> list[bytes]:
        """Key identifiers of the CAs designated as successors of the CA with this key identifier."""
        prefix = k.successor_prefix(key_id)
        return [key[len(prefix) :] for key, _ in scan(self._txn, self._dbs.cas, prefix, prefix)]

    def latest_crl(self, issuer: str, key_id: bytes) -> k.CrlFreshness | None:
        """The newest CRL applied for the CA key (issuer DN, key identifier), or None if none was."""
        raw = self._txn.get(self._dbs.crl, k.crl_fresh_key(issuer, key_id))
        return None if raw is None else k.decode(k.CrlFreshness, raw)

    def consumer(self, consumer: str) -> k.ConsumerRecord | None:
        """The registered feed consumer's record (its municipality), or None if it is not registered."""
        raw = self._txn.get(self._dbs.consumer, consumer.encode("ascii"))
        return None if raw is None else k.decode(k.ConsumerRecord, raw)

    def has_consumers(self) -> bool:
        """True once any feed consumer is registered."""
        return next(scan(self._txn, self._dbs.consumer), None) is not None

    def feed_entries(
        self, municipality_code: str, after: int, limit: int | None = None
    ) -> Iterator[tuple[int, k.FeedEntry]]:
        """(seq, entry) of the municipality's feed after seq `after`, in order (at most limit)."""
        prefix = k.municipality_prefix(municipality_code)
        for n, (key, raw) in enumerate(scan(self._txn, self._dbs.mfeed, k.feed_entry_key(municipality_code, after + 1), prefix)):
            if limit is not None and n >= limit:
                return
            yield k.parse_u64(key[len(prefix) :]), k.decode(k.FeedEntry, raw)


    # --- a person's own history ---------------------------------------------------------------

    def mykey_event_seqs(self, mykey_id: str) -> list[int]:
        """Sequence numbers of the events the index filed under the MyKey ID, in order."""
        prefix = mykey_id.encode("ascii")
        return [k.parse_u64(key[len(prefix) :]) for key, _ in scan(self._txn, self._dbs.mkevents, prefix, prefix)]

    def mykey_links(self, mykey_id: str) -> list[tuple[str, str]]:
        """(business ID, service ID) of every service ID linked to the MyKey ID, sorted."""
        prefix = mykey_id.encode("ascii")
        return sorted(k.split_service_key(key[len(prefix) :]) for key, _ in scan(self._txn, self._dbs.mksvc, prefix, prefix))

    # --- status lists (positions: see mykey.domain.statuslist) ---------------------------------

    def status_positions(self, business_id: str) -> int:
        """How many status list positions the business has given (its list's length follows from it)."""
        raw = self._txn.get(self._dbs.slidx, k.slidx_count_key(business_id))
        return 0 if raw is None else k.parse_u64(raw)

    def positions_taken(self, business_id: str, idxs: list[int]) -> list[bool]:
        """For each position, in order: has the business given it already?"""
        keys = [k.slidx_key(business_id, i) for i in idxs]
        return [v is not None for v in self._txn.get_many(self._dbs.slidx, keys)]

    def status_idxs(self, business_id: str, service_ids: Iterable[str]) -> list[int | None]:
        """Each (ASCII) service ID's status list position, in order (None: not registered, or none yet)."""
        prefix = business_id.encode("ascii")
        keys = [prefix + sid.encode("ascii") for sid in service_ids]
        dec = k.decoder(k.ServiceRecord)
        return [None if raw is None else dec(raw).idx for raw in self._txn.get_many(self._dbs.svcrec, keys)]

    def status_list_entries(self, business_id: str, chunk: int = 65536) -> Iterator[tuple[int, int]]:
        """(position, Status code) of every position the business gave, in position order."""
        prefix = business_id.encode("ascii")
        positions: list[int] = []
        skeys: list[bytes] = []
        for key, skey in scan(self._txn, self._dbs.slidx, prefix + b"\0\0\0\0", prefix):
            positions.append(k.parse_slidx_key(key))
            skeys.append(skey)
            if len(skeys) >= chunk:
                yield from self._status_codes(positions, skeys)
                positions, skeys = [], []
        yield from self._status_codes(positions, skeys)

    def _status_codes(self, positions: list[int], skeys: list[bytes]) -> Iterator[tuple[int, int]]:
        for idx, raw in zip(positions, self._txn.get_many(self._dbs.svc, skeys), strict=True):
            yield idx, raw[0] if raw else 0

    def service_status_entries(self, business_id: str, service_ids: Iterable[str]) -> list[tuple[int, int]]:
        """(position, Status code) of those of the business's service IDs that have a position."""
        prefix = business_id.encode("ascii")
        skeys = [prefix + sid.encode("ascii") for sid in service_ids]
        dec = k.decoder(k.ServiceRecord)
        recs = self._txn.get_many(self._dbs.svcrec, skeys)
        have = [(dec(r).idx, s) for r, s in zip(recs, skeys, strict=True) if r is not None]
        have = [(i, s) for i, s in have if i is not None]
        return list(self._status_codes([i for i, _ in have], [s for _, s in have]))

    def services_without_position(self) -> Iterator[tuple[str, str]]:
        """(business ID, service ID) of every service ID registered before status lists had positions."""
        dec = k.decoder(k.ServiceRecord)
        for key, raw in scan(self._txn, self._dbs.svcrec):
            if dec(raw).idx is None:
                yield k.split_service_key(key)


class ReadModel:
    """Snapshots of an open index environment (the engine's, or a read-only one of the live index)."""

    def __init__(self, env, dbs: Dbs, *, owns_env: bool = False) -> None:
        self.env = env
        self.dbs = dbs
        self._owns_env = owns_env

    @classmethod
    def open_live(cls, data: DataDir | str | Path, *, binding: ModuleType | None = None) -> ReadModel | None:
        """The live index of a data directory, read-only (None before the first index exists).

        For a process that does not hold the index open otherwise (LMDB allows one open per process).
        """
        data = data if isinstance(data, DataDir) else DataDir(Path(data))
        try:
            env, dbs, _gen = open_live_readonly(data, binding)
        except IndexSchemaError:
            raise  # an index, but of an older layout: say so (`mykey rebuild`), not "no index"
        except NoIndexError:
            return None
        return cls(env, dbs, owns_env=True)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """``with model.snapshot() as s:`` one read transaction; s answers from one committed state."""
        with self.env.begin() as txn:
            yield Snapshot(txn, self.dbs)

    def close(self) -> None:
        """Close the environment if this read model opened it. Idempotent."""
        if self._owns_env and self.env is not None:
            self.env.close()
            self.env = None

    def __enter__(self) -> ReadModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
