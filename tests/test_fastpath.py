"""The publish fast path answers exactly as the Flask view does, and hands over what it does not do."""

import io
import json
import socket

import pytest

from dpmq.views.fastpath import PublishFastPath, _codes_reply

# An Origin header (not in server.corsOrigins) sends a request through Flask without changing its
# answer, so each case below is asked both ways and must get the same reply.
THROUGH_FLASK = {"Origin": "http://elsewhere.example"}

CASES = [
    ("form", {"data": {"topic": "t", "messageData": "m"}}),
    ("json", {"json": {"topic": "t", "messageData": "m", "key": "k"}}),
    ("no data", {"data": {"topic": "t"}}),
    ("bad topic", {"data": {"topic": "a|b", "messageData": "m"}}),
    ("long topic", {"json": {"topic": "x" * 129, "messageData": "m"}}),
    ("not json", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}),
    ("json list", {"json": ["a"]}),
    ("json too deep", {"data": b"[" * 100000 + b"]" * 100000,
                       "headers": {"Content-Type": "application/json"}}),
    ("not utf-8", {"data": b"topic=t&messageData=%FF%FE",
                   "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    ("raw bytes", {"data": b"topic=t&messageData=\xff",
                   "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    ("bad delay", {"data": {"topic": "t", "messageData": "m", "delay": "soon"}}),
    ("too big", {"data": {"topic": "t", "messageData": "x" * 300}}),
]

BATCH_CASES = [
    ("strings", {"json": {"topic": "t", "messages": ["a", "b"]}}),
    ("objects", {"json": {"messages": [{"topic": "t", "messageData": "a", "key": "k"},
                                       {"topic": "u", "messageData": "b"}]}}),
    ("empty", {"json": {"topic": "t", "messages": []}}),
    ("no messages", {"json": {"topic": "t"}}),
    ("bad entry", {"json": {"topic": "t", "messages": ["a", 7]}}),
    ("bad topic", {"json": {"topic": "a|b", "messages": ["a"]}}),
    ("one too big", {"json": {"topic": "t", "messages": ["a", "x" * 300]}}),
    ("not json", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}),
    ("json too deep", {"data": b"[" * 100000 + b"]" * 100000,
                       "headers": {"Content-Type": "application/json"}}),
    ("form", {"data": {"topic": "t", "messages": "a"}}),
]


def _ask(broker, kwargs, flask, path="/ProducerSend"):
    kwargs = dict(kwargs)
    if flask:
        kwargs["headers"] = dict(kwargs.get("headers", {}), **THROUGH_FLASK)
    reply = broker.http.post(broker.url + path, **kwargs)
    body = reply.json()
    if body["code"] == 0 and path == "/ProducerSend":
        body["msg"] = "<code>"
    if "data" in body:
        body["data"] = [len(code) for code in body["data"]]
    return reply.status_code, body, reply.headers.get("Retry-After"), reply.headers["Content-Type"]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[name for name, _ in CASES])
def test_fast_path_and_flask_view_give_the_same_reply(make_broker, name, kwargs):
    broker = make_broker("memory", mq={"maxMessageBytes": 256})
    assert _ask(broker, kwargs, flask=False) == _ask(broker, kwargs, flask=True)


@pytest.mark.parametrize("name, kwargs", BATCH_CASES, ids=[name for name, _ in BATCH_CASES])
def test_batches_get_the_same_reply_both_ways(make_broker, name, kwargs):
    broker = make_broker("memory", mq={"maxMessageBytes": 256})
    fast = _ask(broker, kwargs, flask=False, path="/ProducerSendBatch")
    assert fast == _ask(broker, kwargs, flask=True, path="/ProducerSendBatch")
    published = broker.broker.heads.get("t", 0)
    assert published == (4 if name == "strings" else 2 if name == "objects" else 0)


def test_a_batch_reply_is_byte_for_byte_what_flask_writes(make_broker):
    broker = make_broker("memory")
    body = {"topic": "t", "messages": ["a", "b", "c"]}
    replies = [broker.http.post(broker.url + "/ProducerSendBatch", json=body, headers=headers)
               for headers in ({}, THROUGH_FLASK)]
    for reply in replies:
        parsed = reply.json()
        assert parsed["code"] == 0 and len(parsed["data"]) == 3
        assert reply.content == json.dumps(parsed, separators=(",", ":")).encode() + b"\n"
    fast, flask = (reply.content for reply in replies)
    assert len(fast) == len(flask) and fast != flask     # the same shape, other codes
    assert list(json.loads(fast)) == list(json.loads(flask)) == ["code", "msg", "data"]


@pytest.mark.parametrize("codes", [["ab12", "cd"], ['a","b'], ["a\\b", "é", "\n"]])
def test_a_codes_reply_is_the_json_encoders_for_any_codes(codes):
    expected = json.dumps({"code": 0, "msg": "ok", "data": codes}, ensure_ascii=False,
                          separators=(",", ":")).encode() + b"\n"
    assert _codes_reply(codes) == expected


