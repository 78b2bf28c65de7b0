"""Lifecycle events on the reserved topic _dpmq.events: real brokers, real consumers reading them."""

import json
import time

import jwt
import pytest
import requests

from dpmq.errors import StoreError

from helpers import Collector, connect_and_close_code, require_redis, wait_for

EVENTS = "_dpmq.events"
TOKENS = [{"token": "p-secret-1", "role": "producer"},
          {"token": "c-secret-1", "role": "consumer"},
          {"token": "a-secret-1", "role": "admin"}]


class Watcher(Collector):
    """A WebSocket consumer of _dpmq.events; ``events`` are the parsed MessageData objects."""

    def __init__(self, running, consumer_id="watch", query=""):
        super().__init__(running.ws_url, EVENTS, consumer_id, query)
        wait_for(lambda: any(m.topic == EVENTS for m in running.broker.members()),
                 what="the events watcher to join")

    @property
    def events(self):
        return [json.loads(m["MessageData"]) for m in self.messages]

    def of(self, kind):
        return [e for e in self.events if e["type"] == kind]

    def wait_for(self, kind, count=1, timeout=10.0):
        wait_for(lambda: len(self.of(kind)) >= count, timeout,
                 what=f"{count} {kind} event(s); have {[e['type'] for e in self.events]}")
        return self.of(kind)


def test_consumers_connecting_and_leaving_are_events_with_the_transport(make_broker, engine_name,
                                                                       keep):
    running = make_broker(engine_name)
    watcher = keep(Watcher(running))
    consumer = Collector(running.ws_url, "t", "a", "?group=g")
    wait_for(lambda: len(running.broker.members()) == 2, what="the consumer")
    consumer.close()
    (left,) = watcher.wait_for("consumer.left")
    (joined,) = watcher.of("consumer.connected")
    for event in (joined, left):
        assert {k: event[k] for k in ("topic", "consumerId", "group", "transport")} == \
            {"topic": "t", "consumerId": "a", "group": "g", "transport": "websocket"}
        assert event["time"].endswith("Z") and event["node"] and event["process"]
    assert left["reason"] == "closed by the consumer"
    assert [e["type"] for e in watcher.events] == ["consumer.connected", "consumer.left"], \
        "the events watcher's own coming and going is no event"
    # a pull and an event stream are consumers too
    reply = running.http.post(running.url + "/ConsumerPull",
                              json={"topic": "t", "consumerId": "p", "wait": 0})
    assert reply.status_code == 200
    assert watcher.wait_for("consumer.connected", 2)[-1]["transport"] == "pull"


def test_a_dead_letter_is_an_event(make_broker, keep):
    running = make_broker("sqlite", mq={"sendRetryCount": 0, "ackTimeout": 0.2})
    watcher = keep(Watcher(running))
    keep(Collector(running.ws_url, "t", "lazy", "?ack=1"))     # never acks
    wait_for(lambda: len(running.broker.members()) == 2, what="the consumer")
    (code,) = running.publish_many("t", ["x"])
    (dead,) = watcher.wait_for("message.deadLettered")
    assert dead["topic"] == "t" and dead["subscription"] == "c:lazy"
    assert dead["MessageCode"] == code and dead["attempts"] == 1 and "attempt" in dead["reason"]


def test_a_dead_letter_storm_is_one_event_a_second_per_subscription_counting_them(make_broker,
                                                                                  keep):
    running = make_broker("sqlite", mq={"sendRetryCount": 0, "ackTimeout": 0.2})
    watcher = keep(Watcher(running))
    for name in ("a", "b"):
        keep(Collector(running.ws_url, "t", name, "?ack=1"))      # never ack
    wait_for(lambda: len(running.broker.members()) == 3, what="the consumers")
    started = time.monotonic()
    codes = running.publish_many("t", [f"m{i}" for i in range(60)])
    wait_for(lambda: sum(e["count"] for e in watcher.of("message.deadLettered")) == 120,
             what=f"all 120 dead letters counted: {watcher.of('message.deadLettered')}")
    took = time.monotonic() - started
    for sub in ("c:a", "c:b"):
        dead = [e for e in watcher.of("message.deadLettered") if e["subscription"] == sub]
        assert dead[0]["count"] == 1, "the first dead letter is told at once, alone"
        assert sum(e["count"] for e in dead) == 60
        assert len(dead) <= took + 2, f"at most one event a second: {len(dead)} in {took:.1f} s"
        assert dead[-1]["MessageCode"] in codes and dead[-1]["topic"] == "t"
    assert running.broker.topic_counts()["t"][5] == 120


