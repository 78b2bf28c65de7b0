"""Gap notices end to end: a resuming subscription whose unread messages are gone is told, on the
WebSocket (with ?notices=1), on Server-Sent Events and in pull replies; counted in /metrics,
logged and shown in the console. since=beginning is no gap; a since the store never had is
refused. A subscription forgotten for idleness that comes back is told so."""

import json
import logging
import re

import pytest
import requests

from helpers import Collector, EventStreamCollector, connect_and_close_code, wait_for

PURGE_TO_3 = {"retentionMessages": 3, "sweepInterval": 0.1}
UNKNOWN = "0123456789abcdef" * 2 + "01234567"


class Frames(Collector):
    """A WebSocket consumer that also keeps every text frame, in order, as ``(kind, object)``."""

    def __init__(self, *args, **kwargs):
        self.frames = []
        super().__init__(*args, **kwargs)

    def _run(self):
        original = self.ws.receive

        def receive(*a, **kw):
            data = original(*a, **kw)
            if data is not None:
                body = json.loads(data)
                self.frames.append(("message" if "MessageCode" in body else
                                    body.get("Notice", "other"), body))
            return data
        self.ws.receive = receive
        super()._run()


def pull(running, **fields):
    reply = running.http.post(running.url + "/ConsumerPull", json=fields)
    assert reply.status_code == 200, reply.text
    return reply.json()


