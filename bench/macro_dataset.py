"""The macro benchmark's dataset: deterministic, so every process can regenerate it.

A dataset of N service IDs over B businesses (Zipf-sized: a few big ones, a long
tail) and M MyKey IDs. Service ``i`` is ``S{i:09d}`` and belongs to the business
whose contiguous block holds ``i``; about 70% are linked to a MyKey ID; about 5%
of MyKey IDs are suspended and 2% invalidated. Every fact is a pure function of
the index numbers, so the expected answer to any query is computed without
reading any store, and the peer processes load their own stores (SQLite, Redis, a
dict) from the same generator.

The mykey side is built the way a deployment gets its data: events appended to
the file log in batches, then projected into the LMDB index.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mykey.domain import events as ev
from mykey.domain.ids import MYKEY_ALPHABET, MYKEY_ID_LEN

LINKED_PCT = 70
SUSPENDED_PCT = 5
INVALID_PCT = 2
ISSUER = "CN=JPKI User Authentication CA (bench),O=mykey-bench,C=JP"
ACTOR = ev.Actor("operator", "bench")
LINK_REASON = "bench data: checked in person"  # an operator's link (a card link needs a card per person)
BUILD_BATCH = 10_000
ABSENT_PCT = 10

_M64 = (1 << 64) - 1
_MK_SPACE = len(MYKEY_ALPHABET) ** MYKEY_ID_LEN
_MK_MULT = 0x2545F4914F6CDD1D % _MK_SPACE  # not a multiple of 31: a bijection on the id space


def mix(i: int, salt: int) -> int:
    """A cheap, well-spread 64-bit hash of (i, salt) (splitmix64 finaliser)."""
    z = (i * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def business_id(b: int) -> str:
    """Business number b (0-based) as a business ID: A0000, A0001, ..., B0000, ..."""
    return f"{chr(65 + b // 10_000)}{b % 10_000:04d}"


def service_id(i: int) -> str:
    return f"S{i:09d}"


def mykey_id(j: int) -> str:
    """MyKey number j as an 8-character MyKey ID (a bijection, so ids are unique)."""
    x = (j * _MK_MULT + 7) % _MK_SPACE
    out = []
    for _ in range(MYKEY_ID_LEN):
        x, r = divmod(x, len(MYKEY_ALPHABET))
        out.append(MYKEY_ALPHABET[r])
    return "".join(out)


@dataclass(frozen=True)
class Spec:
    """What to build: sizes and the seed of the query generator."""

    service_ids: int
    mykeys: int
    businesses: int
    seed: int = 2024

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Spec:
        return cls(**d)

    # --- facts ----------------------------------------------------------------

    def block_sizes(self) -> list[int]:
        """Service IDs per business: Zipf (1/rank) shares, each business at least one."""
        n, b = self.service_ids, self.businesses
        h = sum(1.0 / (r + 1) for r in range(b))
        sizes = [max(1, int(n / (h * (r + 1)))) for r in range(b)]
        sizes[0] += n - sum(sizes)
        if sizes[0] < 1:
            raise ValueError(f"{n} service IDs are too few for {b} businesses")
        return sizes

    def blocks(self) -> list[tuple[int, int]]:
        """(first service number, count) of each business, in business order."""
        out, start = [], 0
        for size in self.block_sizes():
            out.append((start, size))
            start += size
        return out

    def mykey_state(self, j: int) -> int:
        """1 valid, 2 suspended, 3 invalid (Status codes of a linked service ID)."""
        r = mix(j, 3) % 100
        return 2 if r < SUSPENDED_PCT else 3 if r < SUSPENDED_PCT + INVALID_PCT else 1

    def linked_to(self, i: int) -> int | None:
        """The MyKey number service i is linked to, or None when it stays unlinked."""
        h = mix(i, 1)
        if h % 100 >= LINKED_PCT:
            return None
        return (h >> 8) % self.mykeys

    def status(self, i: int) -> int:
        """The status code service i resolves to in its own business."""
        j = self.linked_to(i)
        return 4 if j is None else self.mykey_state(j)

    def rows(self, chunk: int = 50_000) -> Iterator[list[tuple[bytes, bytes, int]]]:
        """Chunks of (business prefix, service id, status code) for every registered service ID."""
        buf: list[tuple[bytes, bytes, int]] = []
        status = self.status
        for b, (start, size) in enumerate(self.blocks()):
            prefix = business_id(b).encode("ascii")
            for i in range(start, start + size):
                buf.append((prefix, b"S%09d" % i, status(i)))
                if len(buf) >= chunk:
                    yield buf
                    buf = []
        if buf:
            yield buf

    # --- events -----------------------------------------------------------------

    def event_count(self) -> int:
        """About how many events the dataset has (for the progress bar)."""
        return (self.businesses + self.mykeys + self.service_ids + self.service_ids * LINKED_PCT // 100
                + self.mykeys * (SUSPENDED_PCT + INVALID_PCT) // 100)

    def event_batches(self) -> Iterator[list]:
        """The dataset as batches of events, in the order a deployment would write them."""
        yield [ev.BusinessRegistered(business_id(b), f"Bench business {b}", "131016") for b in range(self.businesses)]
        batch: list = []

        def flush() -> list:
            nonlocal batch
            out, batch = batch, []
            return out

        for j in range(self.mykeys):
            seed = j.to_bytes(8, "big")
            batch.append(ev.MyKeyCreated(
                mykey_id(j), ISSUER, format(j + 1, "x"),
                hashlib.sha256(b"fp" + seed).digest(), hashlib.sha256(b"sub" + seed).digest(),
                1_900_000_000 + j % 100_000,
            ))
            if len(batch) >= BUILD_BATCH:
                yield flush()
        if batch:
            yield flush()
        blocks = self.blocks()
        # Bulk registration: each business imports its customer numbers.
        for b, (start, size) in enumerate(blocks):
            bid = business_id(b)
            for i in range(start, start + size):
                batch.append(ev.ServiceIdRegistered(bid, service_id(i), None))
                if len(batch) >= BUILD_BATCH:
                    yield flush()
        if batch:
            yield flush()
        # The MyKey IDs get linked (in person, by the operator: the data has no cards).
        for b, (start, size) in enumerate(blocks):
            bid = business_id(b)
            for i in range(start, start + size):
                j = self.linked_to(i)
                if j is not None:
                    batch.append(ev.ServiceIdLinked(bid, service_id(i), mykey_id(j), False, "in-person", LINK_REASON))
                    if len(batch) >= BUILD_BATCH:
                        yield flush()
        if batch:
            yield flush()
        # Some MyKey IDs get suspended or invalidated (rewriting their linked service keys).
        for j in range(self.mykeys):
            st = self.mykey_state(j)
            if st == 2:
                batch.append(ev.MyKeySuspended(mykey_id(j), "certificate suspended"))
            elif st == 3:
                batch.append(ev.MyKeyInvalidated(mykey_id(j), "card returned"))
            if len(batch) >= BUILD_BATCH:
                yield flush()
        if batch:
            yield flush()

    # --- queries ----------------------------------------------------------------

    def queries(self, batch_size: int, n_batches: int, salt: int) -> list[tuple[str, list[bytes]]]:
        """n_batches lookups of batch_size service IDs, each batch for one business.

        Random order; 10% absent (half never registered, half another business's
        IDs, which must not resolve). A batch goes to a business weighted by size
        among those big enough to fill it from distinct IDs (the largest otherwise).
        """
        rnd = random.Random(self.seed * 1_000_003 + salt)
        blocks = self.blocks()
        n_absent = batch_size * ABSENT_PCT // 100
        if batch_size == 1:
            n_absent = 0  # decided per lookup below
        n_present = batch_size - n_absent
        fits = [b for b, (_s, size) in enumerate(blocks) if size >= n_present] or [0]
        weights = [blocks[b][1] for b in fits]
        out = []
        for _ in range(n_batches):
            b = rnd.choices(fits, weights)[0]
            start, size = blocks[b]
            if batch_size == 1:
                if rnd.randrange(100) < ABSENT_PCT:
                    ids = [self._absent(rnd, start, size)]
                else:
                    ids = [start + rnd.randrange(size)]
            else:
                if size >= n_present:
                    ids = [start + x for x in rnd.sample(range(size), n_present)]
                else:
                    ids = [start + rnd.randrange(size) for _ in range(n_present)]
                ids += [self._absent(rnd, start, size) for _ in range(n_absent)]
                rnd.shuffle(ids)
            out.append((business_id(b), [b"S%09d" % i for i in ids]))
        return out

    def _absent(self, rnd: random.Random, start: int, size: int) -> int:
        """A service number that is not registered in the business holding [start, start+size)."""
        n = self.service_ids
        if rnd.randrange(2) == 0 and size < n:
            while True:
                i = rnd.randrange(n)
                if not start <= i < start + size:
                    return i  # another business's ID
        return n + rnd.randrange(10 * n + 1000)  # never registered

    def expected(self, batches: list[tuple[str, list[bytes]]]) -> bytes:
        """The answer every peer must give: one status code per ID, batches concatenated."""
        blocks = self.blocks()
        owner = {business_id(b): (s, s + c) for b, (s, c) in enumerate(blocks)}
        out = bytearray()
        for bid, ids in batches:
            lo, hi = owner[bid]
            for sid in ids:
                i = int(sid[1:])
                out.append(self.status(i) if lo <= i < hi else 0)
        return bytes(out)


# --- the query file shared with the peer processes (and the C program) ------------
#
# b"MKQ1", u32 batch count, then per batch: 5-byte business ID, u32 n, n x (u8 len, id).

_U32 = struct.Struct("<I")


def write_queries(path: Path, batches: list[tuple[str, list[bytes]]]) -> None:
    parts = [b"MKQ1", _U32.pack(len(batches))]
    for bid, ids in batches:
        parts.append(bid.encode("ascii"))
        parts.append(_U32.pack(len(ids)))
        parts.append(b"".join(bytes((len(s),)) + s for s in ids))
    path.write_bytes(b"".join(parts))


def read_queries(path: str | os.PathLike[str]) -> list[tuple[str, list[bytes]]]:
    data = Path(path).read_bytes()
    if data[:4] != b"MKQ1":
        raise ValueError(f"{path} is not a query file")
    (count,) = _U32.unpack_from(data, 4)
    pos = 8
    out = []
    for _ in range(count):
        bid = data[pos:pos + 5].decode("ascii")
        (n,) = _U32.unpack_from(data, pos + 5)
        pos += 9
        ids = []
        for _ in range(n):
            ln = data[pos]
            ids.append(data[pos + 1:pos + 1 + ln])
            pos += 1 + ln
        out.append((bid, ids))
    return out


# --- building the mykey data directory ---------------------------------------------


@dataclass
class BuildResult:
    events: int
    append_s: float
    project_s: float
    log_bytes: int
    index_bytes: int


def dir_bytes(path: Path) -> int:
    """Bytes on disk (allocated blocks) under path."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512
    return total


