"""The storage-engine contract, run against every engine (memory, sqlite, redis).

Every method of the interface (:mod:`dpmq.storage.base`) is called here in a test that runs on
every engine; :func:`test_the_contract_calls_every_method_of_the_interface` fails, naming the
method, when one is not. The coordination between processes is tested with a second engine on the
same store where the engine is shared, and its documented refusal or one-process answer elsewhere.
"""

import ast
import json
import pathlib
import sqlite3
import threading
import time

import pytest

from dpmq import config
from dpmq.message import NewMessage, new_code
from dpmq.storage import open_engine
from dpmq.storage.base import ConsoleStore, CoordinationStore, DeliveryStore, Engine, Ownership

from helpers import drop_prefix, redis_prefix, require_redis, wait_for

#: Fixtures parametrised over every engine: a test or fixture that takes one runs on all three.
EVERY_ENGINE = {"engine_name", "settings", "engine", "another_process"}


@pytest.fixture
def committed():
    return []


@pytest.fixture
def settings(engine_name, tmp_path):
    """The store of one test: a SQLite file in its folder, or a Redis prefix of its own."""
    built = config.build({"storage": {"engine": engine_name, "path": str(tmp_path / "s.db"),
                                      "synchronous": "NORMAL", "prefix": redis_prefix()}})
    yield built
    if engine_name == "redis":
        drop_prefix(built.storage.prefix)


@pytest.fixture
def engine(settings, committed):
    store = open_engine(settings)
    store.open(committed.extend)
    yield store
    store.close()


@pytest.fixture
def another_process(settings):
    """``another_process(listen=False)`` -> for a shared engine, the engine of another process on
    the same store; ``listen`` follows the others' commits and requests, as a broker does."""
    opened = []

    def make(listen=False):
        store = open_engine(settings)
        store.open(lambda records: None, (lambda records: None) if listen else None)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _msgs(topic, *datas, **fields):
    return [NewMessage(new_code(), topic, d, time.time(), **fields) for d in datas]


def test_append_assigns_offsets_per_topic_and_reports_commits_in_order(engine, committed):
    first = engine.append(_msgs("a", "1", "2")).records
    second = engine.append(_msgs("b", "x") + _msgs("a", "3")).records
    assert [(r.topic, r.offset) for r in first + second] == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]
    assert committed == first + second
    assert engine.head("a") == 3 and engine.head("b") == 1 and engine.head("none") == 0
    assert engine.heads() == {"a": 3, "b": 1}


def test_read_returns_a_bounded_range(engine):
    engine.append(_msgs("t", *map(str, range(1, 11))))
    assert [r.data for r in engine.read("t", 0, 3)] == ["1", "2", "3"]
    assert [r.data for r in engine.read("t", 7, 100)] == ["8", "9", "10"]
    assert [r.data for r in engine.read("t", 2, 100, upto=4)] == ["3", "4"]
    assert engine.read("t", 10, 5) == [] and engine.read("other", 0, 5) == []


def test_concurrent_appends_get_unique_contiguous_offsets_in_commit_order(engine, committed):
    def produce(n):
        for i in range(50):
            engine.append(_msgs("t", f"{n}-{i}"))

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.offset for r in committed] == list(range(1, 401))
    assert [r.data for r in engine.read("t", 0, 1000)] == [r.data for r in committed]


def test_batches_of_every_size_to_a_started_topic_keep_offsets_contiguous(engine, committed):
    engine.append(_msgs("t", "first"))
    for size in (1, 2, 1000, 1001, 3):     # around the sqlite engine's one-statement limit
        engine.append(_msgs("t", *(f"{size}-{i}" for i in range(size))))
    assert [r.offset for r in committed] == list(range(1, 2009))
    assert engine.head("t") == 2008
    assert [r.data for r in engine.read("t", 0, 5000)] == [r.data for r in committed]


def test_cursors_are_saved_and_only_move_forward(engine):
    assert engine.cursor("t", "c:x") is None
    engine.save_cursors({("t", "c:x"): 5, ("t", "c:y"): 0})
    engine.save_cursors({("t", "c:x"): 3})
    assert engine.cursor("t", "c:x") == 5 and engine.cursor("t", "c:y") == 0


