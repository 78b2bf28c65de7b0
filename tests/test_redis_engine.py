"""What only the redis engine has to get right: lost replies, other processes' commits, heartbeats."""

import json
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dpmq import config
from dpmq.errors import StoreError
from dpmq.message import NewMessage, new_code
from dpmq.storage import open_engine

from helpers import drop_prefix, redis_prefix, require_redis, wait_for

# Keeps Redis busy (and every other client waiting) for ARGV[1] milliseconds.
BUSY = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[1])
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 >= stop
return 0
"""


@pytest.fixture
def engines():
    """``engines(**storage)`` -> an opened RedisEngine; all share one prefix; closed afterwards."""
    require_redis()
    prefix, opened = redis_prefix(), []

    def make(on_remote=None, **storage):
        settings = config.build({"storage": dict(engine="redis", prefix=prefix, **storage)})
        engine = open_engine(settings)
        engine.open(lambda records: None, on_remote)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()
    drop_prefix(prefix)


def _redis_is_busy():
    """True while a script holds Redis: a ping gets no answer in time (and is not retried)."""
    probe = redis.Redis(socket_timeout=0.05, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
        return False
    except redis.TimeoutError:
        return True
    finally:
        probe.close()


def _message(topic, data):
    return NewMessage(new_code(), topic, data, time.time())


def test_an_append_whose_reply_is_lost_is_either_stored_or_never_stored(engines, caplog):
    engine = engines(redisTimeout=0.3)
    outcomes = []
    for attempt in range(4):
        busy = threading.Thread(target=redis.Redis().eval, args=(BUSY, 0, 700 + 100 * attempt))
        busy.start()
        wait_for(_redis_is_busy, what="the busy script to hold Redis")  # the append gets no reply
        message = _message("t", f"m{attempt}")
        try:
            engine.append([message])
            outcomes.append(("stored", message, ""))
        except StoreError as exc:
            outcomes.append(("refused", message, str(exc)))
        busy.join()
    # Redis answers a ping sent after the last busy script ended only once it has read what was
    # sent while it was busy: whatever the engine sent has run (or been refused) by then.
    redis.Redis().ping()
    stored = {record.code for record in engine.read("t", 0, 100)}
    for kind, message, reason in outcomes:
        if kind == "stored":
            assert message.code in stored
        elif "may or may not" not in reason:
            assert message.code not in stored and "nothing was stored" in reason, reason
    lost = [r for r in caplog.records if "reply was lost" in r.getMessage()]
    assert lost or any(kind == "refused" for kind, _, _ in outcomes), "no reply was ever lost"


def test_a_cancelled_append_never_runs_afterwards(engines):
    engine = engines()
    message = _message("t", "late")
    assert engine._run("CANCEL", "batch-1", "t", message.code, "") == []
    row = [message.code, "t", "late", repr(message.created), False, False, "0.0"]
    assert engine._run("APPEND", engine.node, repr(time.time()), json.dumps([row]), "batch-1") == []
    assert engine.read("t", 0, 10) == [] and engine.head("t") == 0


def test_other_processes_commits_reach_on_remote_in_order_without_our_own(engines):
    remote = []
    mine = engines(on_remote=remote.extend)
    other = engines()
    mine.append([_message("t", "mine-1")])
    for n in range(50):
        other.append([_message("t", f"other-{n}")])
    mine.append([_message("t", "mine-2")])
    wait_for(lambda: len(remote) == 50, what="the other process's 50 messages")
    assert [r.data for r in remote] == [f"other-{n}" for n in range(50)]
    assert [r.offset for r in remote] == list(range(2, 52))


def test_under_load_the_listener_reads_other_processes_commits_in_rounds(engines):
    """Two other processes append one message at a time, as fast as they go: each append comes
    with a notice of its own, and the listener takes them in rounds of several (one read per
    topic each), not one read per notice, handing on every record in order."""
    rounds = []
    engines(on_remote=rounds.append)
    others = [engines(), engines()]

    def produce(engine, topic):
        for n in range(1000):
            engine.append([_message(topic, f"{topic}{n}")])

    threads = [threading.Thread(target=produce, args=(engine, topic))
               for engine, topic in zip(others, "ab")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: sum(map(len, rounds)) == 2000, what="the other processes' 2,000 messages")
    for topic in "ab":
        assert [r.offset for run in rounds for r in run if r.topic == topic] == list(range(1, 1001))
    assert len(rounds) < 1000, f"{len(rounds)} reads for 2,000 records"


def test_a_process_whose_heartbeat_stops_loses_its_group_claims_and_consumer_ids(engines):
    quick = engines(nodeTimeout=1)
    survivor = engines(nodeTimeout=1)
    quick.append([_message("t", str(n)) for n in range(3)])
    claimed = quick.claim("t", "g:w", upto=3, limit=10, cursor=0)
    assert [record.data for record, _, _ in claimed] == ["0", "1", "2"]
    assert survivor.claim("t", "g:w", upto=3, limit=10, cursor=0) == []
    assert quick.lock_consumer("t", "c1") and not survivor.lock_consumer("t", "c1")
    quick._closed.set()             # its heartbeat thread stops, as if the process hung or died
    wait_for(lambda: survivor.lock_consumer("t", "c1"), what="the silent process to expire")
    survivor.ping()                 # a heartbeat: it takes over what expired nodes held
    again = survivor.claim("t", "g:w", upto=3, limit=10, cursor=0)
    assert [(record.data, attempts) for record, attempts, _ in again] == [("0", 1), ("1", 1), ("2", 1)]
    assert survivor.settle("t", "g:w", [(r.offset, False) for r, _, _ in again]) == 3
    assert survivor.cursor("t", "g:w") == 3
