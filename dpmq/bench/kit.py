"""The load generators behind ``dpmq bench``: producer and consumer processes.

Consumers are asyncio WebSocket clients (many connections per process, a buffered frame parser,
no per-message JSON decoding), producers are lean keep-alive HTTP clients; both run in processes
of their own, so that the broker is what is measured. Each message carries
``<producer>:<sequence>:<send time in ns>:<padding>``; consumers check it for loss, duplicates and
order (per producer) and collect end-to-end latencies.
"""

import asyncio
import base64
import json
import os
import re
import socket
import struct
import time
import urllib.parse

_PAYLOAD = re.compile(rb'"MessageData":"(\d+):(\d+):(\d+):')


def payload(producer, seq, size):
    head = f"{producer}:{seq}:{time.time_ns()}:"
    return head + "x" * max(0, size - len(head))


class Tracker:
    """What one consumer saw: per producer a bitmap of sequences, order and latencies."""

    def __init__(self, producers, per_producer, keep_latency):
        self.seen = [bytearray(per_producer) for _ in range(producers)]
        self.last = [-1] * producers
        self.received = self.duplicated = self.out_of_order = 0
        self.latencies = [] if keep_latency else None

    def frame(self, data, now_ns):
        fields = _PAYLOAD.search(data)
        producer, seq = int(fields[1]), int(fields[2])
        self.received += 1
        seen = self.seen[producer]
        if seen[seq]:
            self.duplicated += 1
            return
        seen[seq] = 1
        if seq < self.last[producer]:
            self.out_of_order += 1
        self.last[producer] = seq
        if self.latencies is not None:
            self.latencies.append((now_ns - int(fields[3])) / 1e6)

    def unique(self):
        return sum(sum(bitmap) for bitmap in self.seen)


def _frames(buffer):
    """Complete server frames at the start of ``buffer`` (bytes, so that each payload is copied
    once): ([(opcode, payload)], bytes used)."""
    frames, pos, size = [], 0, len(buffer)
    while size - pos >= 2:
        length, header = buffer[pos + 1] & 0x7F, 2
        if length == 126:
            if size - pos < 4:
                break
            length, header = struct.unpack_from("!H", buffer, pos + 2)[0], 4
        elif length == 127:
            if size - pos < 10:
                break
            length, header = struct.unpack_from("!Q", buffer, pos + 2)[0], 10
        end = pos + header + length
        if size < end:
            break
        frames.append((buffer[pos] & 0x0F, buffer[pos + header:end]))
        pos = end
    return frames, pos


def _client_frame(opcode, payload):
    """A masked client frame (RFC 6455 requires clients to mask)."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _open(host, port, path, gate, headers=""):
    """Connect and upgrade; ``gate`` bounds the handshakes in progress, so that thousands of
    consumers do not overflow the server's listen backlog at once. ``headers``: more request
    header lines, each ending in CRLF."""
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\n{headers}\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    return reader, writer


async def _consume(host, port, path, tracker, connected, protocol, gate, pace=None):
    """One consumer connection. ``protocol`` "socketio" speaks to the Flask-SocketIO peer: it joins
    the room of the topic named in ``path`` and answers Engine.IO pings. ``pace``, a one-item list,
    makes it a slow reader: at most ``pace[0]`` frames a second, until ``pace[0]`` is cleared."""
    topic = path.split("/")[2]
    if protocol == "socketio":
        path = "/socket.io/?EIO=4&transport=websocket"
    reader, writer = await _open(host, port, path, gate)
    if pace and pace[0]:    # a small receive buffer: what it has not read waits in the broker
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    if protocol == "socketio":
        writer.write(_client_frame(1, b"40"))
        writer.write(_client_frame(1, b'420["join",' + json.dumps(topic).encode() + b"]"))
    else:
        connected()
    async for now, frames in read_frames(reader, tracker, pace):
        for opcode, body in frames:
            if opcode == 8:
                return
            _on_frame(opcode, body, now, tracker, writer, connected, protocol)


async def read_frames(reader, tracker, pace=None):
    """Each read's complete WebSocket frames with when they arrived, while the connection lasts;
    with ``pace`` set, no faster than ``pace[0]`` of ``tracker``'s frames a second."""
    rest, started = b"", None
    while True:
        chunk = await reader.read(4096 if pace and pace[0] else 262144)
        if not chunk:
            return
        buffer = rest + chunk if rest else chunk
        now = time.time_ns()
        frames, used = _frames(buffer)
        rest = buffer[used:]
        yield now, frames
        if pace and pace[0]:
            started = started or time.monotonic()
            await _slow_read(pace, tracker, started)