def index_dir(data_root: Path) -> Path:
    from mykey.datadir import DataDir
    from mykey.index.store import current_generation

    gen = current_generation(DataDir(data_root))
    assert gen is not None
    return gen


def build(spec: Spec, data_root: Path, *, progress: Callable[[str, int], object] | None = None,
          binding: str | None = None) -> BuildResult:
    """Append the dataset's events to DATA/log, then project them into DATA/index (timed separately).

    binding: "native" or "pure" for the index writer (default: mykey's default choice).
    """
    from mykey.datadir import DataDir, ensure_subject_key
    from mykey.index.binding import binding_by_name
    from mykey.index.store import Index
    from mykey.log.filelog import FileLog

    data = DataDir(data_root)
    ensure_subject_key(data)  # the dataset records MyKey IDs: an engine opened on it needs the key
    log = FileLog.open(data.log, fsync="never")
    n = 0
    t0 = time.perf_counter()
    try:
        for batch in spec.event_batches():
            log.append(batch, ACTOR)
            n += len(batch)
            if progress:
                progress("log", len(batch))
    finally:
        log.close()
    append_s = time.perf_counter() - t0
    log = FileLog.open(data.log, readonly=True)
    index = Index.open(data, binding=binding_by_name(binding) if binding else None)
    try:
        t0 = time.perf_counter()
        index.catch_up(log, progress=(lambda k: progress("index", k)) if progress else None)
        index.sync()
        project_s = time.perf_counter() - t0
        assert index.last_seq == n, (index.last_seq, n)
    finally:
        index.close()
    return BuildResult(n, append_s, project_s, dir_bytes(data.log), dir_bytes(index_dir(data_root)))


