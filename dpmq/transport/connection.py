"""One consumer socket, and the one place where bytes are written to it.

Several threads have something to write to a consumer: the delivery shard its messages, the
inbound thread Pongs and the answer to a Close, any thread a Close of DPMQ's own, and during the
handshake simple-websocket its answer (through :class:`GuardedSocket`, handed to it in place of
the real socket). Written directly, two of them could interleave a Pong inside a data frame. So
every write is appended whole to the connection's outgoing buffer under one lock and written from
there with non-blocking sends: frames never interleave, and a short write simply leaves the rest
for later.

The connection does not know the protocol on its stream: its *framing* (for a WebSocket,
:data:`~dpmq.transport.frames.WEBSOCKET`) says how a reply and a keep-alive are written and
whether a write closes the stream, and delivery asks the same framing for a message's bytes.

A delivery thread (see :mod:`dpmq.delivery.shards`) offers data frames with
:meth:`Connection.offer` and :meth:`Connection.offer_all`, which write a run straight to a socket
with nothing queued before it, and writes what waits with :meth:`Connection.flush`; when the
socket is not writable it is told through ``on_progress`` and waits for writability in its
selector. No thread ever blocks on a consumer.

The outgoing buffer is a queue of the frames themselves, not a copy of their bytes: a message's
frame is built once and every consumer's buffer holds the same ``bytes`` (see
:mod:`dpmq.message`), and a socket gets several at once with one ``sendmsg``. Consumers that never
read would otherwise hold a copy each, up to ``mq.consumerBufferBytes`` apiece; what waits costs
each of them a reference per frame, and the frames are let go as soon as a connection is closed,
not when the cyclic garbage collector comes by.

What waits in every buffer of one broker is also bounded together (:class:`~dpmq.transport.budget.Budget`,
``mq.consumerBuffersTotalBytes``): a consumer over its share is refused further frames, and its
subscription catches up from the store, as when its own buffer is full.
"""

import collections
import itertools
import operator
import select
import socket
import threading

from ..delivery.consumer_connection import QUEUED, WRITTEN

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_GATHER = 512       # frames given to one sendmsg, below the kernel's IOV_MAX (1024 on Linux)
_CONTROL_SLACK = 1 << 16        # Pongs and Closes may exceed the buffer limit by this much
_RECORD = operator.itemgetter(1)    # of a mark: (stream position where a message ends, record)


class GuardedSocket:
    """What simple-websocket sees as its socket during the handshake: reads pass through, writes
    (its handshake answer) go through the owner. Once DPMQ's own channel has the stream
    (:meth:`seal`), simple-websocket has nothing left to say: its writes are let go."""

    def __init__(self, raw, owner):
        self._raw = raw
        self._owner = owner
        self._sealed = False

    def seal(self):
        self._sealed = True

    def send(self, data):
        if self._sealed:
            return len(data)
        return self._owner.write_control(data)

    def sendall(self, data):
        self.send(data)

    def recv(self, size):
        return self._raw.recv(size)

    def close(self):
        self._owner.detach()        # the HTTP server that owns the socket closes it

    def __getattr__(self, name):
        return getattr(self._raw, name)


