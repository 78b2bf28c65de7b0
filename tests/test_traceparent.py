"""W3C trace context: a ``traceparent`` given on publish (header or field, single or batch) is
validated, stored, and pushed as ``TraceParent`` after the five original fields, on every transport
and engine, through the Flask views and the gunicorn worker's direct publish alike."""

import json

import pytest
import requests

from helpers import Collector, EventStreamCollector

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
THIRD = "00-11111111111111111111111111111111-2222222222222222-01"
FIVE = ["MessageCode", "MessageData", "Topic", "CreateTime", "Status"]


def publish_every_way(url):
    """Publish one message each way a traceparent can come; returns [(data, expected trace)]."""
    http = requests.Session()

    def ok(reply):
        assert reply.status_code == 200 and reply.json()["code"] == 0, reply.text
        return reply
    ok(http.post(url + "/ProducerSend", data={"topic": "t", "messageData": "form",
                                              "traceparent": TRACE}))
    ok(http.post(url + "/ProducerSend", json={"topic": "t", "messageData": "json",
                                              "traceparent": OTHER}))
    ok(http.post(url + "/ProducerSend", data={"topic": "t", "messageData": "header"},
                 headers={"traceparent": THIRD}))
    ok(http.post(url + "/ProducerSend", json={"topic": "t", "messageData": "field wins",
                                              "traceparent": TRACE}, headers={"traceparent": OTHER}))
    ok(http.post(url + "/ProducerSend", data={"topic": "t", "messageData": "none"}))
    ok(http.post(url + "/ProducerSendBatch", json={"topic": "t", "messages": ["u1", "u2"],
                                                   "traceparent": OTHER}))
    ok(http.post(url + "/ProducerSendBatch", json={"topic": "t", "messages": ["h1"]},
                 headers={"traceparent": THIRD}))
    ok(http.post(url + "/ProducerSendBatch", headers={"traceparent": THIRD}, json={
        "topic": "t", "traceparent": OTHER,
        "messages": ["b-shared", {"messageData": "b-own", "traceparent": TRACE}]}))
    http.close()
    return [("form", TRACE), ("json", OTHER), ("header", THIRD), ("field wins", TRACE),
            ("none", None), ("u1", OTHER), ("u2", OTHER), ("h1", THIRD), ("b-shared", OTHER),
            ("b-own", TRACE)]


def check(messages, expected):
    assert [(m["MessageData"], m.get("TraceParent")) for m in messages] == expected
    for message in messages:
        fields = FIVE + (["TraceParent"] if "TraceParent" in message else [])
        assert list(message) == fields, "the five original fields first, unchanged"


def test_every_way_of_giving_it_reaches_every_transport(make_broker, engine_name, keep):
    running = make_broker(engine_name)
    ws = keep(Collector(running.ws_url, "t", "ws"))
    sse = keep(EventStreamCollector(running.port, "/ConsumersConn/t/sse"))
    pulled = running.http.post(running.url + "/ConsumerPull", json={"topic": "t", "consumerId": "p",
                                                                  "autoAck": True})
    assert pulled.json()["data"] == []                  # the pull's subscription starts now
    expected = publish_every_way(running.url)
    check(ws.wait_count(len(expected)), expected)
    sse.wait_count(len(expected))
    check(sse.messages, expected)
    reply = running.http.post(running.url + "/ConsumerPull", json={
        "topic": "t", "consumerId": "p", "max": 100, "autoAck": True})
    check(reply.json()["data"], expected)


def test_the_gunicorn_workers_direct_publish_reads_the_header(served, keep):
    broker = served(storage={"engine": "memory"})
    ws = keep(Collector(broker.ws_url, "t", "ws"))
    expected = publish_every_way(broker.url)
    check(ws.wait_count(len(expected)), expected)


def test_a_message_without_one_is_pushed_byte_for_byte_as_before(make_broker, keep):
    from dpmq.client import WebSocketClient
    running = make_broker("memory")
    ws = WebSocketClient.connect(running.ws_url + "/ConsumersConn/t/raw")
    try:
        code = running.publish("t", "plain")["msg"]
        frame = ws.receive(timeout=5)
    finally:
        ws.close()
    created = json.loads(frame)["CreateTime"]
    assert frame == ('{"MessageCode":"%s","MessageData":"plain","Topic":"t","CreateTime":"%s",'
                     '"Status":0}' % (code, created))


BAD = [
    ("01-4bf92f3577b34da6a3ce929d0e0e4736", "W3C traceparent"),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", "lowercase hex"),
    (TRACE + "-extra", "W3C traceparent"),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "trace-id must not be all zeros"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "parent-id must not be all zeros"),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff is invalid"),
]


@pytest.mark.parametrize("value, rule", BAD)
def test_a_bad_one_is_a_400_naming_the_rule(make_broker, value, rule):
    running = make_broker("memory")
    for reply in (
            running.http.post(running.url + "/ProducerSend",
                              data={"topic": "t", "messageData": "x", "traceparent": value}),
            running.http.post(running.url + "/ProducerSendBatch",
                              json={"topic": "t", "messages": ["a"], "traceparent": value}),
            running.http.post(running.url + "/ProducerSendBatch",
                              json={"messages": [{"topic": "t", "messageData": "a"},
                                                 {"topic": "t", "messageData": "b",
                                                  "traceparent": value}]})):
        assert reply.status_code == 400 and reply.json()["code"] == -1
        assert rule in reply.json()["msg"] and "traceparent" in reply.json()["msg"]
    assert running.broker.engine.read("t", 0, 10) == [], "nothing stored"


def test_a_bad_one_in_a_batch_names_its_message(make_broker):
    running = make_broker("memory")
    reply = running.http.post(running.url + "/ProducerSendBatch", json={"messages": [
        {"topic": "t", "messageData": "a"}, {"topic": "t", "messageData": "b", "traceparent": 7}]})
    assert reply.status_code == 400 and reply.json()["msg"].startswith("messages[1]: traceparent")


@pytest.mark.parametrize("value", [value for value, _ in BAD])
def test_a_bad_header_is_ignored_as_w3c_asks(make_broker, value):
    """Proxies and tracing libraries set the header, not the producer's code: one DPMQ cannot
    read starts no trace, and the message is taken (the field, the producer's own, is refused)."""
    running = make_broker("memory")
    reply = running.http.post(running.url + "/ProducerSend",
                              data={"topic": "t", "messageData": "x"}, headers={"traceparent": value})
    assert reply.json()["code"] == 0
    batch = running.http.post(running.url + "/ProducerSendBatch", json={"topic": "t",
                              "messages": ["a"]}, headers={"traceparent": value})
    assert batch.json()["code"] == 0
    assert [record.trace for record in running.broker.engine.read("t", 0, 10)] == [None, None]


def test_a_later_versions_header_is_read_for_the_fields_this_version_knows(make_broker):
    running = make_broker("memory")
    later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"
    running.http.post(running.url + "/ProducerSend", data={"topic": "t", "messageData": "x"},
                      headers={"traceparent": later})
    assert [record.trace for record in running.broker.engine.read("t", 0, 10)] == [later[:55]]


def test_the_gunicorn_workers_direct_publish_ignores_a_bad_header(served):
    broker = served(storage={"engine": "memory"})
    reply = requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "x"},
                          headers={"traceparent": "00-nope"})
    assert reply.json()["code"] == 0
