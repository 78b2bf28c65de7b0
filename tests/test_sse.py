"""Server-Sent Events consumers: ``GET /ConsumersConn/{topic}/{consumerId}`` with
``Accept: text/event-stream``, served by ``dpmq serve`` (gunicorn, DPMQ's worker) and read with
real sockets, curl and headless Chromium's ``EventSource``."""

import json
import select
import signal
import socket
import subprocess
import time

import pytest
import requests

from dpmq.message import Record, payload
from dpmq.transport.events import EVENTS, RETRY_MS

from helpers import Collector, wait_for

FIVE_FIELDS = ["MessageCode", "MessageData", "Topic", "CreateTime", "Status"]
STREAM = {"Accept": "text/event-stream"}


class EventReader:
    """A hand-driven event-stream client on a raw socket: reads only when told to."""

    def __init__(self, port, path, headers=None, recv_buffer=None):
        self.sock = socket.socket()
        if recv_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        fields = {"Host": "127.0.0.1", **STREAM, **(headers or {})}
        head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        self.blocks = []        # every event or comment block, as a list of (field, value)
        self.ended = False

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.ended = True
            raise ConnectionError("the stream ended")
        self.buf += chunk

    def _parse(self):
        while b"\n\n" in self.buf:
            block, _, self.buf = self.buf.partition(b"\n\n")
            self.blocks.append([("comment", x[1:].strip()) if x.startswith(":")
                                else tuple(x.split(": ", 1)) if ": " in x else (x, "")
                                for x in block.decode().split("\n")])

    def read_until(self, predicate, timeout=10, what="events"):
        deadline = time.monotonic() + timeout
        while True:
            self._parse()
            if predicate(self):
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; have {self.blocks}")
            self._recv()

    def poll(self):
        """Take what has arrived, without waiting."""
        while select.select([self.sock], [], [], 0)[0]:
            self._recv()
        self._parse()
        return self

    @property
    def messages(self):
        """The message events: (id, parsed data)."""
        return [(dict(b)["id"], json.loads(dict(b)["data"])) for b in self.blocks
                if "id" in dict(b)]

    @property
    def codes(self):
        return [code for code, _ in self.messages]

    def wait_count(self, count, timeout=10):
        return self.read_until(lambda r: len(r.messages) >= count, timeout,
                               f"{count} messages").messages

    def close(self):
        self.sock.close()


@pytest.fixture
def stream():
    """``stream(port, path, headers=None, recv_buffer=None)`` -> EventReader, closed after."""
    readers = []

    def open_stream(*args, **kwargs):
        readers.append(EventReader(*args, **kwargs))
        return readers[-1]

    yield open_stream
    for reader in readers:
        reader.close()


def publish(broker, topic, data, session=None):
    reply = (session or requests).post(broker.url + "/ProducerSend",
                                       data={"topic": topic, "messageData": data}, timeout=10)
    assert reply.json()["code"] == 0, reply.text
    return reply.json()["msg"]


def consumers(broker):
    return requests.get(broker.url + "/Console/GetConsumers", timeout=5).json()["data"]


def test_the_framing_writes_id_and_data_and_reads_the_code_from_the_payload():
    record = Record(7, "0123456789abcdef0123456789abcdef01234567", "t", 'a "quoted"\nline', 0.0)
    data = payload(record)
    assert data[16:56] == record.code.encode(), "the payload always begins with its MessageCode"
    assert EVENTS.message(data) == b"id: " + record.code.encode() + b"\ndata: " + data + b"\n\n"
    assert b"\n" not in data, "one data line: JSON escapes newlines"
    assert EVENTS.name == "sse"
    assert EVENTS.reply({"error": "x"}) == b'event: error\ndata: {"error": "x"}\n\n'
    assert EVENTS.notice({"Notice": "gap"}) == b'event: gap\ndata: {"Notice": "gap"}\n\n'
    assert EVENTS.keepalive.startswith(b":") and EVENTS.keepalive.endswith(b"\n\n")
    assert EVENTS.closes(b'event: close\ndata: {"code": 1001}\n\n')
    assert not any(map(EVENTS.closes, (b"HTTP/1.1 200 OK\r\n\r\n", EVENTS.keepalive,
                                       EVENTS.message(data), EVENTS.reply({}))))


