"""``dpmq serve`` for real: gunicorn gthread, SIGKILL mid-stream, SIGTERM, bad configuration."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import requests

from dpmq import config
from dpmq.serving.threads import LINGER

from helpers import Collector, connect_and_close_code, wait_for

#: gunicorn's graceful timeout for DPMQ's workers: server.shutdownTimeout + 5 (serving/server.py).
#: A stop that takes this long waited it out; a prompt one takes a second or two.
GRACEFUL = config.build({}).server.shutdownTimeout + 5


def _publisher(url, topic, prefix, accepted, stop):
    """Publish until stopped; remember every message that got code 0."""
    session = requests.Session()
    n = 0
    while not stop.is_set():
        data = f"{prefix}{n}"
        try:
            reply = session.post(url + "/ProducerSend", data={"topic": topic, "messageData": data},
                                 timeout=5)
            if reply.json()["code"] == 0:
                accepted.append(data)
        except (requests.RequestException, ValueError):
            pass
        n += 1


def test_sigkill_mid_stream_loses_nothing_that_got_code_zero(served):
    broker = served(mq={"messageChanBuffer": 1000})
    consumers = {cid: Collector(broker.ws_url, "jobs", cid) for cid in ("a", "b")}
    wait_for(lambda: len(requests.get(broker.url + "/Console/GetConsumers").json()["data"]) == 2,
             what="two consumers")
    accepted, stop = [], threading.Event()
    publishers = [threading.Thread(target=_publisher, args=(broker.url, "jobs", f"p{i}-", accepted,
                                                            stop)) for i in range(3)]
    for thread in publishers:
        thread.start()
    wait_for(lambda: len(accepted) >= 300, timeout=30, what="300 accepted messages")
    broker.kill(signal.SIGKILL)
    stop.set()
    for thread in publishers:
        thread.join(10)
    before = {cid: list(c.messages) for cid, c in consumers.items()}
    for consumer in consumers.values():
        consumer.close()

    broker.start()
    again = {cid: Collector(broker.ws_url, "jobs", cid) for cid in ("a", "b")}
    for cid, consumer in again.items():
        wait_for(lambda cid=cid, consumer=consumer: set(accepted) <= {
                     m["MessageData"] for m in before[cid] + consumer.messages},
                 timeout=30, what=f"every accepted message at {cid}")
        offsets = [m["MessageCode"] for m in before[cid] + consumer.messages]
        received = [m["MessageData"] for m in before[cid] + consumer.messages]
        # Per publisher, messages arrive in the order they were sent (duplicates allowed).
        for prefix in ("p0-", "p1-", "p2-"):
            seq = [int(d[len(prefix):]) for d in dict.fromkeys(received) if d.startswith(prefix)]
            assert seq == sorted(seq), f"{cid} got {prefix} out of order"
        assert len(set(offsets)) == len(set(received))
        consumer.close()


def test_sigterm_closes_consumers_with_1001_and_a_restart_resumes(served):
    broker = served()
    consumer = Collector(broker.ws_url, "t", "x")
    wait_for(lambda: requests.get(broker.url + "/Console/GetConsumers").json()["data"],
             what="the consumer")
    requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "one"})
    consumer.wait_count(1)
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(20) == 0
    wait_for(lambda: consumer.closed, what="the close frame")
    assert consumer.closed[0] == 1001
    broker.start()
    requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "two"})
    again = Collector(broker.ws_url, "t", "x")
    again.wait_count(1)
    assert again.datas == ["two"]


def test_sigterm_to_master_and_worker_at_once_stops_promptly(served):
    """systemd's stop signals every process of the service: the worker gets SIGTERM twice (its
    own and the master's), and must not wait out the graceful timeout (here 15 s) to exit."""
    broker = served()
    consumer = Collector(broker.ws_url, "t", "x")
    wait_for(lambda: requests.get(broker.url + "/Console/GetConsumers").json()["data"],
             what="the consumer")
    started = time.monotonic()
    os.killpg(broker.proc.pid, signal.SIGTERM)
    assert broker.proc.wait(30) == 0
    assert time.monotonic() - started < GRACEFUL, "the worker hung until the master killed it"
    wait_for(lambda: consumer.closed, what="the close frame")
    assert consumer.closed[0] == 1001
    assert "was sent SIGKILL" not in broker.log.read_text()


def test_consumers_up_to_max_consumers_connect_and_the_next_is_refused_not_hung(served):
    broker = served(server={"maxConsumers": 20, "httpThreads": 4})
    consumers = [Collector(broker.ws_url, "t", f"c{i}") for i in range(20)]
    wait_for(lambda: len(requests.get(broker.url + "/Console/GetConsumers").json()["data"]) == 20,
             what="20 consumers")
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/one-too-many")
    assert code == 1013 and "maxConsumers" in reason
    reply = requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "m"})
    assert reply.json()["code"] == 0, "producers still get a thread"
    for consumer in consumers:
        consumer.wait_count(1)


