"""Replay with since, delayed messages, idempotent and batch publish, retention."""

import sqlite3
import time

import pytest
import requests

from helpers import FENCE, Collector, ServedBroker, connect_and_close_code, fence, wait_for


def _joined(running, count=1):
    wait_for(lambda: len(running.broker.members()) >= count, what=f"{count} consumers")


def test_since_replays_exactly_the_messages_after_that_code(broker):
    codes = broker.publish_many("t", [str(i) for i in range(10)])
    replay = Collector(broker.ws_url, "t", "r", f"?since={codes[3]}")
    replay.wait_count(6)
    (live,) = broker.publish_many("t", ["live"])
    last = fence(broker, "t", replay)
    assert replay.codes == codes[4:] + [live, last]


def test_since_beginning_starts_at_the_oldest_retained_message(broker):
    codes = broker.publish_many("t", ["a", "b", "c"])
    replay = Collector(broker.ws_url, "t", "r", "?since=beginning")
    replay.wait_count(3)
    assert replay.codes == codes


def test_since_moves_a_known_consumer_back(broker):
    codes = broker.publish_many("t", ["a", "b"])
    first = Collector(broker.ws_url, "t", "back", "?since=beginning")
    first.wait_count(2)
    first.close()
    wait_for(lambda: not broker.broker.members(), what="the consumer to leave")
    again = Collector(broker.ws_url, "t", "back", f"?since={codes[0]}")
    again.wait_count(1)
    assert again.codes == codes[1:]


def test_since_an_unknown_code_or_a_bad_value_is_closed_with_1008(broker):
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/x?since=" + "a" * 40)
    assert code == 1008 and "no retained message" in reason
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/x?since=yesterday")
    assert code == 1008 and "since" in reason
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/x?colour=red")
    assert code == 1008 and "colour" in reason


def test_delayed_message_arrives_after_its_delay_and_does_not_hold_up_others(broker):
    consumer = Collector(broker.ws_url, "t", "c")
    _joined(broker)
    started = time.monotonic()
    late = broker.publish("t", "late", delay="1")
    assert late["code"] == 0
    broker.publish("t", "now")
    consumer.wait_count(1)
    assert consumer.datas == ["now"]
    consumer.wait_count(2, timeout=10)
    assert consumer.datas == ["now", "late"]
    assert consumer.messages[1]["MessageCode"] == late["msg"]
    assert consumer.arrivals[1] - started >= 0.9      # never before its time (a slow machine: later)


def test_a_delayed_batch_arrives_after_its_delay_in_order(broker):
    consumer = Collector(broker.ws_url, "t", "c")
    _joined(broker)
    started = time.monotonic()
    late = broker.http.post(broker.url + "/ProducerSendBatch",
                            json={"topic": "t", "messages": ["l1", "l2", "l3"], "delay": 1}).json()
    assert late["code"] == 0
    broker.publish("t", "now")
    consumer.wait_count(1)
    assert consumer.datas == ["now"]
    consumer.wait_count(4, timeout=10)
    assert consumer.datas == ["now", "l1", "l2", "l3"] and consumer.codes[1:] == late["data"]
    assert consumer.arrivals[1] - started >= 0.9


def test_bad_delays_are_refused(make_broker, engine_name):
    running = make_broker(engine_name, mq={"maxDelaySeconds": 10})
    for delay in ("-1", "11", "soon"):
        reply = running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": "x", "delay": delay})
        assert reply.status_code == 400 and "delay" in reply.json()["msg"], delay


def test_a_delayed_message_survives_a_restart(tmp_path):
    broker = ServedBroker(tmp_path).start()
    try:
        consumer = Collector(broker.ws_url, "t", "d")
        wait_for(lambda: requests.get(broker.url + "/Console/GetConsumers").json()["data"],
                 what="the consumer")
        reply = requests.post(broker.url + "/ProducerSend",
                              data={"topic": "t", "messageData": "later", "delay": "2"}).json()
        assert reply["code"] == 0
        broker.kill()
        consumer.close()
        broker.start()
        again = Collector(broker.ws_url, "t", "d")
        again.wait_count(1, timeout=15)
        assert again.codes == [reply["msg"]]
    finally:
        broker.stop()


