"""Pulling and acking over plain HTTP (POST /ConsumerPull, POST /ConsumerAck), on every engine."""

import json
import socket
import threading
import time

import requests

from helpers import Collector, connect_and_close_code, wait_for

FAST = {"ackTimeout": 0.5, "sendRetryCount": 2}


def pull(running, **fields):
    return running.http.post(running.url + "/ConsumerPull", json=fields)


def ack(running, **fields):
    return running.http.post(running.url + "/ConsumerAck", json=fields)


def datas(reply):
    return [m["MessageData"] for m in reply.json()["data"]]


def test_a_pull_takes_what_is_ready_in_order_in_the_pushed_shape(make_broker, engine_name):
    running = make_broker(engine_name)
    first = pull(running, topic="t", consumerId="p", autoAck=True)
    assert first.status_code == 200 and first.json() == {"code": 0, "msg": "ok", "data": []}
    codes = running.publish_many("t", [f"m{i}" for i in range(5)])
    reply = pull(running, topic="t", consumerId="p", max=3, autoAck=True)
    body = reply.json()
    assert [m["MessageCode"] for m in body["data"]] == codes[:3]
    assert set(body["data"][0]) == {"MessageCode", "MessageData", "Topic", "CreateTime", "Status"}
    assert body["data"][0]["Status"] == 0 and body["data"][0]["Topic"] == "t"
    assert datas(pull(running, topic="t", consumerId="p", max=10, autoAck=True)) == ["m3", "m4"]
    assert datas(pull(running, topic="t", consumerId="p", max=10, autoAck=True)) == []


def test_a_long_poll_answers_when_a_message_comes(make_broker):
    running = make_broker("sqlite")
    pull(running, topic="t", consumerId="p", autoAck=True)        # the subscription starts now
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(
        pull(running, topic="t", consumerId="p", wait=20, autoAck=True)))
    started = time.monotonic()
    waiting.start()
    time.sleep(0.3)
    assert answers == [], "a pull with wait holds the request while nothing is ready"
    running.publish("t", "late")
    waiting.join(10)
    assert datas(answers[0]) == ["late"]
    assert time.monotonic() - started < 15, "answered when the message came, not after wait"


def test_a_long_poll_with_nothing_answers_empty_after_wait(make_broker):
    running = make_broker("memory")
    started = time.monotonic()
    reply = pull(running, topic="t", consumerId="p", wait=0.3)
    assert reply.json()["data"] == [] and time.monotonic() - started >= 0.3


def test_pulled_messages_are_in_flight_until_acked_then_redelivered(make_broker, engine_name):
    running = make_broker(engine_name, mq=FAST)
    pull(running, topic="t", consumerId="w")
    first, second = running.publish_many("t", ["a", "b"])
    got = pull(running, topic="t", consumerId="w", max=10).json()["data"]
    assert [(m["MessageCode"], m["Status"]) for m in got] == [(first, 0), (second, 0)]
    settled = ack(running, topic="t", consumerId="w", messageCode=first)
    assert settled.json() == {"code": 0, "msg": "ok", "data": {"settled": [first], "unknown": []}}
    # the unacked one comes again, Status + 1, after mq.ackTimeout
    again = wait_for(lambda: pull(running, topic="t", consumerId="w", max=10, wait=1)
                     .json()["data"], what="the redelivery")
    assert [(m["MessageCode"], m["Status"]) for m in again] == [(second, 1)]
    assert ack(running, topic="t", consumerId="w", messageCode=[second]).json()["code"] == 0
    # an acked message is not held any more: acking it again says so
    twice = ack(running, topic="t", consumerId="w", messageCode=second)
    assert twice.status_code == 409 and twice.json()["data"]["unknown"] == [second]


def test_nack_redelivers_now_and_a_form_ack_takes_repeated_codes(make_broker):
    running = make_broker("sqlite", mq={"ackTimeout": 60})
    pull(running, topic="t", consumerId="w")
    codes = running.publish_many("t", ["a", "b", "c"])
    pull(running, topic="t", consumerId="w", max=10)
    assert ack(running, topic="t", consumerId="w", messageCode=codes[0], nack=True).json()["code"] == 0
    again = pull(running, topic="t", consumerId="w", max=10, wait=5).json()["data"]
    assert [(m["MessageCode"], m["Status"]) for m in again] == [(codes[0], 1)]
    form = running.http.post(running.url + "/ConsumerAck",
                             data={"topic": "t", "consumerId": "w", "messageCode": codes})
    assert form.json()["data"] == {"settled": codes, "unknown": []}


