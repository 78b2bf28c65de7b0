"""The WebSocket client under :class:`dpmq.client.Consumer`, on wsproto's public API.

What a consumer needs from a WebSocket client, and why it is written here rather than taken whole
from a library:

- Writes are serialised under one lock: the reader thread answers the broker's Pings while the
  application thread sends acks, and neither wsproto nor the socket may be used by two threads at
  once (interleaved, they corrupt frames and the broker drops the connection).
- Nothing waits with the handshake: frames that arrive in the same read as the server's answer
  (a broker pushes right after accepting) are delivered at once.
- A program can end: the reader thread is a daemon, and :meth:`WebSocketClient.close` waits
  ``close_timeout`` seconds for the Close reply, then shuts the socket down whatever the server
  does.
- A server that accepts TCP but never answers the handshake fails after ``handshake_timeout``.

Errors are simple-websocket's public exceptions (``ConnectionClosed`` with the close code in
``reason``, ``ConnectionError`` with the HTTP status of a refused handshake), which DPMQ's users
and tests already catch.
"""

import queue
import socket
import ssl
import threading
import time
import urllib.parse

from simple_websocket import ConnectionClosed, ConnectionError
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

#: The most read from the socket at once.
READ = 65536
#: Queued by a reader thread after the last item of a connection that has ended.
ENDED = object()


class WebSocketClient:
    """One client connection: :meth:`connect`, then :meth:`receive`, :meth:`send`, :meth:`close`.

    :meth:`receive` is for one thread; :meth:`send` and :meth:`close` may be called from any."""

    close_timeout = 1.0

    def __init__(self, sock, ws, pending, ping_interval=None):
        self.sock = sock
        self.connected = True
        self.close_reason = None        # the close code, once closed
        self.close_message = None
        self._ws = ws
        self._lock = threading.Lock()   # every write: wsproto's state and the socket
        self._inbox = queue.SimpleQueue()
        self._parts = []                # a fragmented message's parts so far
        self._ping_interval = ping_interval
        self._handle(pending)
        self._reader = threading.Thread(target=self._read, name="dpmq-ws-client", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, url, headers=None, handshake_timeout=None, ping_interval=None):
        """Open ``url`` (ws:// or wss://); raises ``ConnectionError`` (its ``status_code`` the
        HTTP status) if the server refuses the handshake, OSError if it cannot be reached."""
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "wss"
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock = socket.create_connection((host, port), timeout=handshake_timeout)
        try:
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host=f"{host}:{port}" if parts.port else host,
                                         target=target, extra_headers=[
                                             (k.encode(), v.encode())
                                             for k, v in (headers or {}).items()])))
            pending = _handshake(sock, ws)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return cls(sock, ws, pending, ping_interval)

    # -- the application's side ----------------------------------------------------------------
    def receive(self, timeout=None):
        """The next message (str, or bytes for a binary one); None after ``timeout`` seconds.
        Raises ``ConnectionClosed`` (``reason`` the close code) once the connection has ended."""
        return take(self._inbox, timeout, self)

    def send(self, data):
        """Send one text (str) or binary (bytes) message."""
        if not self.connected:
            raise ConnectionClosed(self.close_reason, self.close_message)
        self._write(TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data))

    def close(self, reason=1000, message=None):
        """Send a Close frame, give the server ``close_timeout`` seconds to answer it, then end
        the connection and its reader thread whatever the server does."""
        try:
            self._write(CloseConnection(code=reason, reason=message))
        except (ConnectionClosed, OSError):
            pass
        if self._reader is not threading.current_thread():
            self._reader.join(self.close_timeout)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes the reader thread if still in recv()
        except OSError:
            pass
        self.sock.close()

    def _write(self, event):
        with self._lock:
            if self._ws.state is not ConnectionState.OPEN and not isinstance(event, CloseConnection):
                raise ConnectionClosed(self.close_reason, self.close_message)
            try:
                data = self._ws.send(event)
            except LocalProtocolError:
                raise ConnectionClosed(self.close_reason, self.close_message) from None
            self.sock.sendall(data)

    # -- the reader thread ---------------------------------------------------------------------
    def _read(self):
        next_ping = self._next_ping()
        try:
            while self.connected:
                if next_ping is not None:
                    self.sock.settimeout(max(0.0, next_ping - time.monotonic()))
                try:
                    data = self.sock.recv(READ)
                except socket.timeout:
                    self._write(Ping())
                    next_ping = self._next_ping()
                    continue
                self._ws.receive_data(data or None)
                self._handle(())
                if not data:
                    break
        except (OSError, RemoteProtocolError, ConnectionClosed):
            pass
        finally:
            self._end(self.close_reason or 1006, self.close_message)

    def _next_ping(self):
        return None if not self._ping_interval else time.monotonic() + self._ping_interval

    def _handle(self, events):
        """Events the handshake left over, then whatever wsproto has parsed since."""
        for event in list(events) + list(self._ws.events()):
            if isinstance(event, Message):
                self._parts.append(event.data)
                if event.message_finished:
                    joined = "".join(self._parts) if isinstance(event, TextMessage) \
                        else b"".join(self._parts)
                    self._parts = []
                    self._inbox.put(joined)
            elif isinstance(event, Ping):
                self._write(event.response())
            elif isinstance(event, CloseConnection):
                self.close_reason, self.close_message = event.code, event.reason
                try:
                    self._write(event.response())
                except (ConnectionClosed, OSError):
                    pass
                self._end(event.code, event.reason)

    def _end(self, code, reason):
        if self.connected:
            self.connected = False
            self.close_reason, self.close_message = code, reason
            self._inbox.put(ENDED)


def _handshake(sock, ws):
    """Read the server's answer; returns the events that came after it in the same reads."""
    while True:
        data = sock.recv(READ)
        if not data:
            raise ConnectionError(None)     # closed before it answered the handshake
        try:
            ws.receive_data(data)
            events = list(ws.events())
        except RemoteProtocolError:         # not an HTTP answer at all
            raise ConnectionError(None) from None
        for index, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                return events[index + 1:]
            if isinstance(event, (RejectConnection, RejectData)):
                raise ConnectionError(getattr(event, "status_code", None))


def take(inbox, timeout, connection):
    """The next item a reader thread queued on ``inbox``; None after ``timeout`` seconds.

    Shared with :mod:`dpmq.event_stream_client`, whose reader queues the same way, so that the
    consumer's one reconnect loop meets one behaviour: past :data:`ENDED` it raises
    ``ConnectionClosed`` with ``connection``'s close code and message, and leaves ``ENDED`` queued,
    so that every later call says the same (as a closed socket does) instead of waiting for ever.
    """
    try:
        item = inbox.get(timeout=timeout)
    except queue.Empty:
        return None
    if item is ENDED:
        inbox.put(ENDED)
        raise ConnectionClosed(connection.close_reason, connection.close_message)
    return item
