"""Stateful property test: random command sequences against a small pure model of the rules.

The model is written here, from the rules as the design states them (its own
transition table, not the implementation's). After every step the engine's answers
and refusals (by exact exception type) must match the model's: every service ID
resolves to the model's status, terminals authenticate as the model says, and each
municipality's sync feed tells exactly the MyKey IDs linked there (by pseudonym) and
their states. The engine is closed and reopened, the index
rebuilt from the log, and events land in the log without reaching the index (a
crash between append and apply); at each of those and at the end, the live index
must equal a fresh replay of the log.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from mykey.audit.replay import diff_live_index
from mykey.auth.terminals import terminal_auth_message
from mykey.client import keys as terminal_keys
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.domain.status import Status
from mykey.engine import Engine
from mykey.errors import (
    AlreadyExistsError,
    CertificateRevokedError,
    FeedPositionError,
    IllegalTransitionError,
    InactiveError,
    IndividualNumberError,
    InvalidMyKeyError,
    NotFoundError,
    NotLinkedError,
    RenewalRefused,
    ResumeBlockedError,
    SuspendedMyKeyError,
    TerminalAuthError,
    UnknownCardError,
    ValidationError,
)
from mykey.index.binding import binding_by_name
from mykey.index.store import rebuild
from mykey.log.backend import open_log

from .conftest import Pki, engine_authenticator, engine_resolver

PKI = None
# The state machine as the design states it: (state, action) -> next state; anything else is illegal.
MODEL_TRANSITIONS = {
    ("valid", "suspend"): "suspended",
    ("suspended", "resume"): "valid",
    ("valid", "invalidate"): "invalid",
    ("suspended", "invalidate"): "invalid",
}
STATE_STATUS = {"valid": Status.VALID, "suspended": Status.SUSPENDED, "invalid": Status.INVALID}
service_ids = st.sampled_from([f"S{i}" for i in range(12)] + ["123456789018", "bad id"])
reasons = st.sampled_from(["lost", "request", "fraud"])
municipalities = st.sampled_from(["131016", "141003"])
# Registered feed consumers and the municipality each sees; "unknown" never is registered.
CONSUMERS = {"points": "131016", "tax": "141003", "check-13": "131016", "check-14": "141003"}
consumers = st.sampled_from(["points", "tax", "unknown"])


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
        self.data = DataDir(self.tmp / "data")
        self.binding = binding_by_name(self.binding_name)
        self._open()
        self.engine.add_trust_anchor(pki().root.cert_pem())
        self.engine.add_trust_anchor(pki().inter.cert_pem(), intermediate=True)
        # The model.
        self.businesses: dict[str, bool] = {}  # business id -> active
        self.municipality: dict[str, str] = {}  # business id -> municipality code
        self.mykeys: dict[str, str] = {}  # mykey id -> state
        self.creds: dict[str, object] = {}  # mykey id -> credential
        self.services: dict[tuple[str, str], str | None] = {}  # (bid, sid) -> mykey id or None
        self.terminals: dict[str, tuple[str, object, bool]] = {}  # terminal id -> (bid, key, active)
        self.crl_number = 0
        self.revoked: set[str] = set()  # MyKey IDs whose current certificate a CRL revoked
        self.crl_suspended: set[str] = set()  # MyKey IDs a CRL suspended (a renewal resumes them)
        self.feed_positions: dict[str, int] = {}
        self.crashed_registrations = 0

    # --- engine lifecycle -----------------------------------------------------------

    def _open(self) -> None:
        self.engine = Engine.open(self.data.root, binding=self.binding)
        self.resolver = engine_resolver(self.engine)
        self.auth = engine_authenticator(self.engine, self.resolver)

    def _close(self) -> None:
        self.auth.close()
        self.resolver.close()
        self.engine.close()

    def _assert_index_is_a_replay_of_the_log(self) -> None:
        diffs = diff_live_index(self.data)
        assert diffs == [], f"the index differs from a fresh replay of the log: {diffs[:5]}"

    def teardown(self) -> None:
        try:
            self._close()
            self._assert_index_is_a_replay_of_the_log()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @rule()
    def close_and_reopen(self) -> None:
        self._close()
        self._assert_index_is_a_replay_of_the_log()
        self._open()

    @rule()
    def rebuild_the_index(self) -> None:
        self._close()
        with open_log(self.data) as log:
            rebuild(self.data, log, binding=self.binding)
        self._assert_index_is_a_replay_of_the_log()
        self._open()

    @rule(data=st.data())
    def crash_between_append_and_apply(self, data) -> None:
        """A registration reaches the log but not the index; reopening replays it."""
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        self._close()
        self.crashed_registrations += 1
        sid = f"C{self.crashed_registrations}"
        with open_log(self.data) as log:
            log.append([ev.ServiceIdRegistered(bid, sid)])
        self._open()
        self.services[(bid, sid)] = None

    # --- commands -------------------------------------------------------------------

    def expect(self, error: type[Exception] | None, action):
        """Run action; with error, it must raise exactly that type and append nothing."""
        before = self.engine.log.last_seq
        if error is None:
            return action()
        try:
            action()
        except Exception as exc:
            assert type(exc) is error, f"expected {error.__name__}, got {type(exc).__name__}: {exc}"
            assert self.engine.log.last_seq == before, "a refused command appended events"
            return None
        raise AssertionError(f"expected {error.__name__}, but the command succeeded")

    @initialize()
    def first_business(self) -> None:
        for consumer, municipality in CONSUMERS.items():
            self.engine.register_consumer(consumer, municipality)
        self.register_business("131016")

    @rule(municipality=municipalities)
    def register_business(self, municipality) -> None:
        bid = self.engine.register_business("Another", municipality)
        self.businesses[bid] = True
        self.municipality[bid] = municipality

    @rule(consumer=st.sampled_from(sorted(CONSUMERS)), municipality=municipalities)
    def register_a_consumer_again(self, consumer, municipality) -> None:
        self.expect(AlreadyExistsError, lambda: self.engine.register_consumer(consumer, municipality))

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

    def _card(self, mk):
        """The holder's card as a terminal presents it: the certificate chain and a signer."""
        cred = self.creds[mk]
        return pki().chain(cred), cred.sign

    def _card_refusal(self, mk) -> type[Exception] | None:
        """Why the card of mk cannot speak for its holder (the verification comes first), or None."""
        if mk in self.revoked:
            return CertificateRevokedError
        return {"valid": None, "suspended": SuspendedMyKeyError, "invalid": UnknownCardError}[self.mykeys[mk]]

    @rule(sid=service_ids, by_card=st.booleans(), data=st.data())
    def link(self, sid, by_card, data) -> None:
        if not self.mykeys:
            return
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        holder = self.services.get((bid, sid))
        if not self.businesses[bid]:
            error = InactiveError
        elif sid == "bad id":
            error = ValidationError
        elif sid == "123456789018":
            error = IndividualNumberError
        elif by_card:
            # The card names the MyKey ID; linking again to the same person changes nothing.
            error = self._card_refusal(mk) or (AlreadyExistsError if holder not in (None, mk) else None)
        elif self.mykeys[mk] == "invalid":
            error = InvalidMyKeyError
        elif holder is not None:
            error = AlreadyExistsError
        else:
            error = None

        def card_link():
            chain, sign = self._card(mk)
            ch = self.engine.link_challenge(bid, sid)
            return self.engine.link_with_card(bid, sid, chain, sign(ch), ch)

        call = card_link if by_card else lambda: self.engine.link_in_person(bid, sid, mk, "checked in person")
        before = self.engine.log.last_seq
        result = self.expect(error, call)
        if error is None:
            assert result == STATE_STATUS[self.mykeys[mk]]
            if holder == mk:
                assert self.engine.log.last_seq == before, "a repeated card link appended events"
            self.services[(bid, sid)] = mk

    @rule(data=st.data())
    def identify(self, data) -> None:
        """The person taps their card at a business: its service IDs linked to them, nothing else."""
        if not self.mykeys:
            return
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        error = InactiveError if not self.businesses[bid] else self._card_refusal(mk)

        def call():
            chain, sign = self._card(mk)
            ch = self.engine.identify_challenge(bid)
            return self.engine.card_reader().identify(bid, chain, sign(ch), ch)

        found = self.expect(error, call)
        if error is None:
            mine = sorted(s for (b, s), m in self.services.items() if b == bid and m == mk)
            assert [(x.service_id, x.status) for x in found] == [(s, Status.VALID) for s in mine]

    @rule(data=st.data())
    def unlink(self, data) -> None:
        if not self.services:
            return
        bid, sid = data.draw(st.sampled_from(sorted(self.services)))
        if self.services[(bid, sid)] is None:
            self.expect(NotLinkedError, lambda: self.engine.unlink_service_id(bid, sid))
        else:
            self.engine.unlink_service_id(bid, sid)
            self.services[(bid, sid)] = None

    @rule(action=st.sampled_from(["suspend", "resume", "invalidate"]), reason=reasons, data=st.data())
    def transition(self, action, reason, data) -> None:
        if not self.mykeys:
            self.expect(NotFoundError, lambda: self.engine.suspend("ABCDEFGH", reason))
            return
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        nxt = MODEL_TRANSITIONS.get((self.mykeys[mk], action))
        call = {
            "suspend": lambda: self.engine.suspend(mk, reason),
            "resume": lambda: self.engine.resume(mk),
            "invalidate": lambda: self.engine.invalidate(mk, reason),
        }[action]
        if nxt is None:
            self.expect(IllegalTransitionError, call)
        elif action == "resume" and mk in self.revoked:
            self.expect(ResumeBlockedError, call)  # only a renewal brings it back
        else:
            assert call().label == nxt
            self.mykeys[mk] = nxt
            self.crl_suspended.discard(mk)

    @rule(data=st.data(), approved=st.booleans())
    def renew(self, data, approved) -> None:
        if not self.mykeys:
            return
        mk = data.draw(st.sampled_from(list(self.mykeys)))
        new = pki().inter.renew(self.creds[mk])
        ch = self.engine.new_challenge("renew")
        approval = "holder seen at the counter" if approved else None
        call = lambda: self.engine.renew_certificate(  # noqa: E731
            mk, pki().chain(new), new.sign(ch), ch, operator_approval=approval
        )
        if self.mykeys[mk] == "invalid":
            self.expect(InvalidMyKeyError, call)
            return
        if not approved and mk not in self.revoked:
            self.expect(RenewalRefused, call)  # a usable certificate is replaced only with an operator's approval
            return
        call()
        self.creds[mk] = new
        self.revoked.discard(mk)
        if mk in self.crl_suspended:  # a renewal lifts a CRL's suspension, and only that
            self.mykeys[mk] = "valid"
            self.crl_suspended.discard(mk)

    @rule(data=st.data())
    def enrol_terminal(self, data) -> None:
        bid = data.draw(st.sampled_from(sorted(self.businesses)))
        if not self.businesses[bid]:
            key = terminal_keys.generate()
            self.expect(InactiveError, lambda: self.engine.enrol_terminal(bid, terminal_keys.public_pem(key)))
            return
        key = terminal_keys.generate()  # on the terminal: the platform gets the public key only
        tid = self.engine.enrol_terminal(bid, terminal_keys.public_pem(key), can_register=data.draw(st.booleans()))
        self.terminals[tid] = (bid, key, True)

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

    @rule(consumer=consumers, where=st.sampled_from(["behind", "at", "last", "beyond"]))
    def ack(self, consumer, where) -> None:
        pos, last = self.feed_positions.get(consumer, 0), self.engine.log.last_seq
        seq = {"behind": pos - 1, "at": pos, "last": last, "beyond": last + 1}[where]
        if seq < 0:
            return
        if consumer not in CONSUMERS:
            self.expect(NotFoundError, lambda: self.engine.ack(consumer, seq))
        elif seq > last:
            self.expect(ValidationError, lambda: self.engine.ack(consumer, seq))
        elif seq < pos:
            self.expect(FeedPositionError, lambda: self.engine.ack(consumer, seq))
        else:
            self.engine.ack(consumer, seq)
            self.feed_positions[consumer] = seq

    # --- what must always hold ----------------------------------------------------------

    @invariant()
    def terminals_authenticate_as_the_model_says(self) -> None:
        for tid, (bid, key, active) in self.terminals.items():
            ok = active and self.businesses[bid]
            msg = terminal_auth_message(tid, int(time.time()), os.urandom(16))
            if ok:
                assert self.auth.authenticate(tid, msg, key.sign(msg)) == bid
            else:
                try:
                    self.auth.authenticate(tid, msg, key.sign(msg))
                except TerminalAuthError:
                    continue
                raise AssertionError(f"{tid} authenticated but should not")

    @invariant()
    def index_follows_log(self) -> None:
        assert self.engine.index.last_seq == self.engine.log.last_seq

    @invariant()
    def answers_match_the_model(self) -> None:
        for bid in self.businesses:
            sids = [s for (b, s) in self.services if b == bid] + ["never-registered"]
            expected = [
                Status.UNKNOWN if (bid, s) not in self.services
                else Status.UNLINKED if self.services[(bid, s)] is None
                else STATE_STATUS[self.mykeys[self.services[(bid, s)]]]
                for s in sids
            ]
            assert self.resolver.resolve_statuses(bid, sids) == expected
        for mk, state in self.mykeys.items():
            assert self.engine.mykey(mk).state.label == state

    @invariant()
    def each_feed_tells_who_is_linked_in_its_municipality(self) -> None:
        seen_by: dict[str, set[str]] = {}
        for consumer in ("check-13", "check-14"):
            told: dict[str, str] = {}  # pseudonym -> state, replayed from the start
            for item in self.engine.feed(consumer, after=0):
                if item.change == "joined":
                    assert item.pseudonym not in told
                    told[item.pseudonym] = item.state
                elif item.change == "left":
                    del told[item.pseudonym]
                else:  # a change about someone the consumer sees
                    assert item.change in ("suspended", "resumed", "invalidated", "renewed")
                    assert item.pseudonym in told
                    if item.state is not None:
                        told[item.pseudonym] = item.state
            here = {mk for (bid, _), mk in self.services.items()
                    if mk is not None and self.municipality[bid] == CONSUMERS[consumer]}
            assert told == {self.engine.feed_pseudonym(consumer, mk): self.mykeys[mk] for mk in here}
            seen_by[consumer] = set(told)
        assert not seen_by["check-13"] & seen_by["check-14"]  # pseudonyms are pairwise
        for consumer, pos in self.feed_positions.items():
            assert self.engine.feed_position(consumer) == pos


class EngineModelPure(EngineModel):
    binding_name = "pure"


settings_ = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestEngineModel = EngineModel.TestCase
TestEngineModel.settings = settings_
TestEngineModelPure = EngineModelPure.TestCase
TestEngineModelPure.settings = settings_
