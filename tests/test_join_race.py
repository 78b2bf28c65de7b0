"""Joining: a new consumerId starts with what was published after it connected (its handshake),
however late its delivery shard takes the join; joins taken together save their cursors in one
write, and a failed write refuses them all without leaving a subscription behind; leaves taken
together save where they left off in one write."""

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


def _gate_joins(broker):
    """Hold every shard's joins until the gate opens, so that they are taken together."""
    gate = threading.Event()
    for shard in broker.broker.shards:
        original = shard._join_all
        shard._join_all = lambda members, original=original: (gate.wait(10), original(members))
    return gate


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


def test_consumers_joining_together_have_their_cursors_saved_in_one_write(make_broker):
    running = make_broker("sqlite")
    saves = _count_saves(running)
    gate = _gate_joins(running)
    consumers = [Collector(running.ws_url, "many", f"c{n}") for n in range(20)]
    gate.set()
    wait_for(lambda: len(running.broker.members()) == 20, what="the joins")
    new_ones = [count for count in saves if count]
    assert sum(new_ones) == 20
    # each shard's first join waits at the gate alone; the others pile up behind it
    assert len(new_ones) <= 2 * len(running.broker.shards), saves
    running.publish("many", "hello")
    for consumer in consumers:
        consumer.wait_count(1)
        assert consumer.datas == ["hello"]
        consumer.close()


def test_joins_whose_cursors_cannot_be_saved_are_refused_and_leave_no_subscription(make_broker):
    running = make_broker("sqlite")
    fail = [True]
    saves = _count_saves(running, fail)
    gate = _gate_joins(running)
    consumers = [Collector(running.ws_url, "faulty", f"c{n}") for n in range(5)]
    gate.set()
    for consumer in consumers:
        wait_for(lambda consumer=consumer: consumer.closed is not None, what="the refusal")
        assert consumer.closed[0] == CLOSE_TRY_AGAIN
        assert "store is unavailable" in consumer.closed[1]
    assert saves and running.broker.members() == []
    assert all(not shard.topics and not shard._subs for shard in running.broker.shards)
    fail[0] = False                       # the store works again: they connect as new
    consumer = Collector(running.ws_url, "faulty", "c0")
    wait_for(lambda: len(running.broker.members()) == 1, what="the join")
    running.publish("faulty", "after")
    consumer.wait_count(1)
    assert consumer.datas == ["after"]
    consumer.close()


def test_consumers_leaving_together_save_where_they_left_off_in_one_write(make_broker):
    running = make_broker("sqlite")
    consumers = [Collector(running.ws_url, "crowd", f"c{n}") for n in range(20)]
    wait_for(lambda: len(running.broker.members()) == 20, what="the joins")
    running.publish("crowd", "seen")
    for consumer in consumers:
        consumer.wait_count(1)
    engine, head = running.broker.engine, running.broker.heads["crowd"]
    wait_for(lambda: all(engine.cursor("crowd", f"c:c{n}") == head for n in range(20)),
             what="the housekeeping's save of the cursors that moved")
    saves = _count_saves(running)
    gate = threading.Event()
    for shard in running.broker.shards:
        original = shard._leave_all
        shard._leave_all = lambda members, original=original: (gate.wait(10), original(members))
    for consumer in consumers:
        consumer.close()
    gate.set()
    wait_for(lambda: not running.broker.members(), what="the leaves")
    wait_for(lambda: sum(saves) >= 20, what="the cursors saved")
    assert sum(saves) == 20 and len(saves) <= 2 * len(running.broker.shards), saves
    running.publish("crowd", "after")
    again = Collector(running.ws_url, "crowd", "c7")
    again.wait_count(1)
    assert again.datas == ["after"]
    again.close()
