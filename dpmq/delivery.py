"""Fan-out: delivery shards that write messages to consumers, and the subscriptions they serve.

Each shard is one long-lived task on the broker's fan-out ``ThreadPoolExecutor`` and owns a share of
the connections: only its thread touches their delivery state, so a message costs one hand-off per
shard, not one per consumer. The pump posts each message's prebuilt frame to every shard; the shard
queues it on each subscriber of the topic and writes with non-blocking sends, watching unwritable
sockets in its selector. A slow consumer never blocks the shard: when its buffer is over
``mq.consumerBufferBytes`` it falls behind and catches up from the store later, like a consumer that
reconnects after being away.

A subscriber's ``next`` is the offset it expects; a live message with that offset is sent, an older
one was already sent (by catch-up), and a newer one means a gap: the subscriber catches up from the
store, up to what the pump has already handed out, so pacing holds for catch-up too.
"""

import logging
import queue
import selectors
import socket
import threading
import time

from . import message
from .errors import StoreError

log = logging.getLogger(__name__)


class Subscriber:
    """One connected consumer of a subscription. Its delivery state belongs to its shard's thread."""

    def __init__(self, conn, ws, topic, sub, consumer_id, start, attempts):
        self.conn = conn
        self.ws = ws                # the simple-websocket object, to close it from any thread
        self.topic = topic
        self.sub = sub
        self.consumer_id = consumer_id
        self.group = None
        self.next = start + 1
        self.attempts = attempts    # {offset: failed attempts} of messages not yet delivered
        self.behind = True          # catch up from the store first
        self.connected_at = time.time()
        self.shard = None
        self.removed = threading.Event()
        conn.written_offset = start


class Shard:
    """A delivery thread and the subscribers it owns. ``post`` is its only thread-safe entry."""

    def __init__(self, index, broker):
        self.index = index
        self.engine = broker.engine
        self.pumped = broker.pumped     # {topic: newest offset the pump has handed out}
        self.stats = broker.stats
        self.retry_count = broker.settings.mq.sendRetryCount
        self.batch = broker.settings.mq.catchUpBatch
        self.low_water = broker.settings.mq.consumerBufferBytes // 2
        self.count = 0                  # subscribers, read by the broker to balance shards
        self._inbox = queue.SimpleQueue()
        self._asleep = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._topics = {}               # topic -> [Subscriber]
        self._behind = set()
        self._dirty = set()
        self._retry_at = 0.0

    # -- the thread-safe side ----------------------------------------------------------------
    def post(self, kind, item):
        self._inbox.put((kind, item))
        if self._asleep:
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass

    def add(self, subscriber):
        subscriber.shard = self
        subscriber.conn.on_blocked = lambda conn: self.post("watch", subscriber)
        self.count += 1
        self.post("add", subscriber)

    def remove(self, subscriber, timeout=5.0):
        """Forget ``subscriber``; returns once the shard no longer touches its socket."""
        self.post("remove", subscriber)
        subscriber.removed.wait(timeout)

    # -- the shard's thread ------------------------------------------------------------------
    def run(self, stop):
        while not stop.is_set():
            try:
                self._once()
            except Exception:  # noqa: BLE001 - a delivery thread must never die silently
                log.exception("delivery shard %d failed; continuing in 0.5 s", self.index)
                stop.wait(0.5)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _once(self):
        timeout = 1.0
        if any(sub.conn.open and sub.conn.pending_bytes <= self.low_water for sub in self._behind):
            timeout = max(0.0, min(timeout, self._retry_at - time.monotonic()))
        self._asleep = True
        if not self._inbox.empty():
            timeout = 0
        events = self._selector.select(timeout)
        self._asleep = False
        for key, _ in events:
            if key.data is None:
                self._drain_wake()
            else:
                self._dirty.add(key.data)
        self._take_inbox()
        if self._behind and time.monotonic() >= self._retry_at:
            self._catch_up()
        self._flush_dirty()

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _take_inbox(self):
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "msgs":
                for record, frame in item:
                    for sub in self._topics.get(record.topic, ()):
                        self._push(sub, record, frame)
            elif kind == "watch":
                self._dirty.add(item)
            elif kind == "add":
                self._topics.setdefault(item.topic, []).append(item)
                self._behind.add(item)
            elif kind == "remove":
                self._forget(item)

    def _forget(self, sub):
        subs = self._topics.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
            self.count -= 1
            if not subs:
                del self._topics[sub.topic]
        self._behind.discard(sub)
        self._dirty.discard(sub)
        self._unwatch(sub)
        sub.removed.set()

    def _push(self, sub, record, frame):
        """Queue one message on one subscriber, if it is the one the subscriber expects now."""
        if record.offset < sub.next:
            return True
        if record.offset > sub.next or sub.behind:
            self._behind.add(sub)
            sub.behind = True
            return False
        attempts = sub.attempts.pop(record.offset, 0)
        if attempts > self.retry_count:
            self._dead_letter(sub, record, attempts)
            sub.next += 1
            return True
        if attempts:
            frame = message.frame(record, attempts)
        if not sub.conn.offer(frame, record.offset):
            if attempts:
                sub.attempts[record.offset] = attempts
            if not sub.conn.open:
                return False        # closing: the route thread will remove it
            self._behind.add(sub)
            sub.behind = True
            return False
        sub.next += 1
        self._dirty.add(sub)
        return True

    def _dead_letter(self, sub, record, attempts):
        reason = f"push failed {attempts} times (mq.sendRetryCount is {self.retry_count})"
        self.engine.dead_letter(sub.topic, sub.sub, record, reason, attempts)
        self.stats.dead_lettered += 1
        log.warning("dead letter: message %s of topic %r for %s: %s",
                    record.code, sub.topic, sub.sub, reason)
        sub.conn.skip(record.offset)

    def _catch_up(self):
        """Refill behind subscribers from the store, a bounded batch each, up to the pump's head."""
        for sub in list(self._behind):
            if not sub.conn.open:
                self._behind.discard(sub)
                continue
            if sub.conn.pending_bytes > self.low_water:
                continue            # still writing what it has; wait for the socket
            upto = self.pumped.get(sub.topic, 0)
            try:
                records = self.engine.read(sub.topic, sub.next - 1, self.batch, upto=upto)
            except StoreError as exc:
                log.warning("catch-up read failed, retrying in 1 s: %s", exc)
                self._retry_at = time.monotonic() + 1.0
                return
            sub.behind = False
            complete = True
            for record in records:
                if not self._push(sub, record, message.frame(record)):
                    complete = False
                    break
            if complete and len(records) < self.batch:
                self._behind.discard(sub)
            else:
                sub.behind = True

    def _flush_dirty(self):
        dirty, self._dirty = self._dirty, set()
        for sub in dirty:
            if sub.conn.closed:
                continue
            if sub.conn.flush():
                self._unwatch(sub)
            else:
                self._watch(sub)

    def _watch(self, sub):
        raw = sub.conn.raw
        try:
            self._selector.register(raw, selectors.EVENT_WRITE, sub)
        except KeyError:
            key = self._selector.get_key(raw)
            if key.data is not sub:     # a stale entry for a reused descriptor
                self._selector.unregister(key.fileobj)
                self._selector.register(raw, selectors.EVENT_WRITE, sub)
        except (ValueError, OSError):
            pass                        # the socket is closed; the route will remove it

    def _unwatch(self, sub):
        try:
            key = self._selector.get_key(sub.conn.raw)
        except (KeyError, ValueError):
            return
        if key.data is sub:
            self._selector.unregister(key.fileobj)
