"""The console API: topics, message browser, counts, overview."""

import threading
import time

import requests

from helpers import Collector, wait_for


def test_get_topics_summarises_each_topic(make_broker, engine_name):
    running = make_broker(engine_name, mq={"sendRetryCount": 0, "ackTimeout": 0.2})
    reader = Collector(running.ws_url, "orders", "reader")
    lazy = Collector(running.ws_url, "orders", "lazy", "?ack=1")
    wait_for(lambda: len(running.broker.members()) == 2, what="two consumers")
    running.publish_many("orders", ["a", "b", "c"])
    running.publish_many("other", ["x"])
    running.publish("orders", "later", delay="60")
    reader.wait_count(3)
    lazy.wait_count(3)
    wait_for(lambda: running.get("/Console/Ping")["data"]["deadLettered"] == 3, what="dead letters")
    running.broker.housekeeping.save_cursors()
    topics = {t["topic"]: t for t in running.get("/Console/GetTopics")["data"]}
    orders = topics["orders"]
    assert orders["published"] == 3 and orders["retained"] == 3 and orders["delayed"] == 1
    assert orders["subscriptions"] == 2 and orders["consumers"] == 2 and orders["deadLetters"] == 3
    assert orders["delivered"] >= 6 and orders["pending"] == 0
    assert topics["other"]["published"] == 1 and topics["other"]["consumers"] == 0


def test_message_list_pages_newest_first_and_filters(make_broker, engine_name):
    running = make_broker(engine_name)
    codes = running.publish_many("t", [str(i) for i in range(10)])
    first = running.get("/Console/GetMessageList", topic="t", limit=4)["data"]
    assert [m["MessageData"] for m in first] == ["9", "8", "7", "6"]
    assert set(first[0]) >= {"MessageCode", "MessageData", "Topic", "CreateTime", "status"}
    second = running.get("/Console/GetMessageList", topic="t", limit=4, before=first[-1]["offset"])
    assert [m["MessageData"] for m in second["data"]] == ["5", "4", "3", "2"]
    (found,) = running.get("/Console/GetMessageList", code=codes[3])["data"]
    assert found["MessageData"] == "3" and found["Topic"] == "t"
    assert running.get("/Console/GetMessageList", topic="t", status="pending")["data"] == []
    assert len(running.get("/Console/GetMessageList", topic="t", status="delivered")["data"]) == 10


def test_messages_behind_a_subscription_are_pending(make_broker, engine_name):
    running = make_broker(engine_name)
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    consumer.close()
    wait_for(lambda: not running.broker.members(), what="the consumer to leave")
    running.publish_many("t", ["1", "2"])
    running.publish("t", "3", delay="30")
    assert [m["MessageData"] for m in
            running.get("/Console/GetMessageList", topic="t", status="pending")["data"]] == ["2", "1"]
    (delayed,) = running.get("/Console/GetMessageList", topic="t", status="delayed")["data"]
    assert delayed["MessageData"] == "3" and delayed["status"] == "delayed"
    counts = running.get("/Console/CountMessage", topic="t")["data"]
    assert counts == {"delayed": 1, "pending": 2, "delivered": 0, "dead": 0, "total": 3}


def test_message_list_refuses_bad_parameters(broker):
    for params in ({}, {"topic": "t", "status": "lost"}, {"topic": "t", "limit": "0"},
                   {"topic": "t", "before": "x"}, {"topic": "a|b"}):
        reply = broker.http.get(broker.url + "/Console/GetMessageList", params=params)
        assert reply.status_code == 400 and reply.json()["code"] == -1, params


def _data_when(running, path, ready, what):
    """The ``data`` of GET ``path`` once ``ready(data)`` is true."""
    seen = {}

    def check():
        seen["data"] = running.get(path)["data"]
        return ready(seen["data"])

    wait_for(check, what=what)
    return seen["data"]


def test_overview_has_counters_and_a_rate_history(make_broker):
    running = make_broker("memory")
    running.publish_many("t", ["a"] * 20)
    # The history is sampled about once a second; its first rate needs two samples.
    data = _data_when(running, "/Console/GetOverview", lambda d: d["history"], "a rate in the history")
    assert data["published"] == 20 and data["bufferCapacity"] == 100
    assert set(data["history"][0]) == {"time", "published", "delivered", "bufferUsed"}


def test_the_overview_says_what_waits_and_where(make_broker):
    """Unpaced, committed messages are handed out as they commit: nothing awaits a paced push and
    the buffer is empty once the publishes are answered; a consumer that does not ack holds its
    messages in flight."""
    running = make_broker("memory")
    lazy = Collector(running.ws_url, "t", "lazy", "?ack=1")
    wait_for(lambda: running.broker.members(), what="the consumer")
    running.publish_many("t", ["a", "b"])
    lazy.wait_count(2)
    data = _data_when(running, "/Console/Ping", lambda d: d["inFlight"] == 2, "two messages in flight")
    assert data["bufferUsed"] == 0 and data["awaitingPacedPush"] == 0
    assert data["consumerBufferedBytes"] >= 0 and "buffered" not in data
    overview = running.get("/Console/GetOverview")["data"]
    assert overview["inFlight"] == 2 and overview["awaitingPacedPush"] == 0


def test_watching_the_consumers_does_not_hold_back_saving_their_cursors(make_broker, engine_name):
    """The web console polls GetConsumers, which reads every cursor; the cursors that moved must
    still be saved within the flush interval, so that a crash redelivers seconds, not a sweep."""
    running = make_broker(engine_name, mq={"cursorFlushInterval": 0.2})
    consumer = Collector(running.ws_url, "t", "watched")
    wait_for(lambda: running.broker.members(), what="the consumer")
    running.publish_many("t", [str(i) for i in range(5)])
    consumer.wait_count(5)
    head = running.broker.engine.head("t")

    def saved():
        running.get("/Console/GetConsumers")
        return running.broker.engine.cursor("t", "c:watched") == head

    wait_for(saved, timeout=5, interval=0.01, what="the cursor to be saved")


def test_a_slow_console_query_does_not_hold_up_readyz_or_delivery(make_broker):
    """Console queries scan, and take seconds on a big store; readyz and a consumer catching up
    from the store must not wait behind one. The browsing connection is held busy here."""
    running = make_broker("sqlite")
    running.publish_many("t", ["a", "b"])
    engine = running.broker.engine
    with engine._browse_lock:                   # a console query that takes its time
        asked = threading.Thread(target=running.get, args=("/Console/GetTopics",))
        asked.start()
        ready = requests.get(running.url + "/readyz", timeout=5)
        assert ready.status_code == 200
        consumer = Collector(running.ws_url, "t", "late", query="?since=beginning")
        assert consumer.wait_count(2, timeout=5)
        assert asked.is_alive(), "the console query waits for its own connection"
    asked.join(5)
    consumer.close()


def test_the_message_list_says_when_a_message_with_a_ttl_expires(make_broker, engine_name):
    running = make_broker(engine_name)
    with_ttl = running.publish("t", "soon gone", ttl="3600")["msg"]
    without = running.publish("t", "kept")["msg"]
    listed = {m["MessageCode"]: m for m in running.get("/Console/GetMessageList", topic="t")["data"]}
    assert listed[without]["expiresAt"] is None
    created = time.mktime(time.strptime(listed[with_ttl]["CreateTime"], "%Y-%m-%d %H:%M:%S"))
    expires = time.mktime(time.strptime(listed[with_ttl]["expiresAt"], "%Y-%m-%d %H:%M:%S"))
    assert 3599 <= expires - created <= 3601
