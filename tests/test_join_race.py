"""A new consumerId starts with what was published after it connected (its handshake), however
late its delivery shard takes the join."""

import threading

from helpers import FENCE, Collector, fence, wait_for


def test_a_message_published_between_the_handshake_and_a_late_join_is_delivered(broker):
    gate = threading.Event()
    for shard in broker.broker.shards:        # a busy machine: the shards take joins late
        original = shard._join
        shard._join = lambda member, original=original: (gate.wait(10), original(member))
    broker.publish("late", "before")          # before the consumer connected: not for it
    consumer = Collector(broker.ws_url, "late", "c1")    # the 101 came: it is connected
    assert broker.publish("late", "after")["code"] == 0
    gate.set()
    wait_for(lambda: len(broker.broker.members()) == 1, what="the join")
    fence(broker, "late", consumer)
    assert consumer.datas == ["after", FENCE]
    consumer.close()