def test_stop_publishes_folded_dead_letters_and_keeps_to_its_deadline(make_broker,
                                                                      monkeypatch):
    running = make_broker("sqlite")
    events = running.broker.events
    for i in range(3):
        events.emit("message.deadLettered", topic="t", subscription="c:x", MessageCode=str(i) * 40,
                    reason="nacked", attempts=1)
    events.stop(timeout=5)
    dead = [json.loads(r.data) for r in running.broker.engine.read(EVENTS, 0, 100)]
    assert [(e["count"], e["MessageCode"][0]) for e in dead] == [(1, "0"), (2, "2")]

    failing = make_broker("memory")

    def refuse(messages):
        raise StoreError("disk I/O error (made by the test)")
    monkeypatch.setattr(failing.broker.engine, "append", refuse)
    failing.broker.events.emit("store.error", error="made by the test")
    started = time.monotonic()
    failing.broker.events.stop(timeout=0.3)
    assert time.monotonic() - started < 0.6
    assert failing.broker.events.waiting() >= 1, "kept, not published"


def test_a_gap_is_an_event(make_broker, keep):
    running = make_broker("sqlite", mq={"retentionMessages": 3, "sweepInterval": 0.1})
    watcher = keep(Watcher(running))
    first = Collector(running.ws_url, "t", "away")
    wait_for(lambda: len(running.broker.members()) == 2, what="the consumer")
    running.publish_many("t", ["m0", "m1"])
    first.wait_count(2)
    first.close()
    watcher.wait_for("consumer.left")
    running.publish_many("t", [f"m{i}" for i in range(2, 8)])
    wait_for(lambda: len(running.broker.engine.read("t", 0, 100)) == 3, what="the purge")
    keep(Collector(running.ws_url, "t", "away")).wait_count(3)
    (gap,) = watcher.wait_for("subscription.gap")
    assert gap == dict(gap, topic="t", subscription="c:away", Missed=3, After=None,
                       Reason="purged")


def test_a_full_buffer_is_one_event_a_second_however_many_publishes_it_refuses(make_broker, keep):
    running = make_broker("sqlite", mq={"messageChanBuffer": 1, "pushMessagesSpeed": 0.3,
                                        "publishTimeout": 0})
    watcher = keep(Watcher(running))
    statuses = [running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": str(i)}).status_code
                for i in range(20)]
    refused = statuses.count(503)
    assert refused >= 5, statuses
    (full,) = watcher.wait_for("buffer.full")
    assert full["capacity"] == 1 and full["refused"] >= 1
    time.sleep(0.5)
    assert len(watcher.of("buffer.full")) == 1, "a burst of 503s within a second is one event"


def test_store_errors_and_recovery_are_events_in_order(make_broker, keep, monkeypatch):
    running = make_broker("sqlite")
    watcher = keep(Watcher(running))
    engine = running.broker.engine
    append = engine.append

    def failing(messages):
        raise StoreError("disk I/O error (made by the test)")
    monkeypatch.setattr(engine, "append", failing)
    assert running.publish("t", "x")["code"] == -1
    assert running.publish("t", "y")["code"] == -1
    time.sleep(0.3)       # the events thread tries (and fails) to publish meanwhile
    monkeypatch.setattr(engine, "append", append)
    assert running.publish("t", "z")["code"] == 0
    watcher.wait_for("store.recovered")
    kinds = [e["type"] for e in watcher.events]
    assert kinds == ["store.error", "store.recovered"], kinds
    assert "disk I/O error" in watcher.events[0]["error"]


