"""The rules about a MyKey ID's state (mykey.domain.transitions), checked against the design, exhaustively."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from mykey.domain import events as ev
from mykey.domain import transitions as t
from mykey.domain.status import MyKeyState
from mykey.domain.transitions import Action
from mykey.errors import (
    IllegalTransitionError,
    InvalidMyKeyError,
    ResumeBlockedError,
    ValidationError,
)

from .strategies import EVENT_STRATEGIES, events

V, S, I = MyKeyState.VALID, MyKeyState.SUSPENDED, MyKeyState.INVALID
# The design's state machine, written out independently of the implementation's table.
DESIGN = {("valid", "suspend"): "suspended", ("suspended", "resume"): "valid",
          ("valid", "invalidate"): "invalid", ("suspended", "invalidate"): "invalid"}
CASES = list(itertools.product(MyKeyState, Action, [False, True]))


@pytest.mark.parametrize(("state", "action", "revoked"), CASES)
def test_next_state_follows_the_design(state, action, revoked):
    expected = DESIGN.get((state.label, action.label))
    if expected is None:
        with pytest.raises(IllegalTransitionError) as exc:
            t.next_state(state, action, certificate_revoked=revoked)
        assert type(exc.value) is IllegalTransitionError
        assert ("is final" in str(exc.value)) == (state is I)
    elif action is Action.RESUME and revoked:
        with pytest.raises(ResumeBlockedError, match="renewing"):
            t.next_state(state, action, certificate_revoked=revoked, mykey_id="ABCDEFGH")
    else:
        assert t.next_state(state, action, certificate_revoked=revoked).label == expected


def test_actions_parse_from_their_names_only():
    assert [t.parse_action(a.label) for a in Action] == list(Action)
    assert t.parse_action(Action.RESUME) is Action.RESUME
    with pytest.raises(ValidationError, match="suspend, resume, invalidate"):
        t.parse_action("delete")


@pytest.mark.parametrize("state", list(MyKeyState))
def test_what_an_invalid_mykey_id_cannot_do(state):
    for check in (t.check_linkable, t.check_renewable):
        if state is I:
            with pytest.raises(InvalidMyKeyError, match="ABCDEFGH is invalid"):
                check(state, "ABCDEFGH")
        else:
            check(state, "ABCDEFGH")
    assert t.is_live(state) == (state is not I)


@pytest.mark.parametrize(("state", "by_crl"), list(itertools.product(MyKeyState, [False, True])))
def test_crl_suspensions_and_what_a_renewal_lifts(state, by_crl):
    assert t.crl_suspends(state) == (state is V)
    # Only a suspension a CRL caused is lifted by the renewal that replaces the revoked certificate.
    assert t.resumes_on_renewal(state, by_crl) == (state is S and by_crl)


def test_a_crl_suspension_is_marked_and_says_why():
    e = t.crl_suspension("ABCDEFGH", "key_compromise")
    assert e == ev.MyKeySuspended("ABCDEFGH", "certificate revoked (key_compromise)", by_crl=True)
    ev.check_event(e)


@pytest.mark.parametrize(("state", "action"), [(s, a) for s, a in itertools.product(MyKeyState, Action)
                                               if (s.label, a.label) in DESIGN])
def test_the_event_of_an_action_leaves_the_state_the_feed_reports(state, action):
    body = t.transition_event(action, "ABCDEFGH", "reason")
    ev.check_event(body)
    change = t.feed_change(body)
    assert change is not None and change.state is t.next_state(state, action)
    assert change.change == {"suspend": "suspended", "resume": "resumed", "invalidate": "invalidated"}[action.label]


def test_the_feed_carries_mykey_level_changes_only():
    carried = {etype for etype in EVENT_STRATEGIES if etype in t.FEED_CHANGES}
    assert carried == {ev.MyKeyCreated, ev.MyKeySuspended, ev.MyKeyResumed, ev.MyKeyInvalidated,
                       ev.CertificateRenewed}
    assert t.FEED_CHANGES[ev.MyKeyCreated].state is V
    assert t.FEED_CHANGES[ev.CertificateRenewed].state is None  # a renewal leaves the state as it was
    assert not any(hasattr(etype, "FEED") for etype in ev.EVENT_TYPES)  # the labels have one home


@given(events)
def test_feed_change_is_total_over_events(body):
    change = t.feed_change(body)
    assert (change is None) == (type(body) not in t.FEED_CHANGES)
    if change is not None:
        assert body.mykey_id  # every change the feed carries names its MyKey ID


def test_the_state_each_event_leaves():
    assert t.state_after(ev.MyKeySuspended("ABCDEFGH", "lost", by_crl=True)) is S
    assert t.state_after(ev.MyKeyResumed("ABCDEFGH")) is V
    assert t.state_after(ev.MyKeyInvalidated("ABCDEFGH", "x")) is I
    assert t.state_after(ev.FeedAcked("points", 1)) is None