def test_idempotency_key_returns_the_first_code_and_stores_nothing_new(broker):
    consumer = Collector(broker.ws_url, "t", "c")
    _joined(broker)
    first = broker.publish("t", "pay 10", idempotencyKey="order-1")["msg"]
    again = broker.publish("t", "pay 10", idempotencyKey="order-1")["msg"]
    other_topic = broker.publish("u", "pay 10", idempotencyKey="order-1")["msg"]
    assert first == again and other_topic != first
    assert broker.broker.engine.head("t") == 1
    last = fence(broker, "t", consumer)
    assert consumer.codes == [first, last]


def test_batch_publish_is_all_or_nothing_in_order(broker):
    consumer = Collector(broker.ws_url, "t", "c")
    _joined(broker)
    reply = broker.http.post(broker.url + "/ProducerSendBatch",
                             json={"topic": "t", "messages": ["a", "b", "c"]}).json()
    assert reply["code"] == 0 and len(reply["data"]) == 3
    mixed = broker.http.post(broker.url + "/ProducerSendBatch", json={"messages": [
        {"topic": "t", "messageData": "d"}, {"topic": "u", "messageData": "e"}]}).json()
    assert mixed["code"] == 0
    bad = broker.http.post(broker.url + "/ProducerSendBatch", json={"messages": [
        {"topic": "t", "messageData": "never"}, {"topic": "t|x", "messageData": "f"}]})
    assert bad.status_code == 400 and "messages[1]" in bad.json()["msg"]
    unhashable = broker.http.post(broker.url + "/ProducerSendBatch", json={"messages": [
        {"topic": "t", "messageData": "never"}, {"topic": ["t"], "messageData": "g"}]})
    assert unhashable.status_code == 400 and "messages[1]: topic" in unhashable.json()["msg"]
    fence(broker, "t", consumer)
    assert consumer.datas == ["a", "b", "c", "d", FENCE]
    assert consumer.codes[:3] == reply["data"]


def test_batches_of_topics_under_way_number_each_topic_on_from_its_head(broker):
    broker.publish_many("a", ["a1"])
    broker.publish_many("b", ["b1"])
    reply = broker.http.post(broker.url + "/ProducerSendBatch", json={"messages": [
        {"topic": "a", "messageData": "a2"}, {"topic": "b", "messageData": "b2"},
        {"topic": "a", "messageData": "a3"}]}).json()
    assert reply["code"] == 0
    uniform = broker.http.post(broker.url + "/ProducerSendBatch",
                               json={"topic": "b", "messages": ["b3", "b4"]}).json()
    assert uniform["code"] == 0
    engine = broker.broker.engine
    assert [(r.offset, r.data) for r in engine.read("a", 0, 10)] == [(1, "a1"), (2, "a2"), (3, "a3")]
    assert [(r.offset, r.data, r.code) for r in engine.read("b", 0, 10)][1:] == [
        (2, "b2", reply["data"][1]), (3, "b3", uniform["data"][0]), (4, "b4", uniform["data"][1])]


@pytest.mark.parametrize("texts, position, says", [
    (["ok", "é" * 200], 1, "larger than mq.maxMessageBytes"),     # 400 bytes in UTF-8
    (["ok", "fine", "\ud800"], 2, "lone surrogate"),
    (["ok", "x" * 301], 1, "larger than mq.maxMessageBytes"),
])
def test_a_batch_of_strings_names_its_first_bad_message_and_stores_none(make_broker, engine_name,
                                                                          texts, position, says):
    running = make_broker(engine_name, mq={"maxMessageBytes": 300})
    running.publish_many("t", ["before"])
    reply = running.http.post(running.url + "/ProducerSendBatch",
                              json={"topic": "t", "messages": texts, "key": "k"})
    assert reply.status_code in (400, 413)
    assert reply.json()["msg"].startswith(f"messages[{position}]: ") and says in reply.json()["msg"]
    assert [r.data for r in running.broker.engine.read("t", 0, 10)] == ["before"]
    for accepted in (["a", "b"], ["é" * 150]):      # ASCII texts are checked in bulk
        reply = running.http.post(running.url + "/ProducerSendBatch",
                                  json={"topic": "t", "messages": accepted, "key": "k"})
        assert reply.json()["code"] == 0
    stored = running.broker.engine.read("t", 0, 10)
    assert [(r.data, r.key) for r in stored] == [
        ("before", None), ("a", "k"), ("b", "k"), ("é" * 150, "k")]


@pytest.mark.parametrize("body", [{}, {"messages": "a"}, {"topic": "t", "messages": [5]},
                                  {"topic": "t", "messages": []}])
