"""Shared pieces of the gateway tests: a dataset, real `mykey serve` processes, OpenAPI checks.

Servers run as real processes on free loopback ports, each in its own process group;
every one is stopped by a fixture finalizer (SIGTERM to the group, then SIGKILL) even
when a test fails, and every wait is bounded by a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI = json.loads((Path(__file__).parents[1] / "core" / "gateway" / "openapi.json").read_text())
START_DEADLINE = 60.0  # seconds for a server to become ready (the machine may be loaded)
STOP_DEADLINE = 30.0


# --- the dataset -----------------------------------------------------------------------


@dataclass
class Dataset:
    """A data directory built through the Engine, and the terminals' key files."""

    root: Path
    keys: dict[str, Path] = field(default_factory=dict)  # terminal ID -> private key file
    people: dict[str, tuple[str, object]] = field(default_factory=dict)  # "valid"/"suspended" -> (MyKey ID, card)
    expected: dict[tuple[str, str], str] = field(default_factory=dict)  # (business, service ID) -> status

    def key(self, terminal_id: str):
        from mykey.client.keys import load_private_key

        return load_private_key(self.keys[terminal_id])


def build_dataset(root: Path, pki) -> Dataset:
    """Businesses A0001 (4 terminals, the 4th may register), A0002 (1), A0003 (1); service IDs in every status."""
    from mykey.client import keys as terminal_keys
    from mykey.engine import Engine

    ds = Dataset(root / "data")
    with Engine.open(ds.root) as engine:
        engine.add_trust_anchor(pki.root.cert_pem())
        engine.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        for name in ("Library", "Sports centre", "Shop"):
            engine.register_business(name, "131016")
        for bid, n in (("A0001", 4), ("A0002", 1), ("A0003", 1)):
            for i in range(n):
                path, pub = terminal_keys.write_key_pair(root / f"{bid}-{i}.key")  # made on the terminal
                # A0001-T0004 is the library's back office: it may bulk-register service IDs.
                terminal_id = engine.enrol_terminal(bid, pub.read_bytes(), can_register=(bid, i) == ("A0001", 3))
                ds.keys[terminal_id] = path
        people, creds = [], []
        for _ in range(2):
            cred = pki.user()
            challenge = engine.new_challenge()
            people.append(engine.create_mykey(pki.chain(cred), cred.sign(challenge), challenge))
            creds.append(cred)
        valid, suspended = people
        ds.people = {"valid": (valid, creds[0]), "suspended": (suspended, creds[1])}
        engine.register_service_ids("A0001", [("M-003", None)])
        engine.link_in_person("A0001", "M-001", valid, "seen in person")
        engine.link_in_person("A0001", "M-002", suspended, "seen in person")
        engine.link_in_person("A0001", "SHARED", valid, "seen in person")
        engine.register_service_ids("A0002", [("SHARED", None)])
        engine.link_in_person("A0002", "B-100", valid, "seen in person")
        engine.link_in_person("A0003", "C-1", valid, "seen in person")
        engine.suspend(suspended, "reported lost")
    ds.expected = {
        ("A0001", "M-001"): "valid", ("A0001", "M-002"): "suspended", ("A0001", "M-003"): "unlinked",
        ("A0001", "SHARED"): "valid", ("A0002", "SHARED"): "unlinked", ("A0002", "B-100"): "valid",
        ("A0001", "B-100"): "unknown", ("A0002", "M-001"): "unknown", ("A0001", "NOPE"): "unknown",
    }
    return ds


def session_body(terminal_id: str, key, *, when: int | None = None, nonce: bytes | None = None) -> dict:
    """A POST /v1/sessions body signed with key."""
    from mykey.auth.terminals import terminal_auth_message

    when = int(time.time()) if when is None else when
    nonce = secrets.token_bytes(16) if nonce is None else nonce
    signature = key.sign(terminal_auth_message(terminal_id, when, nonce))
    return {
        "terminal_id": terminal_id,
        "time": when,
        "nonce": base64.b64encode(nonce).decode(),
        "signature": base64.b64encode(signature).decode(),
    }


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of a process group."""
    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def wait_for(predicate, deadline: float, what: str, interval: float = 0.05):
    """Poll predicate until it returns something truthy; fail after deadline seconds."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline:g} s waiting for {what}")
        time.sleep(interval)


