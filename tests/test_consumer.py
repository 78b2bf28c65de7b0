"""GET /ConsumersConn/{topic}/{consumerId}: the pushed object, fan-out, order, refusals, resume."""

import re

from helpers import FENCE, Collector, connect_and_close_code, fence, wait_for


def _connected(running, count):
    wait_for(lambda: len(running.broker.members()) >= count, what=f"{count} consumers")


def test_two_consumers_each_receive_the_exact_five_field_object(broker):
    first = Collector(broker.ws_url, "test_topic", "c1")
    second = Collector(broker.ws_url, "test_topic", "c2")
    _connected(broker, 2)
    code = broker.publish("test_topic", "hello")["msg"]
    for consumer in (first, second):
        (pushed,) = consumer.wait_count(1)
        assert list(pushed) == ["MessageCode", "MessageData", "Topic", "CreateTime", "Status"]
        assert pushed["MessageCode"] == code
        assert pushed["MessageData"] == "hello"
        assert pushed["Topic"] == "test_topic"
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", pushed["CreateTime"])
        assert pushed["Status"] == 0
        consumer.close()


def test_consumers_get_only_their_topic_and_only_what_came_after_they_connected(broker):
    broker.publish("news", "before")
    news = Collector(broker.ws_url, "news", "n")
    sport = Collector(broker.ws_url, "sport", "s")
    _connected(broker, 2)
    broker.publish("news", "n1")
    broker.publish("sport", "s1")
    broker.publish("news", "n2")
    fence(broker, "news", news)
    fence(broker, "sport", sport)
    assert news.datas == ["n1", "n2", FENCE]
    assert sport.datas == ["s1", FENCE]


def test_three_consumers_receive_200_messages_each_in_order(broker):
    consumers = [Collector(broker.ws_url, "orders", f"c{i}") for i in range(3)]
    _connected(broker, 3)
    sent = [str(i) for i in range(200)]
    for data in sent:
        assert broker.publish("orders", data)["code"] == 0
    for consumer in consumers:
        consumer.wait_count(200)
        assert consumer.datas == sent


def test_a_connected_consumer_id_is_refused_with_4409_and_the_first_is_untouched(broker):
    first = Collector(broker.ws_url, "t", "same")
    _connected(broker, 1)
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/same")
    assert code == 4409 and "already connected" in reason
    broker.publish("t", "still here")
    assert first.wait_count(1)[0]["MessageData"] == "still here"
    other_topic = Collector(broker.ws_url, "u", "same")  # the same id on another topic is fine
    _connected(broker, 2)
    assert other_topic.closed is None


def test_bad_topic_or_id_is_closed_with_1008_and_a_reason(broker):
    for path, fragment in [("/ConsumersConn/a%7Cb/c", "'|'"),
                           ("/ConsumersConn/t/id%7Cx", "'|'"),
                           ("/ConsumersConn/" + "x" * 129 + "/c", "129"),
                           ("/ConsumersConn/a/b/c", "/ConsumersConn/{topic}/{consumerId}"),
                           ("/ConsumersConn/t/%09", "printable")]:
        code, reason = connect_and_close_code(broker.ws_url, path)
        assert code == 1008, path
        assert fragment in reason, (path, reason)
    assert broker.broker.members() == []


def test_consumer_beyond_max_consumers_is_refused_with_1013(make_broker, engine_name):
    running = make_broker(engine_name, server={"maxConsumers": 2})
    Collector(running.ws_url, "t", "a")
    Collector(running.ws_url, "t", "b")
    _connected(running, 2)
    code, reason = connect_and_close_code(running.ws_url, "/ConsumersConn/t/c")
    assert code == 1013 and "maxConsumers" in reason


def test_reconnecting_consumer_resumes_where_it_left_off(broker):
    consumer = Collector(broker.ws_url, "t", "durable")
    _connected(broker, 1)
    broker.publish("t", "1")
    consumer.wait_count(1)
    consumer.close()
    wait_for(lambda: not broker.broker.members(), what="the consumer to leave")
    broker.publish("t", "2")
    broker.publish("t", "3")
    again = Collector(broker.ws_url, "t", "durable")
    again.wait_count(2)
    broker.publish("t", "4")
    fence(broker, "t", again)
    assert again.datas == ["2", "3", "4", FENCE]


def test_get_consumers_lists_who_is_connected(broker):
    consumer = Collector(broker.ws_url, "t", "watcher")
    _connected(broker, 1)
    broker.publish("t", "x")
    consumer.wait_count(1)
    body = broker.get("/Console/GetConsumers")
    assert body["code"] == 0 and body["msg"] == "ok"
    (entry,) = body["data"]
    assert entry["topic"] == "t" and entry["consumerId"] == "watcher"
    assert entry["remoteAddr"] == "127.0.0.1" and entry["group"] is None
    assert entry["delivered"] == 1 and entry["pending"] == 0
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", entry["connectedAt"])
    consumer.close()
    wait_for(lambda: broker.get("/Console/GetConsumers")["data"] == [], what="an empty list")


def test_get_config_shows_the_effective_configuration(make_broker, engine_name):
    running = make_broker(engine_name, mq={"pushMessagesSpeed": 0.5, "sendRetryCount": 7})
    body = running.get("/Console/GetConfig")
    assert body["code"] == 0
    assert body["data"]["mq"]["pushMessagesSpeed"] == 0.5
    assert body["data"]["mq"]["sendRetryCount"] == 7
    assert body["data"]["storage"]["engine"] == engine_name


def test_several_delivery_threads_share_the_consumers_and_each_gets_every_message(make_broker):
    """mq.fanoutWorkers: each thread owns a share of the subscriptions, and a message goes to
    every thread holding one of its topic."""
    running = make_broker("sqlite", mq={"fanoutWorkers": 3})
    consumers = [Collector(running.ws_url, "wide", f"c{i}") for i in range(12)]
    _connected(running, 12)
    shards = running.broker.shards
    assert len(shards) == 3 and sum(bool(shard.topics) for shard in shards) >= 2
    codes = running.publish_many("wide", [f"m{i}" for i in range(30)])
    for consumer in consumers:
        consumer.wait_count(30)
        assert [m["MessageCode"] for m in consumer.messages] == codes
