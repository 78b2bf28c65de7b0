"""The publish field ``ttl``: accepted on every publish path, refused clearly, stored as an expiry.

Over real HTTP: a broker served in this process (the WSGI fast path, and Flask for what it hands
over), and ``dpmq serve`` under gunicorn (the worker's direct answer). What was stored is read
back through the engine: ``expires`` is ``CreateTime`` + ``ttl``.
"""

import pytest
import requests

from dpmq import config
from dpmq.errors import ConfigError
from dpmq.storage import open_engine


@pytest.fixture
def running(make_broker, engine_name):
    return make_broker(engine_name, mq={"maxTtl": 600})


def _stored(running, topic):
    """``{data: (created, expires)}`` of what ``topic`` holds, read through the engine."""
    return {r.data: (r.created, r.expires) for r in running.broker.engine.read(topic, 0, 100)}


def _ok(reply):
    assert reply.status_code == 200, reply.text
    assert reply.json()["code"] == 0, reply.text
    return reply.json()


def test_a_single_publish_takes_ttl_as_a_form_json_or_multipart_field(running):
    url = running.url + "/ProducerSend"
    _ok(running.http.post(url, data={"topic": "t", "messageData": "form", "ttl": "30"}))
    _ok(running.http.post(url, json={"topic": "t", "messageData": "json", "ttl": 1.5}))
    _ok(running.http.post(url, json={"topic": "t", "messageData": "flask", "ttl": 7},
                          headers={"Origin": "http://example.com"}))  # answered by Flask's view
    _ok(running.http.post(url, files={"topic": (None, "t"), "messageData": (None, "multipart"),
                                      "ttl": (None, "600")}))
    _ok(running.http.post(url, data={"topic": "t", "messageData": "forever"}))
    stored = _stored(running, "t")
    for data, ttl in (("form", 30), ("json", 1.5), ("flask", 7), ("multipart", 600)):
        created, expires = stored[data]
        assert expires == pytest.approx(created + ttl), data
    assert stored["forever"][1] == 0.0


def test_a_batch_takes_ttl_per_message_and_for_the_whole_batch(running):
    url = running.url + "/ProducerSendBatch"
    _ok(running.http.post(url, json={"topic": "t", "ttl": 60, "messages": ["a", "b"]}))
    _ok(running.http.post(url, json={"topic": "t", "ttl": 60, "messages": [
        "c", {"messageData": "d", "ttl": 5}, {"messageData": "e", "ttl": None}]}))
    _ok(running.http.post(url, json={"messages": [
        {"topic": "t", "messageData": "f", "ttl": "9.5"}, {"topic": "t", "messageData": "g"}]}))
    stored = _stored(running, "t")
    for data, ttl in (("a", 60), ("b", 60), ("c", 60), ("d", 5), ("f", 9.5)):
        created, expires = stored[data]
        assert expires == pytest.approx(created + ttl), data
    assert stored["e"][1] == stored["g"][1] == 0.0


def test_a_delayed_message_keeps_its_ttl_from_when_it_was_published(running):
    _ok(running.http.post(running.url + "/ProducerSend",
                          json={"topic": "t", "messageData": "later", "delay": 0.2, "ttl": 100}))
    (waiting,) = running.broker.engine.messages(topic="t", status="delayed")
    assert waiting["expires"] == pytest.approx(waiting["created"] + 100)


