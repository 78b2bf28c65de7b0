"""DPMQ's gunicorn worker: where a request ends, direct publishes answered as the application would,
and everything else served by gunicorn on the same keep-alive connection."""

import os
import queue
import random
import select
import signal
import socket
import subprocess
import types

import pytest
import requests
from test_fastpath import BATCH_CASES, CASES, _ask

from dpmq.broker.farewells import THREADS
from dpmq.serving import spread, threads
from dpmq.serving.connection import HttpConnection
from dpmq.serving.framing import FramingError, RequestFrame
from dpmq.serving.threads import RequestThreads

from helpers import Collector, wait_for

FORM = b"application/x-www-form-urlencoded"
BODY = b"topic=t&messageData=m"


def _raw(path, body, content_type=FORM, extra=b"", version=b"HTTP/1.1"):
    return (b"POST %s %s\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path, version, content_type, len(body), extra) + body)


CHUNKED = (b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Type: " + FORM
           + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ntopic\r\n10;x=y\r\n=t&messageData=m\r\n"
             b"0\r\nX-Trailer: 1\r\n\r\n")
WHOLE = {
    "content length": _raw(b"/ProducerSend", BODY),
    "no body": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked with an extension and a trailer": CHUNKED,
    "chunked, empty": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_", WHOLE.values(), ids=WHOLE.keys())
def test_a_request_ends_where_its_framing_says_in_any_cut(request_):
    following = b"GET /next HTTP/1.1\r\n\r\n"
    for _ in range(50):
        frame, data, end = RequestFrame(1 << 20), b"", None
        stream = request_ + following
        while end is None:
            data += stream[len(data):len(data) + random.randint(1, 8)]
            end = frame.end(data)
            assert end is None or len(data) >= len(request_)
        assert end == len(request_)


REFUSED = {
    "length and chunked": (_raw(b"/ProducerSend", BODY, extra=b"Transfer-Encoding: chunked\r\n"), 400),
    "two lengths": (_raw(b"/ProducerSend", BODY, extra=b"Content-Length: 22\r\n"), 400),
    "length not digits": (_raw(b"/ProducerSend", BODY).replace(b"Length: 21", b"Length: +21"), 400),
    "chunk size not hex": (CHUNKED.replace(b"\r\n5\r\n", b"\r\nzz\r\n"), 400),
    "chunk longer than its size": (CHUNKED.replace(b"\r\n5\r\n", b"\r\n4\r\n"), 400),
    "body too large": (_raw(b"/ProducerSend", b"x" * 2000), 413),
    "chunked body too large": (CHUNKED.replace(b"\r\n10;x=y", b"\r\n800"), 413),
    "header block too large": (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000, 431),
    "the same length twice": (_raw(b"/ProducerSend", BODY, extra=b"Content-Length: 21\r\n"), 400),
    "another transfer coding": (CHUNKED.replace(b"Encoding: chunked", b"Encoding: gzip, chunked"),
                                501),
    "lines ending in LF alone": (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),
}


@pytest.mark.parametrize("request_, status", REFUSED.values(), ids=REFUSED.keys())
def test_framing_that_cannot_be_trusted_is_refused(request_, status):
    with pytest.raises(FramingError) as refused:
        RequestFrame(1024).end(request_ + b"\r\n" * 1000)
    assert refused.value.status == status


def test_a_websocket_handshake_is_told_apart():
    frame = RequestFrame(1024)
    frame.end(b"GET /ConsumersConn/t/c HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n")
    assert frame.upgrade and not RequestFrame(1024).upgrade


def _whole_replies(data):
    """How many whole replies ``data`` holds (each with a Content-Length)."""
    count = 0
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100"):
            data = rest
            continue
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


@pytest.mark.parametrize("path, name, kwargs",
                         [("/ProducerSend", n, k) for n, k in CASES]
                         + [("/ProducerSendBatch", n, k) for n, k in BATCH_CASES if n != "form"],
                         ids=[n for n, _ in CASES] + [f"batch {n}" for n, _ in BATCH_CASES
                                                       if n != "form"])
def test_a_direct_publish_gets_the_reply_flask_gives(served, path, name, kwargs):
    broker = served(storage={"engine": "memory"}, mq={"maxMessageBytes": 256})
    broker.http = requests.Session()
    assert _ask(broker, kwargs, flask=False, path=path) == _ask(broker, kwargs, flask=True, path=path)


def test_on_one_keep_alive_connection_gunicorn_answers_what_is_not_a_plain_publish(served):
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
        assert b'"code":0' in _exchange(sock, CHUNKED)
        expect = _raw(b"/ProducerSend", BODY, extra=b"Expect: 100-continue\r\n")
        head, body = expect[:-len(BODY)], expect[-len(BODY):]
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        answered = _exchange(sock, body)
        assert b'"code":0' in answered and b"100 Continue" not in answered
        smuggled = _exchange(sock, _raw(b"/ProducerSend", BODY, extra=b"Transfer-Encoding: chunked"
                                        b"\r\n") + b"0\r\n\r\n")
        assert smuggled.startswith(b"HTTP/1.1 400")
        assert sock.recv(100) == b"", "the connection is closed after a refused framing"
    topics = requests.get(broker.url + "/Console/GetTopics").json()["data"]
    assert [(t["topic"], t["published"]) for t in topics] == [("t", 7)]


def test_a_bad_chunk_size_on_a_kept_alive_connection_is_a_400_and_the_end_of_it(served):
    broker = served()
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        assert b'"code":0' in _exchange(sock, _raw(b"/ProducerSend", BODY))
        reply = _exchange(sock, CHUNKED.replace(b"\r\n5\r\n", b"\r\nxyz\r\n"))
        assert reply.startswith(b"HTTP/1.1 400") and b"chunk size" in reply
        assert sock.recv(100) == b""


def test_a_producer_on_one_connection_publishes_in_order_and_nothing_is_lost(served):
    broker = served()
    session = requests.Session()
    codes = [session.post(broker.url + "/ProducerSend",
                          data={"topic": "t", "messageData": str(n)}).json()["msg"]
             for n in range(200)]
    assert len(set(codes)) == 200
    listed = requests.get(broker.url + "/Console/GetMessageList",
                          params={"topic": "t", "limit": 500}).json()["data"]
    in_order = sorted(listed, key=lambda m: m["offset"])
    assert [(m["MessageCode"], m["MessageData"]) for m in in_order] == \
        list(zip(codes, map(str, range(200))))


def test_a_big_batch_arriving_in_many_reads_is_served_whole(served):
    broker = served(mq={"messageChanBuffer": 10000})
    session = requests.Session()
    messages = [f"{n:05d}" + "x" * 200 for n in range(5000)]       # about 1 MB of JSON
    reply = session.post(broker.url + "/ProducerSendBatch", json={"topic": "t", "messages": messages})
    assert reply.json()["code"] == 0 and len(set(reply.json()["data"])) == 5000
    topics = requests.get(broker.url + "/Console/GetTopics").json()["data"]
    assert [(t["topic"], t["published"]) for t in topics] == [("t", 5000)]


def _loop_switches(pid):
    """How often the worker's event loop (its main thread) has slept and woken."""
    with open(f"/proc/{pid}/task/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle
                    if line.startswith("voluntary_ctxt_switches"))


def test_a_large_publish_in_several_reads_stays_on_its_thread(served):
    """A keep-alive producer's next request is read by the thread that answered the last one
    while its bytes keep coming within the linger; a body larger than one read does not go back
    to the event loop (and wake it twice) between its parts."""
    broker = served()
    worker = _worker_pid(broker)
    body = b"topic=t&messageData=" + b"x" * 100_000
    request = _raw(b"/ProducerSend", body)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        assert _exchange(sock, request).startswith(b"HTTP/1.1 200")
        before = _loop_switches(worker)
        for _ in range(30):         # each more than one read (threads.READ)
            reply = _exchange(sock, request)
            assert reply.startswith(b"HTTP/1.1 200") and b'"code":0' in reply
        woken = _loop_switches(worker) - before
    assert woken < 30, f"the event loop woke {woken} times for 30 publishes"


def test_a_next_request_cut_off_mid_body_is_answered_400(served):
    broker = served()
    request = _raw(b"/ProducerSend", BODY)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        assert _exchange(sock, request).startswith(b"HTTP/1.1 200")
        sock.sendall(request[:-5])
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"ended before it was whole" in reply


def test_the_linger_reads_a_large_request_whole_unless_others_wait_for_a_thread():
    """Once another request waits, what the thread has read stays with the connection for the
    loop, whose reads go on from there."""
    ours, theirs = socket.socketpair()
    body = b"topic=t&messageData=" + b"x" * 100_000
    try:
        for others_waiting, whole in ((False, True), (True, False)):
            theirs.sendall(_raw(b"/ProducerSend", body))    # all there, but more than one read
            jobs = queue.SimpleQueue()
            if others_waiting:
                jobs.put("another request")
            pool = types.SimpleNamespace(_jobs=jobs, max_body=1 << 20)
            conn = HttpConnection(ours, "client", ("127.0.0.1", 80))
            taken = RequestThreads._linger(pool, conn, select.poll())
            assert (taken is not None) == whole
            if not whole:
                assert 0 < len(conn.buf) <= threads.READ and conn.frame is not None
    finally:
        ours.close()
        theirs.close()


def test_what_a_consumer_sends_right_behind_its_handshake_is_read(served):
    """A Close in the same packet as the upgrade is answered at once, and the id is free again,
    instead of waiting for a ping timeout."""
    broker = served()
    handshake = (b"GET /ConsumersConn/t/quick HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    close = b"\x88\x82\x00\x00\x00\x00\x03\xe8"        # Close 1000, masked with a zero key
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(handshake + close)
        got = b""
        while b"\x88" not in got.partition(b"\r\n\r\n")[2]:
            chunk = sock.recv(4096)
            assert chunk, f"closed without a Close reply: {got!r}"
            got += chunk
    assert got.startswith(b"HTTP/1.1 101")
    assert wait_for(lambda: requests.get(broker.url + "/Console/GetConsumers").json()["data"] == [],
                    timeout=5, what="the consumer to be gone")


def test_a_consumer_request_is_told_apart_by_its_request_line():
    def frame(head):
        taken = RequestFrame(1024)
        taken.end(head + b"\r\nHost: x\r\n\r\n")
        return taken
    events = frame(b"GET /ConsumersConn/t/c HTTP/1.1\r\nAccept: text/event-stream")
    pull = frame(b"POST /ConsumerPull HTTP/1.1\r\nContent-Length: 0")
    publish = frame(b"POST /ProducerSend HTTP/1.1\r\nContent-Length: 0")
    assert (events.own_thread, events.stream) == (True, True)
    assert (pull.own_thread, pull.stream) == (True, False)
    assert (publish.own_thread, publish.stream) == (False, False)
    assert not frame(b"POST /ConsumerPullAll HTTP/1.1\r\nContent-Length: 0").own_thread


def test_streams_and_waiting_pulls_beyond_the_pool_leave_producers_a_thread(served):
    broker = served(server={"httpThreads": 2})
    held = []
    for n in range(6):
        sock = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
        sock.sendall(b"GET /ConsumersConn/t/c%d HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream"
                     b"\r\n\r\n" % n)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        held.append(sock)
    for n in range(4):
        body = b'{"topic":"t","consumerId":"p%d","wait":10}' % n
        sock = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
        sock.sendall(b"POST /ConsumerPull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        held.append(sock)
    try:
        reply = requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "m"},
                              timeout=5)
        assert reply.json()["code"] == 0
        assert requests.get(broker.url + "/healthz", timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_after_a_pull_the_connection_is_kept_alive_for_the_next_request(served):
    broker = served()
    body = b'{"topic":"t","consumerId":"puller","wait":0}'
    pull = (b"POST /ConsumerPull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        assert _exchange(sock, pull).startswith(b"HTTP/1.1 ")
        assert b'"code":0' in _exchange(sock, _raw(b"/ProducerSend", BODY))
        assert _exchange(sock, pull).startswith(b"HTTP/1.1 ")


def _threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def _worker_pid(served_broker):
    pid = served_broker.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return int(handle.read().split()[0])


def _connected(served_broker):
    return len(requests.get(served_broker.url + "/Console/GetConsumers", timeout=5).json()["data"])


def test_websocket_consumers_hold_no_thread_once_joined_and_their_end_frees_their_place(served):
    """A joined WebSocket consumer is read by the inbound thread and holds no thread of its own;
    its end (either side's close) still unsubscribes it and frees its place under the limit."""
    broker = served(server={"maxConsumers": 30, "httpThreads": 2})
    worker = _worker_pid(broker)
    before = _threads(worker)
    for round_ in range(2):     # the second round fits only if the first's places were freed
        consumers = [Collector(broker.ws_url, "t", f"c{n}") for n in range(30)]
        try:
            wait_for(lambda: _connected(broker) == 30, what="30 consumers joined")
            assert _threads(worker) <= before + THREADS + 2     # farewell threads, and slack
            reply = requests.post(broker.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": f"round {round_}"}, timeout=5)
            assert reply.json()["code"] == 0
            for consumer in consumers:
                assert consumer.wait_count(1)[0]["MessageData"] == f"round {round_}"
        finally:
            for consumer in consumers:
                consumer.close()
        wait_for(lambda: _connected(broker) == 0, what="every consumer left")
    kept = Collector(broker.ws_url, "t", "kept")
    wait_for(lambda: _connected(broker) == 1, what="a consumer joined")
    broker.kill(signal.SIGTERM)
    wait_for(lambda: kept.closed is not None, what="the consumer closed by the stop")
    assert kept.closed[0] == 1001


def _event_streams(broker, topic, count, query=""):
    """``count`` event-stream consumers of ``topic`` (consumerIds s0, s1, ...) on raw sockets."""
    streams = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
        sock.sendall(f"GET /ConsumersConn/{topic}/s{n}{query} HTTP/1.1\r\nHost: x\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        streams.append(sock)
    return streams


def test_event_streams_hold_no_thread_once_joined_and_are_kept_alive(served):
    broker = served(server={"pingInterval": 1})
    worker = _worker_pid(broker)
    before = _threads(worker)
    streams = _event_streams(broker, "t", 20)
    try:
        wait_for(lambda: _connected(broker) == 20, what="20 event streams joined")
        assert _threads(worker) <= before + THREADS + 2
        received = [b""] * len(streams)
        for i, sock in enumerate(streams):      # the head, then a keep-alive comment within 1 s
            while b": keep-alive" not in received[i]:
                received[i] += sock.recv(4096)
    finally:
        for sock in streams:
            sock.close()
    wait_for(lambda: _connected(broker) == 0, what="every stream left")


def test_a_stop_waits_for_every_consumer_to_leave(served):
    """A thousand ephemeral consumers connected at a stop: each one's leaving (which forgets its
    subscription in the store) runs before the broker closes the store, even with no time given
    to the stop."""
    broker = served(server={"shutdownTimeout": 0, "maxConsumers": 1100})
    streams = _event_streams(broker, "e", 1000, "?durable=0")
    try:
        wait_for(lambda: _connected(broker) == 1000, timeout=30, what="1000 streams joined")
        broker.kill(signal.SIGTERM)
        broker.start()
        topics = requests.get(broker.url + "/Console/GetTopics", timeout=5).json()["data"]
        assert [t["subscriptions"] for t in topics if t["topic"] == "e"] in ([], [0])
    finally:
        for sock in streams:
            sock.close()


def test_a_worker_holding_more_connections_than_another_leaves_new_ones_to_it():
    board = spread.Board()
    first = spread.Seat(board, board.reserve(set(), "w1"))
    second = spread.Seat(board, board.reserve({"w1"}, "w2"))
    assert (first.slot, second.slot) == (0, 1)
    assert not first.ahead() and not second.ahead()     # both hold none
    first.update(2)
    second.update(1)
    assert first.ahead() and not second.ahead()
    second.update(2)
    assert not first.ahead() and not second.ahead()     # level: either may take the next
    first.update(3)
    second.leave()                                      # stopping: nobody defers to it
    assert not first.ahead()


def test_a_replaced_worker_gets_the_free_place_and_starts_from_none():
    board = spread.Board()
    first = spread.Seat(board, board.reserve(set(), "w1"))
    second = spread.Seat(board, board.reserve({"w1"}, "w2"))
    first.update(1)
    second.update(7)
    assert not first.ahead()
    # w2 was killed: its replacement is given its place, emptied, while w1 keeps its own
    assert board.reserve({"w1"}, "w3") == second.slot
    assert board.read()[2 * second.slot:2 * second.slot + 2] == (0, 0)
    assert board.read()[2 * first.slot + 1] == 1


def test_a_worker_killed_without_leaving_is_not_deferred_to():
    board = spread.Board()
    alive = spread.Seat(board, board.reserve(set(), "w1"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    board.write(board.reserve({"w1"}, "w2"), gone.pid, 0)     # its place as SIGKILL left it
    alive.update(3)
    assert not alive.ahead()
