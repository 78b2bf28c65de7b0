"""POST /ProducerSend: the original contract, every body encoding, and every refusal."""

import re

import pytest

HEX40 = re.compile(r"^[0-9a-f]{40}$")


def test_form_post_returns_code_zero_and_a_message_code(broker):
    reply = broker.http.post(broker.url + "/ProducerSend",
                             data={"topic": "t", "messageData": "hello"})
    assert reply.status_code == 200
    body = reply.json()
    assert list(body) == ["code", "msg"]
    assert body["code"] == 0 and HEX40.match(body["msg"])


def test_multipart_and_json_bodies_are_accepted(broker):
    multipart = broker.http.post(broker.url + "/ProducerSend",
                                 files={"topic": (None, "t"), "messageData": (None, "m")}).json()
    as_json = broker.http.post(broker.url + "/ProducerSend",
                               json={"topic": "t", "messageData": "j"}).json()
    assert multipart["code"] == 0 and HEX40.match(multipart["msg"])
    assert as_json["code"] == 0 and HEX40.match(as_json["msg"])
    assert multipart["msg"] != as_json["msg"]


def test_each_message_gets_a_distinct_code(broker):
    codes = {broker.publish("t", str(i))["msg"] for i in range(50)}
    assert len(codes) == 50


@pytest.mark.parametrize("topic, fragment", [
    ("a|b", "'|'"),
    ("a/b", "'/'"),
    ("", "required"),
    ("x" * 129, "129 characters"),
    ("tab\there", "printable"),
    ("nl\n", "printable"),
    ("a\ufffdb", "UTF-8"),
])
def test_bad_topics_get_400_and_a_reason(broker, topic, fragment):
    reply = broker.http.post(broker.url + "/ProducerSend", data={"topic": topic, "messageData": "x"})
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == -1 and fragment in body["msg"]


def test_topic_of_exactly_128_characters_and_non_ascii_is_accepted(broker):
    assert broker.publish("x" * 128, "ok")["code"] == 0
    assert broker.publish("заказы.新", "ok")["code"] == 0


def test_missing_fields_and_bad_json_get_400(broker):
    for kwargs in ({"data": {"topic": "t"}}, {"data": {"messageData": "x"}},
                   {"data": "{not json", "headers": {"Content-Type": "application/json"}},
                   {"json": ["a", "list"]}):
        reply = broker.http.post(broker.url + "/ProducerSend", **kwargs)
        assert reply.status_code == 400, kwargs
        assert reply.json()["code"] == -1 and reply.json()["msg"]


def test_json_fields_must_be_strings(broker):
    reply = broker.http.post(broker.url + "/ProducerSend", json={"topic": "t", "messageData": 5})
    assert reply.status_code == 400 and "string" in reply.json()["msg"]


def test_message_over_max_message_bytes_gets_413_and_is_not_stored(make_broker, engine_name):
    running = make_broker(engine_name, mq={"maxMessageBytes": 10})
    assert running.publish("t", "x" * 10)["code"] == 0
    reply = running.http.post(running.url + "/ProducerSend", data={"topic": "t", "messageData": "é" * 6})
    assert reply.status_code == 413 and "maxMessageBytes" in reply.json()["msg"]
    assert running.broker.engine.head("t") == 1


def test_body_over_max_body_bytes_gets_413(make_broker, engine_name):
    running = make_broker(engine_name, mq={"maxBodyBytes": 1000})
    reply = running.http.post(running.url + "/ProducerSend",
                              data={"topic": "t", "messageData": "x" * 2000})
    assert reply.status_code == 413
    assert reply.json() == {"code": -1, "msg": reply.json()["msg"]}
    assert "maxBodyBytes" in reply.json()["msg"]


def test_unknown_path_and_wrong_method_answer_in_the_api_shape(broker):
    missing = broker.http.get(broker.url + "/NoSuchThing")
    assert missing.status_code == 404 and missing.json()["code"] == -1
    wrong = broker.http.get(broker.url + "/ProducerSend")
    assert wrong.status_code == 405 and wrong.json()["code"] == -1


def test_bodies_that_are_not_utf8_are_refused_not_altered(broker):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body, headers in [(b"topic=t&messageData=%ff%fe", form),
                          (b"topic=t&messageData=\xff", form),
                          (b'{"topic":"t","messageData":"\xff"}', {"Content-Type": "application/json"}),
                          (b'{"topic":"t","messageData":"\\ud800"}',
                           {"Content-Type": "application/json"})]:
        reply = broker.http.post(broker.url + "/ProducerSend", data=body, headers=headers)
        assert reply.status_code == 400, body
        assert reply.json()["code"] == -1
    assert broker.broker.engine.head("t") == 0


