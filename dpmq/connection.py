"""One consumer socket, and the one place where bytes are written to it.

simple-websocket writes to its socket from whichever thread calls it, with no lock: ``send`` and
``close`` from the caller, Pong and Close answers from whoever reads (here the broker's inbound
thread), and it ignores short writes. Two writers can interleave a Pong inside a data frame.
DPMQ therefore hands simple-websocket a :class:`GuardedSocket` instead of the real one: every
write, simple-websocket's own included, is appended whole to the connection's outgoing buffer
under one lock and written from there with non-blocking sends, so frames never interleave and a
short write simply leaves the rest for later.

A delivery thread (see :mod:`dpmq.delivery`) queues data frames with :meth:`Connection.offer` and
writes them with :meth:`Connection.flush`; when the socket is not writable it is told through
``on_progress`` and waits for writability in its selector. No thread ever blocks on a consumer.
"""

import collections
import operator
import select
import socket
import threading

from .frames import frame_extent

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_COMPACT_AT = 1 << 16
_CONTROL_SLACK = 1 << 16        # Pongs and Closes may exceed the buffer limit by this much
_RECORD = operator.itemgetter(1)    # of a mark: (stream position where a message ends, record)
PING = b"\x89\x00"          # a server's Ping frame: unmasked, no payload


def _has_close_frame(data):
    """Whether the server frames in ``data`` include a Close frame (opcode 8)."""
    pos = 0
    while (extent := frame_extent(data, pos)) is not None:
        if data[pos] & 0x0F == 0x8:
            return True
        pos += extent[0] + extent[1]
    return False


class GuardedSocket:
    """What simple-websocket sees as its socket: reads pass through, writes go through the owner."""

    def __init__(self, raw, owner):
        self._raw = raw
        self._owner = owner

    def send(self, data):
        return self._owner.write_control(data)

    def sendall(self, data):
        self._owner.write_control(data)

    def recv(self, size):
        return self._raw.recv(size)

    def close(self):
        self._owner.detach()        # the HTTP server that owns the socket closes it

    def __getattr__(self, name):
        return getattr(self._raw, name)