async def _slow_read(pace, tracker, started):
    """Wait until this connection's frames so far fit ``pace[0]`` a second since ``started``,
    in short steps, so that a "drain" (``pace[0]`` cleared) takes effect at once."""
    while pace[0]:
        due = started + tracker.received / pace[0] - time.monotonic()
        if due <= 0:
            return
        await asyncio.sleep(min(due, 0.05))


def _on_frame(opcode, body, now, tracker, writer, connected, protocol):
    if opcode == 1:
        if protocol == "dpmq" or body.startswith(b"42"):
            tracker.frame(body, now)
        elif body == b"2":              # an Engine.IO ping
            writer.write(_client_frame(1, b"3"))
        elif body.startswith(b"430"):   # the ack of our join
            connected()
    elif opcode == 9:
        writer.write(_client_frame(10, body))


def consumer_process(url, paths, producers, per_producer, keep_latency, conn, protocol="dpmq",
                     read_rate=None):
    """Run in a child process: hold ``paths`` connections; report through ``conn``. With
    ``read_rate`` each connection reads at most that many frames a second until told "drain".

    Commands: "report" (frames received), "latencies" (those kept since the last ask, and keep
    them from now on), "drain" (read at full speed), "finish" (what each connection saw).
    ``protocol`` "stomp": RabbitMQ's Web-STOMP at ``url`` (:mod:`dpmq.bench.rabbitmq`)."""
    parts = urllib.parse.urlsplit(url)
    trackers = [Tracker(producers, per_producer, keep_latency) for _ in paths]
    pace = [read_rate]
    consume = _consume
    if protocol == "stomp":
        from . import rabbitmq
        consume = rabbitmq.consumers(url, paths)

    async def main():
        connected = [0]

        def one_more():
            connected[0] += 1

        gate = asyncio.Semaphore(100)
        tasks = [asyncio.ensure_future(consume(parts.hostname, parts.port, path, tracker, one_more,
                                               protocol, gate, pace))
                 for path, tracker in zip(paths, trackers)]
        deadline = time.monotonic() + 60 + len(paths) / 100
        while connected[0] < len(paths):
            ended = [t for t in tasks if t.done()]
            if ended or time.monotonic() > deadline:
                reason = (repr(ended[0].exception()) if ended and ended[0].exception()
                          else "closed by the server" if ended else "timed out")
                conn.send(("error", f"{connected[0]} of {len(paths)} connected; {reason}"))
                return
            await asyncio.sleep(0.01)
        conn.send(("connected", len(paths)))
        cpu = time.process_time()
        while True:
            await asyncio.sleep(0.1)
            if conn.poll() and _command(conn.recv(), trackers, pace, conn) == "finish":
                break
        conn.send(("done", {"cpu": time.process_time() - cpu, "trackers": [
            {"received": t.received, "unique": t.unique(), "duplicated": t.duplicated,
             "outOfOrder": t.out_of_order, "latencies": t.latencies} for t in trackers]}))
        for task in tasks:
            task.cancel()

    asyncio.run(main())


def _command(command, trackers, pace, conn):
    """Answer one command of the parent process; returns it."""
    if command == "report":
        conn.send(("report", sum(t.received for t in trackers)))
    elif command == "latencies":
        conn.send(("latencies", [ms for t in trackers for ms in t.latencies or ()]))
        for tracker in trackers:
            tracker.latencies = []
    elif command == "drain":
        pace[0] = None
    return command