def test_producers_may_not_publish_to_the_events_topic(make_broker):
    running = make_broker("memory")
    reply = running.http.post(running.url + "/ProducerSend",
                              data={"topic": EVENTS, "messageData": "{}"})
    assert reply.status_code == 403 and "reserved" in reply.json()["msg"]
    reply = running.http.post(running.url + "/ProducerSendBatch",
                              json={"messages": [{"topic": "t", "messageData": "a"},
                                                 {"topic": EVENTS, "messageData": "b"}]})
    assert reply.status_code == 403 and running.broker.engine.head("t") == 0


def test_only_admins_consume_the_events_topic_on_every_transport(make_broker, keep):
    running = make_broker("sqlite", auth={"enabled": True, "tokens": TOKENS})
    code, reason = connect_and_close_code(running.ws_url, f"/ConsumersConn/{EVENTS}/w?token=c-secret-1")
    assert code == 4403 and "admin" in reason
    stream = requests.get(running.url + f"/ConsumersConn/{EVENTS}/w", timeout=5,
                          headers={"Accept": "text/event-stream",
                                   "Authorization": "Bearer c-secret-1"})
    assert stream.status_code == 403 and "admin" in stream.json()["msg"]
    pulled = requests.post(running.url + "/ConsumerPull", timeout=5,
                           headers={"Authorization": "Bearer c-secret-1"},
                           json={"topic": EVENTS, "consumerId": "w", "wait": 0})
    assert pulled.status_code == 403 and "admin" in pulled.json()["msg"]
    reply = requests.post(running.url + "/ProducerSend", timeout=5,
                          headers={"Authorization": "Bearer a-secret-1"},
                          data={"topic": EVENTS, "messageData": "{}"})
    assert reply.status_code == 403, "not even an admin publishes events"
    watcher = keep(Watcher(running, query="?token=a-secret-1"))
    keep(Collector(running.ws_url, "t", "c", "?token=c-secret-1"))
    assert watcher.wait_for("consumer.connected")[0]["consumerId"] == "c"


def test_events_can_be_turned_off(make_broker, keep):
    running = make_broker("memory", events={"enabled": False})
    watcher = keep(Watcher(running))
    keep(Collector(running.ws_url, "t", "c")).close()
    wait_for(lambda: len(running.broker.members()) == 1, what="the consumer to leave")
    time.sleep(0.3)
    assert watcher.events == [] and running.broker.engine.head(EVENTS) == 0


@pytest.mark.parametrize("webhooks, problem", [
    ([{"url": "ftp://x", "secret": "s" * 16}], "http:// or https://"),
    ([{"url": "http://x", "secret": "short"}], "at least 16"),
    ([{"url": "http://x", "secret": "s" * 16, "types": ["consumer.conected"]}], "matches no"),
    ([{"url": "http://x", "secret": "s" * 16}] * 2, "twice"),
])
def test_bad_webhooks_stop_start_up_naming_the_key(webhooks, problem):
    from dpmq import config
    from dpmq.errors import ConfigError
    with pytest.raises(ConfigError, match=problem):
        config.build({"events": {"webhooks": webhooks}})


def test_getconfig_shows_the_events_section_with_secrets_masked(make_broker):
    running = make_broker("memory", events={"webhooks": [
        {"url": "http://127.0.0.1:9/hook", "secret": "s" * 16, "types": ["consumer.*"]}]})
    data = running.get("/Console/GetConfig")["data"]["events"]
    assert data == {"enabled": True, "webhooks": [
        {"url": "http://127.0.0.1:9/***", "secret": "***", "types": ["consumer.*"]}]}


# -- no path to the events topic without an admin token ---------------------------------------
SECRET = "an-hmac-secret-of-at-least-32-bytes!"


def _jwt(role, sub, **dpmq):
    return jwt.encode({"sub": sub, "exp": int(time.time() + 60), "dpmq": {"role": role, **dpmq}},
                      SECRET, algorithm="HS256")