def test_attempts_count_up_and_dead_letters_keep_the_message(engine):
    (record,) = engine.append(_msgs("t", "poison")).records
    assert engine.add_attempts("t", "c:x", [record.offset]) == {record.offset: 1}
    assert engine.add_attempts("t", "c:x", [record.offset]) == {record.offset: 2}
    assert engine.attempts("t", "c:x", 0) == {record.offset: 2}
    assert engine.attempts("t", "c:x", record.offset) == {}
    engine.dead_letter("t", "c:x", record, "push failed", 2)
    assert engine.attempts("t", "c:x", 0) == {}
    (dead,) = engine.dead_letters(topic="t")
    assert dead["code"] == record.code and dead["data"] == "poison"
    assert dead["sub"] == "c:x" and dead["attempts"] == 2 and dead["reason"] == "push failed"
    assert dead["created"] == record.created and dead["offset"] == record.offset
    assert engine.dead_letters(topic="other") == []
    (later,) = engine.append(_msgs("t", "poison too")).records
    engine.dead_letter("t", "g:w", later, "nacked", 1)
    assert [d["data"] for d in engine.dead_letters()] == ["poison too", "poison"]   # newest first
    assert [d["data"] for d in engine.dead_letters(limit=1)] == ["poison too"]
    assert [d["data"] for d in engine.dead_letters(topic="t", sub="c:x")] == ["poison"]


def test_ping_succeeds_on_a_working_store(engine):
    engine.ping()


def test_sqlite_keeps_everything_across_a_reopen(tmp_path):
    settings = config.build({"storage": {"path": str(tmp_path / "k.db")}})
    store = open_engine(settings)
    store.open(lambda records: None)
    store.append(_msgs("t", "1"))
    store.append(_msgs("t", "2"))        # the topic's row was written with the first only
    store.save_cursors({("t", "c:x"): 1})
    store.own("t", "c:x", "token:abc", True)
    store.close()
    again = open_engine(settings)
    again.open(lambda records: None)
    try:
        assert again.head("t") == 2 and again.cursor("t", "c:x") == 1
        assert again.own("t", "c:x", "token:other", True) == Ownership("token:abc", True)
        assert again.append(_msgs("t", "3")).records[0].offset == 3
    finally:
        again.close()


def test_idempotency_keys_return_the_first_code_per_topic(engine, committed):
    first = engine.append(_msgs("t", "a", idempotency_key="k"))
    again = engine.append(_msgs("t", "a2", idempotency_key="k") + _msgs("t", "b"))
    other = engine.append(_msgs("u", "a", idempotency_key="k"))
    assert again.codes[0] == first.codes[0] and len(again.records) == 1
    assert other.codes[0] != first.codes[0]
    assert [r.data for r in committed] == ["a", "b", "a"]
    in_one = engine.append(_msgs("v", "x", "y", idempotency_key="same"))
    assert in_one.codes[0] == in_one.codes[1] and len(in_one.records) == 1


def test_delayed_messages_wait_aside_until_promoted_in_due_order(engine, committed):
    now = time.time()
    late = _msgs("t", "late", due=now + 100)
    early = _msgs("t", "early", due=now + 50)
    appended = engine.append(late + early + _msgs("t", "now"))
    assert [r.data for r in appended.records] == ["now"] and len(appended.codes) == 3
    assert engine.next_due() == pytest.approx(now + 50)
    assert engine.promote_due(now + 10, 10) == []
    promoted = engine.promote_due(now + 200, 1)
    assert [(r.data, r.offset) for r in promoted] == [("early", 2)]
    assert [r.data for r in engine.promote_due(now + 200, 10)] == ["late"]
    assert engine.next_due() is None
    assert [r.data for r in committed] == ["now", "early", "late"]
    assert promoted[0].code == appended.codes[1]


def test_find_and_set_cursor(engine):
    records = engine.append(_msgs("t", "a", "b", "c")).records
    assert engine.find("t", records[1].code) == 2
    assert engine.find("other", records[1].code) is None
    engine.save_cursors({("t", "c:x"): 3})
    engine.add_attempts("t", "c:x", [3])
    engine.set_cursor("t", "c:x", 1)
    assert engine.cursor("t", "c:x") == 1 and engine.attempts("t", "c:x", 0) == {}


