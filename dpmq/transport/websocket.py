"""A consumer's WebSocket once it is accepted: DPMQ's own framing, on wsproto's public API.

flask-sock and simple-websocket accept a consumer (the route, the handshake); from then on DPMQ
owns the stream. What the consumer sends is parsed by a ``wsproto.connection.Connection`` of its
own (wsproto's documented way to handle a connection whose handshake was done elsewhere), and
every frame DPMQ sends, messages, Pings, Pongs and Close, goes through the consumer's
:class:`~dpmq.transport.connection.Connection`, the only writer of the socket. No extension is negotiated
(the handshake is offered none), so every consumer receives the same prebuilt frame bytes.

One read is taken without the parser: exactly one empty Pong, when the bytes before it ended a
frame (:class:`~dpmq.transport.frames.FrameEnds` follows where they end). That is what an idle consumer
sends in answer to each Ping, and the parser's way took about half of the interpreter's time that
many idle consumers cost.
"""

import threading

from wsproto import ConnectionType
from wsproto.connection import Connection as Protocol
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong
from wsproto.utilities import LocalProtocolError

from .frames import FrameEnds

#: A consumer's answer to our Ping (which carries nothing): FIN and Pong, masked, no payload.
PONG = b"\x8a\x80"
CLOSE_TOO_BIG = 1009


class WebSocketChannel:
    """The protocol side of one consumer's WebSocket. :meth:`receive` is for the one thread that
    reads the socket; :meth:`close` may be called from any thread."""

    def __init__(self, conn, max_message_size=65536, trailing=b""):
        self.conn = conn                    # the outgoing side, the only writer
        self.max_message_size = max_message_size
        self.pong_received = True           # the last Ping was answered (none sent yet)
        self.close_code = None              # how it was closed, once it was, by either side
        self.frames = FrameEnds()           # the first byte after the handshake starts a frame
        self._protocol = Protocol(ConnectionType.SERVER)
        self._lock = threading.Lock()       # wsproto's state, between the reader and closers
        self._parts = []                    # a fragmented message's parts so far
        self._size = 0
        self.pending = self.receive(trailing) if trailing else []

    @property
    def open(self):
        return self.close_code is None

    def receive(self, data):
        """Take what the socket gave (b"" at its end); returns the messages that completed (str,
        or bytes for a binary one). Pings are answered, and a Close is answered and ends it."""
        if len(data) == 6 and data.startswith(PONG) and self.frames.at_start:
            self.pong_received = True
            return []
        self.frames.feed(data)
        messages = []
        with self._lock:
            try:
                self._protocol.receive_data(data or None)
            except LocalProtocolError:      # what follows a Close exchange is not read
                self.close_code = self.close_code or 1006
                return messages
            for event in self._protocol.events():
                if isinstance(event, Message):
                    self._take_part(event, messages)
                elif isinstance(event, Ping):
                    self._send_locked(event.response())
                elif isinstance(event, Pong):
                    self.pong_received = True
                elif isinstance(event, CloseConnection):
                    state = self._protocol.state
                    if state is ConnectionState.REMOTE_CLOSING:     # the consumer closes
                        self._send_locked(event.response())
                    elif state is ConnectionState.OPEN:     # a protocol error, with its code
                        self._close_locked(event.code, event.reason or "")
                    self.close_code = self.close_code or event.code
                if self.close_code is not None:
                    break
        return messages

    def _take_part(self, event, messages):
        self._size += len(event.data)
        if self._size > self.max_message_size:
            self._close_locked(CLOSE_TOO_BIG, f"message larger than {self.max_message_size} bytes")
            return
        self._parts.append(event.data)
        if event.message_finished:
            joined = (b"" if isinstance(event, BytesMessage) else "").join(self._parts)
            self._parts, self._size = [], 0
            messages.append(joined)

    def close(self, code, reason=""):
        """Send a Close with ``code`` and ``reason`` (from any thread); the consumer's answer, or
        its end, then ends the connection."""
        with self._lock:
            self._close_locked(code, reason)

    def _close_locked(self, code, reason):
        if self._protocol.state is ConnectionState.OPEN:
            self._send_locked(CloseConnection(code=code, reason=_fit(reason)))
        self.close_code = self.close_code or code

    def _send_locked(self, event):
        try:
            self.conn.write_control(self._protocol.send(event))
        except (BrokenPipeError, OSError):
            self.close_code = self.close_code or 1006


def _fit(text):
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 section 5.5)."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")
