"""Test clients: a WebSocket consumer that collects messages, and ``dpmq serve`` in a subprocess."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis
import requests
import yaml
from simple_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

from dpmq.client import WebSocketClient as Client
from dpmq.metrics import DELIVERED


def wait_for(predicate, timeout=10.0, interval=0.01, what="condition"):
    """Poll ``predicate`` until it is true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


FENCE = "fence"


def fence(running, topic, *consumers, timeout=10.0):
    """Publish one more message (``FENCE``) to ``topic`` through ``running`` (a RunningBroker)
    and wait until each of ``consumers`` has it. A subscription gets its messages in log order,
    so by then each has whatever it was going to get before the fence: a test asserts on what
    came, fence last, instead of sleeping to see that nothing more comes."""
    (code,) = running.publish_many(topic, [FENCE])
    for consumer in consumers:
        wait_for(lambda consumer=consumer: code in consumer.codes, timeout,
                 what=f"the fence at {consumer.url} (have {len(consumer.messages)})")
    return code


def all_read(running, topic, consumers, timeout=10.0):
    """Wait until ``consumers`` together have read every message frame the broker counts as
    written on ``topic``; returns that count. Without acks nothing is written again later, so an
    extra (duplicate) message has arrived by then, where a sleep would only hope so."""
    def caught_up():
        written = running.broker.topic_counts().get(topic, [0] * (DELIVERED + 1))[DELIVERED]
        return written if written == sum(len(c.messages) for c in consumers) else None
    return wait_for(caught_up, timeout, what=f"every message written on {topic!r} to be read")


class Collector:
    """A consumer on a background thread that keeps every message it receives, parsed."""

    def __init__(self, ws_url, topic, consumer_id, query="", auto_ack=False):
        self.url = f"{ws_url}/ConsumersConn/{topic}/{consumer_id}{query}"
        self.auto_ack = auto_ack
        self.errors = []                # error frames (objects without a MessageCode)
        self.messages = []
        self.arrivals = []              # time.monotonic() of each message
        self.closed = None              # (code, reason) once the server closed it
        self.ws = Client.connect(self.url)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while True:
                data = self.ws.receive()
                if data is None:
                    break
                body = json.loads(data)
                if "MessageCode" not in body:
                    self.errors.append(body)
                    continue
                self.arrivals.append(time.monotonic())
                self.messages.append(body)
                if self.auto_ack:
                    self.ws.send(body["MessageCode"])
        except ConnectionClosed as exc:
            self.closed = (exc.reason, exc.message)
        except OSError as exc:          # the test cut the connection itself
            self.closed = (None, str(exc))

    def send(self, text):
        self.ws.send(text)

    @property
    def codes(self):
        return [m["MessageCode"] for m in self.messages]

    @property
    def datas(self):
        return [m["MessageData"] for m in self.messages]

    def wait_count(self, count, timeout=10.0):
        wait_for(lambda: len(self.messages) >= count, timeout,
                 what=f"{count} messages at {self.url} (have {len(self.messages)})")
        return self.messages

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
        self._thread.join(5)


def connect_and_close_code(ws_url, path, timeout=5.0):
    """Open a WebSocket and return the (code, reason) the server closes it with."""
    ws = Client.connect(ws_url + path)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws.receive(timeout=0.2)
    except ConnectionClosed as exc:
        return exc.reason, exc.message
    finally:
        try:
            ws.close()
        except Exception:  # noqa: BLE001
            pass
    raise AssertionError(f"{path} was not closed by the server within {timeout}s")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedBroker:
    """``dpmq serve`` under gunicorn in a subprocess, on its own port, config file and store."""

    def __init__(self, folder, **sections):
        self.folder = folder
        self.port = free_port()
        data = {"server": {"port": self.port, "pingInterval": 0},
                "storage": {"path": str(folder / "dpmq.db")},
                "log": {"level": "INFO"}}
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        self.config_data = data
        self.config = folder / "application.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        self.proc = None

    def start(self):
        env = dict(os.environ, DPMQ_CONFIG=str(self.config))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "serve"], cwd=self.folder,
                                         env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(self._up, timeout=20, what=f"dpmq serve on port {self.port}; log:\n{self.log}")
        return self

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dpmq serve exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text()}")
        try:
            return requests.get(self.url + "/Console/Ping", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def kill(self, sig=signal.SIGKILL):
        """Signal the whole process group (gunicorn master and worker). After a SIGKILL, return
        once the port is free: the worker can outlive the master by a moment, and a restart then
        finds its port taken (``dpmq serve`` refuses a port in use)."""
        os.killpg(self.proc.pid, sig)
        self.proc.wait(30)
        if sig == signal.SIGKILL:
            wait_for(self._port_free, timeout=10, what=f"port {self.port} to be let go")

    def _port_free(self):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                return False
            return True

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGKILL)


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

    def abort(self):
        """Vanish with a TCP reset: no close frame, unread data thrown away."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.sock.close()


def redis_prefix():
    """A key prefix of its own, so that tests never see each other's keys in the shared Redis."""
    return f"dpmq-test-{uuid.uuid4().hex[:12]}"


def require_redis():
    """Tests of the redis engine need the Redis on 127.0.0.1:6379; CI must have it (never skip)."""
    try:
        redis.Redis(socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis on 127.0.0.1:6379 is not answering ({exc}); .ci/run starts it")
        pytest.skip(f"Redis on 127.0.0.1:6379 is not answering ({exc})")


def drop_prefix(prefix):
    """Delete a test's keys from the shared Redis."""
    client = redis.Redis()
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class EventStreamCollector:
    """An event-stream consumer on a background thread (a raw socket, as an ``EventSource``
    would read it): keeps every event in arrival order as ``(kind, object)``, kind being
    ``"message"`` (its ``id:`` checked against the data's MessageCode), ``"gap"``, ``"close"``
    or ``"error"``. ``status`` is the response's HTTP status; a refusal's body is ``refusal``."""

    def __init__(self, port, path, headers=None, timeout=10.0):
        self.events = []
        self.arrivals = []              # time.time() of each message event
        self.ended = False
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        fields = {"Host": "127.0.0.1", "Accept": "text/event-stream", **(headers or {})}
        head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"no response head for {path}; got {buf!r}")
            buf += chunk
        head, _, self._buf = buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.refusal = None
        self.sock.settimeout(None)
        if self.status != 200:
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            while length and len(self._buf) < int(length.group(1)):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._buf += chunk
            self.refusal = self._buf.decode("utf-8", "replace")
            self.sock.close()
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while True:
                self._parse()
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._buf += chunk
        except OSError:
            pass
        self.ended = True

    def _parse(self):
        while b"\n\n" in self._buf:
            block, _, self._buf = self._buf.partition(b"\n\n")
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                          if ": " in line and not line.startswith(":"))
            if "data" not in fields:
                continue
            body = json.loads(fields["data"])
            if "id" in fields:
                assert fields["id"] == body["MessageCode"], block
                self.arrivals.append(time.time())
                self.events.append(("message", body))
            else:
                self.events.append((fields.get("event", "message"), body))

    @property
    def messages(self):
        return [body for kind, body in self.events if kind == "message"]

    @property
    def codes(self):
        return [m["MessageCode"] for m in self.messages]

    @property
    def gaps(self):
        return [body for kind, body in self.events if kind == "gap"]

    def wait_count(self, count, timeout=10.0):
        wait_for(lambda: len(self.messages) >= count, timeout,
                 what=f"{count} events (have {self.events})")
        return self.messages

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
