"""The storage-engine contract, run against every engine."""

import threading
import time

import pytest

from dpmq import config
from dpmq.message import NewMessage, new_code
from dpmq.storage import open_engine
from dpmq.storage.base import Ownership

from helpers import drop_prefix, redis_prefix


@pytest.fixture
def committed():
    return []


@pytest.fixture
def engine(engine_name, tmp_path, committed):
    settings = config.build({"storage": {"engine": engine_name, "path": str(tmp_path / "s.db"),
                                         "synchronous": "NORMAL", "prefix": redis_prefix()}})
    store = open_engine(settings)
    store.open(committed.extend)
    yield store
    store.close()
    if engine_name == "redis":
        drop_prefix(settings.storage.prefix)


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
    assert engine.dead_letters(topic="other") == []


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
