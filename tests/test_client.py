"""dpmq.client against real brokers: publish, consume, ack, errors, a broker restart."""

import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from dpmq.client import (
    ClientError,
    ConnectionFailed,
    Consumer,
    NotSettled,
    Producer,
    PullConsumer,
    WebSocketClient,
)

from helpers import ServedBroker, free_port, wait_for


def _joined(running, count=1):
    wait_for(lambda: len(running.broker.members()) >= count, what=f"{count} consumers")


def _connect(consumer, running, count=1):
    """Make ``consumer`` connect (a Consumer connects in ``receive``) and wait until the broker
    has it: a new consumerId starts at the head, so what is published before it joins is not
    its. Returns what the receive got (None: nothing yet)."""
    first = consumer.receive(timeout=0.01)      # connects, whatever the timeout, then returns
    _joined(running, count)
    return first


def test_producer_and_consumer_in_five_lines(broker):
    consumer = Consumer(broker.url, "orders", "reader")
    producer = Producer(broker.url)
    assert _connect(consumer, broker) is None   # connects; nothing there yet
    code = producer.send("orders", "hello")
    message = consumer.receive(timeout=5)
    assert (message.code, message.data, message.topic, message.status) == (code, "hello", "orders", 0)
    codes = producer.send_batch("orders", ["a", {"messageData": "b", "key": "k"}])
    assert [consumer.receive(timeout=5).code for _ in codes] == codes
    consumer.close()
    producer.close()


def test_producer_raises_the_brokers_reason(broker):
    with Producer(broker.url) as producer:
        with pytest.raises(ClientError) as caught:
            producer.send("bad|topic", "x")
        assert caught.value.status == 400 and "'|'" in str(caught.value)


def test_producer_reports_an_unreachable_broker():
    with Producer(f"http://127.0.0.1:{free_port()}", retries=1) as producer:
        with pytest.raises(ConnectionFailed):
            producer.send("t", "x")


def test_producer_is_idempotent_across_its_own_retries(broker):
    with Producer(broker.url) as producer:
        first = producer.send("t", "pay", idempotency_key="once")
        assert producer.send("t", "pay", idempotency_key="once") == first


def test_consumer_acks_after_the_loop_body_and_run_style(broker):
    producer = Producer(broker.url)
    consumer = Consumer(broker.url, "jobs", "w", group="workers", ack=True)
    _connect(consumer, broker)
    codes = [producer.send("jobs", str(i)) for i in range(5)]
    seen = []
    runner = threading.Thread(target=consumer.run, args=(lambda message: seen.append(message.code),))
    runner.start()
    wait_for(lambda: len(seen) == 5, what="five messages handled")

    def settled():
        (entry,) = broker.get("/Console/GetConsumers")["data"]
        return entry["inFlight"] == 0 and entry["pending"] == 0
    wait_for(settled, what="the acks")
    consumer.close()
    runner.join(5)
    assert seen == codes
    again = Consumer(broker.url, "jobs", "w2", group="workers", ack=True)
    _connect(again, broker)
    fence = producer.send("jobs", "fence")
    assert again.receive(timeout=10).code == fence, "everything was acked: nothing comes back"
    again.close()


def test_a_refused_consumer_raises_instead_of_retrying(broker):
    holder = Consumer(broker.url, "t", "taken")
    _connect(holder, broker)
    duplicate = Consumer(broker.url, "t", "taken")
    with pytest.raises(ClientError) as caught:
        duplicate.receive(timeout=5)
    assert caught.value.status == 4409
    holder.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_consumer_survives_a_broker_restart_without_losing_anything(tmp_path, transport):
    broker = ServedBroker(tmp_path).start()
    received, stop = [], threading.Event()
    consumer = Consumer(broker.url, "t", "steady", max_backoff=0.5, transport=transport)

    def consume():
        while not stop.is_set():
            message = consumer.receive(timeout=0.5)
            if message is not None:
                received.append(message.data)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        producer = Producer(broker.url, retries=0)
        wait_for(lambda: consumers_connected(broker), what="the consumer to connect")
        sent = [f"before-{i}" for i in range(20)]
        for data in sent:
            producer.send("t", data)
        broker.kill()
        broker.start()
        producer = Producer(broker.url)
        wait_for(lambda: consumers_connected(broker), timeout=20, what="the consumer to reconnect")
        for i in range(20):
            producer.send("t", f"after-{i}")
            sent.append(f"after-{i}")
        wait_for(lambda: set(sent) <= set(received), timeout=20, what="every message")
        assert [d for d in dict.fromkeys(received)] == sent
    finally:
        stop.set()
        consumer.close()
        thread.join(5)
        broker.stop()


