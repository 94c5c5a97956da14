"""Fuzzing the parsers of untrusted bytes: only documented errors (MykeyError subclasses), never a crash.

Targets (``TARGETS``), each a function of one input:

- ``envelope``: mykey.domain.events.decode_envelope (a log record) -> RecordDecodeError;
- ``framing``: parse_batches / parse_header of both twins (mykey.log.framing and the Cython
  mykey.log._framing) at an offset taken from the input: no error at all, and the twins agree;
- ``csv``: a service ID file as `mykey service import` reads it (read_service_csv_file, then the
  ID checks of every row; every 200th input that parses is imported by a real Engine);
- ``certs``: load_certificates, then the trust store's path verification of what loaded;
- ``crl``: verify_crl against the corpus's trust store;
- ``proof``: load_proof_doc and check_proof against the corpus's verifier key;
- ``gateway``: an HTTP request (method, path, content type, body) through the gateway's own
  RSGI application in process, with a real index and writer: only 2xx JSON or 4xx problem
  JSON answers (see fuzz_gateway.py).

Engines: atheris (coverage-guided libFuzzer, when installed: ``python -m tests.faults.fuzz atheris
TARGET RUNS``), else ``mutate``, a seeded mutation fuzzer over the corpus (byte flips, inserts,
deletes, splices, interesting integers, truncation; structure-aware for CSV and proofs).
A crash is an exception outside the allowed ones; it is saved under the work directory and
reported with the input. The corpus of interesting inputs lives in tests/faults/corpus/TARGET/
(small files); ``python -m tests.faults.fuzz seed`` writes the seeds (and the PKI and verifier
key the targets check against) afresh.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus")
AT = datetime(2026, 1, 2, tzinfo=timezone.utc)  # the time certificates and CRLs are checked at
MAX_LEN = 8192


class Crash(AssertionError):
    """A target raised something it must not, or the twins disagreed."""


# ----------------------------------------------------------------------------- the targets


def _allowed():
    from mykey.errors import MykeyError

    return MykeyError


def t_envelope(data: bytes) -> None:
    from mykey.domain.events import decode_envelope

    try:
        decode_envelope(data)
    except _allowed():
        pass


_TWINS: list = []


def t_framing(data: bytes) -> None:
    if not _TWINS:
        from mykey.log import _framing, framing

        _TWINS.extend([framing, _framing])
    pure, native = _TWINS
    pos = data[0] % (len(data) + 16) if data else 0  # beyond the end too
    max_records = (data[1] if len(data) > 1 else 0) % 8 or (1 << 62)
    a = pure.parse_batches(data, pos, max_records)
    b = native.parse_batches(data, pos, max_records)
    if a != b:
        raise Crash(f"the framing twins disagree at pos {pos}: pure {a!r:.300} native {b!r:.300}")
    ha, hb = pure.parse_header(data, pos), native.parse_header(data, pos)
    if ha != hb:
        raise Crash(f"parse_header twins disagree at pos {pos}: {ha} != {hb}")
    pure.find_header(data, pos)


class _CsvState:
    dir: Path | None = None
    engine = None
    bid = ""
    parsed = 0


def t_csv(data: bytes) -> None:
    from mykey.domain import ids
    from mykey.engine.service_csv import read_service_csv_file

    st = _CsvState
    if st.dir is None:
        base = os.environ.get("MYKEY_FUZZ_SCRATCH") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        st.dir = Path(tempfile.mkdtemp(prefix="mykey-fuzz-csv-", dir=base))
    path = st.dir / "input.csv"
    path.write_bytes(data)
    try:
        rows = read_service_csv_file(path)
        for sid, cid in rows.rows:
            ids.check_service_id(sid)
            ids.check_customer_id(cid)
    except _allowed():
        return
    st.parsed += 1
    if st.parsed % 200 == 1:  # now and then all the way through a real import
        if st.engine is None:
            from mykey.engine import Engine

            st.engine = Engine.open(st.dir / "data", fsync="never")
            st.bid = st.engine.register_business("fuzz", "131016")
        try:
            st.engine.import_service_ids_csv(st.bid, path)
        except _allowed():
            pass


class _Pki:
    trust = None
    vkey = None


def _trust():
    if _Pki.trust is None:
        from mykey.domain.certs import TrustStore, load_certificates

        anchors = load_certificates((CORPUS / "trust-root.pem").read_bytes())
        inter = load_certificates((CORPUS / "trust-intermediate.pem").read_bytes())
        _Pki.trust = TrustStore(anchors, inter)
    return _Pki.trust


def t_certs(data: bytes) -> None:
    from mykey.domain.certs import load_certificates

    try:
        chain = load_certificates(data)
        _trust().verify(chain[0], at=AT, extra_intermediates=chain[1:])
    except _allowed():
        pass


def t_crl(data: bytes) -> None:
    from mykey.domain.certs import verify_crl

    try:
        verify_crl(data, _trust(), at=AT)
    except _allowed():
        pass


def t_proof(data: bytes) -> None:
    from mykey.audit.proofs import check_proof, load_proof_doc

    if _Pki.vkey is None:
        _Pki.vkey = (CORPUS / "proof.vkey").read_text("ascii").strip()
    try:
        check_proof(load_proof_doc(data), _Pki.vkey)
    except _allowed():
        pass


def t_gateway(data: bytes) -> None:
    from .fuzz_gateway import t_gateway

    t_gateway(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope": t_envelope,
    "framing": t_framing,
    "csv": t_csv,
    "certs": t_certs,
    "crl": t_crl,
    "proof": t_proof,
    "gateway": t_gateway,
}


def close_targets() -> None:
    """Stop what the targets started (the gateway's writer, the CSV target's engine) and remove their files."""
    import shutil

    from . import fuzz_gateway

    fuzz_gateway.close()
    st = _CsvState
    if st.engine is not None:
        st.engine.close()
        st.engine = None
    if st.dir is not None:
        shutil.rmtree(st.dir, ignore_errors=True)
        st.dir = None
    st.parsed = 0


def run_one(target: str, data: bytes) -> None:
    """Run one input; Crash (with the input) on anything but an allowed error."""
    try:
        TARGETS[target](data)
    except Crash:
        raise
    except Exception as exc:
        raise Crash(f"{target}: {type(exc).__name__}: {exc!s:.500} on input {data[:200]!r}") from exc


# ----------------------------------------------------------------------------- the mutation fuzzer

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, (1 << 63) - 1,
               1 << 63, (1 << 64) - 1]


def corpus(target: str) -> list[bytes]:
    d = CORPUS / target
    return [p.read_bytes() for p in sorted(d.iterdir())] if d.is_dir() else []


class Mutator:
    """Seeded mutations of corpus inputs."""

    def __init__(self, seeds: list[bytes], rng: random.Random) -> None:
        self.seeds = seeds or [b""]
        self.rng = rng

    def __call__(self, target: str) -> bytes:
        rng = self.rng
        data = bytearray(rng.choice(self.seeds))
        if target == "proof" and rng.random() < 0.4:
            return self._json(bytes(data))
        if target == "csv" and rng.random() < 0.3:
            return self._csv()
        if target == "envelope" and rng.random() < 0.4:
            return self._msgpack(bytes(data))
        if target == "gateway":
            return self._request(bytes(data))
        for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
            data = self._once(data)
        return bytes(data[:MAX_LEN])

    def _once(self, data: bytearray) -> bytearray:
        rng = self.rng
        op = rng.randrange(9)
        n = len(data)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # a random byte
            data[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:  # insert bytes
            i = rng.randrange(n + 1)
            data[i:i] = rng.randbytes(rng.choice([1, 2, 4, 8, 33]))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del data[i : i + rng.choice([1, 2, 8, 64])]
        elif op == 4 and n:  # truncate
            del data[rng.randrange(n) :]
        elif op == 5:  # splice with another input
            other = rng.choice(self.seeds)
            i, j = rng.randrange(n + 1), rng.randrange(len(other) + 1)
            data = data[:i] + other[j:]
        elif op == 6 and n >= 4:  # an interesting integer, little or big endian
            i = rng.randrange(n - 3)
            width = rng.choice([1, 2, 4, 8])
            v = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            data[i : i + width] = v.to_bytes(width, rng.choice(["little", "big"]))
        elif op == 7 and n:  # duplicate a range
            i = rng.randrange(n)
            data[i:i] = data[i : i + rng.choice([4, 32, 256])]
        elif n:  # zero a range (unwritten sectors look like this)
            i = rng.randrange(n)
            k = rng.choice([1, 8, 64, 512])
            data[i : i + k] = bytes(len(data[i : i + k]))
        return data

    def _json(self, data: bytes) -> bytes:
        rng = self.rng
        try:
            doc = json.loads(data)
        except ValueError:
            return data
        if not isinstance(doc, dict) or not doc:
            return data
        key = rng.choice(sorted(doc))
        doc[key] = rng.choice([
            None, -1, 0, 1 << 64, 2**63 - 1, "", "zz", "00" * 32, [], {}, ["00" * 32] * rng.randrange(70), 1.5, True,
            doc[key][:-1] if isinstance(doc[key], (list, str)) and doc[key] else doc[key],
        ])
        if rng.random() < 0.2:
            doc[rng.choice(["extra", "kind", "checkpoint", "old_checkpoint"])] = rng.choice([None, "x", 3])
        return json.dumps(doc).encode()

    def _request(self, data: bytes) -> bytes:
        """A gateway request: its JSON body changed (a value, a field), its head changed, or its bytes."""
        rng = self.rng
        head, _, body = data.partition(b"\n")
        r = rng.random()
        if r < 0.1:
            head = " ".join([
                rng.choice(["POST", "GET", "PUT", "post", ""]),
                rng.choice(["/v1/sessions", "/v1/status", "/v1/challenges", "/v1/identify", "/v1/links",
                            "/v1/service-ids", "/v1/people/history", "/v1/people/challenges", "/v1/status/M-001",
                            "/v1/status/", "/v1/status/%2F..", "/v1/status-list", "/.well-known/jwks.json", "/readyz",
                            "/nope"]),
                rng.choice(["application/json", "application/json; charset=utf-8", "text/csv", "text/plain",
                            "APPLICATION/JSON", ""]),
            ] + (["chunked"] if rng.random() < 0.3 else [])).encode()
        elif r < 0.55:
            for _ in range(rng.choice([1, 1, 2, 3])):
                body = self._json(body)
        else:
            b = bytearray(body)
            for _ in range(rng.choice([1, 1, 2, 4])):
                b = self._once(b)
            body = bytes(b)
        return (head + b"\n" + body)[:MAX_LEN]

    def _msgpack(self, data: bytes) -> bytes:
        """Decode a record, change one value anywhere in it (type, size, sign, version, tag), encode it again."""
        import msgspec

        rng = self.rng
        try:
            obj = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            return data
        holders = []

        def walk(x):
            if isinstance(x, list):
                for i, v in enumerate(x):
                    holders.append((x, i))
                    walk(v)
            elif isinstance(x, dict):
                for k in list(x):
                    holders.append((x, k))
                    walk(x[k])

        walk(obj)
        if not holders:
            return data
        for _ in range(rng.choice([1, 1, 2, 4])):
            box, key = rng.choice(holders)
            box[key] = rng.choice([
                None, True, -1, 0, 2, 3, 99, -(1 << 63), (1 << 64) - 1, 1.5, "", "x" * rng.randrange(300),
                "mk.created", "svc.linked", "trust.added", b"", rng.randbytes(rng.choice([4, 32, 33])), [], [1, 2],
                {"a": 1}, [[[[]]]], "\u00e9\ud7ff",
            ])
        return msgspec.msgpack.encode(obj)

    def _csv(self) -> bytes:
        rng = self.rng
        alphabet = "abcXYZ0123456789,\"\r\n \t-_:;'\\\x00\x7f"
        lines = [rng.choice(["service_id,customer_id", "service_id", "sid,cid", ""])]
        for _ in range(rng.randrange(6)):
            lines.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(40))))
        text = rng.choice(["\n", "\r\n", "\r"]).join(lines)
        raw = text.encode("latin-1")
        if rng.random() < 0.1:
            raw += "é".encode()
        return raw


@dataclass
class FuzzStats:
    inputs: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    seconds: float = 0.0
    engine: str = "mutate"

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    def add(self, other: FuzzStats) -> None:
        for k, v in other.inputs.items():
            self.inputs[k] = self.inputs.get(k, 0) + v
        self.crashes += other.crashes
        self.seconds += other.seconds


def _quiet_deprecations() -> None:
    """cryptography warns (once per input) about certificates it will refuse one day: noise here."""
    import warnings

    from cryptography.utils import CryptographyDeprecationWarning

    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)


def mutate(target: str, n: int, seed: int) -> FuzzStats:
    """Run the corpus, then n mutated inputs, through target; raises Crash on the first crash."""
    _quiet_deprecations()
    started = time.monotonic()
    seeds = corpus(target)
    for data in seeds:
        run_one(target, data)
    m = Mutator(seeds, random.Random(seed))
    try:
        for _ in range(n):
            run_one(target, m(target))
    finally:
        close_targets()
    return FuzzStats({target: len(seeds) + n}, 0, time.monotonic() - started)


# ----------------------------------------------------------------------------- atheris


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(target: str, runs: int, workdir: Path, *, timeout: float = 3600) -> FuzzStats:
    """Fuzz target with atheris in a child process (libFuzzer exits the process): runs inputs."""
    import subprocess

    work = workdir / f"atheris-{target}"
    work.mkdir(parents=True, exist_ok=True)
    live = work / "corpus"
    live.mkdir(exist_ok=True)
    for p in (CORPUS / target).iterdir():
        (live / p.name).write_bytes(p.read_bytes())
    started = time.monotonic()
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.fuzz", "atheris", target, f"-runs={runs}", f"-max_len={MAX_LEN}",
         f"-artifact_prefix={work}/", "-print_final_stats=1", str(live)],
        cwd=root, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(root), "MYKEY_FUZZ_SCRATCH": str(work)},
    )
    if done.returncode != 0:
        raise Crash(f"atheris found a crash in {target} (artifacts in {work}):\n{done.stderr[-4000:]}")
    executed = runs
    for line in done.stderr.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            executed = int(line.split(":")[-1])
    return FuzzStats({target: executed}, 0, time.monotonic() - started, "atheris")


def _atheris_main(target: str, argv: list[str]) -> None:
    import atheris

    _quiet_deprecations()

    with atheris.instrument_imports(include=["mykey"]):
        import mykey.audit.proofs  # noqa: F401
        import mykey.domain.certs  # noqa: F401
        import mykey.domain.events  # noqa: F401
        import mykey.engine.service_csv  # noqa: F401
        import mykey.gateway.app  # noqa: F401
        import mykey.log.framing  # noqa: F401

    def one(data: bytes) -> None:
        run_one(target, data)

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


# ----------------------------------------------------------------------------- seeds


def write_seeds() -> None:
    """(Re)write the corpus seeds, the PKI the certificate targets trust and the proofs' verifier key."""
    from mykey.audit.proofs import prove_consistency, prove_inclusion
    from mykey.datadir import DataDir
    from mykey.domain import events as ev
    from mykey.engine import Engine
    from mykey.log import framing
    from mykey.log.filelog import FileLog
    from mykey_dev.pki import ThrowawayCA

    from .workload import enrol_terminal, link_service_id

    now = AT - timedelta(days=1)
    root = ThrowawayCA.create("fuzz root", now=now)
    inter = root.intermediate("fuzz user CA", now=now)
    users = [inter.issue_user(now=now), inter.issue_user(key_type="rsa", now=now)]
    other = ThrowawayCA.create("untrusted", now=now)
    CORPUS.mkdir(exist_ok=True)
    (CORPUS / "trust-root.pem").write_bytes(root.cert_pem())
    (CORPUS / "trust-intermediate.pem").write_bytes(inter.cert_pem())

    def put(target: str, name: str, data: bytes) -> None:
        d = CORPUS / target
        d.mkdir(exist_ok=True)
        (d / name).write_bytes(data[:MAX_LEN])

    for i, u in enumerate(users):
        put("certs", f"user-{i}.pem", u.cert_pem() + inter.cert_pem())
        put("certs", f"user-{i}.der", u.cert_der())
    put("certs", "root.pem", root.cert_pem())
    put("certs", "untrusted.pem", other.issue_user(now=now).cert_pem())
    put("certs", "two-blocks.pem", users[0].cert_pem() + users[1].cert_pem())
    put("crl", "empty.der", inter.crl([], now=now))
    put("crl", "two.der", inter.crl([(users[0], "key_compromise"), (users[1].serial, "unspecified")], number=2, now=now))
    put("crl", "root.der", root.crl([(inter.cert, "ca_compromise")], now=now))
    put("crl", "untrusted.der", other.crl([], now=now))
    import base64

    pem = inter.crl([(users[0], "superseded")], number=3, now=now)
    put("crl", "crl.pem", b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(pem) + b"-----END X509 CRL-----\n")

    put("csv", "ok.csv", b"service_id,customer_id\n123456,c1\nABC-9,\n\nx_1,cust\n")
    put("csv", "crlf.csv", b"service_id,customer_id\r\n\"quoted\",\"c,1\"\r\nlone\r\n")
    put("csv", "bad-header.csv", b"sid,cid\n1,2\n")
    put("csv", "three-fields.csv", b"service_id,customer_id\n1,2,3\n")
    put("csv", "number.csv", b"service_id,customer_id\n123456789018,\n")
    put("csv", "empty.csv", b"")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with Engine.open(data) as engine:
            engine.add_trust_anchor(root.cert_pem())
            engine.add_trust_anchor(inter.cert_pem(), intermediate=True)
            bid = engine.register_business("Seeds", "131016")
            engine.register_service_ids(bid, [("s1", "c1"), ("s2", None)])
            ch = engine.new_challenge()
            u = inter.issue_user()
            mk = engine.create_mykey(u.cert_pem() + inter.cert_pem(), u.sign(ch), ch)
            link_service_id(engine, bid, "s1", mk, u, u.cert_pem() + inter.cert_pem())
            engine.suspend(mk, "lost")
            engine.resume(mk)
            enrol_terminal(engine, bid)
            engine.trail.checkpoint()
            first_size = engine.log.last_seq
            engine.unlink_service_id(bid, "s1")
            engine.apply_crl(inter.crl([(u, "key_compromise")], number=1))
            engine.invalidate(mk, "gone")
            engine.ack("seeds", 3)
            engine.trail.checkpoint()
            last = engine.log.last_seq
        (CORPUS / "proof.vkey").write_text((data / "keys" / "checkpoint.vkey").read_text("ascii"), "ascii")
        dd = DataDir(data)
        put("proof", "inclusion-1.json", prove_inclusion(dd, 1).to_json().encode())
        put("proof", "inclusion-last.json", prove_inclusion(dd, last).to_json().encode())
        put("proof", "inclusion-old.json", prove_inclusion(dd, 2, first_size).to_json().encode())
        put("proof", "consistency.json", prove_consistency(dd, first_size, last).to_json().encode())
        put("proof", "consistency-unsigned-old.json", prove_consistency(dd, 3, last).to_json().encode())
        with FileLog.open(data / "log", readonly=True) as log:
            batches = list(log.read_batches())
        seen: set[str] = set()
        for _first, payloads in batches:
            for p in payloads:
                tag = type(ev.decode_envelope(p).body).__name__
                if tag not in seen:
                    seen.add(tag)
                    put("envelope", f"{tag}.msgpack", p)
        for i, (first, payloads) in enumerate(batches[:4]):
            put("framing", f"batch-{i}.bin", framing.encode_batch(first, payloads))
        put("framing", "two-batches.bin", b"".join(framing.encode_batch(f, p) for f, p in batches[2:4]))
        whole = framing.encode_batch(batches[1][0], batches[1][1])
        put("framing", "torn.bin", whole[: len(whole) // 2])
        put("framing", "zeroed.bin", whole[:40] + bytes(64) + whole[104:])
    from .fuzz_gateway import write_seeds as gateway_seeds

    gateway_seeds(CORPUS / "gateway")


def main(argv: list[str]) -> int:
    if argv[:1] == ["seed"]:
        write_seeds()
        return 0
    if argv[:1] == ["atheris"]:
        _atheris_main(argv[1], argv[2:])
        return 0
    if argv[:1] == ["mutate"]:
        stats = mutate(argv[1], int(argv[2]), int(argv[3]) if len(argv) > 3 else 0)
        print(stats)
        return 0
    print("usage: python -m tests.faults.fuzz seed | atheris TARGET [libFuzzer args] | mutate TARGET N [SEED]")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