def db_sizes(path: Path) -> dict[str, int]:
    """Bytes in use by each named database of the index (pages x page size)."""
    from mykey.index import keys as k
    from mykey.index.binding import binding

    env = binding().Env(str(path), readonly=True, create=False, max_dbs=len(k.DB_NAMES) + 2)
    try:
        out = {}
        for name in k.DB_NAMES:
            st = env.stat(env.open_db(name, create=False))
            out[name.decode()] = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
        return out
    finally:
        env.close()


def rebuild_once(data_root: Path, *, progress: Callable[[int], object] | None = None) -> float:
    """Seconds for one full rebuild of the index from the log (`mykey rebuild`)."""
    from mykey.datadir import DataDir
    from mykey.index.store import rebuild
    from mykey.log.filelog import FileLog

    data = DataDir(data_root)
    log = FileLog.open(data.log, readonly=True)
    t0 = time.perf_counter()
    rebuild(data, log, progress=progress)
    return time.perf_counter() - t0


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


_peak_anon_kb = 0


def _sample_anon() -> None:
    """Remember the largest anonymous (private) RSS seen; sampled from the progress callbacks."""
    global _peak_anon_kb
    anon = _status_kb("RssAnon")
    if anon is not None and anon > _peak_anon_kb:
        _peak_anon_kb = anon