@pytest.mark.parametrize("ttl, words", [
    ("soon", "ttl must be a number of seconds"),
    ([1], "ttl must be a number of seconds"),
    (True, "ttl must be a number of seconds"),
    (0, "more than 0 and at most 600 seconds (mq.maxTtl)"),
    (-5, "more than 0 and at most 600 seconds (mq.maxTtl)"),
    (600.5, "more than 0 and at most 600 seconds (mq.maxTtl)"),
    ("nan", "more than 0 and at most 600 seconds (mq.maxTtl)"),
])
def test_a_bad_ttl_is_refused_with_the_rule(running, ttl, words):
    single = running.http.post(running.url + "/ProducerSend",
                               json={"topic": "t", "messageData": "x", "ttl": ttl})
    batch = running.http.post(running.url + "/ProducerSendBatch",
                              json={"topic": "t", "ttl": ttl, "messages": ["x", "y"]})
    item = running.http.post(running.url + "/ProducerSendBatch", json={"topic": "t", "messages": [
        "x", {"messageData": "y", "ttl": ttl}]})
    for reply, where in ((single, ""), (batch, "messages[0]: "), (item, "messages[1]: ")):
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == -1 and words in reply.json()["msg"], reply.text
        assert reply.json()["msg"].startswith(where)
    assert running.broker.engine.head("t") == 0, "nothing of a refused publish is stored"


def test_a_form_ttl_that_is_not_a_number_is_refused(running):
    reply = running.http.post(running.url + "/ProducerSend",
                              data={"topic": "t", "messageData": "x", "ttl": "1h"})
    assert reply.status_code == 400 and "ttl must be a number of seconds, got '1h'" in reply.text


def test_a_ttl_not_longer_than_the_delay_is_refused_as_never_deliverable(running):
    for delay, ttl in ((10, 10), (10, 5)):
        reply = running.http.post(running.url + "/ProducerSend", json={
            "topic": "t", "messageData": "x", "delay": delay, "ttl": ttl})
        assert reply.status_code == 400
        msg = reply.json()["msg"]
        assert f"ttl ({ttl} s) must be longer than delay ({delay} s)" in msg
        assert "raise ttl or shorten delay" in msg
    reply = running.http.post(running.url + "/ProducerSendBatch", json={
        "topic": "t", "ttl": 3, "messages": ["a", {"messageData": "b", "delay": 4}]})
    assert reply.status_code == 400 and reply.json()["msg"].startswith("messages[1]: ttl (3 s)")
    assert running.broker.engine.messages(topic="t", status="delayed") == []


def test_the_gunicorn_worker_stores_ttl_from_its_direct_answer(served, tmp_path):
    broker = served(mq={"maxTtl": 600})
    _ok(requests.post(broker.url + "/ProducerSend",
                      data={"topic": "t", "messageData": "single", "ttl": "40"}, timeout=5))
    _ok(requests.post(broker.url + "/ProducerSendBatch",
                      json={"topic": "t", "ttl": 20, "messages": ["batched"]}, timeout=5))
    refused = requests.post(broker.url + "/ProducerSend",
                            data={"topic": "t", "messageData": "x", "ttl": "601"}, timeout=5)
    assert refused.status_code == 400 and "mq.maxTtl" in refused.json()["msg"]
    broker.stop()                       # SIGKILL: what got code 0 is in the file
    store = open_engine(config.build({"storage": {"path": str(tmp_path / "dpmq.db")}}))
    store.open(lambda records: None)
    try:
        stored = {r.data: r.expires - r.created for r in store.read("t", 0, 10)}
    finally:
        store.close()
    assert stored == {"single": pytest.approx(40), "batched": pytest.approx(20)}


def test_max_ttl_is_at_most_the_retention_and_follows_a_shorter_one_when_unset():
    with pytest.raises(ConfigError, match=r"mq.maxTtl \(7200\) must be at most"
                                          r" mq.retentionSeconds \(3600\)"):
        config.build({"mq": {"maxTtl": 7200, "retentionSeconds": 3600, "maxDelaySeconds": 60}})
    assert config.build({"mq": {"retentionSeconds": 3600, "maxDelaySeconds": 60}}).mq.maxTtl == 3600
    assert config.build({"mq": {"maxTtl": 3600, "retentionSeconds": 3600,
                                "maxDelaySeconds": 60}}).mq.maxTtl == 3600
    assert config.build({}).mq.maxTtl == 86400