class KeepAlive:
    """One keep-alive HTTP/1.1 connection that posts and reads the reply, and little else.

    The load generator shares the machine with the broker it measures: a producer built on
    ``http.client`` spends about as much CPU per publish as the broker spends serving it, and
    this one a fraction of that. It builds the request in one string and reads only
    the status, the reply's framing (``Content-Length``, chunked, or until the server closes)
    and the body.
    """

    def __init__(self, host, port, timeout=30):
        self.address, self.timeout = (host, port), timeout
        self.head = f"Host: {host}:{port}\r\n"
        self.sock = None

    def post(self, path, body, content_type, token=None):
        """Send one request and return ``(status, body)``."""
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        body = body.encode() if isinstance(body, str) else body
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock.sendall(f"POST {path} HTTP/1.1\r\n{self.head}{auth}Content-Type: {content_type}"
                          f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = self._until(b"\r\n\r\n")
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip().lower()
        if b"content-length" in fields:
            reply = self._exactly(int(fields[b"content-length"]))
        elif fields.get(b"transfer-encoding") == b"chunked":
            reply = self._chunked()
        else:
            reply, fields[b"connection"] = self._rest(), b"close"
        if fields.get(b"connection") == b"close":
            self.sock.close()
            self.sock = None
        return int(head[9:12]), reply

    def _until(self, marker):
        while marker not in self.buffer:
            self._fill()
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def _exactly(self, size):
        while len(self.buffer) < size:
            self._fill()
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def _chunked(self):
        parts = []
        while True:
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                self._until(b"\r\n")      # no trailers are expected; the blank line ends it
                return b"".join(parts)
            parts.append(self._exactly(size))
            self._exactly(2)

    def _rest(self):
        while chunk := self.sock.recv(65536):
            self.buffer += chunk
        found, self.buffer = self.buffer, b""
        return found

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before its reply ended")
        self.buffer += chunk


def producer_process(url, index, topics, count, size, batch, rate, token, conn):
    """Run in a child process: publish ``count`` messages (``batch`` per request), round-robin
    over ``topics``, at most ``rate`` per second if given; report accepted and refused. A ``ws://``
    ``url`` is RabbitMQ's Web-STOMP: its producers publish over AMQP (:mod:`dpmq.bench.rabbitmq`)."""
    if url.startswith(("ws://", "wss://")):
        from . import rabbitmq
        return rabbitmq.producer_process(url, index, topics, count, size, batch, rate, token, conn)
    parts = urllib.parse.urlsplit(url)
    client = KeepAlive(parts.hostname, parts.port)
    # a form body is the topic's part, built once, and the payload, whose only reserved
    # character is ":" (urlencode per message cost 17 µs, a tenth of the client's time)
    forms = {topic: urllib.parse.urlencode({"topic": topic}) + "&messageData=" for topic in topics}
    conn.send(("ready", index))
    conn.recv()                         # wait for "go"
    accepted = refused = 0
    started, cpu = time.perf_counter(), time.process_time()
    seq = 0
    while seq < count:
        if rate:
            delay = started + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        topic = topics[seq % len(topics)]
        if batch > 1:
            n = min(batch, count - seq)
            body = json.dumps({"topic": topic, "messages": [payload(index, seq + i, size)
                                                            for i in range(n)]})
            status, reply = client.post("/ProducerSendBatch", body, "application/json", token)
        else:
            n = 1
            body = forms[topic] + payload(index, seq, size).replace(":", "%3A")
            status, reply = client.post("/ProducerSend", body,
                                        "application/x-www-form-urlencoded", token)
        if status == 200 and reply.startswith(b'{"code":0'):
            accepted += n
        else:
            refused += n
        seq += n
    conn.send(("done", {"accepted": accepted, "refused": refused,
                        "seconds": time.perf_counter() - started,
                        "cpu": time.process_time() - cpu}))