def test_malformed_batches_are_refused(broker, body):
    reply = broker.http.post(broker.url + "/ProducerSendBatch", json=body)
    assert reply.status_code == 400 and reply.json()["code"] == -1


def test_retention_purges_old_messages(make_broker, engine_name):
    running = make_broker(engine_name, mq={"retentionSeconds": 1, "maxDelaySeconds": 0.5,
                                           "sweepInterval": 0.2})
    old = running.publish_many("t", ["old1", "old2"])
    wait_for(lambda: running.broker.engine.read("t", 0, 10) == [], timeout=10,
             what="the old messages to be purged")
    fresh = running.publish_many("t", ["fresh"])
    replay = Collector(running.ws_url, "t", "r", "?since=beginning")
    replay.wait_count(1)
    assert replay.codes == fresh
    code, reason = connect_and_close_code(running.ws_url, f"/ConsumersConn/t/x?since={old[0]}")
    assert code == 1008


def test_retention_by_count_keeps_the_newest(make_broker, engine_name):
    running = make_broker(engine_name, mq={"retentionMessages": 3, "sweepInterval": 0.1})
    codes = running.publish_many("t", [str(i) for i in range(10)])
    wait_for(lambda: len(running.broker.engine.read("t", 0, 100)) == 3, what="the purge")
    assert [r.code for r in running.broker.engine.read("t", 0, 100)] == codes[-3:]


def test_a_consumer_behind_retention_skips_the_purged_gap(make_broker, engine_name):
    running = make_broker(engine_name, mq={"retentionMessages": 2, "sweepInterval": 0.1})
    first = Collector(running.ws_url, "t", "away")
    _joined(running)
    first.close()
    wait_for(lambda: not running.broker.members(), what="the consumer to leave")
    codes = running.publish_many("t", [str(i) for i in range(6)])
    wait_for(lambda: len(running.broker.engine.read("t", 0, 100)) == 2, what="the purge")
    again = Collector(running.ws_url, "t", "away")
    again.wait_count(2)
    assert again.codes == codes[-2:]


def test_retention_keeps_a_connected_quiet_subscription_and_forgets_a_departed_one(
        make_broker, engine_name):
    running = make_broker(engine_name, mq={"retentionSeconds": 1, "maxDelaySeconds": 0.5,
                                           "sweepInterval": 0.1})
    quiet, gone = Collector(running.ws_url, "t", "quiet"), Collector(running.ws_url, "t", "gone")
    _joined(running, 2)
    running.publish_many("t", ["a"])
    quiet.wait_count(1)
    gone.wait_count(1)
    engine = running.broker.engine
    wait_for(lambda: engine.cursor("t", "c:quiet") == 1, what="the quiet cursor to be saved")
    # The departed subscription is saved last, as it leaves: once retention has forgotten it,
    # it would have forgotten the quiet one too, had that not been refreshed meanwhile.
    gone.close()
    wait_for(lambda: engine.cursor("t", "c:gone") is None, timeout=10,
             what="retention to forget the departed subscription")
    assert engine.cursor("t", "c:quiet") == 1


def test_a_quiet_subscription_is_refreshed_before_retention_not_at_every_sweep(make_broker):
    """Its row is rewritten once half the retention has passed, not at each sweep: with many
    idle consumers every sweep used to write all of their cursors."""
    running = make_broker("sqlite", mq={"retentionSeconds": 3, "maxDelaySeconds": 1,
                                      "sweepInterval": 0.05, "cursorFlushInterval": 0.05})
    quiet = Collector(running.ws_url, "t", "quiet")
    _joined(running)
    running.publish_many("t", ["a"])
    quiet.wait_count(1)
    store = sqlite3.connect(running.broker.engine.path)

    def row():
        return store.execute("select cursor, updated from subscriptions where topic = 't'"
                             " and sub = ?", ("c:quiet",)).fetchone()

    saved = wait_for(lambda: (found := row()) and found[0] == 1 and found,
                     what="the cursor after the message to be saved")[1]
    refreshed = wait_for(lambda: row()[1] != saved and row()[1], interval=0.02,
                         what="the quiet cursor to be refreshed")
    store.close()
    # Sweeps come every 0.05 s (the housekeeping thread looks every cursorFlushInterval). The row
    # is rewritten once half the retention (1.5 s) has passed since it was last saved, how much
    # later being the machine's: a row rewritten at every sweep or so comes less than 0.5 s later.
    assert refreshed - saved > 0.5, (saved, refreshed)
