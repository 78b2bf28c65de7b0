"""Ack, nack, ack timeouts, dead letters and requeue, through a real broker on every engine.

That nothing comes back that should not (an acked message, a dead letter, a message beyond the
in-flight limit) is tested with a fake clock in test_delivery_logic.py; here a test waits for
the broker to have taken an ack (its counts) instead of sleeping to see that nothing came."""

import json

from dpmq.metrics import ACKED

from helpers import Collector, wait_for

FAST = {"ackTimeout": 0.3, "sendRetryCount": 2}


def _joined(running, count=1):
    wait_for(lambda: len(running.broker.members()) >= count, what=f"{count} consumers")


def _acked(running, count, topic="t"):
    wait_for(lambda: running.broker.topic_counts().get(topic, [0] * 6)[ACKED] >= count,
             what=f"{count} acks taken by the broker")


def test_unacked_message_comes_back_with_status_then_is_dead_lettered_and_requeued(make_broker,
                                                                                    engine_name):
    running = make_broker(engine_name, mq=FAST)
    consumer = Collector(running.ws_url, "t", "lazy", "?ack=1")
    _joined(running)
    (code,) = running.publish_many("t", ["never acked"])
    consumer.wait_count(3, timeout=10)
    assert [(m["MessageCode"], m["Status"]) for m in consumer.messages] == \
        [(code, 0), (code, 1), (code, 2)]
    dead = wait_for(lambda: running.get("/Console/GetDeadLetters", topic="t")["data"],
                    what="the dead letter")
    assert dead[0]["MessageCode"] == code and dead[0]["consumerId"] == "lazy"
    assert dead[0]["attempts"] == 3 and "sendRetryCount" in dead[0]["reason"]

    reply = running.http.post(running.url + "/Console/Requeue",
                              json={"topic": "t", "consumerId": "lazy", "messageCode": code}).json()
    assert reply == {"code": 0, "msg": "ok", "data": {"requeued": 1}}
    consumer.wait_count(4)
    assert consumer.messages[3]["MessageCode"] == code and consumer.messages[3]["Status"] == 0
    consumer.send(code)
    _acked(running, 1)
    assert running.broker.engine.redeliveries("t", "c:lazy") == [], "an acked requeued message is done"
    assert running.get("/Console/GetDeadLetters", topic="t")["data"] == []


def test_acked_messages_are_not_redelivered_and_both_ack_forms_work(make_broker, engine_name):
    running = make_broker(engine_name, mq=FAST)
    consumer = Collector(running.ws_url, "t", "good", "?ack=1")
    _joined(running)
    first, second = running.publish_many("t", ["a", "b"])
    consumer.wait_count(2)
    consumer.send(first)
    consumer.send(json.dumps({"ack": second}))
    _acked(running, 2)
    assert consumer.codes[:2] == [first, second]
    assert consumer.errors == []


def test_nack_asks_for_redelivery_now(make_broker, engine_name):
    running = make_broker(engine_name, mq={"ackTimeout": 60})
    consumer = Collector(running.ws_url, "t", "n", "?ack=1")
    _joined(running)
    (code,) = running.publish_many("t", ["again"])
    consumer.wait_count(1)
    consumer.send(json.dumps({"nack": code}))
    consumer.wait_count(2)             # long before the 60 s ack timeout
    assert consumer.messages[1]["MessageCode"] == code and consumer.messages[1]["Status"] == 1


def test_unknown_or_malformed_acks_get_an_error_frame_not_a_crash(make_broker, engine_name):
    running = make_broker(engine_name, mq=FAST)
    consumer = Collector(running.ws_url, "t", "confused", "?ack=1", auto_ack=True)
    _joined(running)
    consumer.send("f" * 40)
    consumer.send("not a code")
    consumer.send(json.dumps({"nack": "0" * 40}))
    wait_for(lambda: len(consumer.errors) >= 3, what="three error frames")
    assert "no such message" in consumer.errors[0]["error"]
    assert "expected a MessageCode" in consumer.errors[1]["error"]
    (code,) = running.publish_many("t", ["still works"])
    assert consumer.wait_count(1)[0]["MessageCode"] == code


def test_in_flight_limit_holds_back_a_consumer_that_does_not_ack(make_broker, engine_name):
    running = make_broker(engine_name, mq={"maxInFlight": 3, "ackTimeout": 60})
    consumer = Collector(running.ws_url, "t", "slow", "?ack=1")
    _joined(running)
    codes = running.publish_many("t", [str(i) for i in range(10)])
    consumer.wait_count(3)
    assert consumer.codes == codes[:3]
    consumer.send(codes[0])
    consumer.wait_count(4)
    assert consumer.codes == codes[:4]


def test_requeue_all_dead_letters_of_a_subscription_by_form(make_broker, engine_name):
    running = make_broker(engine_name, mq=dict(FAST, sendRetryCount=0))
    consumer = Collector(running.ws_url, "t", "c", "?ack=1")
    _joined(running)
    codes = running.publish_many("t", ["x", "y"])
    wait_for(lambda: len(running.get("/Console/GetDeadLetters", topic="t", consumerId="c")["data"])
             == 2, what="two dead letters")
    reply = running.http.post(running.url + "/Console/Requeue", data={"topic": "t"}).json()
    assert reply["data"] == {"requeued": 2}
    wait_for(lambda: consumer.codes.count(codes[0]) == 2 and consumer.codes.count(codes[1]) == 2,
             what="both requeued messages")


def test_requeue_refuses_what_it_cannot_find_or_name(make_broker, engine_name):
    running = make_broker(engine_name)
    reply = running.http.post(running.url + "/Console/Requeue",
                              json={"topic": "t", "consumerId": "c", "messageCode": "a" * 40})
    assert reply.status_code == 404 and reply.json()["code"] == -1
    reply = running.http.post(running.url + "/Console/Requeue",
                              json={"topic": "t", "messageCode": "a" * 40})
    assert reply.status_code == 400
    reply = running.http.post(running.url + "/Console/Requeue", json={"consumerId": "c"})
    assert reply.status_code == 400 and "topic" in reply.json()["msg"]


def test_a_consumer_leaving_with_unacked_messages_gets_them_back_on_return(make_broker,
                                                                           engine_name):
    running = make_broker(engine_name, mq={"ackTimeout": 60})
    consumer = Collector(running.ws_url, "t", "r", "?ack=1")
    _joined(running)
    codes = running.publish_many("t", ["1", "2", "3"])
    consumer.wait_count(3)
    consumer.send(codes[0])
    _acked(running, 1)
    consumer.close()
    wait_for(lambda: not running.broker.members(), what="the consumer to leave")
    again = Collector(running.ws_url, "t", "r", "?ack=1")
    again.wait_count(2)
    assert [(m["MessageCode"], m["Status"]) for m in again.messages] == \
        [(codes[1], 1), (codes[2], 1)]


def test_ack_consumers_given_one_message_at_once_each_get_it(make_broker):
    """Two ack=1 subscriptions on one shard take the same run at the same instant: their ack
    deadlines are equal, and the shard's timer heap must still order them."""
    running = make_broker("memory", mq={"fanoutWorkers": 1, "ackTimeout": 60})
    consumers = [Collector(running.ws_url, "t", name, "?ack=1") for name in ("a", "b", "c")]
    _joined(running, 3)
    running.publish_many("t", ["x"])
    for consumer in consumers:
        consumer.wait_count(1, timeout=5)
        consumer.close()