def test_each_message_is_an_event_with_its_code_and_the_five_field_json(served, stream):
    broker = served()
    reader = stream(broker.port, "/ConsumersConn/orders/web")
    assert reader.status == 200
    assert reader.headers["content-type"] == "text/event-stream"
    assert reader.headers["cache-control"] == "no-cache"
    assert reader.headers["x-accel-buffering"] == "no"
    assert reader.headers["connection"] == "close" and "content-length" not in reader.headers
    reader.read_until(lambda r: r.blocks, what="the retry line")
    assert reader.blocks[0] == [("retry", str(RETRY_MS))]
    wait_for(lambda: consumers(broker), what="the consumer")
    codes = [publish(broker, "orders", f"order {n}") for n in range(3)]
    messages = reader.wait_count(3)
    assert [code for code, _ in messages] == codes
    for n, (code, body) in enumerate(messages):
        assert list(body) == FIVE_FIELDS
        assert (body["MessageCode"], body["MessageData"], body["Topic"], body["Status"]) == \
            (code, f"order {n}", "orders", 0)
    reader.close()
    wait_for(lambda: consumers(broker) == [], what="the consumer to be gone")


def test_curl_reads_the_stream(served):
    broker = served()
    curl = subprocess.Popen(["curl", "-sN", "-H", "Accept: text/event-stream",
                             broker.url + "/ConsumersConn/t/curl"], stdout=subprocess.PIPE)
    try:
        wait_for(lambda: consumers(broker), what="curl's subscription")
        codes = [publish(broker, "t", f"m{n}") for n in range(3)]
        got = b""
        deadline = time.monotonic() + 10
        while got.count(b"\nid: ") < 3 and time.monotonic() < deadline:
            if select.select([curl.stdout], [], [], 0.5)[0]:
                got += curl.stdout.read1(65536)
        ids = [line[4:].decode() for line in got.split(b"\n") if line.startswith(b"id: ")]
        assert ids == codes
    finally:
        curl.kill()
        curl.wait(5)
    wait_for(lambda: consumers(broker) == [], what="curl's consumer to be gone")


def test_a_second_stream_for_a_connected_consumer_id_is_a_409_and_the_first_goes_on(served, stream):
    broker = served()
    first = stream(broker.port, "/ConsumersConn/t/dup")
    wait_for(lambda: consumers(broker), what="the first consumer")
    second = requests.get(broker.url + "/ConsumersConn/t/dup", headers=STREAM, timeout=5)
    assert second.status_code == 409
    assert second.json()["code"] == -1 and "already connected" in second.json()["msg"]
    code = publish(broker, "t", "still here")
    assert first.wait_count(1)[0][0] == code


def test_with_auth_on_a_stream_needs_a_consumer_token_which_may_come_in_the_query(make_broker, stream):
    """In this process, under werkzeug's server (the served broker's readiness probe would need
    an admin token)."""
    broker = make_broker("memory", auth={"enabled": True, "tokens": [
        {"token": "c-secret-1", "role": "consumer"}, {"token": "p-secret-1", "role": "producer"}]})
    refused = requests.get(broker.url + "/ConsumersConn/t/a", headers=STREAM, timeout=5)
    assert refused.status_code == 401 and refused.json()["code"] == -1
    wrong = requests.get(broker.url + "/ConsumersConn/t/a?token=p-secret-1", headers=STREAM,
                         timeout=5)
    assert wrong.status_code == 403
    reader = stream(broker.port, "/ConsumersConn/t/a?token=c-secret-1")
    assert reader.status == 200
    by_header = stream(broker.port, "/ConsumersConn/t/b",
                            {"Authorization": "Bearer c-secret-1"})
    assert by_header.status == 200
    reply = requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "x"},
                          headers={"Authorization": "Bearer p-secret-1"}, timeout=5).json()
    assert reader.wait_count(1)[0][0] == reply["msg"] == by_header.wait_count(1)[0][0]


def test_an_idle_stream_gets_heartbeat_comments(served, stream):
    broker = served(server={"pingInterval": 0.2})
    reader = stream(broker.port, "/ConsumersConn/t/idle")
    reader.read_until(lambda r: sum(b == [("comment", "keep-alive")] for b in r.blocks) >= 3,
                      what="three heartbeat comments")