class Connection:
    """The outgoing side of one consumer socket. Thread-safe: every method takes the one lock.

    Message frames carry their record; :meth:`take_written` tells which were handed whole to the
    kernel (but a run :meth:`offer_all` wrote at once, which it answers). ``limit`` bounds the
    bytes waiting in the buffer, and so does the broker's
    :class:`~dpmq.transport.budget.Budget` once the delivery shard has attached it.
    """

    #: A message may be cut off mid-write when the connection ends (see the delivery's leave).
    partial_writes = True

    def __init__(self, raw, limit, framing, remote_addr=""):
        self.raw = raw
        self.framing = framing      # how messages, replies and keep-alives go on the stream
        self.socket = GuardedSocket(raw, self)
        self.limit = limit
        self.remote_addr = remote_addr
        self.on_progress = None     # set by the delivery shard: call when it must flush or look
        self.budget = None          # the broker's Budget, from when the member joins
        self.delivered = 0          # frames handed whole to the kernel
        self.broken = False         # a write failed: the peer is gone
        self.closing = False        # a Close frame is queued: no more data frames
        self.closed = False         # no more writes of any kind
        self._lock = threading.Lock()
        self._frames = collections.deque()  # what waits, oldest first: bytes, shared, never copied
        self._head = 0              # bytes of _frames[0] already written
        self._pending = 0           # bytes waiting in all of _frames
        self._queued = 0            # bytes ever queued, a stream position
        self._asked = 1             # the size of the last message frame offered
        self._marks = collections.deque()   # (stream position where a message ends, record)
        self._written = []          # records written whole since the shard last looked

    @property
    def open(self):
        """Whether data frames may still be queued."""
        return not (self.closing or self.closed)

    @property
    def pending_bytes(self):
        return self._pending

    def has_room(self):
        """Whether a frame the size of the last one offered would be taken now. Read without
        the lock: a guess, which spares the store a catch-up read for a consumer that could not
        take what it read."""
        if self.closing or self.closed or self._pending >= self.limit:
            return False
        return self.budget is None or self.budget.admits(self._pending, self._asked)

    def attach(self, budget):
        """Count what waits here in ``budget`` from now on (the delivery shard does, when the
        member joins; the handshake's bytes before that are counted then)."""
        with self._lock:
            if self.budget is None:
                budget.join(self._pending)
                self.budget = budget

    def release(self):
        """The delivery shard is done with this connection: let go of the frames and records it
        still holds, and leave the budget."""
        with self._lock:
            self._shut()
            self._marks.clear()
            self._written = []
            if self.budget is not None:
                self.budget.leave(0)
                self.budget = None

    def offer(self, frame, record):
        """Queue a message frame; False if the connection is closing, its buffer is full or the
        budget refuses it."""
        with self._lock:
            if self.closing or self.closed or self._pending >= self.limit:
                return False
            self._asked = len(frame)
            if self.budget is not None and not self.budget.take(self._pending, len(frame)):
                return False
            self._queue(frame)
            self._marks.append((self._queued, record))
            return True

    def offer_all(self, data, ends, records):
        """Queue several message frames at once (``data``; the i-th ends at ``ends[i]`` in it):
        all of them, or none (False) when the connection is closing, :meth:`offer` would not
        take the last of them either, or the budget refuses them.

        When nothing waits before them, the usual case for a consumer that keeps up, they go
        straight to the socket, and most often all of them (:data:`WRITTEN`: nothing to flush,
        and :meth:`take_written` does not report them, the caller knows): a wide fan-out writes
        thousands of sockets per message, and queueing each frame only to write it a moment
        later was as much of the broker's work as the writes themselves. What the socket does
        not take is queued as usual (:data:`QUEUED`)."""
        with self._lock:
            before_last = ends[-2] if len(ends) > 1 else 0
            if self.closing or self.closed or self._pending + before_last >= self.limit:
                return False
            budget = self.budget
            if not self._frames:
                # the budget counts only what is left unwritten: asked first, taken after
                if budget is not None and not budget.admits(0, len(data), False):
                    return False
                return self._write_through(data, ends, records)
            if budget is not None and not budget.take(self._pending, len(data), False):
                return False
            base = self._queued
            self._queue(data)
            self._marks.extend(zip(map(base.__add__, ends), records))
            return QUEUED

    def _write_through(self, data, ends, records):
        """:meth:`offer_all` to an empty buffer: what the socket does not take now is queued,
        and counted in the budget then."""
        try:
            sent = self.raw.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._shut(broken=True)
            return False
        base = self._queued
        self._queued += len(data)
        if sent == len(data):
            self.delivered += len(records)
            return WRITTEN
        rest = data[sent:] if sent else data
        if self.budget is not None:
            self.budget.add(len(rest))
        self._frames.append(rest)
        self._pending += len(rest)
        self._marks.extend(zip(map(base.__add__, ends), records))
        self._advance()
        return QUEUED

    def reply(self, answer):
        """Queue an answer that is not a message (an error, a mapping sent as JSON) for the next
        flush; False if closing."""
        data = self.framing.reply(answer)
        with self._lock:
            if not self.open:
                return False
            self._queue_unrefused(data)
            return True

    def take_returned(self):
        """Nothing: what is queued on a socket is written or lost with it, never given back."""
        return []

    def progress_seen(self):
        """Nothing to do: a socket's progress needs no answer."""

    def notice(self, notice):
        """Queue a notice (a gap) before the next message, if the framing carries notices."""
        data = self.framing.notice(notice)
        if data is not None:
            with self._lock:
                if self.open:
                    self._queue_unrefused(data)

    def take_written(self):
        """The records of the message frames written whole since the last call (but those of an
        :meth:`offer_all` answered :data:`WRITTEN`)."""
        if not self._written:       # a write adding some meanwhile tells the shard (on_progress)
            return []
        with self._lock:
            written, self._written = self._written, []
            return written

    def flush(self):
        """Write what the socket takes now, without blocking. True when the buffer is empty."""
        if not self._frames:        # a control frame queued meanwhile is flushed by its writer
            return True
        with self._lock:
            return self._flush_locked()

    def _queue(self, data):
        self._frames.append(data)
        self._pending += len(data)
        self._queued += len(data)

    def _queue_unrefused(self, data):
        if type(data) is not bytes:
            data = bytes(data)          # the caller's buffer may be reused
        if self.budget is not None:
            self.budget.add(len(data))
        self._queue(data)

    def _flush_locked(self):
        frames = self._frames
        while frames and not self.closed:
            try:
                with memoryview(frames[0]) as view, view[self._head:] as rest:
                    if len(frames) == 1:
                        tried = len(rest)
                        sent = self.raw.send(rest, _DONTWAIT)
                    else:
                        parts = [rest]
                        parts += itertools.islice(frames, 1, _GATHER)
                        tried = sum(map(len, parts))
                        sent = self.raw.sendmsg(parts, (), _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._shut(broken=True)
                break
            self._consume(sent)
            self._advance()
            if sent < tried:
                break           # the socket is full: trying again now would only fail
        return not frames

    def _consume(self, sent):
        """``sent`` bytes from the front of the buffer went to the kernel: let go of the frames
        written whole."""
        self._pending -= sent
        if self.budget is not None:
            self.budget.give_back(sent)
        frames, head = self._frames, self._head + sent
        while frames and head >= len(frames[0]):
            head -= len(frames.popleft())
        self._head = head

    def _drop_frames(self):
        if self.budget is not None and self._pending:
            self.budget.give_back(self._pending)
        self._frames.clear()
        self._head = self._pending = 0

    def _shut(self, broken=False):
        """No more writes: what waits is thrown away now, not when the connection is collected
        (it is part of reference cycles, and freeing a stuck consumer's frames had to wait for
        the cyclic garbage collector). Its records stay, for the shard to see what was not
        written (:meth:`unwritten`) until :meth:`release`."""
        self.closed = True
        if broken:
            self.broken = True
        self._drop_frames()

    def _advance(self):
        written = self._queued - self._pending
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

    def oldest_unwritten(self, wanted):
        """The first record queued and not yet written whole for which ``wanted(record)`` is
        true, or None. It is usually the first one: unlike :meth:`unwritten`, this does not
        walk a whole full buffer for every cursor saved."""
        with self._lock:
            for _, record in self._marks:
                if wanted(record):
                    return record
            return None

    def unwritten(self):
        """The records of the queued messages not yet written whole, in order."""
        with self._lock:
            return [record for _, record in self._marks]

    def write_control(self, data):
        """Writes that are not messages (the handshake's answer, Pings, Pongs, Close): queued
        whole, in order.

        A peer that pings without reading would grow the buffer with Pongs for ever: past the
        buffer limit (plus slack) the connection is dropped instead.
        """
        with self._lock:
            if not self.closed and self.framing.closes(data):
                self.closing = True
            done, progress = self._write_control_locked(data)
        self._after_control(done, progress)
        return len(data)

    def ping(self):
        """A keep-alive (the framing's: a Ping on a WebSocket). When nothing waits before it, the
        usual case for an idle consumer, it goes straight to the socket, without the queue: with
        many idle consumers, queueing every one was a large part of the broker's idle CPU (see
        docs/BENCHMARKS.md, idle consumers). What the socket does not take is queued like any
        control frame."""
        keepalive = self.framing.keepalive
        with self._lock:
            if self.closed or self._frames:
                done, progress = self._write_control_locked(keepalive)
            else:
                try:
                    sent = self.raw.send(keepalive, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._shut(broken=True)
                    raise BrokenPipeError("the consumer is gone") from None
                self._queued += sent
                if sent == len(keepalive):
                    return
                done, progress = self._write_control_locked(keepalive[sent:])
        self._after_control(done, progress)

    def _write_control_locked(self, data):
        if self.closed:
            raise BrokenPipeError("DPMQ connection is closed")
        if self._pending > self.limit + _CONTROL_SLACK:
            self._shut(broken=True)
            raise BrokenPipeError("the consumer does not read what it asks for; dropped")
        self._queue_unrefused(data)
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
        """Before a shard owns the connection (the handshake), wait for the socket a little.
        With ``poll``: ``select.select`` fails for descriptors past 1,023."""
        waiter = select.poll()
        waiter.register(self.raw, select.POLLOUT)
        while not self.flush():
            if not waiter.poll(timeout * 1000):
                with self._lock:
                    self._shut(broken=True)
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
            self._shut()