def test_requeue_turns_dead_letters_into_redeliveries(engine):
    records = engine.append(_msgs("t", "a", "b", key="k")).records
    for record in records:
        engine.dead_letter("t", "g:workers", record, "timeout", 4)
    engine.dead_letter("t", "c:other", records[0], "timeout", 4)
    one = engine.requeue("t", "g:workers", records[1].code)
    assert one == {("t", "g:workers"): [records[1]]}
    assert len(engine.dead_letters(topic="t")) == 2
    rest = engine.requeue("t")
    assert sorted(rest) == [("t", "c:other"), ("t", "g:workers")]
    assert engine.dead_letters() == []
    assert engine.redeliveries("t", "g:workers") == records
    engine.redelivered("t", "g:workers", records[0].offset)
    assert engine.redeliveries("t", "g:workers") == [records[1]]


def test_purge_by_age_and_count_within_a_limit(engine):
    old = [NewMessage(new_code(), "t", str(i), 1000.0 + i) for i in range(5)]
    engine.append(old + _msgs("t", "new1", "new2"))
    assert engine.purge(before=1003.0, keep_messages=0, limit=10) == 3
    assert [r.data for r in engine.read("t", 0, 10)] == ["3", "4", "new1", "new2"]
    assert engine.purge(before=0, keep_messages=1, limit=2) == 2
    assert engine.purge(before=0, keep_messages=1, limit=10) == 1
    assert [r.data for r in engine.read("t", 0, 10)] == ["new2"]
    assert engine.head("t") == 7 and engine.append(_msgs("t", "next")).records[0].offset == 8


def test_offsets_never_restart_after_a_whole_topic_is_purged(engine):
    engine.append(_msgs("t", "a", "b"))
    assert engine.purge(before=time.time() + 10, keep_messages=0, limit=10) == 2
    assert engine.head("t") == 2 and engine.heads() == {"t": 2}
    assert engine.append(_msgs("t", "c")).records[0].offset == 3


def test_sqlite_keeps_topic_heads_across_a_reopen_after_a_purge(tmp_path):
    settings = config.build({"storage": {"path": str(tmp_path / "p.db")}})
    store = open_engine(settings)
    store.open(lambda records: None)
    store.append(_msgs("t", "a"))
    store.append(_msgs("t", "b"))
    store.purge(before=time.time() + 10, keep_messages=0, limit=10)
    store.close()
    again = open_engine(settings)
    again.open(lambda records: None)
    try:
        assert again.head("t") == 2
        assert again.append(_msgs("t", "c")).records[0].offset == 3
    finally:
        again.close()


def test_a_subscription_is_owned_by_the_first_owner_on_record(engine):
    assert engine.own("t", "c:audit", "token:a", True) == Ownership("token:a", True)
    assert engine.own("t", "c:audit", "token:b", False) == Ownership("token:a", True)
    assert engine.own("t", "c:audit", None, True) == Ownership("token:a", True)
    assert engine.own("u", "c:audit", "token:b", True) == Ownership("token:b", True)   # per topic
    assert engine.own("t", "g:audit", "token:b", True) == Ownership("token:b", True)   # a group
    assert engine.own("t", "c:open", None, True) == Ownership(None, True)      # auth was off
    assert engine.own("t", "c:open", "token:b", True) == Ownership("token:b", True)
    assert engine.own("t", "c:brief", "token:a", False) == Ownership("token:a", False)
    engine.save_cursors({("t", "c:old"): 3})            # saved before owners were kept
    assert engine.own("t", "c:old", "token:a", False) == Ownership("token:a", True)


