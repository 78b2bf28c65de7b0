"""Slow, stuck and pinging consumers: frames stay whole, and nobody waits for the slowest."""

import json
import socket
import threading
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, CloseConnection, Ping, Pong, Request,
                            TextMessage)

from helpers import Collector, wait_for


class RawConsumer:
    """A hand-driven WebSocket client: reads as slowly as told and pings as often as told.

    wsproto validates every frame it parses, so an interleaved Pong inside a data frame shows up as
    a protocol error (invalid UTF-8 or a bad opcode) instead of passing unnoticed.
    """

    def __init__(self, port, path, recv_buffer=4096):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target=path)))
        self.messages = []
        self.pongs = 0
        self.error = None
        self._partial = ""
        while not any(isinstance(e, AcceptConnection) for e in self._read(65536)):
            pass

    def _read(self, size):
        data = self.sock.recv(size)
        if not data:
            raise ConnectionError("server closed the connection")
        self.ws.receive_data(data)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self.messages.append(json.loads(self._partial))
                    self._partial = ""
            elif isinstance(event, Pong):
                self.pongs += 1
            elif isinstance(event, CloseConnection):
                raise ConnectionError(f"closed by server: {event.code} {event.reason}")
        return events

    def read_slowly(self, count, chunk=512, pause=0.0005, ping_every=0.002, timeout=60):
        """Read until ``count`` messages arrived, ``chunk`` bytes at a time, pinging meanwhile."""
        deadline = time.monotonic() + timeout
        next_ping = 0.0
        try:
            while len(self.messages) < count and time.monotonic() < deadline:
                if time.monotonic() >= next_ping:
                    self.sock.sendall(self.ws.send(Ping(b"are you there")))
                    next_ping = time.monotonic() + ping_every
                self._read(chunk)
                time.sleep(pause)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            self.error = exc

    def close(self):
        self.sock.close()


def test_slow_pinging_consumer_receives_thousands_of_messages_intact(make_broker, engine_name):
    """6 MB, more than the kernel buffers hold, so writes are short and Pongs race the data."""
    running = make_broker(engine_name, mq={"messageChanBuffer": 5000,
                                           "consumerBufferBytes": 16 << 20})
    consumer = RawConsumer(running.port, "/ConsumersConn/t/slow")
    wait_for(lambda: running.broker.subscribers(), what="the consumer")
    total, body = 3000, "x" * 2000
    for start in range(0, total, 1000):
        running.broker.publish([("t", f"{i}:{body}") for i in range(start, start + 1000)])
    consumer.read_slowly(total, chunk=4096, pause=0.0002, ping_every=0)
    assert consumer.error is None, f"the stream broke after {len(consumer.messages)}: " \
        f"{consumer.error!r}"
    assert [m["MessageData"] for m in consumer.messages] == [f"{i}:{body}" for i in range(total)]
    pongs = consumer.pongs
    consumer.sock.sendall(consumer.ws.send(Ping(b"last")))
    wait_for(lambda: consumer._read(65536) is not None and consumer.pongs > pongs,
             what="the Pong of the last Ping")
    consumer.close()


def test_a_stuck_consumer_does_not_delay_the_others_and_catches_up_later(make_broker, engine_name):
    running = make_broker(engine_name, mq={"consumerBufferBytes": 16384,
                                           "messageChanBuffer": 1000})
    stuck = RawConsumer(running.port, "/ConsumersConn/t/stuck")
    fast = Collector(running.ws_url, "t", "fast")
    wait_for(lambda: len(running.broker.subscribers()) == 2, what="two consumers")
    payload = "y" * 16000        # 10 MB in all: more than the kernel buffers of the stuck one
    codes = running.broker.publish([("t", f"{i}:{payload}") for i in range(600)])
    fast.wait_count(600)
    assert fast.datas == [f"{i}:{payload}" for i in range(600)]
    stuck_state = next(s for s in running.broker.subscribers() if s.consumer_id == "stuck")
    assert stuck_state.conn.written_offset < 500, "the stuck consumer cannot have taken it all"
    assert stuck_state.conn.pending_bytes <= 16384 + 16100, "its buffer must stay bounded"
    stuck.read_slowly(600, chunk=65536, pause=0, ping_every=60)
    stuck.close()
    assert stuck.error is None
    assert [m["MessageCode"] for m in stuck.messages] == codes


def test_consumers_that_vanish_mid_stream_do_not_disturb_the_rest(make_broker, engine_name):
    running = make_broker(engine_name, mq={"messageChanBuffer": 2000})
    steady = Collector(running.ws_url, "t", "steady")
    wait_for(lambda: running.broker.subscribers(), what="the steady consumer")
    stop = threading.Event()

    def churn():
        n = 0
        while not stop.is_set():
            raw = RawConsumer(running.port, f"/ConsumersConn/t/churn{n % 3}")
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            time.sleep(0.01)
            raw.close()         # a reset without a close frame
            n += 1

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for start in range(0, 1000, 100):
            running.broker.publish([("t", str(i)) for i in range(start, start + 100)])
        steady.wait_count(1000)
    finally:
        stop.set()
        churner.join(10)
    assert steady.datas == [str(i) for i in range(1000)]
    wait_for(lambda: len(running.broker.subscribers()) == 1, what="the churned consumers to leave")
