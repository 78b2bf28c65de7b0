"""RabbitMQ as a peer in DPMQ's benchmarks (``bench/compare.py``), doing DPMQ's job its own way.

Each topic is a durable fanout exchange; each consumer has a durable queue of its own bound to
it, so a message waits in RabbitMQ for a consumer that is away, as it does in DPMQ's store.
Producers publish persistent messages over AMQP 0-9-1 with pika and publisher confirms, one at a
time, each confirmed (written to disk, or already delivered to every queue's consumer) before
the next, as a DPMQ producer waits for ``code: 0``. Consumers speak STOMP 1.2 over RabbitMQ's
Web-STOMP plugin from :mod:`dpmq.bench.kit`'s asyncio load generator (``protocol="stomp"``), so
that their accounting and their client's cost are those of every other server's consumers.

The peer is named by its Web-STOMP URL, ``ws://guest:guest@127.0.0.1:15674/ws``; the AMQP
port (``?amqp=5672``) and the management API's (``?management=15672``, used to list what a run
left behind) are on the same host with the same credentials; ``?queue=quorum`` declares the
consumers' queues as quorum queues, which confirm a publish only once it is on disk, where a
classic queue (the default) confirms without a write a message its consumers already took;
``?prefetch=N`` has each consumer hold at most N unacknowledged messages and acknowledge them
(``ack: client``) where it otherwise takes them with ``ack: auto``. It needs the
``rabbitmq_web_stomp`` and ``rabbitmq_management`` plugins and ``pip install pika``; pika is
imported only here, and only when a RabbitMQ run needs it.

Names: a consumer at ``/ConsumersConn/<topic>/<name>`` reads the queue ``<topic>.<name>`` bound
to the exchange ``<topic>``. Queues expire after :data:`QUEUE_EXPIRES_MS` without a consumer,
should :func:`cleanup` not run.
"""

import base64
import collections
import json
import re
import sys
import time
import urllib.parse
import urllib.request

from . import kit

#: A queue left behind (a run that crashed before :func:`cleanup`) is deleted by RabbitMQ after
#: this long without a consumer.
QUEUE_EXPIRES_MS = 600_000

Endpoints = collections.namedtuple(
    "Endpoints", "host port path login passcode amqp management queue_type prefetch")

#: The queue types a consumer's queue may be declared as (``?queue=TYPE`` in the peer's URL).
QUEUE_TYPES = ("classic", "quorum")