def test_racing_owners_of_a_new_subscription_are_all_told_the_same_one(engine):
    seen = []

    def own(n):
        seen.append(engine.own("t", "c:contested", f"token:{n}", True))

    threads = [threading.Thread(target=own, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and len(seen) == 8


def test_forget_deletes_everything_of_one_subscription_and_nothing_else(engine):
    records = engine.append(_msgs("t", "a", "b", "c")).records
    for sub in ("c:gone", "c:kept"):
        engine.own("t", sub, "token:a", False)
        engine.save_cursors({("t", sub): 1})
        engine.add_attempts("t", sub, [2])
        engine.dead_letter("t", sub, records[0], "timeout", 4)
        engine.dead_letter("t", sub, records[2], "timeout", 4)
        engine.requeue("t", sub, records[2].code)
    engine.forget("t", "c:gone")
    assert engine.cursor("t", "c:gone") is None and engine.attempts("t", "c:gone", 0) == {}
    assert engine.dead_letters(topic="t", sub="c:gone") == []
    assert engine.redeliveries("t", "c:gone") == []
    assert engine.own("t", "c:gone", "token:b", True) == Ownership("token:b", True)
    assert engine.cursor("t", "c:kept") == 1 and engine.attempts("t", "c:kept", 0) == {2: 1}
    assert [d["code"] for d in engine.dead_letters(topic="t", sub="c:kept")] == [records[0].code]
    assert engine.redeliveries("t", "c:kept") == [records[2]]
    assert engine.own("t", "c:kept", "token:b", True) == Ownership("token:a", False)


def test_retention_forgets_an_owner_with_its_subscription(engine):
    engine.own("t", "c:idle", "token:a", True)
    engine.save_cursors({("t", "c:idle"): 0})
    engine.own("t", "c:never", "token:a", True)         # recorded, never got a cursor
    engine.purge(before=time.time() - 60, keep_messages=0, limit=10)
    assert engine.own("t", "c:never", "token:b", True).owner == "token:a", "too young to go"
    engine.purge(before=time.time() + 60, keep_messages=0, limit=10)
    assert engine.cursor("t", "c:idle") is None
    assert engine.own("t", "c:idle", "token:b", False) == Ownership("token:b", False)
    assert engine.own("t", "c:never", "token:b", False) == Ownership("token:b", False)


def test_expiry_is_kept_on_every_record_an_engine_gives_back(engine, committed):
    now = time.time()
    plain = engine.append(_msgs("t", "plain") + _msgs("t", "brief", expires=now + 60)).records
    assert [r.expires for r in plain] == [0.0, now + 60]
    shared = engine.append(_msgs("t", "b1", "b2", expires=now + 30)).records    # one batch's ttl
    mixed = engine.append(_msgs("t", "m1", expires=now + 1) + _msgs("t", "m2")).records
    fresh = engine.append(_msgs("new", "n1", expires=now + 5)).records          # a topic's first
    assert [r.expires for r in shared + mixed + fresh] == [now + 30, now + 30, now + 1, 0.0, now + 5]
    assert engine.read("t", 0, 10) == plain + shared + mixed
    assert engine.read("new", 0, 10) == fresh and committed == plain + shared + mixed + fresh

    delayed = _msgs("t", "later", due=now + 50, expires=now + 100)
    assert engine.append(delayed).records == []
    assert [m["expires"] for m in engine.messages(topic="t", status="delayed")] == [now + 100]
    (promoted,) = engine.promote_due(now + 60, 10)
    assert promoted.expires == now + 100 and promoted.due == pytest.approx(now + 50)
    assert engine.read("t", promoted.offset - 1, 1)[0].expires == now + 100
    assert engine.messages(topic="t", limit=1)[0]["expires"] == now + 100

    brief = plain[1]
    engine.dead_letter("t", "c:x", brief, "timeout", 3)
    assert engine.dead_letters(topic="t")[0]["expires"] == now + 60
    assert engine.messages(topic="t", status="dead")[0]["expires"] == now + 60
    assert engine.requeue("t") == {("t", "c:x"): [brief]}
    assert engine.redeliveries("t", "c:x") == [brief]
    if engine.shared:       # a group shared by processes hands out records with their expiry
        claimed = engine.claim("t", "g:w", upto=3, limit=10, cursor=0)
        assert [(record.data, record.expires) for record, _, _ in claimed] == [
            ("plain", 0.0), ("brief", now + 60), ("b1", now + 30)]


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def test_a_traceparent_is_kept_on_every_record_an_engine_gives_back(engine, committed):
    plain = engine.append(_msgs("t", "plain") + _msgs("t", "traced", trace=TRACE)).records
    assert [r.trace for r in plain] == [None, TRACE]
    shared = engine.append(_msgs("t", "b1", "b2", trace=OTHER)).records     # one batch's trace
    mixed = engine.append(_msgs("t", "m1", trace=TRACE) + _msgs("t", "m2")).records
    fresh = engine.append(_msgs("new", "n1", trace=OTHER)).records          # a topic's first
    idem = engine.append(_msgs("t", "i1", idempotency_key="i", trace=TRACE)).records
    assert [r.trace for r in shared + mixed + fresh + idem] == [OTHER, OTHER, TRACE, None, OTHER,
                                                                 TRACE]
    assert engine.read("t", 0, 10) == plain + shared + mixed + idem
    assert engine.read("new", 0, 10) == fresh and committed == plain + shared + mixed + fresh + idem

    now = time.time()
    assert engine.append(_msgs("t", "later", due=now + 50, trace=OTHER)).records == []
    (promoted,) = engine.promote_due(now + 60, 10)
    assert promoted.trace == OTHER
    assert engine.read("t", promoted.offset - 1, 1) == [promoted._replace(due=0.0)]

    traced = plain[1]
    engine.dead_letter("t", "c:x", traced, "timeout", 3)
    assert engine.dead_letters(topic="t")[0]["trace"] == TRACE
    assert engine.requeue("t") == {("t", "c:x"): [traced]}
    assert engine.redeliveries("t", "c:x") == [traced]
    if engine.shared:       # a group shared by processes hands out records with their trace
        claimed = engine.claim("t", "g:w", upto=3, limit=10, cursor=0)
        assert [(record.data, record.trace) for record, _, _ in claimed] == [
            ("plain", None), ("traced", TRACE), ("b1", OTHER)]


def test_retention_remembers_where_a_forgotten_subscription_stood(engine):
    """An idle subscription's cursor is forgotten by retention, but where it stood is kept for
    one more retention period: until a subscription gets a cursor again, is forgotten on
    purpose, or a later purge's ``before`` is past the time it was forgotten."""
    engine.save_cursors({("t", "c:idle"): 3, ("t", "g:idle"): 5, ("t", "c:replay"): 2,
                         ("t", "c:brief"): 1})
    assert engine.forgotten("t", "c:idle") is None, "not forgotten: it has a cursor"
    engine.purge(before=time.time() + 60, keep_messages=0, limit=10)
    assert engine.cursor("t", "c:idle") is None
    assert engine.forgotten("t", "c:idle") == 3 and engine.forgotten("t", "g:idle") == 5
    assert engine.forgotten("u", "c:idle") is None and engine.forgotten("t", "c:never") is None
    engine.purge(before=time.time() - 60, keep_messages=0, limit=10)
    assert engine.forgotten("t", "c:idle") == 3, "remembered for another retention period"

    engine.save_cursors({("t", "c:idle"): 1})       # it came back, and starts where it is put
    assert engine.forgotten("t", "c:idle") is None and engine.cursor("t", "c:idle") == 1
    engine.set_cursor("t", "c:replay", 0)
    assert engine.forgotten("t", "c:replay") is None
    engine.forget("t", "c:brief")                   # an ephemeral subscription whose consumer left
    assert engine.forgotten("t", "c:brief") is None

    engine.purge(before=time.time() + 60, keep_messages=0, limit=10)
    assert engine.forgotten("t", "g:idle") is None, "gone one retention period later"
    assert engine.forgotten("t", "c:idle") == 1, "forgotten again, where it stood this time"


def test_forgotten_since_lists_what_retention_forgot_from_a_time_on(engine):
    """Purge stamps the subscriptions it forgets with its ``now``; ``forgotten_since`` gives them
    back with that stamp exactly, oldest first, not those forgotten before, at most ``limit``."""
    later = float(int(time.time()) + 3600)          # stamps a purge of "now + 60" keeps
    first, second = later + 0.5, later + 1000.25
    engine.save_cursors({("t", "c:early"): 1})
    engine.purge(before=time.time() + 60, keep_messages=0, limit=10, now=first)
    engine.save_cursors({("t", "c:idle"): 3, ("u", "g:idle"): 5})
    engine.purge(before=time.time() + 60, keep_messages=0, limit=10, now=second)
    assert engine.cursor("t", "c:idle") is None and engine.forgotten("t", "c:idle") == 3
    assert sorted(engine.forgotten_since(second, 10)) == [("t", "c:idle", 3, second),
                                                          ("u", "g:idle", 5, second)]
    assert engine.forgotten_since(later, 10)[0] == ("t", "c:early", 1, first), "oldest first"
    assert len(engine.forgotten_since(later, 10)) == 3
    assert engine.forgotten_since(later, 1) == [("t", "c:early", 1, first)], "at most limit"
    assert engine.forgotten_since(second + 0.25, 10) == [], "none forgotten from then on"
    engine.save_cursors({("t", "c:idle"): 4})       # it came back: no longer forgotten
    assert engine.forgotten_since(first + 1, 10) == [("u", "g:idle", 5, second)]
    engine.save_cursors({("t", "c:busy"): 1})
    engine.purge(before=time.time() - 60, keep_messages=0, limit=10)
    assert engine.cursor("t", "c:busy") == 1, "not idle: not forgotten"
    assert engine.forgotten_since(later + 2000, 10) == []


def test_sqlite_opens_a_file_of_the_previous_version_and_its_messages_never_expire(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        create table messages (topic text not null, offset integer not null, code text not null,
            data text not null, created real not null, key text, primary key (topic, offset))
            without rowid;
        create table topics (topic text primary key, head integer not null) without rowid;
        create table delayed (code text primary key, topic text not null, data text not null,
            created real not null, key text, due real not null) without rowid;
        create table dead_letters (topic text not null, sub text not null, offset integer not null,
            code text not null, data text not null, key text, reason text not null,
            attempts integer not null, created real not null, dead_at real not null,
            primary key (topic, sub, offset)) without rowid;
        create table requeued (topic text not null, sub text not null, offset integer not null,
            code text not null, data text not null, key text, created real not null,
            primary key (topic, sub, offset)) without rowid;
        insert into topics values ('t', 2);
        insert into messages values ('t', 1, 'c1', 'one', 1.0, null), ('t', 2, 'c2', 'two', 2.0, 'k');
        insert into delayed values ('c3', 't', 'three', 3.0, null, 10.0);
        insert into dead_letters values ('t', 'c:x', 1, 'c1', 'one', null, 'timeout', 3, 1.0, 5.0);
        insert into requeued values ('t', 'c:y', 2, 'c2', 'two', 'k', 2.0);
    """)
    db.close()
    store = open_engine(config.build({"storage": {"path": str(path)}}))
    store.open(lambda records: None)
    try:
        assert [(r.data, r.expires) for r in store.read("t", 0, 10)] == [("one", 0.0), ("two", 0.0)]
        assert [r.expires for r in store.promote_due(20.0, 10)] == [0.0]
        assert store.dead_letters()[0]["expires"] == 0.0
        assert store.dead_letters()[0]["trace"] is None
        assert [r.expires for r in store.redeliveries("t", "c:y")] == [0.0]
        assert [r.expires for r in store.requeue("t")[("t", "c:x")]] == [0.0]
        later = time.time() + 60
        (record,) = store.append(_msgs("t", "four", expires=later, trace=TRACE)).records
        assert store.read("t", 3, 10) == [record] and record.expires == later
        assert [r.trace for r in store.read("t", 0, 10)] == [None, None, None, TRACE]
    finally:
        store.close()


def test_redis_reads_records_stored_by_the_previous_version_as_never_expiring():
    require_redis()
    settings = config.build({"storage": {"engine": "redis", "prefix": redis_prefix()}})
    store = open_engine(settings)
    p = store.p
    try:
        client = store.client
        client.hset(f"{p}:heads", "t", 1)
        client.xadd(f"{p}:log:t", {"c": "c1", "d": "one", "t": "1.0", "n": "old"}, id="1-0")
        client.hset(f"{p}:codes:t", "c1", 1)
        client.zadd(f"{p}:delayed", {"c2": 10.0})
        client.hset(f"{p}:delayedmsg", "c2", json.dumps(["c2", "t", "two", "2.0", False, False, "10.0"]))
        old = {"topic": "t", "offset": 1, "code": "c1", "data": "one", "key": None, "created": 1.0}
        letter = dict(old, sub="c:x", reason="timeout", attempts=3, dead_at=5.0)
        client.zadd(f"{p}:dead", {"t|c:x|1": 5.0})
        client.hset(f"{p}:deadmsg", "t|c:x|1", json.dumps(letter))
        client.zadd(f"{p}:rq:t|c:y", {json.dumps(dict(old, sub="c:y")): 1})
        store.open(lambda records: None)
        assert [(r.data, r.expires) for r in store.read("t", 0, 10)] == [("one", 0.0)]
        assert store.messages(status="delayed")[0]["expires"] == 0.0
        assert [(r.data, r.expires) for r in store.promote_due(20.0, 10)] == [("two", 0.0)]
        assert store.read("t", 1, 10)[0].expires == 0.0
        assert store.dead_letters()[0]["expires"] == 0.0
        assert store.dead_letters()[0]["trace"] is None
        assert [r.expires for r in store.redeliveries("t", "c:y")] == [0.0]
        assert [r.expires for r in store.requeue("t")[("t", "c:x")]] == [0.0]
        assert [r.trace for r in store.read("t", 0, 10)] == [None, None]
        assert [r.trace for r in store.redeliveries("t", "c:x")] == [None]
    finally:
        store.close()
        drop_prefix(settings.storage.prefix)


def _view(found):
    return [(m["topic"], m["data"], m["status"]) for m in found]


@pytest.fixture
def browsed(engine):
    """Topic a: 1 and 2 delivered to its one subscription, 3 and 4 pending, 1 also a dead
    letter, two delayed; topic b: one message, no subscription. Created in that order (b's
    between a's 2 and 3), so "newest first" means one thing on every engine."""
    t0 = time.time()
    a = engine.append([NewMessage(new_code(), "a", str(n), t0 + n) for n in (1, 2, 3, 4)]).records
    b = engine.append([NewMessage(new_code(), "b", "b1", t0 + 2.5, key="k", expires=t0 + 99)]).records
    engine.append(_msgs("a", "later", due=t0 + 100) + _msgs("a", "soon", due=t0 + 50))
    engine.save_cursors({("a", "c:x"): 2})
    engine.dead_letter("a", "c:x", a[0], "timeout", 3)
    return a, b


def test_messages_are_browsed_newest_first_by_topic_status_page_and_code(engine, browsed):
    a, b = browsed
    assert _view(engine.messages(topic="a")) == [
        ("a", "4", "pending"), ("a", "3", "pending"), ("a", "2", "delivered"), ("a", "1", "delivered")]
    assert _view(engine.messages()) == [
        ("a", "4", "pending"), ("a", "3", "pending"), ("b", "b1", "delivered"),
        ("a", "2", "delivered"), ("a", "1", "delivered")]
    assert _view(engine.messages(status="pending")) == [("a", "4", "pending"), ("a", "3", "pending")]
    assert _view(engine.messages(status="delivered", limit=2)) == [
        ("b", "b1", "delivered"), ("a", "2", "delivered")]
    assert _view(engine.messages(topic="a", before=3)) == [("a", "2", "delivered"), ("a", "1", "delivered")]
    assert _view(engine.messages(topic="a", limit=1)) == [("a", "4", "pending")]
    assert _view(engine.messages(status="dead")) == [("a", "1", "dead")]
    delayed = engine.messages(status="delayed")
    assert _view(delayed) == [("a", "soon", "delayed"), ("a", "later", "delayed")]    # soonest due
    assert [m["offset"] for m in delayed] == [0, 0]
    assert engine.messages(code=b[0].code) == [{
        "offset": 1, "code": b[0].code, "topic": "b", "data": "b1", "created": b[0].created,
        "key": "k", "expires": b[0].expires, "status": "delivered"}]
    assert engine.messages(topic="a", code=b[0].code) == []


def test_count_messages_counts_as_messages_lists(engine, browsed):
    assert engine.count_messages() == {"delayed": 2, "pending": 2, "delivered": 3, "dead": 1}
    assert engine.count_messages("a") == {"delayed": 2, "pending": 2, "delivered": 2, "dead": 1}
    assert engine.count_messages("b") == {"delayed": 0, "pending": 0, "delivered": 1, "dead": 0}
    assert engine.count_messages("none") == {"delayed": 0, "pending": 0, "delivered": 0, "dead": 0}


def test_topics_count_retained_messages_subscriptions_dead_letters_and_delayed(engine, browsed):
    engine.save_cursors({("a", "g:w"): 4})
    engine.append(_msgs("c", "only delayed", due=time.time() + 100))
    assert engine.purge(before=0, keep_messages=3, limit=10) == 1      # a's first goes
    assert engine.topics() == {
        "a": {"head": 4, "retained": 3, "subscriptions": 2, "deadLetters": 1, "delayed": 2},
        "b": {"head": 1, "retained": 1, "subscriptions": 0, "deadLetters": 0, "delayed": 0},
        "c": {"head": 0, "retained": 0, "subscriptions": 0, "deadLetters": 0, "delayed": 1}}


def test_a_consumer_id_is_held_by_one_process_at_a_time(engine, another_process):
    assert engine.lock_consumer("t", "c1")
    assert engine.lock_consumer("t", "c1"), "taking it again in the process that holds it"
    if not engine.shared:
        engine.unlock_consumer("t", "c1")           # one process: its broker refuses duplicates
        assert engine.lock_consumer("t", "c1")
        return
    other = another_process()
    assert not other.lock_consumer("t", "c1")
    assert other.lock_consumer("u", "c1"), "consumerIds are per topic"
    other.unlock_consumer("t", "c1")                # not the holder: changes nothing
    assert not other.lock_consumer("t", "c1")
    engine.unlock_consumer("t", "c1")
    assert other.lock_consumer("t", "c1") and not engine.lock_consumer("t", "c1")


def test_group_messages_are_claimed_by_one_process_until_settled(engine, another_process):
    records = engine.append(_msgs("t", "1", "2", "3", "4")).records
    if not engine.shared:       # one process delivers its groups from the broker's own state
        with pytest.raises(NotImplementedError, match="shared"):
            engine.claim("t", "g:w", upto=4, limit=10, cursor=0)
        with pytest.raises(NotImplementedError, match="shared"):
            engine.settle("t", "g:w", [(1, False)])
        return
    other = another_process()
    assert engine.claim("t", "g:w", upto=3, limit=2, cursor=0) == [
        (records[0], 0, False), (records[1], 0, False)]
    assert other.claim("t", "g:w", upto=3, limit=10, cursor=0) == [(records[2], 0, False)]
    assert engine.settle("t", "g:w", [(2, False)]) == 0, "1 is not done: the cursor stays"
    engine.add_attempts("t", "g:w", [1])
    assert engine.settle("t", "g:w", [(1, False)], retry=True) == 0
    assert other.claim("t", "g:w", upto=4, limit=10, cursor=0) == [
        (records[0], 1, False), (records[3], 0, False)]
    assert other.settle("t", "g:w", [(1, False), (3, False), (4, False)]) == 4
    assert engine.cursor("t", "g:w") == 4
    engine.dead_letter("t", "g:w", records[1], "timeout", 3)
    engine.requeue("t", "g:w")
    assert engine.claim("t", "g:w", upto=4, limit=10, cursor=0) == [(records[1], 0, True)]
    assert other.claim("t", "g:w", upto=4, limit=10, cursor=0) == []
    assert engine.settle("t", "g:w", [(2, True)]) == 4
    assert engine.redeliveries("t", "g:w") == []


def test_reports_are_gathered_from_every_other_live_process(engine, another_process):
    engine.serve_reports(lambda question: {"consumers": 1})
    if not engine.shared:
        assert engine.gather_reports(0.1) == ({}, [])       # no one else to ask
        return
    answering = another_process(listen=True)
    answering.serve_reports(lambda question: {"consumers": 2} if question is None else question)
    wait_for(lambda: engine.gather_reports(0.5)[0], what="the other process to listen")
    assert list(engine.gather_reports(0.5, ["echo", 1])[0].values()) == [["echo", 1]]
    another_process()                                   # alive, but never hears the request
    reports, silent = engine.gather_reports(0.3)
    assert list(reports.values()) == [{"consumers": 2}] and len(silent) == 1


def _called_on_every_engine():
    """The names of the methods called in this module's tests and fixtures that run on every
    engine (those taking a fixture of ``EVERY_ENGINE``)."""
    called = set()
    for node in ast.walk(ast.parse(pathlib.Path(__file__).read_text())):
        if isinstance(node, ast.FunctionDef) and EVERY_ENGINE & {a.arg for a in node.args.args}:
            called |= {call.func.attr for call in ast.walk(node)
                       if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)}
    return called


def test_the_contract_calls_every_method_of_the_interface():
    interface = {name for cls in (DeliveryStore, ConsoleStore, CoordinationStore, Engine)
                 for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}
    assert Engine.__abstractmethods__ <= interface
    missing = sorted(interface - _called_on_every_engine())
    assert not missing, (f"the engine contract never calls {', '.join(missing)} on every engine:"
                         " add a test of it to tests/test_engine_contract.py")
