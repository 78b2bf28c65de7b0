"""Keep-alive pings: every consumer is pinged about once per server.pingInterval by the broker's one
inbound thread; one that answers stays however long it is idle, one that does not is closed."""

import json
import socket
import threading
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from helpers import Collector, wait_for


class PingCounter:
    """A consumer on a raw socket that records each Ping and answers it only if told to."""

    def __init__(self, port, path, answer=True):
        self.answer = answer
        self.pings = []             # time.monotonic() of each Ping
        self.messages = []
        self.closed = None          # (code, reason) of the server's Close
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target=path)))
        self.accepted = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.accepted.wait(5), "the handshake was not answered"

    def _run(self):
        while self.closed is None:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.accepted.set()
                elif isinstance(event, Ping):
                    self.pings.append(time.monotonic())
                    if self.answer:
                        self.pong(self.ws.send(event.response()))
                elif isinstance(event, TextMessage):
                    self.messages.append(event.data)
                elif isinstance(event, CloseConnection):
                    self.closed = (event.code, event.reason)

    def pong(self, frame):
        self.sock.sendall(frame)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes the reading thread, sends a FIN
        except OSError:
            pass
        self.sock.close()


def test_consumers_that_answer_stay_and_one_that_does_not_is_closed_with_1008(make_broker):
    running = make_broker("memory", server={"pingInterval": 0.3})
    answering = [PingCounter(running.port, f"/ConsumersConn/t/live{i}") for i in range(5)]
    collector = Collector(running.ws_url, "t", "library")      # simple-websocket's own client
    silent = PingCounter(running.port, "/ConsumersConn/t/silent", answer=False)
    wait_for(lambda: len(running.broker.members()) == 7, what="seven consumers")
    wait_for(lambda: silent.closed is not None, timeout=5, what="the silent consumer's Close")
    assert silent.closed == (1008, "Ping/Pong timeout")
    assert len(silent.pings) == 1, "closed at the second ping after an unanswered first"
    wait_for(lambda: len(running.broker.members()) == 6, what="the silent consumer to be removed")
    time.sleep(1.5)                     # five more intervals, idle
    assert len(running.broker.members()) == 6
    assert all(len(c.pings) >= 4 for c in answering), [len(c.pings) for c in answering]
    (code,) = running.publish_many("t", ["still here"])
    wait_for(lambda: all(c.messages for c in answering), what="the message on every live consumer")
    assert collector.wait_count(1)[0]["MessageCode"] == code
    for consumer in answering + [silent]:
        consumer.close()


def test_each_consumer_is_pinged_about_once_per_interval(make_broker):
    running = make_broker("memory", server={"pingInterval": 0.5})
    consumers = [PingCounter(running.port, f"/ConsumersConn/t/c{i}") for i in range(20)]
    wait_for(lambda: len(running.broker.members()) == 20, what="twenty consumers")
    time.sleep(3.2)
    for consumer in consumers:
        gaps = [b - a for a, b in zip(consumer.pings, consumer.pings[1:])]
        assert 4 <= len(consumer.pings) <= 8, consumer.pings
        assert all(0.3 < gap < 1.0 for gap in gaps), gaps
        consumer.close()
    wait_for(lambda: not running.broker.members(), what="the consumers to be gone")


def test_without_pings_a_silent_consumer_stays(make_broker):
    running = make_broker("memory", server={"pingInterval": 0})
    silent = PingCounter(running.port, "/ConsumersConn/t/quiet", answer=False)
    wait_for(lambda: len(running.broker.members()) == 1, what="the consumer")
    time.sleep(1.0)
    assert silent.pings == [] and silent.closed is None
    assert len(running.broker.members()) == 1
    silent.close()
    wait_for(lambda: not running.broker.members(), what="the consumer to be gone after it closed")


class SplitPongs(PingCounter):
    """Writes each Pong in two pieces, a moment apart."""

    def pong(self, frame):
        try:
            self.sock.sendall(frame[:3])
            time.sleep(0.02)
            self.sock.sendall(frame[3:])
        except OSError:
            pass            # closed meanwhile by the test


def test_a_pong_that_arrives_in_two_pieces_still_counts(make_broker):
    running = make_broker("memory", server={"pingInterval": 0.3})
    consumer = SplitPongs(running.port, "/ConsumersConn/t/split")
    wait_for(lambda: len(running.broker.members()) == 1, what="the consumer")
    time.sleep(1.5)
    assert consumer.closed is None and len(running.broker.members()) == 1
    assert len(consumer.pings) >= 4
    consumer.close()


def ack_frame_ending_like_a_pong(code):
    """A masked text frame ``{"ack": code}`` whose mask makes its last six bytes start like a
    Pong from a client (0x8A 0x80): sent apart, those six bytes are one read that looks exactly
    like a Pong, and only knowing where the frame ends tells them apart."""
    payload = json.dumps({"ack": code}).encode()
    size = len(payload)
    assert size < 126
    mask = bytearray(b"\x11\x22\x33\x44")
    mask[(size - 6) % 4] = payload[size - 6] ^ 0x8A
    mask[(size - 5) % 4] = payload[size - 5] ^ 0x80
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    frame = bytes([0x81, 0x80 | size]) + bytes(mask) + masked
    assert frame[-6:-4] == b"\x8a\x80"
    return frame


def test_an_ack_whose_last_six_bytes_look_like_a_pong_is_read_as_the_ack(make_broker):
    running = make_broker("memory", server={"pingInterval": 0}, mq={"ackTimeout": 2.0})
    consumer = PingCounter(running.port, "/ConsumersConn/t/acker?ack=1")
    consumer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wait_for(lambda: len(running.broker.members()) == 1, what="the consumer")
    acked = lambda: running.broker.topic_counts()["t"][2]     # noqa: E731
    (first,) = running.publish_many("t", ["one"])
    wait_for(lambda: consumer.messages, what="the first message")
    frame = ack_frame_ending_like_a_pong(first)
    consumer.sock.sendall(frame[:-6])
    time.sleep(0.3)                     # read by the broker on its own
    consumer.sock.sendall(frame[-6:])
    wait_for(lambda: acked() == 1, timeout=1.5, what="the ack to be taken")
    (second,) = running.publish_many("t", ["two"])
    wait_for(lambda: len(consumer.messages) == 2, what="the second message")
    consumer.sock.sendall(consumer.ws.send(TextMessage(second)))
    wait_for(lambda: acked() == 2, timeout=1.5, what="the plain ack after it")
    assert [json.loads(m)["MessageCode"] for m in consumer.messages] == [first, second]
    consumer.close()
