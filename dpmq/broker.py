"""The broker: accepts messages, buffers them, paces them out, and keeps the consumer registry.

Publishing reserves room in the bounded buffer first (waiting at most ``mq.publishTimeout``), then
commits to the store; only a committed message is answered ``code:0``. The engine hands committed
records back in log order (``on_commit``) and they enter the bounded ``queue.Queue``. The pump thread
takes them one at a time, ``mq.pushMessagesSpeed`` seconds apart, and posts each, with its frame
built once, to the delivery shards running on the fan-out ``ThreadPoolExecutor``.

Everything hangs off one :class:`Broker` object, so one process can run several brokers.
"""

import concurrent.futures
import logging
import queue
import threading
import time

from . import message
from .delivery import Shard, Subscriber
from .errors import (
    CLOSE_DUPLICATE,
    CLOSE_GOING_AWAY,
    CLOSE_TRY_AGAIN,
    BadRequest,
    Refused,
    StoreError,
    TooLarge,
    Unavailable,
)
from .storage import open_engine

log = logging.getLogger(__name__)


def check_name(kind, value, max_length):
    """Validate a topic or consumer id; raise BadRequest saying what is wrong with it."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{kind} is required: 1 to {max_length} printable characters")
    if len(value) > max_length:
        raise BadRequest(f"{kind} is {len(value)} characters long; the limit is {max_length}")
    if "|" in value or "/" in value:
        raise BadRequest(f"{kind} must not contain '|' or '/'")
    if not value.isprintable():
        raise BadRequest(f"{kind} must contain printable characters only")
    return value


class Slots:
    """Room in the buffer, reserved before a commit so an accepted message always fits."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, count, timeout):
        with self._cond:
            return self._cond.wait_for(lambda: self.used + count <= self.capacity, timeout) and \
                self._take(count)

    def _take(self, count):
        self.used += count
        return True

    def release(self, count):
        with self._cond:
            self.used -= count
            self._cond.notify_all()


class Stats:
    """Counters since start; ``add`` is thread-safe."""

    def __init__(self):
        self.started = time.time()
        self.published = 0
        self.pushed = 0
        self.failed = 0
        self.dead_lettered = 0
        self._lock = threading.Lock()

    def add(self, name, count=1):
        with self._lock:
            setattr(self, name, getattr(self, name) + count)


