"""Retry of failed pushes, on the next connection, then a dead letter: never silently gone.

Without ack a message counts as delivered once its frame is written whole to the socket, so a push
fails when the connection breaks while the frame is still being written. A 10 MB message to a
consumer that reads nothing cannot be written whole (the kernel buffers hold a few MB), so each
reset in that state is one failed push of it.
"""

from helpers import Collector, RawConsumer, wait_for

BIG = "z" * (10 << 20)
LIMITS = {"maxMessageBytes": 16 << 20, "consumerBufferBytes": 32 << 20}


def _fail_once(running, consumer_id):
    """Connect a consumer that reads nothing, let the big frame stick, then reset the connection."""
    raw = RawConsumer(running.port, f"/ConsumersConn/t/{consumer_id}", recv_buffer=4096)
    wait_for(lambda: running.broker.members(), what="the consumer")
    sub = running.broker.members()[0]
    wait_for(lambda: sub.conn.first_unwritten() is not None and sub.conn.pending_bytes,
             what="the big message stuck in the consumer's buffer")
    stuck = sub.conn.first_unwritten()
    raw.abort()
    wait_for(lambda: not running.broker.members(), what="the broker to notice the reset")
    return stuck


def _subscribe_then_leave(running, consumer_id):
    consumer = Collector(running.ws_url, "t", consumer_id)
    wait_for(lambda: running.broker.members(), what="the first visit to begin")
    consumer.close()
    wait_for(lambda: not running.broker.members(), what="the first visit to end")


def test_a_failed_push_is_retried_then_dead_lettered_and_counted(make_broker, engine_name):
    running = make_broker(engine_name, mq={"sendRetryCount": 1, **LIMITS})
    _subscribe_then_leave(running, "c")
    big, after = running.publish_many("t", [BIG, "after"])
    engine = running.broker.engine

    assert _fail_once(running, "c") == 1
    assert engine.attempts("t", "c:c", 0) == {1: 1}
    assert _fail_once(running, "c") == 1
    assert engine.attempts("t", "c:c", 0) == {1: 2}

    consumer = Collector(running.ws_url, "t", "c")
    consumer.wait_count(1)
    assert [m["MessageCode"] for m in consumer.messages] == [after]
    (dead,) = engine.dead_letters(topic="t")
    assert dead["code"] == big and dead["attempts"] == 2 and dead["sub"] == "c:c"
    assert "sendRetryCount" in dead["reason"]
    stats = running.get("/Console/Ping")["data"]
    assert stats["failed"] == 2 and stats["deadLettered"] == 1


def test_a_retried_push_carries_its_attempt_count_in_status(make_broker, engine_name):
    running = make_broker(engine_name, mq={"sendRetryCount": 3, **LIMITS})
    _subscribe_then_leave(running, "c")
    big, after = running.publish_many("t", [BIG, "after"])
    _fail_once(running, "c")
    consumer = Collector(running.ws_url, "t", "c")
    consumer.wait_count(2, timeout=30)
    assert [(m["MessageCode"], m["Status"]) for m in consumer.messages] == [(big, 1), (after, 0)]
    assert running.broker.engine.dead_letters() == []


def test_the_cursor_stays_below_a_frame_still_in_the_buffer(make_broker, engine_name):
    """Without ack a message is done once written: one stuck in the connection's buffer is not,
    and neither is anything after it, so a crash now would redeliver them."""
    running = make_broker(engine_name, mq=LIMITS)
    _subscribe_then_leave(running, "c")
    running.publish_many("t", ["first", BIG, "after"])
    raw = RawConsumer(running.port, "/ConsumersConn/t/c", recv_buffer=4096)
    wait_for(lambda: running.broker.members(), what="the consumer")
    member = running.broker.members()[0]
    wait_for(lambda: member.conn.first_unwritten() == 2, what="the big message stuck")
    assert running.broker.positions() == {("t", "c:c"): 1}
    raw.abort()
    wait_for(lambda: not running.broker.members(), what="the broker to notice the reset")
    consumer = Collector(running.ws_url, "t", "c")
    consumer.wait_count(2, timeout=30)
    assert [(m["MessageData"][:5], m["Status"]) for m in consumer.messages] == [
        ("zzzzz", 1), ("after", 0)]
