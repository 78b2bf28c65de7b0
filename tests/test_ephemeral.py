"""?durable=0: an ephemeral subscription, starting at "now" (or since) and forgotten when its
consumer leaves."""

import pytest

from dpmq.broker.ownership import Owners
from dpmq.storage.memory import MemoryEngine

from helpers import Collector, connect_and_close_code, wait_for


def _joined(running, count=1):
    wait_for(lambda: len(running.broker.members()) == count, what=f"{count} consumers")


def _leave(running, collector):
    collector.close()
    wait_for(lambda: not running.broker.members(), what="the consumer to leave")


def test_an_ephemeral_subscription_starts_now_and_is_forgotten_when_it_leaves(broker):
    engine = broker.broker.engine
    broker.publish("t", "before")
    brief = Collector(broker.ws_url, "t", "tmp", "?durable=0")
    _joined(broker)
    broker.publish("t", "during")
    assert [m["MessageData"] for m in brief.wait_count(1)] == ["during"]
    _leave(broker, brief)
    assert engine.cursor("t", "c:tmp") is None
    broker.publish("t", "while away")
    again = Collector(broker.ws_url, "t", "tmp", "?durable=false")
    _joined(broker)
    broker.publish("t", "after")
    again.wait_count(1)
    assert again.datas == ["after"]
    _leave(broker, again)
    assert engine.cursor("t", "c:tmp") is None and engine.topics()["t"]["subscriptions"] == 0


def test_what_an_ephemeral_subscription_left_unfinished_is_forgotten_too(broker):
    engine = broker.broker.engine
    brief = Collector(broker.ws_url, "t", "tmp", "?durable=0&ack=1")
    _joined(broker)
    broker.publish("t", "never acked")
    brief.wait_count(1)
    _leave(broker, brief)                   # unacked: one failed attempt, kept until it leaves
    assert engine.attempts("t", "c:tmp", 0) == {}
    assert engine.cursor("t", "c:tmp") is None
    assert engine.own("t", "c:tmp", "token:someone", True).owner == "token:someone"


def test_a_durable_subscription_is_never_turned_ephemeral(broker):
    _leave(broker, Collector(broker.ws_url, "t", "audit"))
    broker.publish("t", "waiting")
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/audit?durable=0")
    assert code == 1008 and "durable subscription" in reason and "without durable=0" in reason
    assert reason.endswith("another id"), "the whole reason fits in a close frame"
    durable = Collector(broker.ws_url, "t", "audit", "?durable=1")
    assert durable.wait_count(1)[0]["MessageData"] == "waiting"
    durable.close()


def test_since_replays_into_an_ephemeral_subscription(broker):
    broker.publish("t", "old")
    brief = Collector(broker.ws_url, "t", "tmp", "?durable=0&since=beginning")
    assert brief.wait_count(1)[0]["MessageData"] == "old"
    _leave(broker, brief)
    assert broker.broker.engine.cursor("t", "c:tmp") is None


def test_a_group_cannot_be_ephemeral_and_durable_takes_only_yes_or_no(make_broker):
    running = make_broker("memory")
    code, reason = connect_and_close_code(running.ws_url,
                                          "/ConsumersConn/t/w1?group=team&durable=0")
    assert code == 1008 and "lone consumer" in reason
    code, reason = connect_and_close_code(running.ws_url, "/ConsumersConn/t/c?durable=maybe")
    assert code == 1008 and "durable must be 1" in reason


@pytest.mark.parametrize("durable", ["0", "1"])
def test_an_ephemeral_subscription_left_behind_by_a_dead_broker_is_forgotten_at_the_next_join(
        make_broker, engine_name, durable):
    running = make_broker(engine_name)
    engine = running.broker.engine
    running.publish("t", "before the crash")
    engine.own("t", "c:tmp", None, False)       # what a broker killed with it connected left
    engine.save_cursors({("t", "c:tmp"): 0})
    again = Collector(running.ws_url, "t", "tmp", f"?durable={durable}")
    _joined(running)
    running.publish("t", "now")
    again.wait_count(1)
    assert again.datas == ["now"], "it starts now, not at the leftover cursor"
    _leave(running, again)
    assert (engine.cursor("t", "c:tmp") is not None) == (durable == "1")


def test_an_ephemeral_cursor_taken_as_its_consumer_leaves_is_not_saved():
    """The housekeeping thread takes cursors from the shards, then saves them: one taken just
    before an ephemeral consumer left would bring back what leaving forgot."""
    engine = MemoryEngine()
    owners = Owners(engine)
    owned = owners.claim("t", "c:tmp", "tmp", None, False)
    owners.join("t", "c:tmp", "tmp", None, False, owned)

    def take():         # the shard reports the cursor; the consumer leaves before the save
        owners.leave("t", "c:tmp")
        return {("t", "c:tmp"): 4, ("t", "c:kept"): 2}

    assert owners.durable_cursors(take) == {("t", "c:kept"): 2}
    owners.join("t", "c:tmp", "tmp", None, False, owners.claim("t", "c:tmp", "tmp", None, False))
    assert owners.durable_cursors(lambda: {("t", "c:tmp"): 4}) == {}, "nor while it is connected"