class Broker:
    """One broker: a store, a buffer, a pump, delivery shards and the consumers connected to it."""

    def __init__(self, settings, engine=None):
        self.settings = settings
        self.engine = engine or open_engine(settings)
        self.stats = Stats()
        self.pumped = {}            # topic -> newest offset handed to the shards
        self.heads = {}             # topic -> newest committed offset
        mq = settings.mq
        self.buffer = queue.Queue(maxsize=mq.messageChanBuffer)
        self._slots = Slots(mq.messageChanBuffer)
        self._subscribers = {}      # (topic, consumer id) -> Subscriber, or None while joining
        self._lock = threading.Lock()
        self._stop_pump = threading.Event()
        self._draining = threading.Event()
        self._stop_delivery = threading.Event()
        self._stop_housekeeping = threading.Event()
        self.accepting = False
        self.shards = [Shard(i, self) for i in range(mq.fanoutWorkers)]
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.shards), thread_name_prefix="dpmq-fanout")
        self._threads = []
        self._saved_cursors = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        self.engine.open(self._on_commit)
        self.heads.update(self.engine.heads())
        self.pumped.update(self.heads)
        for shard in self.shards:
            self._pool.submit(shard.run, self._stop_delivery)
        for name, target in (("dpmq-pump", self._pump), ("dpmq-housekeeping", self._housekeeping)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.accepting = True
        log.info("broker started: engine=%s buffer=%d pace=%ss retries=%d",
                 self.engine.name, self._slots.capacity, self.settings.mq.pushMessagesSpeed,
                 self.settings.mq.sendRetryCount)
        return self

    def stop(self, timeout=None):
        """Stop gracefully: refuse new messages, push what is buffered, close consumers with 1001."""
        if not self.accepting and self._stop_pump.is_set():
            return
        timeout = self.settings.server.shutdownTimeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.accepting = False
        log.info("broker stopping: %d buffered, %d consumers", self.buffer.qsize(),
                 len(self._subscribers))
        self._draining.set()
        self._stop_pump.set()
        self._threads[0].join(max(0.0, deadline - time.monotonic()))
        for sub in self.subscribers():
            while sub.conn.pending_bytes and not sub.conn.closed and time.monotonic() < deadline:
                time.sleep(0.01)
            self.close_subscriber(sub, CLOSE_GOING_AWAY, "DPMQ is shutting down; reconnect later")
        with self._lock:
            joining = list(self._subscribers.values())
        while any(s is not None for s in joining) and time.monotonic() < deadline:
            time.sleep(0.01)
            with self._lock:
                joining = list(self._subscribers.values())
        self._stop_housekeeping.set()
        self._threads[1].join(2)
        self._stop_delivery.set()
        for shard in self.shards:
            shard.post("stop", None)
        self._pool.shutdown(wait=True)
        self.engine.close()
        log.info("broker stopped")

    # -- publishing --------------------------------------------------------------------------
    def publish(self, messages):
        """Accept ``[(topic, data), …]`` all or nothing; returns their MessageCodes once committed."""
        if not self.accepting:
            raise Unavailable("DPMQ is shutting down and accepts no messages; retry on another"
                              " instance or after the restart")
        mq = self.settings.mq
        for topic, data in messages:
            check_name("topic", topic, mq.maxTopicLength)
            if not isinstance(data, str):
                raise BadRequest("messageData is required and must be a string")
            try:
                size = len(data.encode("utf-8")) if len(data) <= mq.maxMessageBytes else len(data)
            except UnicodeEncodeError:
                raise BadRequest("messageData is not valid Unicode (it holds a lone surrogate)") \
                    from None
            if size > mq.maxMessageBytes:
                raise TooLarge(f"messageData is larger than mq.maxMessageBytes ({mq.maxMessageBytes}"
                               " bytes); split it or raise the limit")
        count = len(messages)
        if count > self._slots.capacity:
            raise TooLarge(f"a batch of {count} messages is larger than the whole buffer"
                           f" (mq.messageChanBuffer={self._slots.capacity}); send smaller batches")
        if not self._slots.acquire(count, mq.publishTimeout):
            raise Unavailable(f"the buffer is full ({self._slots.capacity} messages waiting to be"
                              f" pushed); retry in a moment", retry_after=max(1, int(mq.publishTimeout)))
        now = time.time()
        try:
            records = self.engine.append([(message.new_code(), topic, data, now)
                                          for topic, data in messages])
        except BaseException:
            self._slots.release(count)
            raise
        self.stats.add("published", count)
        return [record.code for record in records]

    def _on_commit(self, records):
        for record in records:
            self.heads[record.topic] = record.offset
            self.buffer.put_nowait(record)

    def _pump(self):
        """Take buffered messages one at a time, paced, and hand them to every shard."""
        speed = self.settings.mq.pushMessagesSpeed
        next_at = time.monotonic()
        while True:
            try:
                record = self.buffer.get(timeout=0.2)
            except queue.Empty:
                if self._stop_pump.is_set():
                    return
                continue
            batch = [record]
            if speed and not self._draining.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._draining.wait(delay)
                next_at = max(next_at, time.monotonic() - speed) + speed
            else:
                while len(batch) < 256:
                    try:
                        batch.append(self.buffer.get_nowait())
                    except queue.Empty:
                        break
            try:
                self._hand_out(batch)
            except Exception:  # noqa: BLE001 - the pump must never die; the store still has them
                log.exception("pump failed to hand out %d messages; consumers will catch up"
                              " from the store", len(batch))
            finally:
                self._slots.release(len(batch))

    def _hand_out(self, batch):
        for record in batch:
            self.pumped[record.topic] = record.offset
        items = [(record, message.frame(record)) for record in batch]
        for shard in self.shards:
            shard.post("msgs", items)
        self.stats.add("pushed", len(batch))

    # -- consumers ---------------------------------------------------------------------------
    def subscribe(self, conn, ws, topic, consumer_id):
        """Register a connected consumer; raises Refused (with its close code) if it may not join."""
        mq = self.settings.mq
        check_name("topic", topic, mq.maxTopicLength)
        check_name("consumerId", consumer_id, mq.maxConsumerIdLength)
        key = (topic, consumer_id)
        limit = self.settings.server.maxConsumers
        with self._lock:
            if not self.accepting:
                raise Refused("DPMQ is shutting down; reconnect later", CLOSE_GOING_AWAY)
            if key in self._subscribers:
                raise Refused(f"consumerId {consumer_id!r} is already connected to topic {topic!r};"
                              " use another id or close the other connection", CLOSE_DUPLICATE)
            if len(self._subscribers) >= limit:
                raise Refused(f"too many consumers: the limit is {limit} (server.maxConsumers);"
                              " try again later", CLOSE_TRY_AGAIN)
            self._subscribers[key] = None
        try:
            sub = "c:" + consumer_id
            cursor = self.engine.cursor(topic, sub)
            if cursor is None:
                cursor = self.heads.get(topic, 0)
                self.engine.save_cursors({(topic, sub): cursor})
            attempts = self.engine.attempts(topic, sub, cursor)
        except StoreError as exc:
            with self._lock:
                del self._subscribers[key]
            raise Refused(f"the store is unavailable ({exc}); reconnect later", CLOSE_TRY_AGAIN) \
                from None
        subscriber = Subscriber(conn, ws, topic, sub, consumer_id, cursor, attempts)
        self._saved_cursors[(topic, sub)] = cursor
        with self._lock:
            self._subscribers[key] = subscriber
        min(self.shards, key=lambda shard: shard.count).add(subscriber)
        log.info("consumer connected: topic=%r id=%r from %s at offset %d",
                 topic, consumer_id, conn.remote_addr, cursor)
        return subscriber

    def unsubscribe(self, subscriber, reason="closed"):
        """Forget a consumer whose connection ended; save its cursor and count an unwritten push."""
        conn = subscriber.conn
        conn.detach()
        subscriber.shard.remove(subscriber)
        key = (subscriber.topic, subscriber.sub)
        try:
            self.engine.save_cursors({key: conn.written_offset})
            unwritten = conn.first_unwritten()
            if unwritten is not None:
                self.engine.add_attempt(subscriber.topic, subscriber.sub, unwritten)
                self.stats.add("failed")
        except StoreError as exc:
            log.error("could not save the cursor of %s on %r: %s; it may receive duplicates",
                      subscriber.sub, subscriber.topic, exc)
        with self._lock:
            self._subscribers.pop((subscriber.topic, subscriber.consumer_id), None)
            self._saved_cursors.pop(key, None)
        log.info("consumer disconnected: topic=%r id=%r (%s), delivered %d",
                 subscriber.topic, subscriber.consumer_id, reason, conn.delivered)

    def close_subscriber(self, subscriber, code, reason):
        """Close a consumer's WebSocket from any thread; its route thread then unsubscribes it."""
        ws = subscriber.ws
        try:
            ws.close(code, reason)
        except Exception:  # noqa: BLE001 - already closed by the peer
            pass
        ws.event.set()

    def subscribers(self):
        with self._lock:
            return [sub for sub in self._subscribers.values() if sub is not None]

    # -- housekeeping ------------------------------------------------------------------------
    def _housekeeping(self):
        interval = self.settings.mq.cursorFlushInterval
        while not self._stop_housekeeping.wait(interval):
            try:
                self.flush_cursors()
            except StoreError as exc:
                log.warning("cursor flush failed, retrying: %s", exc)
            except Exception:  # noqa: BLE001
                log.exception("housekeeping failed; retrying")
        try:
            self.flush_cursors()
        except Exception:  # noqa: BLE001
            log.exception("final cursor flush failed")

    def flush_cursors(self):
        """Save every cursor that moved since the last save; a crash repeats at most that much."""
        changed = {}
        for sub in self.subscribers():
            key = (sub.topic, sub.sub)
            offset = sub.conn.written_offset
            if self._saved_cursors.get(key, -1) < offset:
                changed[key] = offset
        if changed:
            self.engine.save_cursors(changed)
            self._saved_cursors.update(changed)
