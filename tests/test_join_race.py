"""Joining: a new consumerId starts with what was published after it connected (its handshake),
however late its delivery shard takes the join; joins whose cursors cannot be saved are refused
and leave no subscription behind (that joins and leaves taken together save their cursors in one
write is in test_delivery_logic.py)."""

import threading

from dpmq.errors import CLOSE_TRY_AGAIN, StoreError

from helpers import FENCE, Collector, fence, wait_for


def test_a_message_published_between_the_handshake_and_a_late_join_is_delivered(broker):
    gate = threading.Event()
    for shard in broker.broker.shards:        # a busy machine: the shards take joins late
        original = shard._join_all
        shard._join_all = lambda members, original=original: (gate.wait(10), original(members))
    broker.publish("late", "before")          # before the consumer connected: not for it
    consumer = Collector(broker.ws_url, "late", "c1")    # the 101 came: it is connected
    assert broker.publish("late", "after")["code"] == 0
    gate.set()
    wait_for(lambda: len(broker.broker.members()) == 1, what="the join")
    fence(broker, "late", consumer)
    assert consumer.datas == ["after", FENCE]
    consumer.close()


def _count_saves(broker, fail=None):
    """Count the engine's cursor saves, each with how many cursors; ``fail[0]`` makes them fail."""
    engine, saves = broker.broker.engine, []
    original = engine.save_cursors

    def save_cursors(cursors):
        saves.append(len(cursors))
        if fail and fail[0]:
            raise StoreError("disk I/O error")
        return original(cursors)

    engine.save_cursors = save_cursors
    return saves


def test_joins_whose_cursors_cannot_be_saved_are_refused_and_leave_no_subscription(make_broker):
    running = make_broker("sqlite")
    fail = [True]
    saves = _count_saves(running, fail)
    consumers = [Collector(running.ws_url, "faulty", f"c{n}") for n in range(5)]
    for consumer in consumers:
        wait_for(lambda consumer=consumer: consumer.closed is not None, what="the refusal")
        assert consumer.closed[0] == CLOSE_TRY_AGAIN
        assert "store is unavailable" in consumer.closed[1]
    assert saves and running.broker.members() == []
    assert running.broker.positions() == {} and not any(s.topics for s in running.broker.shards)
    fail[0] = False                       # the store works again: they connect as new
    consumer = Collector(running.ws_url, "faulty", "c0")
    wait_for(lambda: len(running.broker.members()) == 1, what="the join")
    running.publish("faulty", "after")
    consumer.wait_count(1)
    assert consumer.datas == ["after"]
    consumer.close()

