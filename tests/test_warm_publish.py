"""Publishes read straight off a warm connection: the same replies as Flask's, and everything that
is not a plain publish left to gunicorn, byte for byte."""

import json
import socket
import threading
import time

import pytest
import requests
from test_fastpath import BATCH_CASES, CASES, _ask

from dpmq.warm_publish import WarmPublish

FORM = b"application/x-www-form-urlencoded"
BODY = b"topic=t&messageData=m"


def _raw(path, body, content_type=FORM, extra=b"", version=b"HTTP/1.1"):
    return (b"POST %s %s\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path, version, content_type, len(body), extra) + body)


def _from_kwargs(path, kwargs):
    """The bytes ``requests`` would send for ``post(url, **kwargs)``."""
    prepared = requests.Request("POST", "http://x" + path, **kwargs).prepare()
    body = prepared.body if isinstance(prepared.body, bytes) else (prepared.body or "").encode()
    extra = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode())
                     for name, value in prepared.headers.items()
                     if name.lower() not in ("content-type", "content-length"))
    return _raw(path.encode(), body, prepared.headers["Content-Type"].encode(), extra)


def _serve(broker, *writes, pause=0.0):
    """What WarmPublish does with a request written in ``writes``: (its answer, the bytes it read,
    the reply the producer got)."""
    warm = WarmPublish(broker.app.extensions["dpmq_fastpath"], body_wait=0.2)
    mine, theirs = socket.socketpair()

    def write():
        for n, data in enumerate(writes):
            time.sleep(pause if n else 0)
            theirs.sendall(data)

    writer = threading.Thread(target=write)
    with mine, theirs:
        writer.start()
        time.sleep(0.01)
        served, read = warm.serve(mine, "127.0.0.1")
        writer.join()
        mine.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := theirs.recv(65536):
            reply += chunk
    return served, read, reply


def _parsed(reply):
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    body = json.loads(body)
    if body["code"] == 0 and isinstance(body["msg"], str) and len(body["msg"]) == 40:
        body["msg"] = "<code>"
    if "data" in body:
        body["data"] = [len(code) for code in body["data"]]
    return (int(lines[0].split()[1]), body, headers.get("Retry-After"), headers["Content-Type"])


@pytest.mark.parametrize("path, name, kwargs",
                         [("/ProducerSend", n, k) for n, k in CASES]
                         + [("/ProducerSendBatch", n, k) for n, k in BATCH_CASES if n != "form"],
                         ids=[n for n, _ in CASES] + [f"batch {n}" for n, _ in BATCH_CASES
                                                       if n != "form"])
def test_a_warm_publish_gets_the_reply_flask_gives(make_broker, path, name, kwargs):
    broker = make_broker("memory", mq={"maxMessageBytes": 256})
    served, _, reply = _serve(broker, _from_kwargs(path, kwargs))
    assert served is True
    assert _parsed(reply) == _ask(broker, kwargs, flask=True, path=path)


def test_auth_refusals_and_the_rate_limit_are_the_same_warm(make_broker):
    broker = make_broker("memory", auth={"enabled": True, "tokens": [
        {"token": "p" * 24, "role": "producer", "topics": ["orders.*"]}]},
        mq={"publishRate": 1, "publishBurst": 1})
    form = {"topic": "orders.1", "messageData": "m"}
    for headers in ({}, {"Authorization": "Bearer nope"}):
        kwargs = {"data": form, "headers": headers}
        reply = _serve(broker, _from_kwargs("/ProducerSend", kwargs))[2]
        assert _parsed(reply) == _ask(broker, kwargs, flask=True)
    producer = {"data": form, "headers": {"Authorization": "Bearer " + "p" * 24}}
    assert _parsed(_serve(broker, _from_kwargs("/ProducerSend", producer))[2])[0] == 200
    limited = _parsed(_serve(broker, _from_kwargs("/ProducerSend", producer))[2])
    assert (limited[0], limited[2]) == (429, "1")
    assert broker.broker.heads.get("orders.1") == 1


NOT_PLAIN = {
    "GET": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/1.0": _raw(b"/ProducerSend", BODY, version=b"HTTP/1.0"),
    "Connection: close": _raw(b"/ProducerSend", BODY, extra=b"Connection: close\r\n"),
    "Origin": _raw(b"/ProducerSend", BODY, extra=b"Origin: http://a.example\r\n"),
    "Expect": _raw(b"/ProducerSend", BODY, extra=b"Expect: 100-continue\r\n"),
    "query": _raw(b"/ProducerSend?topic=u", BODY),
    "other path": _raw(b"/ProducerSendX", BODY),
    "multipart": _raw(b"/ProducerSend", b"--b--\r\n", b"multipart/form-data; boundary=b"),
    "form batch": _raw(b"/ProducerSendBatch", b"topic=t&messages=a"),
    "body still coming": _raw(b"/ProducerSend", BODY)[:-3],
    "headers still coming": _raw(b"/ProducerSend", BODY)[:30],
    "pipelined": _raw(b"/ProducerSend", BODY) * 2,
    "pipelined, partly": _raw(b"/ProducerSend", BODY) + b"PO",
    "chunked": b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Type: " + FORM
               + b"\r\nTransfer-Encoding: chunked\r\n\r\n15\r\n" + BODY + b"\r\n0\r\n\r\n",
    "length and chunked": _raw(b"/ProducerSend", BODY, extra=b"Transfer-Encoding: chunked\r\n"),
    "length twice": _raw(b"/ProducerSend", BODY, extra=b"Content-Length: 21\r\n"),
    "token twice": _raw(b"/ProducerSend", BODY, extra=b"Authorization: Bearer a\r\n" * 2),
    "upgrade": b"GET /ConsumersConn/t/c HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n",
    "too many headers": _raw(b"/ProducerSend", BODY, extra=b"".join(b"X-%d: a\r\n" % n
                                                                   for n in range(100))),
    "a header too long": _raw(b"/ProducerSend", BODY, extra=b"X-Long: " + b"a" * 8190 + b"\r\n"),
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "bad length": _raw(b"/ProducerSend", BODY).replace(b"Content-Length: 21", b"Content-Length: x"),
}