def metric(running, name, topic):
    text = requests.get(running.url + "/metrics", timeout=5).text
    found = re.search(rf'^{name}{{topic="{topic}"}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def consumer_entry(running, consumer_id):
    entries = running.get("/Console/GetConsumers")["data"]
    return next(e for e in entries if e["consumerId"] == consumer_id)


def topic_entry(running, topic):
    return next(e for e in running.get("/Console/GetTopics")["data"] if e["topic"] == topic)


def members(running, count=1):
    wait_for(lambda: len(running.broker.members()) == count, what=f"{count} consumer(s)")


def no_members(running):
    wait_for(lambda: not running.broker.members(), what="the consumers to leave")


def purged_to(running, topic, count):
    wait_for(lambda: len(running.broker.engine.read(topic, 0, 100)) == count,
             what=f"retention to keep {count} messages of {topic!r}")


def read_two_then_stop(running, consumer_id):
    """A WebSocket consumer reads m0 and m1 and stops; then m2..m7 are published and retention
    keeps m5..m7. Returns (the codes of m0..m7)."""
    first = Collector(running.ws_url, "t", consumer_id)
    members(running)
    codes = running.publish_many("t", ["m0", "m1"])
    first.wait_count(2)
    first.close()
    no_members(running)
    codes += running.publish_many("t", [f"m{i}" for i in range(2, 8)])
    purged_to(running, "t", 3)
    return codes


def check_gap(notice, codes, reason="purged", missed=3, after=None):
    assert notice == {"Notice": "gap", "Topic": "t", "Missed": missed, "After": after,
                      "Resume": codes[5], "Reason": reason}


# -- the three transports ------------------------------------------------------------------------
def test_a_websocket_with_notices_is_told_what_retention_purged_before_the_next_message(
        make_broker, engine_name, caplog, keep):
    running = make_broker(engine_name, mq=PURGE_TO_3)
    codes = read_two_then_stop(running, "away")
    with caplog.at_level(logging.WARNING, logger="dpmq"):
        again = keep(Frames(running.ws_url, "t", "away", "?notices=1"))
        again.wait_count(3)
    kinds = [kind for kind, _ in again.frames]
    assert kinds == ["gap", "message", "message", "message"], again.frames
    check_gap(again.frames[0][1], codes)
    assert again.codes == codes[5:]
    assert [r for r in caplog.records if r.levelno == logging.WARNING
            and r.getMessage().startswith("gap topic='t'")], caplog.text
    assert metric(running, "dpmq_messages_gaps_total", "t") == 1
    assert metric(running, "dpmq_messages_missed_total", "t") == 3
    entry = consumer_entry(running, "away")
    assert (entry["gaps"], entry["missed"]) == (1, 3)
    topic = topic_entry(running, "t")
    assert (topic["gaps"], topic["missed"], topic["expired"]) == (1, 3, 0)


def test_a_websocket_without_notices_gets_only_the_messages(make_broker, keep):
    running = make_broker("sqlite", mq=PURGE_TO_3)
    codes = read_two_then_stop(running, "away")
    again = keep(Frames(running.ws_url, "t", "away"))
    again.wait_count(3)
    assert [kind for kind, _ in again.frames] == ["message"] * 3 and not again.errors
    assert again.codes == codes[5:]
    # told or not, the gap is counted
    assert consumer_entry(running, "away")["missed"] == 3


def test_an_event_stream_is_told_with_a_gap_event_before_the_next_message(make_broker, keep):
    running = make_broker("sqlite", mq=PURGE_TO_3)
    codes = read_two_then_stop(running, "away")
    again = keep(EventStreamCollector(running.port, "/ConsumersConn/t/away"))
    assert again.status == 200
    again.wait_count(3)
    assert [kind for kind, _ in again.events] == ["gap", "message", "message", "message"]
    check_gap(again.events[0][1], codes)
    assert again.codes == codes[5:]
    assert consumer_entry(running, "away")["transport"] == "sse"
    assert (consumer_entry(running, "away")["gaps"], metric(running, "dpmq_messages_missed_total",
                                                            "t")) == (1, 3)


def test_a_pull_reply_carries_the_gap(make_broker, monkeypatch):
    monkeypatch.setattr("dpmq.broker.pulls.LINGER", 0.2)
    running = make_broker("sqlite", mq=PURGE_TO_3)
    assert pull(running, topic="t", consumerId="cron", autoAck=True)["data"] == []
    codes = running.publish_many("t", ["m0", "m1"])
    got = pull(running, topic="t", consumerId="cron", autoAck=True, max=10)
    assert [m["MessageCode"] for m in got["data"]] == codes and "gap" not in got
    no_members(running)             # the session ended: a stopped pulling consumer
    codes += running.publish_many("t", [f"m{i}" for i in range(2, 8)])
    purged_to(running, "t", 3)
    again = pull(running, topic="t", consumerId="cron", autoAck=True, max=10, wait=2)
    assert [m["MessageCode"] for m in again["data"]] == codes[5:]
    check_gap(again.get("gap"), codes)
    assert metric(running, "dpmq_messages_gaps_total", "t") == 1
    assert pull(running, topic="t", consumerId="cron", autoAck=True).get("gap") is None


def test_a_pull_with_ack_is_told_too(make_broker, monkeypatch):
    monkeypatch.setattr("dpmq.broker.pulls.LINGER", 0.2)
    running = make_broker("memory", mq=PURGE_TO_3)
    pull(running, topic="t", consumerId="w")
    codes = running.publish_many("t", ["m0", "m1"])
    got = pull(running, topic="t", consumerId="w", max=10)["data"]
    settled = running.http.post(running.url + "/ConsumerAck", json={
        "topic": "t", "consumerId": "w", "messageCode": [m["MessageCode"] for m in got]})
    assert settled.json()["code"] == 0
    no_members(running)
    codes += running.publish_many("t", [f"m{i}" for i in range(2, 8)])
    purged_to(running, "t", 3)
    again = pull(running, topic="t", consumerId="w", max=1, wait=2)
    assert [m["MessageCode"] for m in again["data"]] == codes[5:6]
    check_gap(again.get("gap"), codes)


# -- since ---------------------------------------------------------------------------------------
def test_since_beginning_after_a_purge_is_no_gap(make_broker, keep):
    running = make_broker("sqlite", mq=PURGE_TO_3)
    codes = read_two_then_stop(running, "away")
    # the stopped consumer itself, asking for what there is, and a new one on each transport
    back = keep(Frames(running.ws_url, "t", "away", "?notices=1&since=beginning"))
    fresh = keep(Frames(running.ws_url, "t", "fresh", "?notices=1&since=beginning"))
    stream = keep(EventStreamCollector(running.port, "/ConsumersConn/t/sse?since=beginning"))
    for consumer in (back, fresh, stream):
        consumer.wait_count(3)
    running.publish_many("t", ["m8"])
    for consumer in (back, fresh, stream):
        consumer.wait_count(4)
    assert [k for k, _ in back.frames] == [k for k, _ in fresh.frames] == ["message"] * 4
    assert [k for k, _ in stream.events] == ["message"] * 4
    assert back.codes[:3] == fresh.codes[:3] == stream.codes[:3] == codes[5:]
    assert metric(running, "dpmq_messages_gaps_total", "t") == 0


def test_since_a_code_this_store_never_had_is_refused_naming_the_topic(make_broker, keep):
    running = make_broker("sqlite")
    running.publish_many("orders", ["a"])
    code, reason = connect_and_close_code(running.ws_url,
                                          f"/ConsumersConn/orders/x?notices=1&since={UNKNOWN}")
    assert code == 1008 and "orders" in reason, reason
    stream = keep(EventStreamCollector(running.port, f"/ConsumersConn/orders/y?since={UNKNOWN}"))
    assert stream.status == 400 and "orders" in stream.refusal, stream.refusal
    assert not running.broker.members()


# -- forgotten subscriptions ---------------------------------------------------------------------
FORGET = {"retentionSeconds": 2, "maxDelaySeconds": 1, "sweepInterval": 0.1,
          "cursorFlushInterval": 0.05}


def forgotten(running, topic, key):
    engine = running.broker.engine
    wait_for(lambda: engine.cursor(topic, key) is None and engine.forgotten(topic, key) is not None,
             timeout=15, what=f"retention to forget {key}")


def read_and_leave(running, consumer_id, datas):
    """A consumer reads ``datas``, published now, and leaves."""
    first = Collector(running.ws_url, "t", consumer_id)
    members(running)
    running.publish_many("t", datas)
    first.wait_count(len(datas))
    first.close()
    no_members(running)


def test_a_forgotten_subscription_that_returns_resumes_and_is_told_what_was_purged(
        make_broker, keep):
    running = make_broker("sqlite", mq=FORGET)
    read_and_leave(running, "idle", ["m0"])
    running.publish_many("t", ["m1"])       # it never gets this one: purged while it is away
    forgotten(running, "t", "c:idle")
    purged_to(running, "t", 0)
    codes = running.publish_many("t", ["m2", "m3"])
    again = keep(Frames(running.ws_url, "t", "idle", "?notices=1"))
    again.wait_count(2)
    assert [k for k, _ in again.frames] == ["gap", "message", "message"], again.frames
    assert again.frames[0][1] == {"Notice": "gap", "Topic": "t", "Missed": 1, "After": None,
                                  "Resume": codes[0], "Reason": "forgotten"}
    assert again.codes == codes, "it resumes where it stood, not at the head"
    assert (consumer_entry(running, "idle")["gaps"], consumer_entry(running, "idle")["missed"]) \
        == (1, 1)


def test_a_forgotten_subscription_is_told_even_when_nothing_was_purged_meanwhile(
        make_broker, keep):
    running = make_broker("memory", mq=FORGET)
    read_and_leave(running, "idle", ["m0"])
    forgotten(running, "t", "c:idle")
    codes = running.publish_many("t", ["m1"])   # published after: retained when it returns
    again = keep(EventStreamCollector(running.port, "/ConsumersConn/t/idle"))
    again.wait_count(1)
    assert [k for k, _ in again.events] == ["gap", "message"], again.events
    assert again.events[0][1] == {"Notice": "gap", "Topic": "t", "Missed": 0, "After": None,
                                  "Resume": codes[0], "Reason": "forgotten"}


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_forgotten_subscription_that_returns_to_an_empty_topic_is_told_before_the_next_message(
        make_broker, transport, keep):
    """It comes back before anything new is published (everything it had read is purged): the
    next message, which comes live, must still come after the notice."""
    running = make_broker("memory", mq=FORGET)
    read_and_leave(running, "idle", ["m0"])
    forgotten(running, "t", "c:idle")
    purged_to(running, "t", 0)
    if transport == "websocket":
        again = keep(Frames(running.ws_url, "t", "idle", "?notices=1"))
    else:
        again = keep(EventStreamCollector(running.port, "/ConsumersConn/t/idle"))
    members(running)
    codes = running.publish_many("t", ["m1"])
    again.wait_count(1)
    frames = again.frames if transport == "websocket" else again.events
    assert [k for k, _ in frames] == ["gap", "message"], frames
    assert frames[0][1] == {"Notice": "gap", "Topic": "t", "Missed": 0, "After": None,
                            "Resume": codes[0], "Reason": "forgotten"}
