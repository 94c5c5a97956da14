"""Hypothesis strategies for ids and events, shared by the test modules."""

from __future__ import annotations

import hypothesis.strategies as st
from mykey.domain import events as ev
from mykey.domain.ids import (
    MYKEY_ALPHABET,
    MYKEY_ID_LEN,
    check_text,
    contains_individual_number,
    individual_number_check_digit,
)
from mykey.errors import ValidationError

printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
business_ids = st.from_regex(r"[A-Z][0-9]{4}", fullmatch=True)
mykey_ids = st.text(alphabet=MYKEY_ALPHABET, min_size=MYKEY_ID_LEN, max_size=MYKEY_ID_LEN)
opaque_ids = st.text(alphabet=printable, min_size=1, max_size=32).filter(lambda s: not contains_individual_number(s))
terminal_numbers = st.integers(min_value=0, max_value=9999)
digests = st.binary(min_size=32, max_size=32)
serials = st.integers(min_value=1, max_value=(1 << 159) - 1).map(lambda n: format(n, "x"))


def _text_ok(s: str) -> bool:
    try:
        check_text(s, "reason", 256)
    except ValidationError:
        return False
    return True


reasons = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64).filter(_text_ok)
names = reasons.filter(lambda s: s.strip() != "")
issuers = st.sampled_from(["CN=Test Root,O=mykey", "CN=JPKI User CA,O=JPKI,C=JP"])
seconds = st.integers(min_value=0, max_value=2**40)


@st.composite
def individual_numbers(draw) -> str:
    """A 12-digit number with a valid Individual Number check digit."""
    first = "".join(str(d) for d in draw(st.lists(st.integers(0, 9), min_size=11, max_size=11)))
    return first + str(individual_number_check_digit(first))


terminal_ids = st.builds(lambda b, n: f"{b}-T{n:04d}", business_ids, terminal_numbers)

# One strategy per event type: tests parametrise over these so every type is exercised.
EVENT_STRATEGIES = {
    ev.MyKeyCreated: st.builds(
        ev.MyKeyCreated, mykey_ids, issuers, serials, digests, st.one_of(st.just(b""), digests), seconds,
        st.binary(max_size=20),
    ),
    ev.MyKeySuspended: st.builds(ev.MyKeySuspended, mykey_ids, reasons, st.booleans()),
    ev.MyKeyResumed: st.builds(ev.MyKeyResumed, mykey_ids),
    ev.MyKeyInvalidated: st.builds(ev.MyKeyInvalidated, mykey_ids, reasons),
    ev.CertificateRenewed: st.builds(
        ev.CertificateRenewed, mykey_ids, digests, issuers, serials, digests, digests, seconds,
        st.binary(max_size=20),
    ),
    ev.CertificateRevoked: st.builds(ev.CertificateRevoked, issuers, serials, reasons, seconds, digests),
    ev.CrlApplied: st.builds(ev.CrlApplied, issuers, st.integers(0, 2**63 - 1), digests, seconds, st.integers(0, 2**31)),
    ev.TrustAnchorAdded: st.builds(ev.TrustAnchorAdded, digests, st.binary(min_size=1, max_size=2048), st.booleans()),
    ev.BusinessRegistered: st.builds(
        ev.BusinessRegistered, business_ids, names, st.from_regex(r"[0-9]{6}", fullmatch=True), st.booleans()
    ),
    ev.BusinessDeactivated: st.builds(ev.BusinessDeactivated, business_ids, reasons),
    ev.TerminalEnrolled: st.builds(
        lambda b, n, k, r: ev.TerminalEnrolled(f"{b}-T{n:04d}", b, k, r), business_ids, terminal_numbers, digests,
        st.booleans(),
    ),
    ev.TerminalRevoked: st.builds(ev.TerminalRevoked, terminal_ids, reasons),
    ev.ServiceIdRegistered: st.builds(
        ev.ServiceIdRegistered, business_ids, opaque_ids, st.one_of(st.none(), opaque_ids), st.booleans(),
        st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    ),
    ev.ServiceIdLinked: st.builds(ev.ServiceIdLinked, business_ids, opaque_ids, mykey_ids, st.booleans()),
    ev.ServiceIdUnlinked: st.builds(ev.ServiceIdUnlinked, business_ids, opaque_ids, mykey_ids, st.booleans()),
    ev.FeedAcked: st.builds(ev.FeedAcked, opaque_ids, st.integers(0, 2**62)),
    ev.TrustAnchorRemoved: st.builds(ev.TrustAnchorRemoved, digests, st.booleans(), names),
    ev.CaSuccessorDesignated: st.builds(
        ev.CaSuccessorDesignated, st.binary(min_size=1, max_size=20), st.binary(min_size=1, max_size=20), names
    ).filter(lambda e: e.old_key_id != e.new_key_id),
    ev.ConsumerRegistered: st.builds(ev.ConsumerRegistered, opaque_ids, st.from_regex(r"[0-9]{5,6}", fullmatch=True)),
    ev.ServiceStatusIdxAssigned: st.builds(
        lambda b, pairs: ev.ServiceStatusIdxAssigned(b, tuple(pairs), tuple(range(len(pairs)))),
        business_ids, st.lists(opaque_ids, min_size=1, max_size=5, unique=True),
    ),
}
events = st.one_of(*EVENT_STRATEGIES.values())
actors = st.builds(ev.Actor, st.sampled_from(["operator", "user", "terminal", "system"]), opaque_ids)
