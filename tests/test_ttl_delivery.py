"""Message TTL in delivery: a message not delivered to a subscription (acked, with ack=1) within
its ttl of CreateTime is never delivered to it late, on every transport, and is counted as
expired (/metrics, the console's GetConsumers and GetTopics)."""

import re
import time

import requests

from helpers import Collector, EventStreamCollector, wait_for

TTL = 0.5


def publish(running, data, **extra):
    """Publish one message; returns (its code, the latest time it may expire at)."""
    reply = running.publish("t", data, **extra)
    assert reply["code"] == 0, reply
    return reply["msg"], time.time() + float(extra.get("ttl", 1e9))


def pull(running, **fields):
    reply = running.http.post(running.url + "/ConsumerPull", json={"topic": "t", **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()


def metric(running, name, topic="t"):
    text = requests.get(running.url + "/metrics", timeout=5).text
    found = re.search(rf'^{name}{{topic="{topic}"}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def expired_counts(running, consumer_id):
    """(the console's expired for that consumer, for the topic, /metrics' expired for it)."""
    entry = next(e for e in running.get("/Console/GetConsumers")["data"]
                 if e["consumerId"] == consumer_id)
    topic = next(e for e in running.get("/Console/GetTopics")["data"] if e["topic"] == "t")
    return entry["expired"], topic["expired"], metric(running, "dpmq_messages_expired_total")


def joined(running, count=1):
    wait_for(lambda: len(running.broker.members()) == count, what=f"{count} consumer(s)")


def left(running):
    wait_for(lambda: not running.broker.members(), what="the consumers to leave")


def test_a_stopped_consumer_never_gets_what_expired_while_it_was_away(make_broker, engine_name,
                                                                        keep):
    running = make_broker(engine_name)
    first = Collector(running.ws_url, "t", "away")
    joined(running)
    first.close()
    left(running)
    short, _ = publish(running, "short", ttl=TTL)
    plain, _ = publish(running, "plain")
    longer, _ = publish(running, "longer", ttl=60)
    time.sleep(TTL + 0.2)
    again = keep(Collector(running.ws_url, "t", "away"))
    again.wait_count(2)
    running.publish_many("t", ["fence"])
    again.wait_count(3)
    assert again.datas == ["plain", "longer", "fence"]
    assert short not in again.codes and again.codes[:2] == [plain, longer]
    assert expired_counts(running, "away") == (1, 1, 1.0)
    # kept until retention like any message
    assert short in [r.code for r in running.broker.engine.read("t", 0, 10)]


def test_an_event_stream_that_comes_back_after_the_ttl_skips_the_message(make_broker, keep):
    running = make_broker("sqlite")
    first = keep(EventStreamCollector(running.port, "/ConsumersConn/t/web"))
    joined(running)
    (seen,) = running.publish_many("t", ["seen"])
    first.wait_count(1)
    first.close()
    left(running)
    publish(running, "short", ttl=TTL)
    time.sleep(TTL + 0.2)
    publish(running, "after")
    again = keep(EventStreamCollector(running.port, "/ConsumersConn/t/web",
                                      {"Last-Event-ID": seen}))
    again.wait_count(1)
    running.publish_many("t", ["fence"])
    again.wait_count(2)
    assert [m["MessageData"] for m in again.messages] == ["after", "fence"]
    assert [k for k, _ in again.events] == ["message", "message"], "an expiry is not a gap"
    assert expired_counts(running, "web")[0] == 1


def test_an_unacked_message_is_redelivered_only_within_its_ttl(make_broker, keep):
    running = make_broker("sqlite", mq={"ackTimeout": 0.2, "sendRetryCount": 100})
    consumer = keep(Collector(running.ws_url, "t", "slow", "?ack=1"))
    joined(running)
    code, expires = publish(running, "never acked", ttl=1.0)
    consumer.wait_count(2)          # delivered, then again after the ack timeout
    time.sleep(1.2)
    fence, _ = publish(running, "fence")
    wait_for(lambda: fence in consumer.codes, what="the fence")
    consumer.send(fence)
    arrivals = [at for m, at in zip(consumer.messages, consumer.arrivals)
                if m["MessageCode"] == code]
    statuses = [m["Status"] for m in consumer.messages if m["MessageCode"] == code]
    assert statuses == list(range(len(statuses))), statuses
    wall = time.time() - time.monotonic()
    late = [at + wall for at in arrivals if at + wall > expires]
    assert not late, f"{len(late)} deliveries after the ttl"
    time.sleep(0.5)                 # more than two ack timeouts: no redelivery any more
    assert [m["MessageCode"] for m in consumer.messages].count(code) == len(arrivals)
    assert expired_counts(running, "slow")[:2] == (1, 1)
    assert running.get("/Console/GetConsumers")["data"][0]["inFlight"] == 0


def test_a_pull_without_ack_skips_what_expired_before_it_pulled(make_broker):
    running = make_broker("memory")
    assert pull(running, consumerId="cron", autoAck=True)["data"] == []
    publish(running, "short", ttl=TTL)
    publish(running, "plain")
    time.sleep(TTL + 0.2)
    got = pull(running, consumerId="cron", autoAck=True, max=10, wait=1)
    assert [m["MessageData"] for m in got["data"]] == ["plain"] and "gap" not in got
    assert expired_counts(running, "cron") == (1, 1, 1.0)


def test_a_pulled_message_not_acked_within_its_ttl_is_not_pulled_again(make_broker):
    running = make_broker("sqlite", mq={"ackTimeout": 0.2, "sendRetryCount": 100})
    pull(running, consumerId="w")
    code, _ = publish(running, "unacked", ttl=0.8)
    assert [m["MessageCode"] for m in pull(running, consumerId="w", max=5, wait=1)["data"]] == [code]
    again = wait_for(lambda: pull(running, consumerId="w", max=5, wait=0.5)["data"],
                     what="the redelivery within the ttl")
    assert [(m["MessageCode"], m["Status"]) for m in again] == [(code, 1)]
    time.sleep(1.0)
    fence, _ = publish(running, "fence")
    got = []
    wait_for(lambda: got.extend(pull(running, consumerId="w", max=5, wait=0.5)["data"])
             or fence in [m["MessageCode"] for m in got], what="the fence")
    assert [m["MessageCode"] for m in got] == [fence]
    assert expired_counts(running, "w")[:2] == (1, 1)


def test_paced_pushes_that_hold_a_message_past_its_ttl_expire_it(make_broker, keep):
    running = make_broker("memory", mq={"pushMessagesSpeed": 0.25})
    consumer = keep(Collector(running.ws_url, "t", "paced"))
    joined(running)
    sent = [publish(running, f"m{i}", ttl=0.6) for i in range(6)]
    fence, _ = publish(running, "fence")
    wait_for(lambda: fence in consumer.codes, timeout=15, what="the fence")
    wall = time.time() - time.monotonic()
    codes = consumer.codes[:-1]
    expires = dict(sent)
    assert codes == [code for code, _ in sent[:len(codes)]], "what arrived came in order"
    assert 1 <= len(codes) < len(sent), f"paced 0.25 s apart, not all six fit in 0.6 s: {codes}"
    late = [code for code, at in zip(codes, consumer.arrivals) if at + wall > expires[code]]
    assert not late, "arrived after its ttl"
    expired = len(sent) - len(codes)
    assert expired_counts(running, "paced") == (expired, expired, float(expired))