def consumers_connected(served):
    try:
        return requests.get(served.url + "/Console/GetConsumers", timeout=1).json()["data"]
    except requests.RequestException:
        return False


def _consumers(running):
    return running.get("/Console/GetConsumers")["data"]


def test_leaving_the_loop_closes_the_consumer_and_the_message_it_broke_on_comes_back(make_broker):
    running = make_broker("memory")
    producer = Producer(running.url)
    consumer = Consumer(running.url, "jobs", "w", ack=True)
    assert _connect(consumer, running) is None
    codes = [producer.send("jobs", data) for data in ("done", "stop", "later")]
    seen = []
    for message in consumer:
        seen.append(message.data)
        if message.data == "stop":
            break
    assert seen == ["done", "stop"]
    wait_for(lambda: not _consumers(running), what="the consumer's connection to close")
    assert consumer.receive(timeout=0.1) is None, "a consumer left by its loop stays closed"
    again = Consumer(running.url, "jobs", "w", ack=True)
    redelivered = again.receive(timeout=5)
    assert (redelivered.code, redelivered.data, redelivered.status) == (codes[1], "stop", 1)
    assert again.receive(timeout=5).code == codes[2]
    again.close()
    producer.close()


def test_an_exception_in_the_loop_closes_the_consumer_too(make_broker):
    running = make_broker("memory")
    consumer = Consumer(running.url, "t", "w")
    _connect(consumer, running)
    running.publish("t", "boom")
    with pytest.raises(RuntimeError):
        for message in consumer:
            raise RuntimeError(message.data)
    wait_for(lambda: not _consumers(running), what="the consumer's connection to close")


