"""The sync feed: registered consumers only, scoped to their municipality, under pairwise pseudonyms."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
import struct

import pytest
from mykey.cli import main
from mykey.datadir import DataDir
from mykey.domain import events as ev
from mykey.engine import Engine
from mykey.errors import (
    AlreadyExistsError,
    KeyFileError,
    NotFoundError,
    ValidationError,
)
from mykey.index.store import rebuild
from mykey.log.filelog import FileLog

from .conftest import create_user

CHIYODA, YOKOHAMA = "131016", "141003"


def told(engine, consumer, after=0) -> list[tuple[str, str, str | None]]:
    return [(i.change, i.pseudonym, i.state) for i in engine.feed(consumer, after=after)]


def test_consumers_are_registered_by_an_operator_and_no_one_else_reads(engine):
    engine.register_consumer("points", CHIYODA)
    env = engine.log.read(engine.log.last_seq).__next__()
    assert env.body == ev.ConsumerRegistered("points", CHIYODA) and env.actor.kind == "operator"
    before = engine.log.last_seq
    with pytest.raises(AlreadyExistsError):
        engine.register_consumer("points", YOKOHAMA)
    with pytest.raises(ValidationError, match="municipality"):
        engine.register_consumer("tax", "13")
    for call in (lambda: engine.feed("nobody"), lambda: engine.ack("nobody", 0),
                 lambda: engine.feed_position("nobody"), lambda: engine.feed_pseudonym("nobody", "ABCDEFGH")):
        with pytest.raises(NotFoundError, match="consumer add nobody"):
            call()
    assert engine.log.last_seq == before


def test_a_consumer_sees_only_people_linked_in_its_municipality(engine, pki):
    engine.register_consumer("chiyoda-points", CHIYODA)
    engine.register_consumer("yokohama-points", YOKOHAMA)
    engine.register_consumer("chiyoda-5", CHIYODA[:5])  # the 5-digit code names the same municipality
    library = engine.register_business("Chiyoda library", CHIYODA)
    pool = engine.register_business("Yokohama pool", YOKOHAMA)
    a, _ = create_user(engine, pki)
    b, _ = create_user(engine, pki)
    c, _ = create_user(engine, pki)
    d, _ = create_user(engine, pki)  # never linked: never seen
    engine.link_in_person(library, "L-A", a, "seen in person")
    engine.link_in_person(pool, "P-B", b, "seen in person")
    engine.link_in_person(library, "L-C", c, "seen in person")
    engine.link_in_person(pool, "P-C", c, "seen in person")
    engine.suspend(d, "lost")

    def p(consumer, mk):
        return engine.feed_pseudonym(consumer, mk)

    assert told(engine, "chiyoda-points") == [("joined", p("chiyoda-points", a), "valid"),
                                              ("joined", p("chiyoda-points", c), "valid")]
    assert told(engine, "yokohama-points") == [("joined", p("yokohama-points", b), "valid"),
                                               ("joined", p("yokohama-points", c), "valid")]
    assert [i[0] for i in told(engine, "chiyoda-5")] == ["joined", "joined"]
    # Pairwise: the same person is someone else in every consumer's feed, and never by MyKey ID.
    names = {p(consumer, c) for consumer in ("chiyoda-points", "yokohama-points", "chiyoda-5")}
    assert len(names) == 3
    everything = repr([engine.feed(n, after=0) for n in ("chiyoda-points", "yokohama-points", "chiyoda-5")])
    assert not any(mk in everything for mk in (a, b, c, d))
    assert all(re.fullmatch(r"[a-z2-7]{24}", name) for name in names)


def test_joined_changes_left_and_joined_again(engine, pki):
    engine.register_consumer("points", CHIYODA)
    library = engine.register_business("Library", CHIYODA)
    museum = engine.register_business("Museum", CHIYODA[:5] + "9")
    pool = engine.register_business("Pool", YOKOHAMA)
    mk, cred = create_user(engine, pki)
    me = engine.feed_pseudonym("points", mk)
    engine.suspend(mk, "lost")  # not visible yet: not told
    engine.link_in_person(pool, "P1", mk, "seen in person")  # another municipality: not told
    engine.link_in_person(library, "L1", mk, "seen in person")  # first link here: joined, as it stands
    engine.link_in_person(museum, "M1", mk, "seen in person")  # a second link here: nothing new
    engine.resume(mk)
    new = pki.inter.renew(cred)
    ch = engine.new_challenge("renew")
    engine.renew_certificate(mk, pki.chain(new), new.sign(ch), ch, operator_approval="holder seen in person")
    engine.unlink_service_id(library, "L1")  # still linked at the museum
    engine.unlink_service_id(museum, "M1")  # the last link here: left
    engine.suspend(mk, "again")  # no longer visible: not told
    engine.link_in_person(library, "L2", mk, "seen in person")  # back: joined, with the state it has now
    engine.invalidate(mk, "deceased")
    assert told(engine, "points") == [
        ("joined", me, "suspended"),
        ("resumed", me, "valid"),
        ("renewed", me, None),
        ("left", me, None),
        ("joined", me, "suspended"),
        ("invalidated", me, "invalid"),
    ]
    items = engine.feed("points", after=0)
    engine.ack("points", items[2].seq)
    assert [i.change for i in engine.feed("points")] == ["left", "joined", "invalidated"]
    assert [i.change for i in engine.feed("points", limit=1)] == ["left"]
    with pytest.raises(ValidationError):
        engine.feed("points", after=-1)


def test_the_pseudonym_is_an_hmac_under_the_feed_key(engine, pki):
    engine.register_consumer("points", CHIYODA)
    mk, _ = create_user(engine, pki)
    key = (engine.data.keys / "feed.key").read_bytes()
    assert len(key) == 32 and stat.S_IMODE(os.stat(engine.data.keys / "feed.key").st_mode) == 0o600
    msg = b"".join(struct.pack(">I", len(x)) + x for x in (b"points", mk.encode()))
    expected = base64.b32encode(hmac.new(key, msg, hashlib.sha256).digest()[:15]).decode().lower()
    assert engine.feed_pseudonym("points", mk) == expected


def test_the_feed_survives_reopen_and_rebuild_and_needs_its_key(tmp_path, binding, pki):
    data = tmp_path / "data"
    with Engine.open(data, binding=binding) as e:
        assert (data / "keys" / "feed.key").is_file()  # made with the data directory
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        e.register_consumer("points", CHIYODA)
        bid = e.register_business("Library", CHIYODA)
        mk, _ = create_user(e, pki)
        e.link_in_person(bid, "S1", mk, "seen in person")
        e.suspend(mk, "lost")
        before = e.feed("points")
    with FileLog.open(data / "log") as log:
        rebuild(DataDir(data), log, binding=binding)
    with Engine.open(data, binding=binding) as e:
        assert e.feed("points") == before
    (data / "keys" / "feed.key").unlink()  # lost: every pseudonym would change
    with pytest.raises(KeyFileError, match="feed.key"):
        Engine.open(data, binding=binding)


def test_the_cli_registers_consumers_and_prints_their_feed(tmp_path, capsys, pki):
    data = tmp_path / "data"
    d = ["--data", str(data)]
    assert main(["init", *d]) == 0
    with Engine.open(data) as e:
        e.add_trust_anchor(pki.root.cert_pem())
        e.add_trust_anchor(pki.inter.cert_pem(), intermediate=True)
        bid = e.register_business("Library", CHIYODA)
        mk, _ = create_user(e, pki)
        e.link_in_person(bid, "S1", mk, "seen in person")
    capsys.readouterr()
    assert main(["feed", *d, "points"]) == 1
    assert "not registered" in capsys.readouterr().err
    assert main(["consumer", "add", *d, "points", "--municipality", CHIYODA]) == 0
    assert main(["consumer", "add", *d, "points", "--municipality", CHIYODA]) == 1
    capsys.readouterr()
    assert main(["--json", "feed", *d, "points", "--ack"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with Engine.open(data) as e:
        assert [(r["change"], r["pseudonym"], r["state"]) for r in records] == [
            ("joined", e.feed_pseudonym("points", mk), "valid")
        ]
        assert e.feed_position("points") == e.log.last_seq - 1  # the ack itself came after
        assert [env.body for env in e.log.read() if isinstance(env.body, ev.ConsumerRegistered)] == [
            ev.ConsumerRegistered("points", CHIYODA)
        ]
    assert main(["feed", *d, "points"]) == 0
    assert capsys.readouterr().out == ""
