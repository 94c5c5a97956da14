"""Stateful property test: random command sequences against a small pure model of the rules.

After every step the engine's answers (and refusals) must match the model's, and
every linked/registered service ID must resolve to the model's status.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import hypothesis.strategies as st
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from mykey.auth.terminals import terminal_auth_message
from mykey.domain.certs import CertificateRevokedError
from mykey.domain.status import Status
from mykey.domain.transitions import TRANSITIONS
from mykey.engine.engine import Engine
from mykey.errors import (
    AlreadyExistsError,
    CommandRefused,
    IllegalTransitionError,
    InactiveError,
    IndividualNumberError,
    NotFoundError,
    TerminalAuthError,
    ValidationError,
)
from mykey.index.binding import binding_by_name

from .conftest import Pki

PKI = None
STATE_STATUS = {"valid": Status.VALID, "suspended": Status.SUSPENDED, "invalid": Status.INVALID}
service_ids = st.sampled_from([f"S{i}" for i in range(12)] + ["123456789018", "bad id"])
reasons = st.sampled_from(["lost", "request", "fraud"])


def pki() -> Pki:
    global PKI
    if PKI is None:
        PKI = Pki()
    return PKI


class EngineModel(RuleBasedStateMachine):
    binding_name = "native"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="mykey-model-"))
        self.engine = Engine.open(self.tmp / "data", binding=binding_by_name(self.binding_name))
        self.engine.add_trust_anchor(pki().root.cert_pem())
        self.engine.add_trust_anchor(pki().inter.cert_pem(), intermediate=True)
        # The model.
        self.businesses: dict[str, bool] = {}  # business id -> active
        self.mykeys: dict[str, str] = {}  # mykey id -> state
        self.creds: dict[str, object] = {}  # mykey id -> credential
        self.services: dict[tuple[str, str], str | None] = {}  # (bid, sid) -> mykey id or None
        self.terminals: dict[str, tuple[str, object, bool]] = {}  # terminal id -> (bid, key, active)
        self.crl_number = 0
        self.revoked: set[str] = set()  # MyKey IDs whose current certificate a CRL revoked
        self.crl_suspended: set[str] = set()  # MyKey IDs a CRL suspended (a renewal resumes them)

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def expect(self, error: type[Exception] | None, action):
        before = self.engine.log.last_seq
        if error is None:
            return action()
        try:
            action()
        except error:
            assert self.engine.log.last_seq == before, "a refused command appended events"
            return None
        raise AssertionError(f"expected {error.__name__}")

    @initialize()
    def first_business(self) -> None:
        self.businesses[self.engine.register_business("First", "131016")] = True

    @rule()
    def register_business(self) -> None:
        self.businesses[self.engine.register_business("Another", "131016")] = True

    @rule(data=st.data())
    def deactivate_business(self, data) -> None:
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        if self.businesses[bid]:
            self.engine.deactivate_business(bid, "closed")
            self.businesses[bid] = False
        else:
            self.expect(InactiveError, lambda: self.engine.deactivate_business(bid, "closed"))

    @rule(reuse=st.booleans(), data=st.data())
    def create_mykey(self, reuse: bool, data) -> None:
        live = [m for m, s in self.mykeys.items() if s != "invalid"]
        if reuse and live:
            mk = data.draw(st.sampled_from(live))
            cred = self.creds[mk]
            ch = self.engine.new_challenge()
            error = CertificateRevokedError if mk in self.revoked else AlreadyExistsError
            self.expect(error, lambda: self.engine.create_mykey(pki().chain(cred), cred.sign(ch), ch))
            return
        cred = pki().user()
        ch = self.engine.new_challenge()
        mk = self.engine.create_mykey(pki().chain(cred), cred.sign(ch), ch)
        assert mk not in self.mykeys
        self.mykeys[mk] = "valid"
        self.creds[mk] = cred

    @rule(sids=st.lists(service_ids, min_size=1, max_size=4), data=st.data())
    def register_service_ids(self, sids, data) -> None:
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        rows = [(s, None) for s in sids]
        error = None if self.businesses[bid] else InactiveError
        seen: set[str] = set()
        for s in sids:  # the engine reports the first bad row
            if error is not None:
                break
            if s == "bad id":
                error = ValidationError
            elif s == "123456789018":
                error = IndividualNumberError
            elif s in seen:
                error = AlreadyExistsError
            seen.add(s)
        if error is None and any((bid, s) in self.services for s in sids):
            error = AlreadyExistsError
        self.expect(error, lambda: self.engine.register_service_ids(bid, rows))
        if error is None:
            for s in sids:
                self.services[(bid, s)] = None

    @rule(sid=service_ids, data=st.data())
    def link(self, sid, data) -> None:
        if not self.mykeys:
            return
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        if not self.businesses[bid]:
            error = InactiveError
        elif sid == "bad id":
            error = ValidationError
        elif sid == "123456789018":
            error = IndividualNumberError
        elif self.mykeys[mk] == "invalid":
            error = CommandRefused
        elif self.services.get((bid, sid)) is not None:
            error = AlreadyExistsError
        else:
            error = None
        self.expect(error, lambda: self.engine.link_service_id(bid, sid, mk))
        if error is None:
            self.services[(bid, sid)] = mk

    @rule(data=st.data())
    def unlink(self, data) -> None:
        if not self.services:
            return
        bid, sid = data.draw(st.sampled_from(sorted(self.services)))
        if self.services[(bid, sid)] is None:
            self.expect(CommandRefused, lambda: self.engine.unlink_service_id(bid, sid))
        else:
            self.engine.unlink_service_id(bid, sid)
            self.services[(bid, sid)] = None

    @rule(action=st.sampled_from(["suspend", "resume", "invalidate"]), reason=reasons, data=st.data())
    def transition(self, action, reason, data) -> None:
        if not self.mykeys:
            self.expect(NotFoundError, lambda: self.engine.suspend("ABCDEFGH", reason))
            return
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        allowed = {(s.label, a): n.label for (s, a), n in TRANSITIONS.items()}
        nxt = allowed.get((self.mykeys[mk], action))
        call = (lambda: self.engine.resume(mk)) if action == "resume" else (lambda: getattr(self.engine, action)(mk, reason))
        if nxt is None:
            self.expect(IllegalTransitionError, call)
        elif action == "resume" and mk in self.revoked:
            self.expect(CommandRefused, call)
        else:
            assert call().label == nxt
            self.mykeys[mk] = nxt
            self.crl_suspended.discard(mk)

    @rule(data=st.data())
    def renew(self, data) -> None:
        if not self.mykeys:
            return
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        new = pki().inter.renew(self.creds[mk])
        ch = self.engine.new_challenge("renew")
        call = lambda: self.engine.renew_certificate(mk, pki().chain(new), new.sign(ch), ch)  # noqa: E731
        if self.mykeys[mk] == "invalid":
            self.expect(CommandRefused, call)
            return
        call()
        self.creds[mk] = new
        self.revoked.discard(mk)
        if mk in self.crl_suspended:
            self.mykeys[mk] = "valid"
            self.crl_suspended.discard(mk)

    @rule(data=st.data())
    def enrol_terminal(self, data) -> None:
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        if not self.businesses[bid]:
            self.expect(InactiveError, lambda: self.engine.enrol_terminal(bid))
            return
        cred = self.engine.enrol_terminal(bid)
        self.terminals[cred.terminal_id] = (bid, load_pem_private_key(cred.private_key_pem, None), True)

    @rule(data=st.data())
    def revoke_terminal(self, data) -> None:
        if not self.terminals:
            return
        tid = data.draw(st.sampled_from(sorted(self.terminals)))
        bid, key, active = self.terminals[tid]
        if active:
            self.engine.revoke_terminal(tid)
            self.terminals[tid] = (bid, key, False)
        else:
            self.expect(InactiveError, lambda: self.engine.revoke_terminal(tid))

    @rule(data=st.data())
    def revoke_certificate_by_crl(self, data) -> None:
        if not self.mykeys:
            return
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        self.crl_number += 1
        report = self.engine.apply_crl(pki().inter.crl([(self.creds[mk], "key_compromise")], number=self.crl_number))
        if self.mykeys[mk] == "valid" and mk not in self.revoked:
            assert report.suspended == [mk]
            self.mykeys[mk] = "suspended"
            self.crl_suspended.add(mk)
        else:
            assert report.suspended == []
        self.revoked.add(mk)

    @invariant()
    def terminals_authenticate_as_the_model_says(self) -> None:
        for tid, (bid, key, active) in self.terminals.items():
            ok = active and self.businesses[bid]
            msg = terminal_auth_message(tid, int(time.time()), os.urandom(16))
            if ok:
                assert self.engine.authenticate_terminal(tid, msg, key.sign(msg)) == bid
            else:
                try:
                    self.engine.authenticate_terminal(tid, msg, key.sign(msg))
                except TerminalAuthError:
                    continue
                raise AssertionError(f"{tid} authenticated but should not")

    @invariant()
    def index_follows_log(self) -> None:
        assert self.engine.index.last_seq == self.engine.log.last_seq

    @invariant()
    def answers_match_the_model(self) -> None:
        r = self.engine.resolver()
        for bid in self.businesses:
            sids = [s for (b, s) in self.services if b == bid] + ["never-registered"]
            expected = [
                Status.UNKNOWN if (bid, s) not in self.services
                else Status.UNLINKED if self.services[(bid, s)] is None
                else STATE_STATUS[self.mykeys[self.services[(bid, s)]]]
                for s in sids
            ]
            assert r.resolve_statuses(bid, sids) == expected
        for mk, state in self.mykeys.items():
            assert self.engine.mykey(mk).state.label == state


class EngineModelPure(EngineModel):
    binding_name = "pure"


settings_ = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestEngineModel = EngineModel.TestCase
TestEngineModel.settings = settings_
TestEngineModelPure = EngineModelPure.TestCase
TestEngineModelPure.settings = settings_