def _peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM; ru_maxrss may count the parent's pages after fork+exec)."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _main(argv: list[str]) -> int:
    """`python -m bench.macro_dataset SPEC.json DATA_ROOT REBUILDS`: build, time rebuilds, print JSON.

    Runs in its own process so that its peak RSS is the build's alone.
    """
    import json
    import sys

    from tqdm import tqdm

    spec = Spec.from_json(json.loads(Path(argv[0]).read_text()))
    root = Path(argv[1])
    rebuilds = int(argv[2])
    total = spec.event_count()
    bars: dict[str, tqdm] = {}

    def progress(phase: str, n: int) -> None:
        _sample_anon()
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            label = {"log": "append to log", "index": "project to index"}[phase]
            bar = bars[phase] = tqdm(total=total, desc=f"{spec.service_ids:,} keys: {label}", unit="ev",
                                     unit_scale=True, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)
        bar.update(n)

    res = build(spec, root, progress=progress)
    for bar in bars.values():
        bar.close()
    rebuild_s = []
    for r in range(rebuilds):
        with tqdm(total=res.events, desc=f"{spec.service_ids:,} keys: rebuild {r + 1}/{rebuilds}", unit="ev",
                  unit_scale=True, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None) as bar:
            def step(n: int, bar=bar) -> None:
                _sample_anon()
                bar.update(n)

            rebuild_s.append(rebuild_once(root, progress=step))
    out = asdict(res)
    out.update(rebuild_s=rebuild_s, index_dir=str(index_dir(root)), index_bytes=dir_bytes(index_dir(root)),
               db_bytes=db_sizes(index_dir(root)), maxrss_kb=_peak_rss_kb(), peak_anon_kb=_peak_anon_kb or None)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
