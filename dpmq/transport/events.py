"""Server-Sent Events: a consumer's subscription as an HTTP ``text/event-stream``.

:data:`EVENTS` is the event-stream *framing* (see
:class:`~dpmq.delivery.consumer_connection.Framing`): one event per message, ``id:`` its
MessageCode and ``data:`` the pushed JSON, so that a browser's ``EventSource`` sends the last one
back as ``Last-Event-ID`` when it reconnects. Gap notices always go on the stream
(``event: gap``), as an event-stream reader skips the events it does not listen for.

:class:`EventStream` is the protocol side of one such consumer, as
:class:`~dpmq.transport.websocket.WebSocketChannel` is for a WebSocket: under DPMQ's worker the
broker's :class:`~dpmq.transport.inbound.Inbound` thread watches it with every other consumer and
sends its keep-alive comments in the ping rounds; under another server the route thread waits in
:meth:`EventStream.wait` for the stream's end, keeping it alive meanwhile. Any thread may end it
with :meth:`EventStream.close`. Every write goes through the consumer's
:class:`~dpmq.transport.connection.Connection`, the only writer of the socket.
"""

import json
import select
import socket

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
#: What EventSource waits before it reconnects, in milliseconds (sent once, first on the stream).
RETRY_MS = 1000
_CLOSE = b"event: close\n"


class EventStreamFraming:
    """Messages as ``id:``/``data:`` events, errors as ``event: error``, a comment to keep the
    stream alive. Stateless: :data:`EVENTS` serves every connection."""

    name = "sse"
    #: A comment line: every reader ignores it, and proxies see the stream is alive.
    keepalive = b": keep-alive\n\n"

    @staticmethod
    def message(payload):
        """One message's event. The payload is :func:`dpmq.message.payload`'s JSON, which always
        begins ``{"MessageCode":"<40 hex>"``: its MessageCode is ``payload[16:56]``."""
        return b"id: " + payload[16:56] + b"\ndata: " + payload + b"\n\n"

    @staticmethod
    def reply(obj):
        """An answer that is not a message (an error about an ack)."""
        return event(b"error", obj)

    @staticmethod
    def notice(obj):
        """A gap notice: an event stream always takes them."""
        return event(b"gap", obj)

    @staticmethod
    def closes(data):
        """Whether ``data`` is the final ``event: close`` DPMQ writes when it ends the stream.
        Nothing else it writes (the response head, comments) closes anything."""
        return data.startswith(_CLOSE)


EVENTS = EventStreamFraming()


def event(kind, obj):
    """An event named ``kind`` whose data is ``obj`` as JSON (one line: JSON escapes newlines)."""
    return b"event: " + kind + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def response_head(extra_headers=()):
    """The response that starts an event stream, and its first line: reconnect after RETRY_MS.

    No Content-Length and ``Connection: close``: the body ends when the connection does.
    ``X-Accel-Buffering: no`` asks nginx not to hold events back."""
    lines = [b"HTTP/1.1 200 OK", b"Content-Type: text/event-stream", b"Cache-Control: no-cache",
             b"X-Accel-Buffering: no", b"Connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in extra_headers]
    return b"\r\n".join(lines) + b"\r\n\r\nretry: %d\n\n" % RETRY_MS


class EventStream:
    """One consumer's event stream once it is subscribed. :meth:`wait` is for the route thread;
    :meth:`close` may be called from any thread (the broker does, on shutdown with 1001)."""

    #: What arrived with the request, for :class:`~dpmq.transport.inbound.Inbound`: nothing.
    pending = ()

    def __init__(self, conn):
        self.conn = conn                    # the outgoing side, the only writer
        self.close_code = None              # DPMQ's code when it ended the stream

    @property
    def open(self):
        return self.close_code is None

    @property
    def pong_received(self):
        """Always: an event stream's client has no answer to a keep-alive; a write that fails
        is its end."""
        return True

    @pong_received.setter
    def pong_received(self, value):
        pass

    def receive(self, data):
        """What the client sent (b"" at its end), read by the inbound thread: nothing DPMQ
        reads, so no messages."""
        return []

    def ended(self):
        """Why the stream ended, once it has."""
        if self.close_code is not None:
            return f"closed by DPMQ with code {self.close_code}"
        return "closed by the consumer"

    def close(self, code, reason=""):
        """Write the final ``event: close`` with ``{"code", "reason"}``; nothing follows it. The
        caller then stops the reading side (:meth:`Connection.stop_reading`), which ends
        :meth:`wait`."""
        if self.close_code is not None:
            return
        self.close_code = code
        try:
            self.conn.write_control(event(b"close", {"code": code, "reason": reason}))
        except OSError:
            pass

    def wait(self, ping_interval):
        """Wait until the stream ends; returns why. Keep-alive comments go out every
        ``ping_interval`` seconds (none with 0). What the client sends is read and ignored: an
        event stream's client has nothing to say, and its end (or an error) is the end.

        The socket is watched with ``poll`` and never given a timeout: the delivery shard writes
        to it with MSG_DONTWAIT, and a timeout would make those writes wait."""
        raw = self.conn.raw
        waiter = select.poll()      # not select: descriptors may be numbered past 1023
        waiter.register(raw, select.POLLIN)
        timeout = ping_interval * 1000 if ping_interval > 0 else None
        while True:
            if not waiter.poll(timeout):
                try:
                    self.conn.ping()
                except BrokenPipeError:
                    return "the consumer is gone"
                continue
            try:
                if not raw.recv(4096, _DONTWAIT):
                    return self.ended()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                return f"the connection failed: {exc}"


class HeadFirst:
    """The socket as an event-stream consumer's Connection sees it: nothing goes out before the
    response head.

    The head can only be written once the subscription is taken (a refusal is an HTTP error
    instead), and from then on the delivery shard may write messages at any moment. So until
    :meth:`start` writes the head, sends take nothing (as a full socket would): the shard waits
    for writability and tries again, for the moment between the two."""

    def __init__(self, raw):
        self._raw = raw
        self._held = True

    def start(self, head):
        """Write the response head (the socket is empty: it takes it at once), then let the
        Connection's writes through."""
        self._raw.sendall(head)
        self._held = False

    def send(self, data, flags=0):
        if self._held:
            raise BlockingIOError("the response head is not written yet")
        return self._raw.send(data, flags)

    def sendmsg(self, buffers, ancdata=(), flags=0):
        if self._held:
            raise BlockingIOError("the response head is not written yet")
        return self._raw.sendmsg(buffers, ancdata, flags)

    def __getattr__(self, name):
        return getattr(self._raw, name)