def test_ack_over_http_settles_a_websocket_consumers_messages(make_broker):
    running = make_broker("sqlite", mq={"ackTimeout": 60})
    consumer = Collector(running.ws_url, "t", "ws", "?ack=1")
    wait_for(lambda: running.broker.members(), what="the consumer")
    (code,) = running.publish_many("t", ["x"])
    consumer.wait_count(1)
    reply = ack(running, topic="t", consumerId="ws", messageCode=code)
    assert reply.json()["data"] == {"settled": [code], "unknown": []}
    consumer.close()


def test_a_group_mixes_pulling_and_pushing_members(make_broker):
    running = make_broker("sqlite", mq={"ackTimeout": 60})
    pusher = Collector(running.ws_url, "t", "pusher", "?group=g", auto_ack=False)
    wait_for(lambda: running.broker.members(), what="the pushing member")
    pull(running, topic="t", group="g", autoAck=True)
    running.publish_many("t", [f"m{i}" for i in range(40)])
    pulled = []
    wait_for(lambda: pulled.extend(datas(pull(running, topic="t", group="g", max=100,
                                                autoAck=True, wait=0.2)))
             or len(pulled) + len(pusher.messages) >= 40, what="every message, once")
    assert sorted(pulled + pusher.datas, key=lambda d: int(d[1:])) == [f"m{i}" for i in range(40)]
    pusher.close()


def test_bad_pulls_and_acks_are_refused_clearly(make_broker):
    running = make_broker("memory", mq={"maxPullMessages": 10, "maxPullWait": 5})
    cases = [({"consumerId": "p"}, "topic"), ({"topic": "t"}, "consumerId"),
             ({"topic": "t", "consumerId": "p", "max": 11}, "max"),
             ({"topic": "t", "consumerId": "p", "wait": 6}, "wait"),
             ({"topic": "t", "consumerId": "p", "autoAck": "maybe"}, "autoAck"),
             ({"topic": "a/b", "consumerId": "p"}, "topic")]
    for fields, word in cases:
        reply = pull(running, **fields)
        assert reply.status_code == 400 and word in reply.json()["msg"], (fields, reply.text)
    reply = ack(running, topic="t", consumerId="p", messageCode="nope")
    assert reply.status_code == 400 and "messageCode" in reply.json()["msg"]
    reply = ack(running, topic="t", consumerId="nobody", messageCode="a" * 40)
    assert reply.status_code == 409 and "connected" in reply.json()["msg"]


def test_a_consumer_id_pulled_is_taken_and_a_websocket_with_it_is_refused(make_broker):
    running = make_broker("memory")
    pull(running, topic="t", consumerId="p")
    consumers = running.get("/Console/GetConsumers")["data"]
    assert [(c["consumerId"], c["transport"]) for c in consumers] == [("p", "pull")]
    assert connect_and_close_code(running.ws_url, "/ConsumersConn/t/p")[0] == 4409
    mode = pull(running, topic="t", consumerId="p", autoAck=True)
    assert mode.status_code == 409 and "autoAck" in mode.json()["msg"]


def test_auth_applies_to_pulls_and_acks(make_broker):
    running = make_broker("memory", auth={"enabled": True, "tokens": [
        {"token": "c1-secret", "role": "consumer"}, {"token": "c2-secret", "role": "consumer"},
        {"token": "p-secret", "role": "producer"}]})
    assert pull(running, topic="t", consumerId="mine").status_code == 401
    headers = {"Authorization": "Bearer c1-secret"}
    reply = requests.post(running.url + "/ConsumerPull", headers=headers,
                          json={"topic": "t", "consumerId": "mine"})
    assert reply.status_code == 200
    producer = requests.post(running.url + "/ConsumerPull", headers={"Authorization": "Bearer p-secret"},
                             json={"topic": "t", "consumerId": "x"})
    assert producer.status_code == 403
    stranger = requests.post(running.url + "/ConsumerAck", headers={"Authorization": "Bearer c2-secret"},
                             json={"topic": "t", "consumerId": "mine", "messageCode": "a" * 40})
    assert stranger.status_code == 403, stranger.text