def test_a_group_of_an_event_stream_and_a_websocket_splits_the_messages(served, stream):
    broker = served()
    reader = stream(broker.port, "/ConsumersConn/t/sse-member?group=workers")
    ws = Collector(broker.ws_url, "t", "ws-member", "?group=workers")
    wait_for(lambda: len(consumers(broker)) == 2, what="both members")
    session = requests.Session()
    codes = [publish(broker, "t", f"m{n}", session) for n in range(40)]
    wait_for(lambda: len(ws.messages) + len(reader.poll().messages) >= 40,
             what="all 40 between the two")
    sse_codes = reader.codes
    assert sse_codes and ws.codes, "each member took a share"
    assert sorted(sse_codes + ws.codes) == sorted(codes)
    assert [c for c in codes if c in set(sse_codes)] == sse_codes, "in order within a member"
    ws.close()


def test_with_ack_an_unacked_message_comes_again_and_an_http_ack_settles_it(served, stream):
    broker = served(mq={"ackTimeout": 0.5})
    reader = stream(broker.port, "/ConsumersConn/t/acker?ack=1")
    wait_for(lambda: consumers(broker), what="the consumer")
    first, second = publish(broker, "t", "one"), publish(broker, "t", "two")
    messages = reader.wait_count(3)
    assert [(c, m["Status"]) for c, m in messages[:2]] == [(first, 0), (second, 0)]
    assert messages[2][0] in (first, second) and messages[2][1]["Status"] == 1, \
        "not acked within ackTimeout: delivered again"
    ack = requests.post(broker.url + "/ConsumerAck", timeout=5,
                        json={"topic": "t", "consumerId": "acker", "messageCode": [first, second]})
    if ack.status_code == 404:
        pytest.skip("POST /ConsumerAck is not served yet; the redelivery part passed")
    assert ack.json()["code"] == 0, ack.text
    third = publish(broker, "t", "three")
    reader.read_until(lambda r: third in r.codes, what="the third message")
    time.sleep(1.5)         # three ackTimeouts: an unsettled message would have come again
    later = reader.poll().codes[reader.codes.index(third):]
    assert later.count(third) >= 2, "the third, not acked, came again"
    assert not {first, second} & set(later), "the acked ones never come again"


def test_a_plain_get_without_asking_for_events_is_told_how_to_connect(served):
    broker = served()
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        reply = requests.get(broker.url + "/ConsumersConn/t/c", headers=headers, timeout=5)
        assert reply.status_code == 400
        assert reply.json() == {"code": -1, "msg": "connect with a WebSocket, or ask for"
                                                   " Server-Sent Events with Accept:"
                                                   " text/event-stream"}
    assert consumers(broker) == []


def test_notices_is_a_websocket_option_and_allowed_on_a_stream(served, stream):
    broker = served()
    ws = Collector(broker.ws_url, "t", "noticed", "?notices=1")
    reader = stream(broker.port, "/ConsumersConn/t/sse?notices=1")
    assert reader.status == 200
    wait_for(lambda: len(consumers(broker)) == 2, what="both consumers")
    code = publish(broker, "t", "x")
    ws.wait_count(1)
    assert ws.codes == [code] == [c for c, _ in reader.wait_count(1)]
    bad = requests.get(broker.url + "/ConsumersConn/t/bad?notices=2", headers=STREAM, timeout=5)
    assert bad.status_code == 400 and "notices" in bad.json()["msg"]
    ws.close()


def test_a_slow_reader_gets_everything_in_order_once_it_reads(served, stream):
    broker = served(mq={"consumerBufferBytes": 4096})
    reader = stream(broker.port, "/ConsumersConn/t/slow", recv_buffer=4096)
    wait_for(lambda: consumers(broker), what="the consumer")
    session = requests.Session()
    codes = [publish(broker, "t", f"{n:04d}" + "x" * 300, session) for n in range(400)]
    time.sleep(0.5)         # it reads nothing meanwhile: its buffers fill, the rest waits
    messages = reader.wait_count(400, timeout=30)
    assert [c for c, _ in messages] == codes
    assert [m["MessageData"][:4] for _, m in messages] == [f"{n:04d}" for n in range(400)]


