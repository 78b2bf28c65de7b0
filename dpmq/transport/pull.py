"""The pull transport: a consumer's connection without a socket.

A consumer that cannot hold a connection open (a serverless function, a cron job) asks for
messages with ``POST /ConsumerPull`` instead. Delivery still sees a connection (the
:class:`~dpmq.delivery.consumer_connection.ConsumerConnection` seam): an :class:`Outbox`, which takes
messages only while a pull is waiting for them, and only as many as the waiting pulls asked for, so
the subscription's other messages stay in the store (or go to the group's other members) until the
next pull. A pull takes what the outbox holds and answers with it; for delivery that is the
"written whole" of a socket: without ack the messages are done then, with ack they are in flight
until acked over HTTP (``POST /ConsumerAck``) or their ``mq.ackTimeout`` passes.

Thread-safe: the delivery shard offers and looks at what was taken; the pulls' request threads
wait and take; one condition guards it all.
"""

import collections
import json
import threading
import time

#: The longest a pull waits for the delivery shard to hand out what is ready, even with wait=0.
LOOK = 1.0
#: How often a waiting pull looks whether its client is still there.
CHECK = 0.5
#: How long a pull that got some messages, fewer than it asked for, waits for more of the same
#: hand-out before it answers.
GATHER = 0.005


class PullFraming:
    """A message is its JSON object itself; a pull's reply joins them in one JSON array."""

    name = "pull"
    keepalive = b""

    @staticmethod
    def message(payload):
        return payload

    @staticmethod
    def reply(obj):
        return json.dumps(obj).encode()

    notice = reply

    @staticmethod
    def closes(data):
        return False


PULL = PullFraming()


class Outbox:
    """What delivery has handed to one pulling consumer and its pulls have not taken yet."""

    framing = PULL
    raw = None                  # nothing for a selector to watch: flush never waits
    partial_writes = False      # a message is taken whole or not at all

    def __init__(self, limit, remote_addr=""):
        self.limit = limit      # bytes it holds at most (mq.consumerBufferBytes)
        self.remote_addr = remote_addr
        self.on_progress = None
        self.closed = False
        self.delivered = 0      # messages taken by pulls
        self.pending_bytes = 0
        self.last_used = time.monotonic()
        self.abandoned = False  # the last pull's client went away before its answer
        self._ready = threading.Condition()
        self._items = collections.deque()   # (payload, record), oldest first
        self._taken = []        # records taken since the shard last looked
        self._wanted = 0        # messages the waiting pulls asked for, together
        self._gap = None        # a gap notice for the next pull's reply
        self._ticket = 0        # pulls made, in order; the shard sees each one's progress post
        self._seen = 0          # the newest pull whose post the shard has taken
        self._looked = 0        # ... and then handed out to (its flush after that catch-up)
        self._returned = []     # records given back by a pull whose client went away

    @property
    def open(self):
        return not self.closed

    # -- the delivery shard's side -------------------------------------------------------------
    def attach(self, budget):
        """Bounded by the pulls' ``max`` and its own ``limit``: it stays out of the budget of
        socket buffers."""

    def release(self):
        self.close()
        with self._ready:
            self._items.clear()
            self._taken = []
            self.pending_bytes = 0

    def has_room(self):
        return not self.closed and len(self._items) < self._wanted and self.pending_bytes < self.limit

    def offer(self, frame, record):
        with self._ready:
            if not self.has_room():
                return False
            self._items.append((frame, record))
            self.pending_bytes += len(frame)
            self._ready.notify_all()
            return True

    def offer_all(self, data, ends, records):
        """Never all at once: a pull takes as many as it asked for, so each is offered alone."""
        return False

    def reply(self, answer):
        """Errors about acks go back as the answer of the ``POST /ConsumerAck`` that sent them."""
        return False

    def notice(self, notice):
        with self._ready:
            self._gap = notice
            self._ready.notify_all()

    def progress_seen(self):
        """The shard took the last progress post: its next flush follows a hand-out that knew
        of every pull made so far."""
        with self._ready:
            self._seen = self._ticket

    def flush(self):
        """The shard is done handing out for now: the pulls it had seen may answer."""
        with self._ready:
            self._looked = self._seen
            self._ready.notify_all()
        return True

    def take_returned(self):
        with self._ready:
            returned, self._returned = self._returned, []
            return returned

    def take_written(self):
        with self._ready:
            taken, self._taken = self._taken, []
            return taken

    def unwritten(self):
        with self._ready:
            return [record for _, record in self._items]

    def first_unwritten(self):
        with self._ready:
            return self._items[0][1].offset if self._items else None

    def oldest_unwritten(self, wanted):
        with self._ready:
            return next((record for _, record in self._items if wanted(record)), None)

    # -- the transport's side ------------------------------------------------------------------
    def take(self, count, wait, gone=lambda: False):
        """Wait up to ``wait`` seconds for messages, then take up to ``count`` of them: returns
        ``(payloads, gap notice or None)``. ``gone()`` says whether the pull's client has left:
        then nothing is taken (with autoAck it would be lost), what the outbox holds goes back
        to the subscription, and the pull ends at once rather than holding its thread for the
        rest of ``wait``."""
        deadline = time.monotonic() + wait
        with self._ready:
            self._wanted += count
            self._ticket += 1
            ticket = self._ticket
            self.abandoned = False
        self._progress()            # the shard hands out now what waits for this pull
        try:
            with self._ready:
                self._wait(ticket, count, deadline, gone)
                self.abandoned = gone()
                taken, gap = self._take_locked(count)
        finally:
            with self._ready:
                self._wanted -= count
                self.last_used = time.monotonic()
        if taken or self._returned:
            self._progress()        # the shard learns what was taken, or given back
        return [payload for payload, _ in taken], gap

    def _wait(self, ticket, count, deadline, gone):
        """Under the lock: until the shard has looked at this pull (what is ready in the store
        comes then, even for wait=0), then until something comes, ``deadline`` or the client
        goes; then a moment more for the rest of one hand-out, if it brought fewer than
        ``count``."""
        ready = self._ready
        ready.wait_for(lambda: self._looked >= ticket or self._items or self.closed, LOOK)
        while not (self._items or self._gap or self.closed):
            left = deadline - time.monotonic()
            if left <= 0 or gone():
                return
            ready.wait(min(left, CHECK))
        if self._items and len(self._items) < count:
            ready.wait_for(lambda: len(self._items) >= count or self.closed, GATHER)

    def _take_locked(self, count):
        """Under the lock: up to ``count`` items and the gap notice, or, for a pull whose
        client went away, nothing (what it holds is given back). Once closed, what it holds
        goes back to the subscription through its leave (:meth:`unwritten`)."""
        if self.closed:
            return [], None
        if self.abandoned:
            self._returned += [record for _, record in self._items]
            self._items.clear()
            self.pending_bytes = 0
            return [], None
        taken = [self._items.popleft() for _ in range(min(count, len(self._items)))]
        self.pending_bytes -= sum(len(payload) for payload, _ in taken)
        self._taken += [record for _, record in taken]
        self.delivered += len(taken)
        gap, self._gap = self._gap, None
        return taken, gap

    def _progress(self):
        if self.on_progress is not None:
            self.on_progress(self)

    def close(self):
        """No more messages; the pulls waiting answer with nothing. What it holds stays until
        :meth:`release`, for the shard to put back (:meth:`unwritten`)."""
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    detach = close
    stop_reading = close
