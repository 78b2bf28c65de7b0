"""Slow and half-sent requests under ``dpmq serve``: they hold sockets, never the threads that
producers, consumers and health checks need, and they are closed once their time is up."""

import os
import socket
import threading
import time

import pytest
import requests

from helpers import Collector, wait_for

HALF = b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\n"


def _worker_pid(broker):
    """The gunicorn worker under ``dpmq serve`` (the master's only child)."""
    def child():
        path = f"/proc/{broker.proc.pid}/task/{broker.proc.pid}/children"
        children = open(path).read().split()
        return int(children[0]) if children else None
    return wait_for(child, what="the gunicorn worker")


def _threads(pid):
    return int(next(line for line in open(f"/proc/{pid}/status") if line.startswith("Threads:"))
               .split()[1])


def _joined(broker, count=1):
    """Wait until the broker has taken ``count`` consumers in: a new consumerId starts at "now"."""
    wait_for(lambda: len(requests.get(broker.url + "/Console/GetConsumers", timeout=5).json()["data"])
             >= count, what=f"{count} consumer(s) joined")


def _open(port, count, first=HALF):
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        if first:
            sock.sendall(first)
        socks.append(sock)
    return socks


def _closed_by_peer(sock, timeout):
    """True if the broker closes ``sock`` within ``timeout`` (what it sent first is skipped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


@pytest.fixture
def slow_enough(served):
    """A broker whose requests must arrive whole within 3 s."""
    return served(server={"requestTimeout": 3, "httpThreads": 4, "maxConsumers": 50})


def test_thousands_of_half_sent_requests_do_not_stop_producers_or_consumers(slow_enough):
    broker = slow_enough
    pid = _worker_pid(broker)
    threads = _threads(pid)
    attackers = _open(broker.port, 3000)
    try:
        consumer = Collector(broker.ws_url, "t", "c")
        _joined(broker)
        session = requests.Session()
        for n in range(5):
            assert session.post(broker.url + "/ProducerSend",
                                data={"topic": "t", "messageData": f"m{n}"}, timeout=5).json()["code"] == 0
        fresh = requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "m5"},
                              timeout=5)
        assert fresh.json()["code"] == 0
        assert requests.get(broker.url + "/readyz", timeout=5).status_code == 200
        assert consumer.wait_count(6)
        # The half-sent requests took no thread: one more for the consumer, none for them.
        assert _threads(pid) <= threads + 1
    finally:
        for sock in attackers:
            sock.close()
    consumer.close()
    # the consumer's leaving started a farewell thread (dpmq.broker.farewells), which stays
    wait_for(lambda: _threads(pid) <= threads + 1,
             what=f"the worker's threads back to {threads} and a farewell thread")


def test_a_request_not_whole_within_request_timeout_is_answered_408_and_closed(slow_enough):
    broker = slow_enough
    idle, half = _open(broker.port, 1, first=b"")[0], _open(broker.port, 1)[0]
    started = time.monotonic()
    half.settimeout(30)
    reply = half.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408") and b"server.requestTimeout" in reply
    assert time.monotonic() - started > 2.5, "answered before server.requestTimeout (3 s)"
    assert _closed_by_peer(idle, 10)


@pytest.mark.parametrize("what", ["header lines", "body bytes"])
def test_a_request_dripped_slowly_is_cut_off_at_request_timeout(slow_enough, what):
    broker = slow_enough
    sock = socket.create_connection(("127.0.0.1", broker.port))
    sock.sendall(HALF if what == "header lines" else
                 HALF + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n")
    stop = threading.Event()

    def drip():
        while not stop.wait(0.5):
            try:
                sock.sendall(b"X-Drip: 1\r\n" if what == "header lines" else b"a")
            except OSError:
                return
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        assert _closed_by_peer(sock, 10), "the dripping request was never cut off"
        assert requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "x"},
                             timeout=5).json()["code"] == 0
    finally:
        stop.set()
        sock.close()


def test_a_keep_alive_request_dripped_after_a_reply_does_not_hold_the_only_thread(served):
    """The thread that answered a request reads the connection's next one while its bytes keep
    coming, but only for a few milliseconds: a client dripping its next request leaves the one
    HTTP thread to the others."""
    broker = served(server={"requestTimeout": 30, "httpThreads": 1})
    body = b"topic=t&messageData=" + b"x" * 3000
    request = (b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Type: "
               b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    dripper = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    dripper.sendall(request)
    assert dripper.recv(65536).startswith(b"HTTP/1.1 200")
    stop, dripped = threading.Event(), [0]

    def drip():             # the same request again, a byte at a time
        for byte in request:
            if stop.wait(0.002):
                return
            dripper.sendall(bytes([byte]))
            dripped[0] += 1
    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        with requests.Session() as session:
            for n in range(20):
                reply = session.post(broker.url + "/ProducerSend", timeout=10,
                                     data={"topic": "t", "messageData": str(n)})
                assert reply.json()["code"] == 0
        assert dripped[0] < len(request), "the publishes waited for the dripped request"
    finally:
        stop.set()
        thread.join(5)
        dripper.close()


def test_past_descriptor_1024_every_keep_alive_publish_is_answered(served):
    broker = served(server={"requestTimeout": 60})
    held = _open(broker.port, 1100, first=b"")     # the worker's next descriptors are past 1024
    try:
        consumer = Collector(broker.ws_url, "t", "c")
        _joined(broker)
        sessions = [requests.Session() for _ in range(4)]
        replies = []

        def produce(session, n):
            for i in range(50):
                replies.append(session.post(broker.url + "/ProducerSend",
                                            data={"topic": "t", "messageData": f"{n}-{i}"},
                                            timeout=10).json()["code"])
        producers = [threading.Thread(target=produce, args=(s, n)) for n, s in enumerate(sessions)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join()
        assert replies == [0] * 200
        assert consumer.wait_count(200)
        pid = _worker_pid(broker)
        assert max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) > 1024
    finally:
        for sock in held:
            sock.close()


def test_more_connections_than_max_connections_evict_the_longest_waiting(served):
    broker = served(server={"maxConnections": 50, "requestTimeout": 60})
    first = _open(broker.port, 60)
    try:
        assert requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "x"},
                             timeout=5).json()["code"] == 0
        assert _closed_by_peer(first[0], 5), "the oldest half-sent request was kept"
    finally:
        for sock in first:
            sock.close()