def test_a_program_ends_after_break_without_closing_anything(make_broker):
    running = make_broker("memory")
    script = ("import sys\n"
              "from dpmq.client import Consumer\n"
              "consumer = Consumer(sys.argv[1], 't', 'script')\n"
              "for message in consumer:\n"
              "    print(message.data, flush=True)\n"
              "    break\n"
              "print('after the loop', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, running.url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _joined(running)
        running.publish("t", "only")
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["only", "after the loop"]


def test_close_ends_the_reader_thread_when_the_server_never_answers():
    server, port = _silent_websocket_server()
    before = set(threading.enumerate())
    client = WebSocketClient.connect(f"ws://127.0.0.1:{port}/ConsumersConn/t/c")
    (reader,) = set(threading.enumerate()) - before
    assert reader.daemon, "a forgotten client must not keep its program alive"
    client.close()
    reader.join(WebSocketClient.close_timeout + 10)
    assert not reader.is_alive()
    server.close()


def _silent_websocket_server():
    """A server that accepts one WebSocket handshake, then never reads or writes again."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        conn, _ = listener.accept()
        held.append(conn)
        ws = WSConnection(ConnectionType.SERVER)
        while not any(isinstance(e, Request) for e in _events(ws, conn)):
            pass
        conn.sendall(ws.send(AcceptConnection()))

    threading.Thread(target=serve, daemon=True).start()

    class Server:
        @staticmethod
        def close():
            listener.close()
            for conn in held:
                conn.close()
    return Server, listener.getsockname()[1]


def _events(ws, conn):
    ws.receive_data(conn.recv(65536))
    return list(ws.events())


def test_a_first_connection_that_cannot_be_made_fails_within_first_connect_timeout():
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="in 1 s"):
        Consumer(f"http://127.0.0.1:{free_port()}", "t", "c", first_connect_timeout=1).receive()
    assert time.monotonic() - started > 0.9, "it gave up before first_connect_timeout"


def test_a_server_that_never_answers_the_handshake_fails_the_first_connection():
    with socket.create_server(("127.0.0.1", 0)) as mute:       # accepts TCP, never speaks
        consumer = Consumer(f"http://127.0.0.1:{mute.getsockname()[1]}", "t", "c",
                            first_connect_timeout=1, handshake_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ConnectionFailed):
            consumer.receive()
        assert time.monotonic() - started < 30, "a safety bound: it gives up, not in how long"


def test_a_server_that_is_not_a_broker_is_named_as_such(make_broker):
    consumer = Consumer(make_broker("memory").url + "/not-dpmq", "t", "c", first_connect_timeout=0.5)
    with pytest.raises(ConnectionFailed, match="answered HTTP 404 instead of a WebSocket"):
        consumer.receive()


def test_a_refusal_says_what_was_wrong_once(make_broker):
    running = make_broker("memory")
    with pytest.raises(ClientError) as caught:
        Consumer(running.url, "bad|topic", "c").receive(timeout=5)
    assert caught.value.status == 1008
    assert str(caught.value).startswith("bad request: ") and "'|'" in str(caught.value)


def test_an_ephemeral_consumer_is_forgotten_when_it_leaves(make_broker):
    running = make_broker("sqlite")
    for durable in (True, False):
        consumer = Consumer(running.url, f"t-{durable}", "c", durable=durable)
        assert _connect(consumer, running) is None
        consumer.close()
        wait_for(lambda: not _consumers(running), what="the consumer to leave")
        running.publish(f"t-{durable}", "while away")
        again = Consumer(running.url, f"t-{durable}", "c", durable=durable)
        message = _connect(again, running)
        running.publish(f"t-{durable}", "fence")     # what came while away comes before it
        message = message or again.receive(timeout=10)
        again.close()
        wait_for(lambda: not _consumers(running), what="the consumer to leave")
        assert message.data == ("while away" if durable else "fence"), f"durable={durable}"


def test_a_server_that_closes_without_answering_the_handshake_is_a_failed_connection():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def slam():
        for _ in range(50):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)        # the handshake read: the close is a clean end, not a reset
            conn.close()
    threading.Thread(target=slam, daemon=True).start()
    try:
        consumer = Consumer(f"http://127.0.0.1:{port}", "t", "c", first_connect_timeout=1)
        with pytest.raises(ConnectionFailed, match="did not answer the WebSocket handshake"):
            consumer.receive(timeout=5)
    finally:
        listener.close()


# -- Server-Sent Events, pull, gaps, ttl ------------------------------------------------------

def test_an_sse_consumer_receives_acks_over_http_and_resumes_after_its_last_message(make_broker):
    running = make_broker("memory")
    producer = Producer(running.url)
    consumer = Consumer(running.url, "jobs", "w", ack=True, transport="sse")
    assert _connect(consumer, running) is None
    (entry,) = _consumers(running)
    assert entry.get("transport") == "sse"
    codes = [producer.send("jobs", data) for data in ("one", "two", "three")]
    assert [consumer.receive(timeout=5).code for _ in codes[:2]] == codes[:2]
    consumer.close()            # "two" is not acked yet: it comes back; "one" was acked over HTTP
    wait_for(lambda: not _consumers(running), what="the SSE consumer to leave")
    again = Consumer(running.url, "jobs", "w", ack=True, transport="sse")
    redelivered = again.receive(timeout=5)
    assert (redelivered.code, redelivered.status) == (codes[1], 1)
    assert again.receive(timeout=5).code == codes[2]
    again.receive(timeout=0.01)                     # acks "three"

    def settled():
        (entry,) = _consumers(running)
        return entry["inFlight"] == 0
    wait_for(settled, what="the acks over POST /ConsumerAck")
    again.close()
    producer.close()


def test_an_sse_consumer_is_refused_as_a_websocket_one(make_broker):
    running = make_broker("memory")
    holder = Consumer(running.url, "t", "taken")
    _connect(holder, running)
    with pytest.raises(ClientError) as caught:
        Consumer(running.url, "t", "taken", transport="sse").receive(timeout=5)
    assert caught.value.status == 4409
    holder.close()
    with pytest.raises(ClientError) as caught:
        Consumer(running.url, "bad|topic", "c", transport="sse").receive(timeout=5)
    assert caught.value.status == 1008 and "'|'" in str(caught.value)
    consumer = Consumer(running.url + "/not-dpmq", "t", "c", transport="sse",
                        first_connect_timeout=0.5)
    with pytest.raises(ConnectionFailed, match="answered HTTP 404 instead of an event stream"):
        consumer.receive()
    with pytest.raises(ValueError, match="PullConsumer"):
        Consumer(running.url, "t", "c", transport="pull")


def test_a_pull_consumer_pulls_acks_and_gets_back_what_it_did_not_ack(make_broker):
    running = make_broker("memory", mq={"ackTimeout": 0.3})
    producer = Producer(running.url)
    puller = PullConsumer(running.url, "jobs", "nightly")
    assert puller.pull(max=10) == []            # the subscription starts here
    codes = [producer.send("jobs", str(i)) for i in range(5)]
    batch = puller.pull(max=3, wait=5)
    assert [m.code for m in batch] == codes[:3] and {m.status for m in batch} == {0}
    assert puller.ack(batch[:2]) == codes[:2]
    assert [m.code for m in puller.pull(max=10, wait=5)] == codes[3:]
    assert puller.nack(codes[3]) == [codes[3]]
    assert puller.ack(codes[4]) == [codes[4]]
    again = {m.code: m.status for m in wait_for(lambda: puller.pull(max=10, wait=1),
                                                what="the redeliveries")}
    again.update({m.code: m.status for m in puller.pull(max=10, wait=1)})
    assert again == {codes[2]: 1, codes[3]: 1}, "the unacked one after ackTimeout, the nacked one"
    with pytest.raises(NotSettled) as caught:
        puller.ack([codes[2], codes[0]])        # codes[0] was acked long ago
    assert caught.value.status == 409
    assert (caught.value.settled, caught.value.unknown) == ([codes[2]], [codes[0]])
    puller.ack(codes[3])
    assert puller.pull(max=10) == []
    puller.close()
    producer.close()


def test_a_pull_waits_for_a_message_and_auto_ack_moves_the_cursor(make_broker):
    running = make_broker("memory", mq={"ackTimeout": 0.2})
    puller = PullConsumer(running.url, "t", "cron", auto_ack=True)
    assert puller.pull() == []
    started = time.monotonic()
    threading.Timer(0.3, running.publish, ("t", "late")).start()
    (message,) = puller.pull(max=10, wait=10)
    assert message.data == "late" and time.monotonic() - started < 5, "answered when it came"
    time.sleep(0.4)                                             # past ackTimeout: nothing comes back
    assert puller.pull(max=10) == []
    with pytest.raises(ClientError) as caught:
        puller.pull(max=10, wait=10_000)
    assert caught.value.status == 400 and "wait" in str(caught.value)
    holder = Consumer(running.url, "t", "pushed")
    _connect(holder, running)
    with pytest.raises(ClientError) as caught:
        PullConsumer(running.url, "t", "pushed").pull()
    assert caught.value.status == 409, "a consumerId connected by WebSocket cannot pull"
    holder.close()
    with pytest.raises(ValueError):
        PullConsumer(running.url, "t")
    puller.close()


def _purge_while_away(running, start):
    """Make the subscription that ``start`` opens miss three messages: it leaves, five are
    published, retention (``mq.retentionMessages`` 2) purges three."""
    start()
    running.publish_many("t", [f"m{i}" for i in range(5)])
    wait_for(lambda: [t for t in running.get("/Console/GetTopics")["data"]
                      if t["topic"] == "t" and t["retained"] == 2], what="the purge")


@pytest.mark.parametrize("transport", ["websocket", "sse", "pull"])
def test_a_gap_is_handed_to_on_gap_not_passed_off_as_a_message(make_broker, transport):
    running = make_broker("sqlite", mq={"retentionMessages": 2, "sweepInterval": 0.05})
    gaps = []
    if transport == "pull":
        puller = PullConsumer(running.url, "t", "late", auto_ack=True, on_gap=gaps.append)
        _purge_while_away(running, puller.pull)
        received = [m.data for m in puller.pull(max=10, wait=5)]
        puller.close()
    else:
        def once():
            consumer = Consumer(running.url, "t", "late", transport=transport)
            _connect(consumer, running)
            consumer.close()
            wait_for(lambda: not _consumers(running), what="the consumer to leave")
        _purge_while_away(running, once)
        consumer = Consumer(running.url, "t", "late", transport=transport, on_gap=gaps.append)
        received = [consumer.receive(timeout=5).data for _ in range(2)]
        consumer.close()
    assert received == ["m3", "m4"]
    (gap,) = gaps
    assert (gap.topic, gap.missed, gap.reason, gap.after) == ("t", 3, "purged", None)


def test_a_message_past_its_ttl_is_never_delivered_late(make_broker):
    running = make_broker("memory")
    consumer = Consumer(running.url, "prices", "slow")
    _connect(consumer, running)
    consumer.close()
    wait_for(lambda: not _consumers(running), what="the consumer to leave")
    with Producer(running.url) as producer:
        producer.send("prices", "stale", ttl=0.2)
        producer.send_batch("prices", ["stale too", {"messageData": "fresh", "ttl": 60}], ttl=0.2)
        time.sleep(0.4)
        producer.send("prices", "kept", ttl=60)
        with pytest.raises(ClientError, match="ttl"):
            producer.send("prices", "x", ttl=10 ** 9)
    again = Consumer(running.url, "prices", "slow")
    assert [again.receive(timeout=5).data for _ in range(2)] == ["fresh", "kept"]
    again.close()