def test_bad_configuration_stops_start_up_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("mq:\n  pushMessagesSpeed: fast\n")
    result = subprocess.run([sys.executable, "-m", "dpmq.cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "mq.pushMessagesSpeed" in result.stderr


def test_workers_above_one_are_refused_for_the_local_engines(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dpmq.cli", "serve", "--workers", "2"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2
    assert "server.workers" in result.stderr and "sqlite" in result.stderr


def test_a_corrupt_store_stops_start_up_with_a_clear_message(tmp_path):
    (tmp_path / "dpmq.db").write_bytes(b"this is not a database" * 100)
    result = subprocess.run([sys.executable, "-m", "dpmq.cli", "serve"], capture_output=True,
                            text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2
    assert "dpmq.db" in result.stderr and "storage.path" in result.stderr


def test_sigterm_under_load_answers_code_zero_or_503_and_keeps_every_accepted_message(served):
    broker = served(server={"shutdownTimeout": 5})
    consumer = Collector(broker.ws_url, "busy", "c")
    wait_for(lambda: requests.get(broker.url + "/Console/GetConsumers").json()["data"],
             what="the consumer")
    accepted, refused, stop = [], [], threading.Event()
    odd = []

    def hammer(name):
        session = requests.Session()
        n = 0
        while not stop.is_set():
            data = f"{name}-{n}"
            n += 1
            try:
                reply = session.post(broker.url + "/ProducerSend",
                                     data={"topic": "busy", "messageData": data}, timeout=10)
            except requests.ConnectionError:
                time.sleep(0.01)         # the broker is gone or going: the request never got in
                continue
            if reply.status_code == 200 and reply.json()["code"] == 0:
                accepted.append(data)
            elif reply.status_code == 503 and reply.json()["code"] == -1:
                refused.append(data)
            else:
                odd.append((reply.status_code, reply.text[:200]))

    producers = [threading.Thread(target=hammer, args=(f"p{i}",)) for i in range(3)]
    for thread in producers:
        thread.start()
    wait_for(lambda: len(accepted) > 100, what="traffic")
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(30) == 0
    stop.set()
    for thread in producers:
        thread.join(15)
    assert odd == [], "every reply must be code 0 or a 503"
    wait_for(lambda: consumer.closed, what="the close frame")
    assert consumer.closed[0] == 1001
    broker.start()
    again = Collector(broker.ws_url, "busy", "c")
    wait_for(lambda: set(accepted) <= set(consumer.datas) | set(again.datas), timeout=20,
             what="every accepted message after the restart")
    assert not set(refused) & (set(consumer.datas) | set(again.datas))


def test_ambiguous_request_framing_is_refused_not_smuggled(served):
    broker = served()

    def raw(request):
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            return reply

    body = b"topic=t&messageData=x"
    both = raw(b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
               b"x-www-form-urlencoded\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
               % len(body) + b"0\r\n\r\nPOST /ProducerSend HTTP/1.1\r\nHost: x\r\n\r\n")
    twice = raw(b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Content-Length: 6\r\n\r\nabcdef")
    short = raw(b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                b"x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n" + body)
    assert both.startswith(b"HTTP/1.1 400") and twice.startswith(b"HTTP/1.1 400")
    assert short.startswith(b"HTTP/1.1 400") and b"Content-Length" in short.split(b"\r\n\r\n")[1]
    assert requests.get(broker.url + "/Console/GetTopics").json()["data"] == []


def test_keep_alive_connections_serve_back_to_back_idle_and_pipelined_requests(served):
    broker = served()
    session = requests.Session()        # one connection: answered by the lingering pool thread
    for n in range(5):
        assert session.post(broker.url + "/ProducerSend",
                            data={"topic": "t", "messageData": str(n)}).json()["code"] == 0
    time.sleep(LINGER * 10)             # longer than the linger: back to the poller, still open
    assert session.post(broker.url + "/ProducerSend",
                        data={"topic": "t", "messageData": "after a pause"}).json()["code"] == 0
    one = b"POST /ProducerSend HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded" \
          b"\r\nContent-Length: 24\r\n\r\ntopic=t&messageData=pipe"
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(one + one + one)   # three requests in one write
        replies = b""
        while replies.count(b'"code":0') < 3:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed after {replies.count(b'HTTP/1.1 200')} replies"
            replies += chunk
    assert replies.count(b"HTTP/1.1 200") == 3
    topics = requests.get(broker.url + "/Console/GetTopics").json()["data"]
    assert [(t["topic"], t["published"]) for t in topics] == [("t", 9)]


def test_a_graceful_stop_with_keep_alive_producers_ends_promptly_and_says_close(served):
    """Replies during a stop say ``Connection: close`` and idle keep-alive connections are closed,
    so the worker does not wait out its graceful timeout (15 s here) for producers."""
    broker = served()
    stop, closing, odd = threading.Event(), [], []

    def produce():
        session = requests.Session()
        while not stop.is_set():
            try:
                reply = session.post(broker.url + "/ProducerSend",
                                     data={"topic": "t", "messageData": "m"}, timeout=10)
            except requests.ConnectionError:
                return
            if reply.status_code == 503:
                closing.append(reply.headers.get("Connection"))
            elif reply.status_code != 200:
                odd.append(reply.status_code)
    idle = requests.Session()
    idle.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "m"})
    producers = [threading.Thread(target=produce) for _ in range(2)]
    for thread in producers:
        thread.start()
    wait_for(lambda: requests.get(broker.url + "/Console/GetTopics").json()["data"], what="traffic")
    started = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(30) == 0
    assert time.monotonic() - started < GRACEFUL, "the worker waited out its graceful timeout"
    assert "was sent SIGKILL" not in broker.log.read_text()
    stop.set()
    for thread in producers:
        thread.join(15)
    assert odd == [] and all(value == "close" for value in closing), closing
