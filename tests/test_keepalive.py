"""Keep-alive pings: every consumer is pinged about once per server.pingInterval by the broker's one
inbound thread; one that answers stays however long it is idle, one that does not is closed.

Through real sockets these tests check that pings come and what happens to those who answer and
those who do not; when each ping is due is checked on the inbound thread's schedule with ``now``
given (gaps measured on a busy machine are that machine's)."""

import json
import socket
import threading
import time

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from dpmq.transport.inbound import CLOSE_PING_TIMEOUT, Inbound, Reader

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
    wait_for(lambda: silent.closed is not None, what="the silent consumer's Close")
    assert silent.closed == (1008, "Ping/Pong timeout")
    assert len(silent.pings) == 1, "closed at the second ping after an unanswered first"
    wait_for(lambda: len(running.broker.members()) == 6, what="the silent consumer to be removed")
    wait_for(lambda: all(len(c.pings) >= 4 or c.closed for c in answering),
             what="four pings at every answering consumer, idle")
    assert [c.closed for c in answering] == [None] * 5
    assert len(running.broker.members()) == 6
    (code,) = running.publish_many("t", ["still here"])
    wait_for(lambda: all(c.messages for c in answering), what="the message on every live consumer")
    assert collector.wait_count(1)[0]["MessageCode"] == code
    for consumer in answering + [silent]:
        consumer.close()


def test_many_answering_consumers_are_all_pinged_and_all_stay(make_broker):
    running = make_broker("memory", server={"pingInterval": 0.2})
    consumers = [PingCounter(running.port, f"/ConsumersConn/t/c{i}") for i in range(20)]
    wait_for(lambda: len(running.broker.members()) == 20, what="twenty consumers")
    wait_for(lambda: all(len(c.pings) >= 3 or c.closed for c in consumers),
             what="three pings at every consumer")
    assert [c.closed for c in consumers] == [None] * 20
    assert len(running.broker.members()) == 20
    for consumer in consumers:
        consumer.close()
    wait_for(lambda: not running.broker.members(), what="the consumers to be gone")


class FakeChannel:
    def __init__(self, answers):
        self.answers = answers
        self.pong_received = True
        self.closed = None

    def close(self, code, reason):
        self.closed = (code, reason)


class FakeConn:
    raw = None

    def __init__(self, channel):
        self.channel = channel
        self.pings = []

    def ping(self):
        self.pings.append(self.now)
        if self.channel.answers:
            self.channel.pong_received = True       # its Pong is read before the next round

    def stop_reading(self):
        pass

    def detach(self):
        pass


@pytest.fixture
def schedule():
    """The inbound thread's ping schedule, driven with ``now`` given (the thread is not started)."""
    made = []

    def make(interval, count, answers=True, start=100.0):
        inbound = Inbound(interval)
        made.append(inbound)
        readers = []
        for _ in range(count):
            channel = FakeChannel(answers)
            reader = Reader(channel, FakeConn(channel), None, start + interval)
            inbound._pings.append(reader)
            readers.append(reader)

        def at(now):
            for reader in readers:
                reader.conn.now = now
            inbound._ping(now)
        return inbound, readers, at

    yield make
    for inbound in made:
        inbound._selector.close()
        inbound._wake_r.close()
        inbound._wake_w.close()


def test_each_consumer_is_pinged_once_per_interval_and_never_before_it_is_due(schedule):
    inbound, readers, at = schedule(0.5, 20)
    now = 100.0
    while now < 103.0:                  # a round every 100 ms, for 3 s
        now = round(now + 0.1, 1)
        at(now)
    for reader in readers:
        pings = reader.conn.pings
        assert pings == [100.5, 101.0, 101.5, 102.0, 102.5, 103.0], pings
        assert not reader.done and reader.channel.closed is None


def test_pings_due_within_the_slack_go_in_one_round_a_little_early(schedule):
    inbound, readers, at = schedule(10.0, 2)     # slack: a tenth of the interval, 1 s
    readers[1].due = 110.8
    at(108.9)
    assert [r.conn.pings for r in readers] == [[], []], "nothing is due within 1 s of 108.9"
    at(110.0)
    assert [r.conn.pings for r in readers] == [[110.0], [110.0]]
    assert [r.due for r in readers] == [120.0, 120.8], "early once; the interval is kept"


def test_a_round_that_comes_late_pings_once_and_the_next_is_a_whole_interval_later(schedule):
    inbound, (reader,), at = schedule(0.5, 1)
    at(103.0)                           # the thread was held up for five intervals
    assert reader.conn.pings == [103.0]
    at(103.3)
    assert reader.conn.pings == [103.0]
    at(103.5)
    assert reader.conn.pings == [103.0, 103.5]


def test_a_consumer_that_did_not_answer_is_closed_at_its_next_ping(schedule):
    inbound, (reader,), at = schedule(0.5, 1, answers=False)
    at(100.5)
    assert reader.conn.pings == [100.5] and reader.channel.closed is None
    at(100.9)
    assert reader.channel.closed is None, "closed before the next ping was due"
    at(101.0)
    assert reader.channel.closed == (CLOSE_PING_TIMEOUT, "Ping/Pong timeout")
    assert reader.conn.pings == [100.5] and reader.done
    at(102.0)
    assert reader.conn.pings == [100.5], "a closed consumer is pinged no more"


def test_without_pings_a_silent_consumer_stays(make_broker):
    running = make_broker("memory", server={"pingInterval": 0})
    silent = PingCounter(running.port, "/ConsumersConn/t/quiet", answer=False)
    wait_for(lambda: len(running.broker.members()) == 1, what="the consumer")
    running.publish_many("t", ["hello"])
    wait_for(lambda: silent.messages, what="a message to the silent consumer")
    time.sleep(0.3)                     # no event to wait for: pings that never come
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
    wait_for(lambda: len(consumer.pings) >= 4 or consumer.closed, what="four pings")
    assert consumer.closed is None and len(running.broker.members()) == 1
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
    running = make_broker("memory", server={"pingInterval": 0}, mq={"ackTimeout": 60})
    consumer = PingCounter(running.port, "/ConsumersConn/t/acker?ack=1")
    consumer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wait_for(lambda: len(running.broker.members()) == 1, what="the consumer")
    acked = lambda: running.broker.topic_counts()["t"][2]     # noqa: E731
    (first,) = running.publish_many("t", ["one"])
    wait_for(lambda: consumer.messages, what="the first message")
    frame = ack_frame_ending_like_a_pong(first)
    consumer.sock.sendall(frame[:-6])
    time.sleep(0.1)     # the behaviour under test: the broker reads the first part on its own
    consumer.sock.sendall(frame[-6:])
    wait_for(lambda: acked() == 1, what="the ack to be taken")
    (second,) = running.publish_many("t", ["two"])
    wait_for(lambda: len(consumer.messages) == 2, what="the second message")
    consumer.sock.sendall(consumer.ws.send(TextMessage(second)))
    wait_for(lambda: acked() == 2, what="the plain ack after it")
    assert [json.loads(m)["MessageCode"] for m in consumer.messages] == [first, second]
    consumer.close()