class Connection:
    """The outgoing side of one consumer socket. Thread-safe: every method takes the one lock.

    Message frames carry their record; :meth:`take_written` tells which were handed whole to the
    kernel. ``limit`` bounds the bytes waiting in the buffer.
    """

    def __init__(self, raw, limit, remote_addr=""):
        self.raw = raw
        self.socket = GuardedSocket(raw, self)
        self.limit = limit
        self.remote_addr = remote_addr
        self.on_progress = None     # set by the delivery shard: call when it must flush or look
        self.delivered = 0          # frames handed whole to the kernel
        self.broken = False         # a write failed: the peer is gone
        self.closing = False        # a Close frame is queued: no more data frames
        self.closed = False         # no more writes of any kind
        self._lock = threading.Lock()
        self._out = bytearray()
        self._head = 0              # bytes of _out already written
        self._queued = 0            # bytes ever queued, a stream position
        self._marks = collections.deque()   # (stream position where a message ends, record)
        self._written = []          # records written whole since the shard last looked

    @property
    def open(self):
        """Whether data frames may still be queued."""
        return not (self.closing or self.closed)

    @property
    def pending_bytes(self):
        return len(self._out) - self._head

    def offer(self, frame, record):
        """Queue a message frame; False if the connection is closing or its buffer is full."""
        with self._lock:
            if self.closing or self.closed or len(self._out) - self._head >= self.limit:
                return False
            self._out += frame
            self._queued += len(frame)
            self._marks.append((self._queued, record))
            return True

    def offer_all(self, data, ends, records):
        """Queue several message frames at once (``data``; the i-th ends at ``ends[i]`` in it):
        all of them, or none (False) when the connection is closing or :meth:`offer` would not
        take the last of them either."""
        with self._lock:
            before_last = ends[-2] if len(ends) > 1 else 0
            if (self.closing or self.closed
                    or len(self._out) - self._head + before_last >= self.limit):
                return False
            base = self._queued
            self._out += data
            self._queued += len(data)
            self._marks.extend(zip(map(base.__add__, ends), records))
            return True

    def send_text(self, frame):
        """Queue a frame that is not a message (an error reply); False if closing."""
        with self._lock:
            if not self.open:
                return False
            self._out += frame
            self._queued += len(frame)
            return True

    def take_written(self):
        """The records of the message frames written whole since the last call."""
        with self._lock:
            written, self._written = self._written, []
            return written

    def flush(self):
        """Write what the socket takes now, without blocking. True when the buffer is empty."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self):
        out = self._out
        while self._head < len(out) and not self.closed:
            try:
                with memoryview(out) as view, view[self._head:] as rest:
                    sent = self.raw.send(rest, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.broken = self.closed = True
                break
            self._head += sent
            self._advance()
        if self._head == len(out):
            out.clear()
            self._head = 0
        elif self._head >= _COMPACT_AT and self._head * 2 >= len(out):
            del out[:self._head]
            self._head = 0
        return self._head == len(out)

    def _advance(self):
        written = self._queued - (len(self._out) - self._head)
        marks = self._marks
        if marks and marks[-1][0] <= written:      # all of them, as most writes go
            self._written += map(_RECORD, marks)
            self.delivered += len(marks)
            marks.clear()
            return
        while marks and marks[0][0] <= written:
            self._written.append(marks.popleft()[1])
            self.delivered += 1

    def first_unwritten(self):
        """The offset of the first queued message not yet written whole, or None."""
        with self._lock:
            return self._marks[0][1].offset if self._marks else None

    def unwritten(self):
        """The records of the queued messages not yet written whole, in order."""
        with self._lock:
            return [record for _, record in self._marks]

    def write_control(self, data):
        """simple-websocket's writes (handshake, Ping, Pong, Close): queued whole, in order.

        A peer that pings without reading would grow the buffer with Pongs for ever: past the
        buffer limit (plus slack) the connection is dropped instead.
        """
        with self._lock:
            if not self.closed and not data.startswith(b"HTTP/") and _has_close_frame(data):
                self.closing = True
            done, progress = self._write_control_locked(data)
        self._after_control(done, progress)
        return len(data)

    def ping(self):
        """A keep-alive Ping. When nothing waits before it, the usual case for an idle consumer,
        it goes straight to the socket; what the socket does not take is queued like any
        control frame. With 10,000 idle consumers, queueing every Ping was about a sixth of the
        broker's idle CPU (``dpmq bench --idle 10000``)."""
        with self._lock:
            if self.closed or self._head != len(self._out):
                done, progress = self._write_control_locked(PING)
            else:
                try:
                    sent = self.raw.send(PING, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self.broken = self.closed = True
                    raise BrokenPipeError("the consumer is gone") from None
                self._queued += sent
                if sent == len(PING):
                    return
                done, progress = self._write_control_locked(PING[sent:])
        self._after_control(done, progress)

    def _write_control_locked(self, data):
        if self.closed:
            raise BrokenPipeError("DPMQ connection is closed")
        if len(self._out) - self._head > self.limit + _CONTROL_SLACK:
            self.broken = self.closed = True
            raise BrokenPipeError("the consumer does not read what it asks for; dropped")
        self._out += data
        self._queued += len(data)
        done = self._flush_locked()
        if self.broken:
            raise BrokenPipeError("the consumer is gone")
        return done, bool(self._written)

    def _after_control(self, done, progress):
        if self.on_progress is not None:
            if progress or not done:
                self.on_progress(self)
        elif not done:
            self._flush_blocking(timeout=10)

    def _flush_blocking(self, timeout):
        """Before a shard owns the connection (the handshake), wait for the socket a little."""
        while not self.flush():
            _, writable, _ = select.select([], [self.raw], [], timeout)
            if not writable:
                with self._lock:
                    self.broken = self.closed = True
                return

    def stop_reading(self):
        """Wake whoever reads the socket (it sees end of file); writes are not affected."""
        try:
            self.raw.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def detach(self):
        """No more writes, but leave the socket to the HTTP server that owns it."""
        with self._lock:
            self.closed = True