def _post(running, path, token, body):
    return requests.post(running.url + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def locked(make_broker):
    return make_broker("sqlite", auth={"enabled": True, "tokens": TOKENS,
                                       "jwt": {"secret": SECRET}})


def test_a_token_frame_cannot_turn_an_admin_events_consumer_into_a_consumer(locked, keep):
    watcher = keep(Watcher(locked, query=f"?token={_jwt('admin', 'ops')}"))
    watcher.send(json.dumps({"token": _jwt("consumer", "ops")}))      # the same sub
    wait_for(lambda: watcher.closed is not None, timeout=5, what="the close")
    assert watcher.closed[0] == 4403 and "admin tokens only" in watcher.closed[1], watcher.closed


def test_no_one_but_an_admin_joins_or_acks_an_admins_pull_of_the_events_topic(locked, keep):
    admin = _jwt("admin", "ops")
    pull = {"topic": EVENTS, "consumerId": "w", "max": 1, "wait": 5}
    first = _post(locked, "/ConsumerPull", admin, dict(pull, wait=0))   # the session starts
    assert first.status_code == 200, first.text
    keep(Collector(locked.ws_url, "t", "c", "?token=c-secret-1"))      # an event for the admin
    (event,) = _post(locked, "/ConsumerPull", admin, pull).json()["data"]
    assert json.loads(event["MessageData"])["type"] == "consumer.connected"
    # while the admin's session lingers (its event unacked), others try to use it
    ack = {"topic": EVENTS, "consumerId": "w", "messageCode": event["MessageCode"]}
    acked = _post(locked, "/ConsumerAck", _jwt("consumer", "ops"), ack)    # the same sub
    assert acked.status_code == 403 and "admin" in acked.json()["msg"], acked.text
    for token in (_jwt("consumer", "ops"), _jwt("consumer", "dev", consumers=["*"]),
                  "c-secret-1"):
        joined = _post(locked, "/ConsumerPull", token, dict(pull, wait=0))
        assert joined.status_code == 403 and "admin" in joined.json()["msg"], joined.text
    acked = _post(locked, "/ConsumerAck", admin, ack)
    assert acked.json()["data"]["settled"] == [event["MessageCode"]], acked.text


FORGET = {"retentionSeconds": 2, "maxDelaySeconds": 1, "sweepInterval": 0.1,
          "cursorFlushInterval": 0.05}


def test_retention_forgetting_an_idle_subscription_is_an_event_though_it_never_returns(
        make_broker, engine_name, keep):
    running = make_broker(engine_name, mq=FORGET)
    watcher = keep(Watcher(running))
    idle = Collector(running.ws_url, "t", "idle")
    wait_for(lambda: len(running.broker.members()) == 2, what="the consumer")
    running.publish_many("t", ["m0"])
    idle.wait_count(1)
    idle.close()
    (forgot,) = watcher.wait_for("subscription.forgotten", timeout=15)
    assert {k: forgot[k] for k in ("topic", "subscription", "cursor", "detected")} == \
        {"topic": "t", "subscription": "c:idle", "cursor": 1, "detected": "retention"}
    assert forgot["time"].endswith("Z") and forgot["node"] and forgot["process"]
    assert running.broker.engine.cursor("t", "c:idle") is None
    time.sleep(0.5)                 # several more sweeps: each forgetting is one event, once
    assert len(watcher.of("subscription.forgotten")) == 1
    assert [e["consumerId"] for e in watcher.of("consumer.connected")] == ["idle"], \
        "told without the forgotten consumer coming back"


def test_of_processes_sharing_redis_only_the_one_whose_purge_forgot_a_subscription_tells(
        make_broker, keep):
    require_redis()
    running = make_broker("redis", mq=FORGET)
    other = make_broker("redis", mq=FORGET, storage={"prefix": running.settings.storage.prefix})
    watcher = keep(Watcher(running))
    for name, broker in (("a", running), ("b", other)):     # one idle subscription on each
        consumer = Collector(broker.ws_url, "t", name)
        wait_for(lambda b=broker, n=name: n in [m.consumer_id for m in b.broker.members()],
                 what=f"consumer {name}")
        consumer.close()
    forgot = watcher.wait_for("subscription.forgotten", 2, timeout=15)
    time.sleep(0.5)                         # both processes sweep several times more
    assert sorted(e["subscription"] for e in watcher.of("subscription.forgotten")) == \
        ["c:a", "c:b"], [e["subscription"] for e in forgot]
