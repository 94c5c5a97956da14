"""Status lists: sizes, build time, incremental update cost, offline checks per second.

    python -m bench.status_list            # full: sizes at 1M and 10M entries, build of 1M service IDs
    python -m bench.status_list --quick    # < 60 s: sizes at 1M, build of 100k (a test runs it)

Sizes use synthetic arrays (random positions, statuses 1 and 2 mixed, the rest 0), as the
draft's table does, beside the draft's published 1-bit sizes and a plain zlib'd list of the
same revoked service IDs (random 10-character IDs, one a line). The build is measured on a
data directory made through mykey's own write path: `mykey service import` of N service IDs
(each given its random position by the writer), then MyKey IDs, links and suspensions
appended to the file log and projected (as bench.macro_dataset does). Prints Markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import string
import sys
import tempfile
import time
import zlib
from pathlib import Path

from mykey.domain import events as ev
from mykey.domain import statuslist as sl

DRAFT_1BIT_KB = {(10**6, 1): 13.7, (10**6, 10): 67.6, (10**7, 1): 135.4, (10**7, 10): 672.9}
ACTOR = ev.Actor("operator", "bench")
ISSUER = "CN=bench CA,O=mykey-bench,C=JP"


def _kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def sizes(entries: int, pct: int, levels: tuple[int, ...], rnd: random.Random) -> dict:
    """Compressed sizes of one synthetic list (2-bit at each level, 1-bit at 9) and of the revoked-ID list."""
    k = entries * pct // 100
    positions = rnd.sample(range(entries), k)
    two = sl.pack(entries, ((p, 1 + (i & 1)) for i, p in enumerate(positions)))
    one = bytearray(entries // 8)
    for p in positions:
        one[p >> 3] |= 1 << (p & 7)
    row: dict = {"entries": entries, "pct": pct}
    for level in levels:
        t0 = time.perf_counter()
        z = zlib.compress(bytes(two), level)
        row[f"l{level}_bytes"], row[f"l{level}_s"] = len(z), time.perf_counter() - t0
    row["b64_bytes"] = len(sl.b64u(zlib.compress(bytes(two), levels[0])))
    row["one_bit_l9_bytes"] = len(zlib.compress(bytes(one), 9))
    alphabet = string.ascii_uppercase + string.digits
    ids = "\n".join("".join(rnd.choices(alphabet, k=10)) for _ in range(k)).encode()
    row["ids_raw_bytes"], row["ids_zlib_bytes"] = len(ids), len(zlib.compress(ids, 9))
    return row


def build_dataset(root: Path, n: int) -> tuple[Path, str, float, list[str]]:
    """A data directory with one business of n service IDs, imported with `mykey service import`;
    n/10 MyKey IDs, each linked to one service ID; 5% of them suspended, 5% invalidated.
    Returns (data dir, business ID, import seconds, the MyKey IDs still valid)."""
    from mykey.cli import main
    from mykey.datadir import DataDir
    from mykey.engine import Engine
    from mykey.index.store import Index
    from mykey.log.filelog import FileLog

    from bench.macro_dataset import mykey_id

    data = root / "data"
    with Engine.open(data, audit=False) as e:
        bid = e.register_business("Bench library", "131016")
    csv = root / "members.csv"
    with open(csv, "w") as f:
        f.write("service_id,customer_id\n")
        f.writelines(f"M{i:09d},\n" for i in range(n))
    t0 = time.perf_counter()
    rc = main(["--data", str(data), "service", "import", bid, str(csv)])
    import_s = time.perf_counter() - t0
    assert rc == 0, rc
    people = n // 10
    log = FileLog.open(data / "log", fsync="never")
    try:
        mks = [mykey_id(j) for j in range(people)]
        for start in range(0, people, 10_000):
            batch = [ev.MyKeyCreated(mk, ISSUER, format(j + 1, "x"), hashlib.sha256(mk.encode()).digest(),
                                     b"", 1_900_000_000) for j, mk in enumerate(mks[start : start + 10_000], start)]
            log.append(batch, ACTOR)
            log.append([ev.ServiceIdLinked(bid, f"M{j * 10:09d}", mk, False, "in-person", "bench")
                        for j, mk in enumerate(mks[start : start + 10_000], start)], ACTOR)
        changes = [ev.MyKeySuspended(mk, "bench") if j % 2 else ev.MyKeyInvalidated(mk, "bench")
                   for j, mk in enumerate(mks) if j % 10 == 0]
        for start in range(0, len(changes), 10_000):
            log.append(changes[start : start + 10_000], ACTOR)
    finally:
        log.close()
    with FileLog.open(data / "log", readonly=True) as log, Index.open(DataDir(data)) as index:
        index.catch_up(log)
    return data, bid, import_s, [mk for j, mk in enumerate(mks) if j % 10]


def measure_build(root: Path, n: int, changes: int) -> dict:
    from mykey.datadir import DataDir
    from mykey.engine import Engine
    from mykey.engine.statuslists import StatusListStore, build_array
    from mykey.index.readmodel import ReadModel
    from mykey.log.backend import open_log

    data, bid, import_s, valid = build_dataset(root, n)
    out: dict = {"service_ids": n, "import_s": import_s}
    d = DataDir(data)
    with ReadModel.open_live(d) as model, open_log(d, readonly=True) as log:  # type: ignore[union-attr]
        with model.snapshot() as snap:
            t0 = time.perf_counter()
            array = build_array(snap, bid)
            out["scan_pack_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        claim = sl.status_list_claim(array)
        out["compress_s"] = time.perf_counter() - t0
        out["entries"] = len(array) * sl.PER_BYTE
        out["lst_bytes"] = len(claim["lst"])
        store = StatusListStore(d, model, log, refresh=0)
        store.key()
        t0 = time.perf_counter()
        built = store.token(bid)
        out["build_s"] = time.perf_counter() - t0
        out["token_bytes"] = len(built.body)
        jwks = store.jwks()
    # status changes through the engine (each suspends a MyKey ID with one linked service ID)
    with Engine.open(data, audit=False) as e:
        for mk in valid[:changes]:
            e.suspend(mk, "bench")
    with ReadModel.open_live(d) as model, open_log(d, readonly=True) as log:  # type: ignore[union-attr]
        store = StatusListStore(d, model, log, refresh=0)
        t0 = time.perf_counter()
        again = store.token(bid)  # reads the stored token's array back, patches the changes, signs
        out["incremental_s"] = time.perf_counter() - t0
        out["changes"] = changes
        with model.snapshot() as snap:
            assert sl.verify(again.token, jwks, now=time.time()).array == bytes(build_array(snap, bid))
    # the terminal: verify once, then look up
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        v = sl.verify(again.token, jwks, now=time.time())
    out["verify_s"] = (time.perf_counter() - t0) / reps
    rnd = random.Random(3)
    idxs = [rnd.randrange(v.entries) for _ in range(200_000)]
    t0 = time.perf_counter()
    for i in idxs:
        v.status(i)
    out["checks_per_s"] = len(idxs) / (time.perf_counter() - t0)
    return out


def report(size_rows: list[dict], build: dict, levels: tuple[int, ...]) -> str:
    lines = ["# Status lists", "", "## Sizes (synthetic lists; KiB)", "",
             "| entries | suspended/invalid | draft 1-bit (published) | 1-bit zlib 9 | "
             + " | ".join(f"2-bit zlib {lv} (time)" for lv in levels)
             + " | 2-bit lst (base64url) | revoked IDs raw | revoked IDs zlib 9 |",
             "|---|---|---|---|" + "---|" * len(levels) + "---|---|---|"]
    for r in size_rows:
        lines.append(
            f"| {r['entries']:,} | {r['pct']}% | {DRAFT_1BIT_KB.get((r['entries'], r['pct']), '-')} | "
            f"{_kb(r['one_bit_l9_bytes'])} | "
            + " | ".join(f"{_kb(r[f'l{lv}_bytes'])} ({r[f'l{lv}_s']:.2f} s)" for lv in levels)
            + f" | {_kb(r['b64_bytes'])} | {_kb(r['ids_raw_bytes'])} | {_kb(r['ids_zlib_bytes'])} |")
    b = build
    lines += ["", f"## Build, update, check ({b['service_ids']:,} service IDs via `mykey service import`)", "",
              "| figure | value |", "|---|---|",
              f"| `mykey service import` (positions drawn by the writer) | {b['import_s']:.1f} s |",
              f"| list length (entries) | {b['entries']:,} |",
              f"| build from scratch: scan + pack | {b['scan_pack_s']:.2f} s |",
              f"| build from scratch: zlib {sl.ZLIB_LEVEL} | {b['compress_s']:.2f} s |",
              f"| build from scratch: whole (scan, pack, compress, sign, store) | {b['build_s']:.2f} s |",
              f"| token size | {_kb(b['token_bytes'])} KiB |",
              f"| incremental rebuild after {b['changes']} suspensions | {b['incremental_s']:.2f} s "
              f"({b['incremental_s'] / b['changes'] * 1000:.2f} ms a change, the compression and signature included) |",
              f"| terminal: verify + inflate the list once | {b['verify_s'] * 1000:.1f} ms |",
              f"| terminal: offline checks per second (after verify) | {b['checks_per_s']:,.0f} |"]
    return "\n".join(lines) + "\n"


def run(quick: bool) -> tuple[str, dict]:
    rnd = random.Random(1)
    levels = (6, 9)
    grid = [(10**6, 1), (10**6, 10)] if quick else [(10**6, 1), (10**6, 10), (10**7, 1), (10**7, 10)]
    rows = [sizes(n, pct, levels, rnd) for n, pct in grid]
    with tempfile.TemporaryDirectory(prefix="mykey-sl-bench-") as tmp:
        build = measure_build(Path(tmp), 100_000 if quick else 1_000_000, 100 if quick else 1000)
    return report(rows, build, levels), {"sizes": rows, "build": build}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small and fast (< 60 s)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    text, figures = run(args.quick)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