def test_refusals_of_auth_and_rate_are_the_same_both_ways(make_broker):
    broker = make_broker("memory", auth={"enabled": True, "tokens": [
        {"token": "p" * 24, "role": "producer", "topics": ["orders.*"]},
        {"token": "c" * 24, "role": "consumer"}]}, mq={"publishRate": 0.01, "publishBurst": 1})
    form = {"topic": "orders.1", "messageData": "m"}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer " + "c" * 24}):
        fast = _ask(broker, {"data": form, "headers": headers}, flask=False)
        assert fast == _ask(broker, {"data": form, "headers": headers}, flask=True)
        assert fast[0] in (401, 403)
    producer = {"Authorization": "Bearer " + "p" * 24}
    other_topic = {"data": {"topic": "payments", "messageData": "m"}, "headers": producer}
    assert _ask(broker, other_topic, flask=False) == _ask(broker, other_topic, flask=True)
    assert _ask(broker, {"data": form, "headers": producer}, flask=False)[0] == 200
    limited = _ask(broker, {"data": form, "headers": producer}, flask=False)
    assert limited[0] == 429 and 1 <= int(limited[2]) <= 100      # one message per 100 s
    again = _ask(broker, {"data": form, "headers": producer}, flask=True)
    assert again[0] == 429 and 1 <= int(again[2]) <= int(limited[2])
    assert again[1]["msg"].split("retry in")[0] == limited[1]["msg"].split("retry in")[0]
    batch = {"json": {"messages": [{"topic": "orders.2", "messageData": "m"},
                                   {"topic": "payments", "messageData": "m"}]}, "headers": producer}
    refused = _ask(broker, batch, flask=False, path="/ProducerSendBatch")
    assert refused == _ask(broker, batch, flask=True, path="/ProducerSendBatch")
    assert refused[0] == 403 and "payments" in refused[1]["msg"]
    assert broker.broker.heads.get("orders.2") is None


def test_a_full_buffer_gets_503_with_retry_after_from_the_fast_path(make_broker):
    broker = make_broker("memory", mq={"messageChanBuffer": 1, "publishTimeout": 0.1})
    broker.broker.slots.acquire(1, 0)   # the buffer is full and nothing drains it
    status, body, retry_after, _ = _ask(broker, {"data": {"topic": "t", "messageData": "m"}},
                                        flask=False)
    assert (status, body["code"], retry_after) == (503, -1, "1")
    assert "buffer is full" in body["msg"]


def test_a_body_shorter_than_its_content_length_is_refused_and_not_stored(make_broker):
    broker = make_broker("memory")
    body = b"topic=t&messageData=" + b"x" * 50
    with socket.create_connection(("127.0.0.1", broker.port)) as sock:
        sock.sendall(b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"Content-Length" in answer
    assert broker.broker.heads.get("t") is None
    assert broker.publish("t", "after")["code"] == 0


def _environ(body, content_type, **extra):
    environ = {"PATH_INFO": "/ProducerSend", "REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type,
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
               "REMOTE_ADDR": "127.0.0.1"}
    environ.update(extra)
    return environ


@pytest.mark.parametrize("environ, taken", [
    (_environ(b"topic=t&messageData=m", "application/x-www-form-urlencoded"), True),
    (_environ(b'{"topic":"t","messageData":"m"}', "application/json; charset=utf-8"), True),
    (_environ(b"--b\r\n", "multipart/form-data; boundary=b"), False),
    (_environ(b"topic=t&messageData=m", "application/x-www-form-urlencoded",
              HTTP_ORIGIN="http://a.example"), False),
    (_environ(b"topic=t&messageData=m", "application/x-www-form-urlencoded", CONTENT_LENGTH=""),
     False),
    (_environ(b"x" * 10, "application/x-www-form-urlencoded", CONTENT_LENGTH=str(10 ** 9)), False),
    (_environ(b"x" * 10, "application/x-www-form-urlencoded", CONTENT_LENGTH="\u0661\u0660"), False),
    (_environ(b"x" * 10, "application/x-www-form-urlencoded", CONTENT_LENGTH="-10"), False),
    (_environ(b'{"topic":"t","messages":["a"]}', "application/json",
              PATH_INFO="/ProducerSendBatch"), True),
    (_environ(b"topic=t&messages=a", "application/x-www-form-urlencoded",
              PATH_INFO="/ProducerSendBatch"), False),
    (_environ(b"", "application/json", PATH_INFO="/ProducerSendBatchX"), False),
    (_environ(b"", "application/json", REQUEST_METHOD="GET"), False),
])
def test_what_the_fast_path_takes_and_what_it_hands_to_flask(make_broker, environ, taken):
    app = make_broker("memory").app
    handed = []
    fast = PublishFastPath(app, lambda env, start: handed.append(env) or [b"flask"])
    statuses = []
    result = fast(environ, lambda status, headers: statuses.append(status))
    assert (not handed) == taken
    if taken:
        assert statuses == ["200 OK"] and b'"code":0' in result[0]