def endpoints(url):
    """Where the peer named by ``url`` (see the module's docstring) takes each protocol."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    login = urllib.parse.unquote(parts.username or "guest")
    passcode = urllib.parse.unquote(parts.password or "guest")
    host = parts.hostname or "127.0.0.1"
    queue_type = query.get("queue", "classic")
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"RabbitMQ peer {url}: ?queue= takes one of {', '.join(QUEUE_TYPES)}, "
                         f"not {queue_type!r}")
    prefetch = query.get("prefetch", "0")
    if not prefetch.isdigit():
        raise ValueError(f"RabbitMQ peer {url}: ?prefetch= takes a count of messages (0: none, "
                         f"ack: auto), not {prefetch!r}")
    credentials = f"{urllib.parse.quote(login, safe='')}:{urllib.parse.quote(passcode, safe='')}"
    return Endpoints(host, parts.port or 15674, parts.path or "/ws", login, passcode,
                     f"amqp://{credentials}@{host}:{query.get('amqp', '5672')}/%2F",
                     f"http://{host}:{query.get('management', '15672')}/api", queue_type,
                     int(prefetch))


# -- STOMP 1.2 framing ---------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}
_UNESCAPES = {b"\\\\": b"\\", b"\\r": b"\r", b"\\n": b"\n", b"\\c": b":"}
_ESCAPED = re.compile(rb"\\[\\rnc]")


def stomp_frame(command, headers=(), body=b""):
    """One client frame as bytes. Header names and values are escaped as STOMP 1.2 asks, except in
    CONNECT (which the specification leaves unescaped); a body gets its ``content-length``."""
    lines = [command]
    for name, value in dict(headers).items():
        name, value = str(name), str(value)
        if command != "CONNECT":
            name, value = ("".join(_ESCAPES.get(c, c) for c in text) for text in (name, value))
        lines.append(f"{name}:{value}")
    if body:
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode() + body + b"\x00"


def stomp_headers(head):
    """The header lines of a frame (as :class:`StompReader` returns them) as a dict of str; the
    first of a repeated header wins, as STOMP 1.2 says."""
    headers = {}
    for line in head.split(b"\n"):
        name, _, value = line.rstrip(b"\r").partition(b":")
        name, value = (_ESCAPED.sub(lambda m: _UNESCAPES[m[0]], text).decode()
                       for text in (name, value))
        headers.setdefault(name, value)
    return headers


class StompReader:
    """Server frames from a byte stream, whatever pieces it comes in: RabbitMQ sends one frame per
    WebSocket message, but STOMP does not promise it. Not thread-safe: one per connection."""

    def __init__(self):
        self.rest = b""

    def feed(self, data):
        """Append ``data``; return the frames now complete as ``(command, head, body)``, bytes all,
        ``head`` the header lines unparsed (:func:`stomp_headers`). End-of-line heart-beats
        between frames are skipped."""
        buffer = self.rest + data if self.rest else data
        frames, pos, size = [], 0, len(buffer)
        while True:
            while pos < size and buffer[pos] in b"\r\n":
                pos += 1
            head_end, start = _blank_line(buffer, pos)
            if start < 0:
                break
            length = _content_length(buffer, pos, head_end)
            if length is None:
                end = buffer.find(b"\x00", start)
                if end < 0:
                    break
            else:
                end = start + length
                if end >= size:
                    break
                if buffer[end] != 0:
                    raise ValueError(f"a STOMP frame's body runs past its content-length {length}")
            command, _, head = buffer[pos:head_end].partition(b"\n")
            frames.append((command.rstrip(b"\r"), head, buffer[start:end]))
            pos = end + 1
        self.rest = buffer[pos:]
        return frames


def _blank_line(buffer, pos):
    """Where the headers of the frame at ``pos`` end and its body starts; (-1, -1) if they have
    not all come yet. Lines end in LF or CRLF (``bytes.find`` is ten times a regular
    expression's speed here)."""
    lf = buffer.find(b"\n\n", pos)
    crlf = buffer.find(b"\n\r\n", pos, lf if lf >= 0 else len(buffer))
    if crlf >= 0:
        return crlf - (buffer[crlf - 1:crlf] == b"\r"), crlf + 3
    return (lf - (buffer[lf - 1:lf] == b"\r"), lf + 2) if lf >= 0 else (-1, -1)


def _content_length(buffer, start, end):
    found = buffer.find(b"\ncontent-length:", start, end)
    if found < 0:
        return None
    value = buffer[found + 16:end].split(b"\n", 1)[0]
    return int(value)


# -- the message -----------------------------------------------------------------------------------

def message(producer, seq, size, topic):
    """A message body shaped as the JSON object DPMQ pushes (``MessageData`` carries kit's
    payload), so that :class:`kit.Tracker` reads it unchanged and the frames weigh the same."""
    return json.dumps({"MessageCode": 0, "MessageData": kit.payload(producer, seq, size),
                       "Topic": topic, "CreateTime": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "Status": 0}, separators=(",", ":")).encode()


# -- consumers -------------------------------------------------------------------------------------

def consumers(url, paths):
    """Declare the exchanges of ``paths``' topics (consumers bind to them, so they exist first)
    and return the coroutine function kit's consumer process runs per connection, with the
    signature of ``kit._consume``."""
    ends = endpoints(url)
    declare_exchanges(ends.amqp, sorted({path.split("/")[2] for path in paths}))

    async def consume(host, port, path, tracker, connected, protocol, gate, pace=None):
        await _consume(ends, path, tracker, connected, gate, pace)

    return consume


async def _consume(ends, path, tracker, connected, gate, pace):
    """One Web-STOMP consumer: CONNECT, then SUBSCRIBE to the topic's exchange through a durable
    queue of its own with ``ack: auto``, or acknowledging (:class:`_Acks`); it counts as
    connected when the RECEIPT of its SUBSCRIBE says the queue is bound. ``pace`` slows its
    reading as in ``kit._consume``."""
    _, _, topic, name = path.split("/")
    reader, writer = await kit._open(ends.host, ends.port, ends.path, gate,
                                     headers="Sec-WebSocket-Protocol: v12.stomp\r\n")
    writer.write(kit._client_frame(1, stomp_frame("CONNECT", {
        "accept-version": "1.2", "host": "/", "login": ends.login, "passcode": ends.passcode,
        "heart-beat": "0,0"})))
    flow = {"ack": "client", "prefetch-count": ends.prefetch} if ends.prefetch else {"ack": "auto"}
    subscribe = kit._client_frame(1, stomp_frame("SUBSCRIBE", {
        "id": 0, "destination": f"/exchange/{topic}", "x-queue-name": f"{topic}.{name}",
        "durable": "true", "auto-delete": "false", "x-expires": QUEUE_EXPIRES_MS,
        "x-queue-type": ends.queue_type, **flow, "receipt": "subscribed"}))
    stomp = StompReader()
    acks = _Acks(ends.prefetch) if ends.prefetch else None
    async for now, frames in kit.read_frames(reader, tracker, pace):
        for opcode, body in frames:
            if opcode == 8:
                return
            if opcode == 9:
                writer.write(kit._client_frame(10, body))
            elif opcode in (1, 2):
                _on_stomp(stomp.feed(body), now, tracker, writer, subscribe, connected, acks)


class _Acks:
    """With ``?prefetch=N`` a consumer may hold N unacknowledged messages; it acknowledges every
    one up to the latest (``ack: client`` is cumulative) each time half of N have come, so that
    RabbitMQ never waits for it and it writes one frame per N/2 messages."""

    def __init__(self, prefetch):
        self.every, self.pending = max(1, prefetch // 2), 0

    def frame(self, head, writer):
        self.pending += 1
        if self.pending >= self.every:
            self.pending = 0
            writer.write(kit._client_frame(1, stomp_frame(
                "ACK", {"id": stomp_headers(head)["ack"]})))


def _on_stomp(frames, now, tracker, writer, subscribe, connected, acks):
    for command, head, payload in frames:
        if command == b"MESSAGE":
            tracker.frame(payload, now)
            if acks:
                acks.frame(head, writer)
        elif command == b"CONNECTED":
            writer.write(subscribe)
        elif command == b"RECEIPT":
            connected()
        elif command == b"ERROR":
            raise ConnectionError(f"RabbitMQ: {stomp_headers(head).get('message')}: "
                                  f"{payload[:200].decode(errors='replace')}")


# -- producers -------------------------------------------------------------------------------------

def producer_process(url, index, topics, count, size, batch, rate, token, conn):
    """Run in a child process, as :func:`kit.producer_process` for DPMQ: publish ``count``
    persistent messages round-robin over ``topics``' exchanges, at most ``rate`` per second if
    given, each confirmed before the next; report accepted (confirmed) and refused (nacked).

    ``batch`` does not apply: pika's blocking channel waits for each confirm, and publishing N
    before waiting would be another scenario than DPMQ's one request of N messages. ``token``
    does not apply either (RabbitMQ's credentials are in ``url``)."""
    import pika
    if batch > 1:
        print("rabbitmq producer: batch does not apply; publishing one at a time", file=sys.stderr)
    connection = pika.BlockingConnection(pika.URLParameters(endpoints(url).amqp))
    channel = connection.channel()
    channel.confirm_delivery()
    _declare(channel, topics)
    persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    conn.send(("ready", index))
    conn.recv()                         # wait for "go"
    accepted = refused = 0
    started, cpu = time.perf_counter(), time.process_time()
    for seq in range(count):
        if rate:
            delay = started + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        topic = topics[seq % len(topics)]
        try:
            channel.basic_publish(topic, "", message(index, seq, size, topic), persistent)
            accepted += 1
        except pika.exceptions.NackError:
            refused += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    connection.close()
    conn.send(("done", {"accepted": accepted, "refused": refused, "seconds": seconds,
                        "cpu": cpu}))


# -- set-up and clean-up ---------------------------------------------------------------------------

def _declare(channel, topics):
    for topic in topics:
        channel.exchange_declare(topic, "fanout", durable=True)


def declare_exchanges(amqp_url, topics):
    """A durable fanout exchange per topic (declaring an existing one again changes nothing)."""
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        _declare(connection.channel(), topics)
    finally:
        connection.close()


def sockets_free(url):
    """How many more sockets RabbitMQ may open (its node's ``sockets_total`` less
    ``sockets_used``, from the management API), or None if it does not say.

    RabbitMQ sizes ``sockets_total`` from its file-descriptor limit (832 under ``ulimit -n 1024``).
    Past it, RabbitMQ 3.10 refuses connections, and then a process of its own that cannot open a
    file stops the node: a harness must not connect more consumers than this."""
    ends = endpoints(url)
    node = _management(ends, "nodes")[0]
    if "sockets_total" not in node:
        return None
    return node["sockets_total"] - node.get("sockets_used", 0)


def names(url, prefix):
    """The names of the queues and of the exchanges that start with ``prefix``: two lists."""
    ends = endpoints(url)
    return _names(ends, "queues", prefix), _names(ends, "exchanges", prefix)


def cleanup(url, prefix, keep=((), ())):
    """Delete the queues, then the exchanges, whose names start with ``prefix`` but for those in
    ``keep`` (what :func:`names` found before a run): durable queues would keep every message
    published to them for ever. Returns how many queues and exchanges it deleted."""
    import pika
    queues, exchanges = ([name for name in found if name not in kept]
                         for found, kept in zip(names(url, prefix), map(set, keep)))
    if queues or exchanges:
        connection = pika.BlockingConnection(pika.URLParameters(endpoints(url).amqp))
        try:
            channel = connection.channel()
            for name in queues:
                channel.queue_delete(name)
            for name in exchanges:
                channel.exchange_delete(name)
        finally:
            connection.close()
    return len(queues), len(exchanges)


def _names(ends, kind, prefix):
    """The names of the vhost's ``kind`` ("queues", "exchanges") that start with ``prefix``, from
    the management API (AMQP cannot list them)."""
    return [item["name"] for item in _management(ends, f"{kind}/%2F?columns=name")
            if item["name"].startswith(prefix)]


def _management(ends, path):
    request = urllib.request.Request(f"{ends.management}/{path}")
    secret = base64.b64encode(f"{ends.login}:{ends.passcode}".encode()).decode()
    request.add_header("Authorization", f"Basic {secret}")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)
