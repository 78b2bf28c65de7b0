"""What consumers send, read by one thread for all of them, and the pings that keep them alive.

Reading each consumer on a thread of its own (simple-websocket's way) and pinging from that thread
too meant two thread wake-ups per consumer and ping interval (a ping sent, a Pong read), which
many idle consumers turn into a steady cost. Here one thread waits on every consumer socket in one
selector and sends the pings that are due in rounds, at most one a second, so that their Pongs
come back together and are read in a few passes. What a consumer sends is parsed by its
:class:`~dpmq.transport.websocket.WebSocketChannel` on this thread (acks and nacks with ``?ack=1``
handled as they arrive); every write goes through the consumer's
:class:`~dpmq.transport.connection.Connection`, which never blocks.

Under DPMQ's worker a consumer's route thread returns once the consumer has joined, and its end
is told to the ``on_end`` given to :meth:`Inbound.add`: a thread held per idle consumer (its stack,
its interpreter state) was most of what one cost. Under another server the route thread holds
the connection (flask-sock serves it on that thread) and only waits for the end, in
:meth:`Reader.wait`: in ``poll`` for the socket's hang-up alone, which data arriving does not
wake. Waiting on a lock instead put every consumer's sleeper in the kernel's futex table, and
every hand-over of the interpreter's lock then paid for walking them.
"""

import collections
import logging
import select
import selectors
import socket
import threading
import time

from ..delivery.shard_waits import drain

log = logging.getLogger(__name__)

#: The most read from a consumer's socket at once.
READ = 4096
CLOSE_PING_TIMEOUT = 1008   # a consumer that did not answer the last Ping
_HANGUP = getattr(select, "POLLRDHUP", 0)


class Reader:
    """One consumer connection as :class:`Inbound` sees it; ``done`` once it has ended (the peer
    closed or vanished, a Close was exchanged, it stopped answering pings, or the broker is
    stopping)."""

    __slots__ = ("channel", "conn", "on_input", "due", "done", "ended", "on_end")

    def __init__(self, channel, conn, on_input, due, on_end=None):
        self.channel = channel      # the WebSocket protocol: parses what arrives, closes
        self.conn = conn
        self.on_input = on_input    # called with the messages that arrived
        self.due = due              # when it is next pinged
        self.done = False
        self.on_end = on_end        # told of the end (must not block), or else:
        self.ended = None if on_end else threading.Event()      # for wait()

    def wait(self):
        """Return once the connection has ended. Any end the inbound thread sees also shuts the
        socket's reading side, which is what the hang-up wait wakes on."""
        if _HANGUP and not self.done:
            waiter = select.poll()
            try:
                waiter.register(self.conn.raw, _HANGUP)
                waiter.poll()
            except (OSError, ValueError):
                pass
        self.ended.wait()


class Inbound:
    """The reading thread of one broker. :meth:`add` is its only entry from other threads."""

    def __init__(self, ping_interval):
        self.interval = ping_interval or 0.0
        # Pings due within this much of the first are sent in the same round, a little early.
        self.slack = min(1.0, self.interval / 10)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pings = collections.deque()  # readers in the order of their due times
        self._lock = threading.Lock()      # between add and the end of the thread
        self._stopping = False
        self._closed = False
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="dpmq-inbound", daemon=True)
        self._thread.start()

    def stop(self, timeout=5.0):
        """Stop reading; the connections still open end."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def add(self, channel, conn, on_input, on_end=None):
        """Read ``channel`` from now on; returns its :class:`Reader`. Its end is told to
        ``on_end`` (on whichever thread sees it: it must not block) or, without one, waited for
        with :meth:`Reader.wait`. The caller registers the socket itself (the selector takes that
        from any thread), so that a burst of new consumers does not wake the inbound thread once
        each."""
        reader = Reader(channel, conn, on_input, time.monotonic() + self.interval, on_end)
        with self._lock:
            if self._closed:
                _finish(reader)
                return reader
            raw = conn.raw
            try:
                self._selector.register(raw, selectors.EVENT_READ, reader)
            except KeyError:                    # a stale entry for a reused descriptor
                self._end(self._selector.get_key(raw).data)
                self._selector.register(raw, selectors.EVENT_READ, reader)
            except (ValueError, OSError):       # already closed
                _finish(reader)
                return reader
            if self.interval:
                first = not self._pings
                self._pings.append(reader)
                if first:       # the thread may be waiting with no timeout: give it one
                    self._wake()
        if channel.pending:                     # what arrived with the handshake
            messages, channel.pending = channel.pending, []
            on_input(messages)
        return reader

    def _wake(self):
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # -- the inbound thread ------------------------------------------------------------------
    def _run(self):
        try:
            while not self._stopping:
                try:
                    self._once()
                except Exception:  # noqa: BLE001 - consumers would hang without this thread
                    log.exception("the inbound thread failed; continuing in 0.5 s")
                    time.sleep(0.5)
        finally:
            with self._lock:
                self._closed = True
                for key in list(self._selector.get_map().values()):
                    if key.data is not None:
                        self._end(key.data)
                self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _once(self):
        timeout = None
        if self._pings:
            timeout = max(0.0, self._pings[0].due - time.monotonic())
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                drain(self._wake_r)
            else:
                self._read(key.data)
        if self.interval:
            self._ping(time.monotonic())

    def _read(self, reader):
        """What the socket holds now, through the consumer's channel."""
        channel = reader.channel
        try:
            data = reader.conn.raw.recv(READ)
        except OSError:
            data = b""
        messages = channel.receive(data)
        if messages:
            reader.on_input(messages)
        if not data or not channel.open:
            self._end(reader)

    def _ping(self, now):
        """Ping every reader due within ``slack``; one that has not answered the previous Ping is
        closed instead (1008)."""
        pings, horizon = self._pings, now + self.slack
        while pings and pings[0].due <= horizon:
            reader = pings.popleft()
            if reader.done:
                continue
            channel = reader.channel
            try:
                if not channel.pong_received:
                    channel.close(CLOSE_PING_TIMEOUT, "Ping/Pong timeout")
                    raise ConnectionResetError("no Pong")
                channel.pong_received = False
                reader.conn.ping()
            except Exception:  # noqa: BLE001 - closed meanwhile, by either side
                self._end(reader)
                continue
            reader.due = max(now, reader.due) + self.interval
            pings.append(reader)

    def _end(self, reader):
        if reader.done:
            return
        try:
            key = self._selector.get_key(reader.conn.raw)
            if key.data is reader:
                self._selector.unregister(key.fileobj)
        except (KeyError, ValueError):
            pass
        reader.conn.stop_reading()      # wakes the route thread in Reader.wait
        _finish(reader)


def _finish(reader):
    reader.done = True
    reader.conn.detach()            # no more writes: the socket goes back to the HTTP server
    if reader.on_end is not None:
        reader.on_end()
    else:
        reader.ended.set()