def test_raw_utf8_in_a_form_body_is_kept_exactly(broker):
    from helpers import Collector, wait_for
    consumer = Collector(broker.ws_url, "t", "c")
    wait_for(lambda: broker.broker.members(), what="the consumer")
    reply = broker.http.post(broker.url + "/ProducerSend", data="topic=t&messageData=héllo ✓ 新".encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.json()["code"] == 0
    assert consumer.wait_count(1)[0]["MessageData"] == "héllo ✓ 新"


def _bodies(data):
    """The same publish in every encoding a producer may send, each with the path that parses
    it: an ``Origin`` header sends a form or JSON body through Flask instead of the fast path."""
    fields = {"topic": "big", "messageData": data}
    return {
        "multipart": {"files": {name: (None, value) for name, value in fields.items()}},
        "form, fast path": {"data": fields},
        "form, Flask": {"data": fields, "headers": {"Origin": "http://elsewhere.example"}},
        "json, fast path": {"json": fields},
        "json, Flask": {"json": fields, "headers": {"Origin": "http://elsewhere.example"}},
    }


def test_a_message_up_to_max_message_bytes_is_accepted_in_every_encoding(make_broker):
    running = make_broker("memory")
    data = "x" * 600_000    # over Werkzeug's own 500,000-byte limit on a multipart field
    for encoding, request in _bodies(data).items():
        reply = running.http.post(running.url + "/ProducerSend", **request)
        assert reply.status_code == 200 and reply.json()["code"] == 0, (encoding, reply.text)
        (stored,) = running.broker.engine.read("big", running.broker.engine.head("big") - 1, 1)
        assert stored.data == data, encoding


def test_a_message_over_max_message_bytes_is_refused_naming_it_in_every_encoding(make_broker):
    running = make_broker("memory")
    limit = running.settings.mq.maxMessageBytes
    assert running.settings.mq.maxBodyBytes > 2 * limit     # the body limit is not the one hit
    for encoding, request in _bodies("é" * (limit // 2) + "x").items():  # limit + 1 bytes
        reply = running.http.post(running.url + "/ProducerSend", **request)
        assert reply.status_code == 413, (encoding, reply.text)
        assert reply.json()["code"] == -1 and "mq.maxMessageBytes" in reply.json()["msg"], encoding
        assert "maxBodyBytes" not in reply.json()["msg"], encoding
    assert running.broker.engine.head("big") == 0


def test_a_multipart_file_part_is_the_message_and_bytes_not_utf8_are_refused(broker):
    """``curl -F messageData=@file`` sends a file part; a part that is not UTF-8 is refused rather
    than stored with U+FFFD in place of its bytes."""
    sent = broker.http.post(broker.url + "/ProducerSend",
                            files={"topic": (None, "t"), "messageData": ("m.txt", "héllo")}).json()
    assert sent["code"] == 0
    listed = broker.get("/Console/GetMessageList", topic="t")["data"]
    assert [m["MessageData"] for m in listed] == ["héllo"]
    bad = broker.http.post(broker.url + "/ProducerSend",
                           files={"topic": (None, "t"), "messageData": (None, b"\xff\xfe")})
    assert bad.status_code == 400 and "UTF-8" in bad.json()["msg"]
    assert broker.broker.heads.get("t") == 1


@pytest.mark.parametrize("body", [
    b"topic=t&messageData=hello", b"topic=t&messageData=a%3Ab%26c%3Dd+e%2Bf", b"a=1&a=2&&b",
    b"=x&y=&z", "topic=t&messageData=héllo ✓ 新".encode(), b"m=%E4%B8%AD+%zz%4", b"",
    b"topic=%C3%A9%20&messageData=x%00y", b"&&&", b"k=a=b",
])
def test_a_form_body_reads_as_parse_qsl_reads_it(body):
    """The publish reads a form on its bytes (without parse_qsl's regular expression over the
    whole text); what it reads is what the standard library reads."""
    from urllib.parse import parse_qsl

    from dpmq.views.producer import form_fields
    assert form_fields(body) == dict(parse_qsl(body.decode(), keep_blank_values=True,
                                               errors="strict"))


def test_a_form_body_that_is_not_utf8_or_has_too_many_fields_is_refused(broker):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body, why in ((b"topic=t&messageData=%FF", "UTF-8"), (b"topic=t&messageData=\xff", "UTF-8"),
                      (b"topic=t&messageData=x" + b"&a=1" * 1000, "more than 1000 fields")):
        reply = broker.http.post(broker.url + "/ProducerSend", data=body, headers=form)
        assert reply.status_code == 400 and why in reply.json()["msg"], reply.text
    assert broker.broker.engine.head("t") == 0
