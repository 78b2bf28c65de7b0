"""Keep-alive pings: every consumer is pinged about once per server.pingInterval by the broker's one
inbound thread; one that answers stays however long it is idle, one that does not is closed."""

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
                        self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, TextMessage):
                    self.messages.append(event.data)
                elif isinstance(event, CloseConnection):
                    self.closed = (event.code, event.reason)

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