class GatewayServer:
    """`mykey serve` as a real process group on a free loopback port."""

    def __init__(self, data: Path, log_dir: Path, *args: str, workers: int = 2) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = log_dir / f"tmp-{self.port}"  # TMPDIR: the metrics directory goes here
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "mykey", "--data", str(data), "serve", "--port", str(self.port),
               "--workers", str(workers), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, "TMPDIR": str(self.tmp)},
            )
        self.pgid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> GatewayServer:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"mykey serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"mykey serve was not ready within {START_DEADLINE:g} s:\n{self.log()}")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> set[int]:
        return {p.pid for p in self.children() if "mykey.gateway.writer" not in " ".join(_cmdline(p))}

    def writer_pid(self) -> int | None:
        pids = [p.pid for p in self.children() if "mykey.gateway.writer" in " ".join(_cmdline(p))]
        return pids[0] if pids else None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, deadline: float = STOP_DEADLINE) -> int:
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mykey serve did not stop within {deadline:g} s:\n{self.log()}") from None

    def wait_group_empty(self, deadline: float = STOP_DEADLINE) -> None:
        wait_for(lambda: not group_members(self.pgid), deadline, "every process of the gateway to exit")

    def stop(self) -> None:
        """Finalizer: SIGTERM the group, wait, then SIGKILL whatever is left."""
        for sig, wait in ((signal.SIGTERM, STOP_DEADLINE), (signal.SIGKILL, 10.0)):
            if not group_members(self.pgid) and self.proc.poll() is not None:
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                pass
            end = time.monotonic() + wait
            while time.monotonic() < end and (group_members(self.pgid) or self.proc.poll() is None):
                time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.wait(5)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def start_server(request, data: Path, log_dir: Path, *args: str, workers: int = 2) -> GatewayServer:
    """Start a gateway whose finalizer always stops it; returns it once /readyz says ready."""
    server = GatewayServer(data, log_dir, *args, workers=workers)
    request.addfinalizer(server.stop)
    return server.wait_ready()


# --- the OpenAPI document --------------------------------------------------------------

_REGISTRY = Registry().with_resource("urn:mykey:openapi", Resource.from_contents(OPENAPI, DRAFT202012))


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def route_template(path: str) -> str:
    """The OpenAPI path a request path is served by."""
    if path in OPENAPI["paths"]:
        return path
    if path.startswith("/v1/status/"):
        return "/v1/status/{service_id}"
    return path


def check_against_openapi(resp: httpx.Response, template: str | None = None) -> None:
    """Validate a response (status, content type, body) against the OpenAPI document."""
    template = template or route_template(resp.request.url.path)
    method = resp.request.method.lower()
    operation = OPENAPI["paths"].get(template, {}).get(method)
    if operation is None:  # not in the contract (an unknown path or method): problem JSON
        assert resp.status_code >= 400, f"{method} {template} is not in the OpenAPI document"
        response_ref = "#/components/responses/Problem"
    else:
        code = str(resp.status_code) if str(resp.status_code) in operation["responses"] else "default"
        assert code in operation["responses"], f"{resp.status_code} is not documented for {method} {template}"
        response_ref = "#/" + _pointer("paths", template, method, "responses", code)
    response_ref, response = _follow(response_ref)
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    content = response.get("content", {})
    assert ctype in content, f"{method} {template} {resp.status_code}: content type {ctype!r} not in {list(content)}"
    if ctype.endswith("json"):
        schema_ref = "urn:mykey:openapi" + response_ref + "/" + _pointer("content", ctype, "schema")
        validator = Draft202012Validator({"$ref": schema_ref}, registry=_REGISTRY)
        errors = sorted(validator.iter_errors(resp.json()), key=str)
        assert not errors, f"{method} {template} {resp.status_code} does not match the document: {errors[0]}"


def _follow(ref: str) -> tuple[str, dict]:
    """The node a local reference points at, following $refs; and the last reference followed."""
    while True:
        node = OPENAPI
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        if "$ref" not in node:
            return ref, node
        ref = node["$ref"]


class Api:
    """An httpx client for one gateway whose every response is checked against the OpenAPI document."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10.0)

    def request(self, method: str, path: str, *, template: str | None = None, **kw) -> httpx.Response:
        resp = self.http.request(method, path, **kw)
        check_against_openapi(resp, template)
        return resp

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.request("POST", path, **kw)

    def sign_in(self, ds: Dataset, terminal_id: str) -> str:
        resp = self.post("/v1/sessions", json=session_body(terminal_id, ds.key(terminal_id)))
        assert resp.status_code == 200, resp.text
        return resp.json()["token"]

    def close(self) -> None:
        self.http.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def problem_kind(resp: httpx.Response) -> str:
    assert resp.headers["content-type"] == "application/problem+json", resp.headers
    doc = resp.json()
    assert doc["status"] == resp.status_code
    return doc["type"].removeprefix("urn:mykey:problem:")