def test_a_session_ends_after_its_last_pull_and_the_cursor_carries_over(make_broker, monkeypatch):
    monkeypatch.setattr("dpmq.broker.pulls.LINGER", 0.2)
    running = make_broker("sqlite")
    pull(running, topic="t", consumerId="cron", autoAck=True)
    running.publish_many("t", ["a", "b"])
    assert datas(pull(running, topic="t", consumerId="cron", max=1, autoAck=True)) == ["a"]
    wait_for(lambda: not running.broker.members(), what="the idle session to end")
    running.publish_many("t", ["c"])
    assert datas(pull(running, topic="t", consumerId="cron", max=10, autoAck=True,
                      wait=2)) == ["b", "c"]


def test_many_waiting_pulls_do_not_stop_producers(make_broker):
    running = make_broker("memory", server={"maxConsumers": 500})
    waiting = [threading.Thread(target=lambda n=n: requests.post(
        running.url + "/ConsumerPull", json={"topic": "t", "consumerId": f"p{n}", "wait": 30},
        timeout=60)) for n in range(200)]
    for thread in waiting:
        thread.start()
    wait_for(lambda: len(running.broker.members()) == 200, timeout=30, what="200 waiting pulls")
    reply = requests.post(running.url + "/ProducerSend", data={"topic": "t", "messageData": "hi"},
                          timeout=10)
    assert reply.json()["code"] == 0
    for thread in waiting:
        thread.join(30)
    assert not any(thread.is_alive() for thread in waiting), "every waiting pull got the message"


def test_what_an_abandoned_pull_was_handed_goes_to_the_next_pull_once(make_broker, engine_name):
    """A pull whose client went away takes nothing: the messages handed to it go back, so the
    next pull gets them once, as first deliveries (nothing failed), and never again after."""
    running = make_broker(engine_name, mq={"ackTimeout": 0.5})
    pull(running, topic="t", consumerId="w")
    gone = socket.create_connection(("127.0.0.1", running.port))
    body = json.dumps({"topic": "t", "consumerId": "w", "wait": 30}).encode()
    gone.sendall(b"POST /ConsumerPull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.2)
    gone.close()
    codes = running.publish_many("t", ["a", "b"])
    time.sleep(0.7)         # past ackTimeout: had the pull kept them, they would be redelivered
    got = []
    wait_for(lambda: got.extend(pull(running, topic="t", consumerId="w", max=10, wait=1)
                                .json()["data"]) or len(got) >= 2, what="both messages")
    assert [(m["MessageCode"], m["Status"]) for m in got] == [(codes[0], 0), (codes[1], 0)]
    assert ack(running, topic="t", consumerId="w", messageCode=codes).json()["code"] == 0
    time.sleep(0.7)
    assert pull(running, topic="t", consumerId="w", max=10, wait=0.3).json()["data"] == []


def test_what_a_group_pull_took_is_not_delivered_again_when_its_session_ends(make_broker,
                                                                            monkeypatch):
    monkeypatch.setattr("dpmq.broker.pulls.LINGER", 0.1)
    running = make_broker("sqlite")
    pull(running, topic="t", group="g", autoAck=True)
    running.publish_many("t", ["taken"])
    assert datas(pull(running, topic="t", group="g", autoAck=True, wait=2)) == ["taken"]
    wait_for(lambda: not running.broker.members(), what="the session to end")
    member = Collector(running.ws_url, "t", "ws", "?group=g")
    wait_for(lambda: running.broker.members(), what="the pushing member")
    running.publish_many("t", ["fence"])
    member.wait_count(1)
    assert member.datas == ["fence"], "the pulled message came again"
    member.close()


def test_a_pull_without_wait_gets_what_is_ready_every_time(make_broker):
    running = make_broker("memory")
    pull(running, topic="t", consumerId="quick", autoAck=True)
    for n in range(30):
        running.publish_many("t", [f"m{n}"])
        assert datas(pull(running, topic="t", consumerId="quick", autoAck=True)) == [f"m{n}"]