def test_last_event_id_resumes_right_after_that_message(served, stream):
    """Needs the delivery side's ``resume`` (a lone consumer without ack goes on right after the
    message named by Last-Event-ID)."""
    broker = served()
    reader = stream(broker.port, "/ConsumersConn/t/resumer")
    wait_for(lambda: consumers(broker), what="the consumer")
    codes = [publish(broker, "t", f"m{n}") for n in range(5)]
    assert reader.codes or reader.wait_count(5)
    assert reader.codes == codes
    reader.close()
    wait_for(lambda: consumers(broker) == [], what="the consumer to be gone")
    again = stream(broker.port, "/ConsumersConn/t/resumer", {"Last-Event-ID": codes[1]})
    assert [c for c, _ in again.wait_count(3)] == codes[2:]
    live = [publish(broker, "t", f"live{n}") for n in range(2)]
    assert [c for c, _ in again.wait_count(5)] == codes[2:] + live


def test_a_last_event_id_that_is_not_a_message_code_is_ignored(served, stream):
    broker = served()
    reader = stream(broker.port, "/ConsumersConn/t/odd", {"Last-Event-ID": "not-a-code"})
    assert reader.status == 200
    wait_for(lambda: consumers(broker), what="the consumer")
    code = publish(broker, "t", "x")
    assert reader.wait_count(1)[0][0] == code


def test_a_shutdown_ends_the_stream_with_a_close_event(served, stream):
    broker = served()
    reader = stream(broker.port, "/ConsumersConn/t/bye")
    wait_for(lambda: consumers(broker), what="the consumer")
    broker.kill(signal.SIGTERM)
    with pytest.raises(ConnectionError):
        reader.read_until(lambda r: False, what="the end of the stream")
    reader._parse()
    closing = [dict(b) for b in reader.blocks if dict(b).get("event") == "close"]
    assert [json.loads(c["data"])["code"] for c in closing] == [1001]


PAGE = """<!doctype html><title>SSE</title><script>
window.got = [];
window.opened = 0;
const source = new EventSource("/ConsumersConn/orders/browser");
source.onopen = () => { window.opened += 1; };
source.onmessage = (e) => { window.got.push([e.lastEventId, JSON.parse(e.data).MessageData]); };
</script>"""


def test_a_browser_eventsource_gets_every_message_in_order_across_a_broker_crash(served, browser):
    broker = served()
    page = browser.new_page(bypass_csp=True)
    page.route(broker.url + "/sse-page", lambda route: route.fulfill(
        status=200, content_type="text/html", body=PAGE))
    page.goto(broker.url + "/sse-page")
    wait_for(lambda: consumers(broker), what="the browser's subscription")
    session = requests.Session()
    codes = [publish(broker, "orders", f"o{n}", session) for n in range(20)]
    wait_for(lambda: page.evaluate("window.got.length") >= 20, what="20 messages in the page")
    assert page.evaluate("window.got") == [[c, f"o{n}"] for n, c in enumerate(codes)]

    broker.kill()
    broker.start()
    session = requests.Session()
    codes += [publish(broker, "orders", f"o{n}", session) for n in range(20, 40)]
    wait_for(lambda: page.evaluate("window.opened") >= 2, timeout=20,
             what="EventSource to reconnect on its own")
    wait_for(lambda: {c for c, _ in page.evaluate("window.got")} >= set(codes), timeout=20,
             what="every message after the restart")
    got = page.evaluate("window.got")
    first_seen = list(dict.fromkeys(c for c, _ in got))
    assert first_seen == codes, "none lost, in order"
    assert got == [[c, f"o{n}"] for n, c in enumerate(codes)], \
        "Last-Event-ID resumes right after the last one received: nothing twice"
    page.close()


def test_a_reconnect_with_last_event_id_goes_on_from_there_not_from_the_urls_since(served, stream):
    """EventSource reconnects to the URL it was given: the since= in it was for the first
    connection, and an ephemeral subscription (durable=0) must not lose what came meanwhile."""
    broker = served()
    first = [publish(broker, "t", f"old{n}") for n in range(3)]
    for name, query in (("again", "?since=beginning"), ("passing", "?since=beginning&durable=0")):
        reader = stream(broker.port, f"/ConsumersConn/t/{name}{query}")
        assert [c for c, _ in reader.wait_count(len(first))] == first
        reader.close()
        wait_for(lambda: consumers(broker) == [], what="the consumer to be gone")
        meanwhile = publish(broker, "t", "meanwhile")
        again = stream(broker.port, f"/ConsumersConn/t/{name}{query}",
                       {"Last-Event-ID": first[-1]})
        assert [c for c, _ in again.wait_count(1)] == [meanwhile]
        again.close()
        wait_for(lambda: consumers(broker) == [], what="the consumer to be gone")
        first = first + [meanwhile]