@pytest.mark.parametrize("data", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_what_is_not_a_plain_publish_is_left_to_gunicorn_untouched(make_broker, data):
    broker = make_broker("memory", mq={"maxBodyBytes": 4096})
    assert _serve(broker, data) == (None, data, b"")
    assert broker.broker.heads.get("t") is None and broker.broker.heads.get("u") is None


def test_a_body_over_max_body_bytes_is_left_to_flask_for_its_413(make_broker):
    broker = make_broker("memory", mq={"maxBodyBytes": 64})
    big = _raw(b"/ProducerSend", b"topic=t&messageData=" + b"x" * 100)
    assert _serve(broker, big) == (None, big, b"")
    assert _serve(broker, _raw(b"/ProducerSend", BODY))[0] is True


def test_a_body_written_after_its_headers_is_waited_for(make_broker):
    broker = make_broker("memory")
    request = _raw(b"/ProducerSend", BODY)
    head, body = request[:-len(BODY)], request[-len(BODY):]
    served, read, reply = _serve(broker, head, body[:5], body[5:], pause=0.05)
    assert (served, read) == (True, request) and _parsed(reply)[0] == 200
    assert broker.broker.heads.get("t") == 1
    late = _serve(broker, head, body, pause=0.5)        # later than body_wait: gunicorn's
    assert late == (None, head, b"")    # the body stays on the socket, for gunicorn to read
    assert broker.broker.heads.get("t") == 1


def _whole_replies(data):
    """How many whole replies ``data`` holds (each with a Content-Length)."""
    count = 0
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        if len(rest) < length:
            break
        count, data = count + 1, rest[length:]
    return count


def _exchange(sock, data, replies=1):
    """Send ``data``; read until ``replies`` whole replies came (or the broker closed)."""
    sock.sendall(data)
    got = b""
    while _whole_replies(got) < replies:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_on_a_warm_connection_gunicorn_still_answers_what_is_not_plain(served):
    broker = served()
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        assert b'"code":0' in _exchange(sock, _raw(b"/ProducerSend", BODY))
        health = _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200")
        assert b'"code":0' in _exchange(sock, _raw(b"/ProducerSend", BODY))
        split = _raw(b"/ProducerSend", BODY)
        sock.sendall(split[:40])
        assert b'"code":0' in _exchange(sock, split[40:])
        assert _exchange(sock, _raw(b"/ProducerSend", BODY) * 2, replies=2).count(b'"code":0') == 2
        smuggled = _exchange(sock, _raw(b"/ProducerSend", BODY, extra=b"Transfer-Encoding: chunked"
                                        b"\r\n") + b"0\r\n\r\n")
        assert smuggled.startswith(b"HTTP/1.1 400")
    topics = requests.get(broker.url + "/Console/GetTopics").json()["data"]
    assert [(t["topic"], t["published"]) for t in topics] == [("t", 5)]


def test_a_warm_producer_publishes_in_order_and_nothing_is_lost(served):
    broker = served()
    session = requests.Session()
    codes = [session.post(broker.url + "/ProducerSend",
                          data={"topic": "t", "messageData": str(n)}).json()["msg"]
             for n in range(200)]
    assert len(set(codes)) == 200
    listed = requests.get(broker.url + "/Console/GetMessageList",
                          params={"topic": "t", "limit": 500}).json()["data"]
    in_order = sorted(listed, key=lambda m: m["offset"])
    assert [(m["MessageCode"], m["MessageData"]) for m in in_order] == list(zip(codes, map(str, range(200))))


def test_a_big_batch_arriving_in_many_reads_is_served_warm_and_whole(served):
    broker = served(mq={"messageChanBuffer": 10000})
    session = requests.Session()
    assert session.post(broker.url + "/ProducerSend",
                        data={"topic": "t", "messageData": "warm up"}).json()["code"] == 0
    messages = [f"{n:05d}" + "x" * 200 for n in range(5000)]       # about 1 MB of JSON
    reply = session.post(broker.url + "/ProducerSendBatch", json={"topic": "t", "messages": messages})
    assert reply.json()["code"] == 0 and len(set(reply.json()["data"])) == 5000
    topics = requests.get(broker.url + "/Console/GetTopics").json()["data"]
    assert [(t["topic"], t["published"]) for t in topics] == [("t", 5001)]
