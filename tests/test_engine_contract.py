"""The storage-engine contract, run against every engine."""

import threading
import time

import pytest

from dpmq import config
from dpmq.message import NewMessage, new_code
from dpmq.storage import open_engine


@pytest.fixture
def committed():
    return []


@pytest.fixture
def engine(engine_name, tmp_path, committed):
    settings = config.build({"storage": {"engine": engine_name, "path": str(tmp_path / "s.db"),
                                         "synchronous": "NORMAL"}})
    store = open_engine(settings)
    store.open(committed.extend)
    yield store
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
    store.append(_msgs("t", "1", "2"))
    store.save_cursors({("t", "c:x"): 1})
    store.close()
    again = open_engine(settings)
    again.open(lambda records: None)
    try:
        assert again.head("t") == 2 and again.cursor("t", "c:x") == 1
        assert again.append(_msgs("t", "3")).records[0].offset == 3
    finally:
        again.close()
