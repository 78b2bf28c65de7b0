"""The broker: accepts messages, buffers them, paces them out, and keeps the consumer registry.

Publishing reserves room in the bounded buffer first (waiting at most ``mq.publishTimeout``), then
commits to the store; only a committed message is answered ``code:0``. The engine hands committed
records back in log order (``on_commit``). Unpaced (``mq.pushMessagesSpeed`` 0, the default), the
committing thread hands them straight to the delivery shards: a hand-off to a pump thread and back
cost more than the hand-out itself. Paced, they enter the buffer, a ``queue.SimpleQueue`` that the
reserved room bounds, and the pump thread takes them one at a time, ``mq.pushMessagesSpeed``
seconds apart. Either way each message's frame is built once and posted to the delivery shards
running on the fan-out ``ThreadPoolExecutor``. Delayed messages wait in the store; the scheduler
moves each into its topic's log (and on to the shards) when it is due.

Everything hangs off one :class:`Broker` object, so one process can run several brokers.
"""

import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from operator import attrgetter

from .. import message
from ..delivery.shards import Shard, subscription_key
from ..delivery.subscription import Member
from ..errors import (
    CLOSE_DUPLICATE,
    CLOSE_GOING_AWAY,
    CLOSE_TRY_AGAIN,
    BadRequest,
    Refused,
    StoreError,
    TooLarge,
    Unavailable,
)
from ..metrics import PUBLISHED, History, Metrics, TopicCounts, merge
from ..storage import open_engine
from ..transport.budget import Budget
from ..transport.inbound import Inbound
from ..validation import check_name, new_messages
from .housekeeping import Housekeeping
from .ownership import Owners
from .slots import Slots

log = logging.getLogger(__name__)


_TOPIC, _OFFSET, _DUE = attrgetter("topic"), attrgetter("offset"), attrgetter("due")


def _per_time(records):
    """(when each became due, how many) for each run of ``records`` that share that time."""
    for (created, due), run in itertools.groupby(records, attrgetter("created", "due")):
        yield max(created, due), len(list(run))


class Broker:
    """One broker: a store, a buffer, a pump, delivery shards and the consumers connected to it."""

    def __init__(self, settings, engine=None):
        self.settings = settings
        self.engine = engine or open_engine(settings)
        self.started = time.time()
        self.pushed = 0             # written by one hand-out at a time
        self.counts = TopicCounts()     # published, written in commit order
        self.metrics = Metrics(self)
        self.history = History()
        self.pumped = {}            # topic -> newest offset handed to the shards (pump or not)
        self.heads = {}             # topic -> newest committed offset
        mq = settings.mq
        self.buffer = queue.SimpleQueue()     # bounded by self.slots
        self.slots = Slots(mq.messageChanBuffer)
        # What waits in every consumer's outgoing buffer, together (each connection counts into
        # it from when its member joins); shared by the delivery shards.
        self.consumer_buffers = Budget(mq.consumerBuffersTotalBytes)
        self._members = {}          # (topic, consumer id) -> Member, or None while it joins
        self._lock = threading.Lock()
        self._unlock_later = set()  # (topic, consumer id) whose release in the store failed
        self._stop_pump = threading.Event()
        self._draining = threading.Event()
        self._stop_delivery = threading.Event()
        self.accepting = False
        self.shards = [Shard(i, self) for i in range(mq.fanoutWorkers)]
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.shards), thread_name_prefix="dpmq-fanout")
        self._paced = bool(mq.pushMessagesSpeed)
        self._hand_lock = threading.Lock()     # unpaced: one hand-out at a time, in order
        self._pump_thread = None
        self.housekeeping = Housekeeping(self)
        self.owners = Owners(self.engine)
        self.inbound = Inbound(settings.server.pingInterval)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        self.engine.open(self._on_commit, self._on_remote, self._on_requeue)
        self.heads.update(self.engine.heads())
        self.pumped.update(self.heads)
        for shard in self.shards:
            self._pool.submit(shard.run, self._stop_delivery)
        if self._paced:
            self._pump_thread = threading.Thread(target=self._pump, name="dpmq-pump", daemon=True)
            self._pump_thread.start()
        self.housekeeping.start()
        self.inbound.start()
        self.accepting = True
        log.info("broker started engine=%s buffer=%d pace=%s retries=%d auth=%s",
                 self.engine.name, self.slots.capacity, self.settings.mq.pushMessagesSpeed,
                 self.settings.mq.sendRetryCount, "on" if self.settings.auth.enabled else "off")
        return self

    def stop(self, timeout=None):
        """Stop gracefully: refuse new messages, push what is buffered, close consumers with 1001."""
        if self._stop_pump.is_set():
            return
        timeout = self.settings.server.shutdownTimeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.accepting = False
        log.info("broker stopping buffered=%d consumers=%d", self.buffer.qsize(), len(self.members()))
        self._draining.set()
        self._stop_pump.set()
        self.housekeeping.stop_scheduler()
        if self._pump_thread is not None:
            self._pump_thread.join(max(0.0, deadline - time.monotonic()))
        for member in self.members():
            while member.conn.pending_bytes and member.conn.open and time.monotonic() < deadline:
                time.sleep(0.01)
            self.close_member(member, CLOSE_GOING_AWAY, "DPMQ is shutting down; reconnect later")
        while self._members and time.monotonic() < deadline:
            time.sleep(0.01)
        self.housekeeping.stop()
        self.inbound.stop()
        self._stop_delivery.set()
        for shard in self.shards:
            shard.post("stop")
        self._pool.shutdown(wait=True)
        self.engine.close()
        log.info("broker stopped")

    # -- publishing --------------------------------------------------------------------------
    def publish(self, items):
        """Accept messages (mappings with topic, messageData and optional delay, key,
        idempotencyKey, or a :class:`~dpmq.validation.Uniform` batch) all or nothing; returns
        their MessageCodes once committed."""
        if not self.accepting:
            raise Unavailable("DPMQ is shutting down and accepts no messages; retry on another"
                              " instance or after the restart")
        if not items:
            raise BadRequest("no messages: send at least one")
        messages = new_messages(items, time.time(), self.settings.mq)
        immediate = list(map(_DUE, messages)).count(0.0)
        if immediate > self.slots.capacity:
            raise TooLarge(f"a batch of {immediate} messages is larger than the whole buffer"
                           f" (mq.messageChanBuffer={self.slots.capacity}); send smaller batches")
        timeout = self.settings.mq.publishTimeout
        if immediate and not self.slots.acquire(immediate, timeout):
            raise Unavailable(f"the buffer is full ({self.slots.capacity} messages waiting to be"
                              " pushed); retry in a moment", retry_after=max(1, int(timeout)))
        started = time.perf_counter()
        try:
            appended = self.engine.append(messages)
        except BaseException:
            self.slots.release(immediate)
            raise
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.slots.release(immediate - len(appended.records))
        if len(appended.records) < len(messages):
            self.housekeeping.wake_scheduler()
        return appended.codes

    def _on_commit(self, records):
        for topic, run in itertools.groupby(records, _TOPIC):   # a batch: one run
            run = list(run)
            self.heads[topic] = run[-1].offset
            self.counts.of(topic)[PUBLISHED] += len(run)
        if not self._paced:
            self._hand_out_now(records)
            self.slots.release(len(records))
            return
        for record in records:
            self.buffer.put_nowait(record)

    def _on_remote(self, records):
        """What other processes sharing the store committed: hand it out, or (paced) wait for
        room and buffer it."""
        if not self._paced:
            for record in records:
                self.heads[record.topic] = max(record.offset, self.heads.get(record.topic, 0))
            self._hand_out_now(records)
            return
        for record in records:
            while not self.slots.acquire(1, 0.5):
                if self._stop_pump.is_set():
                    return      # it is in the store; consumers catch up from there
            self.heads[record.topic] = max(record.offset, self.heads.get(record.topic, 0))
            self.buffer.put_nowait(record)

    def _on_requeue(self, key, records):
        self.shard_for(*key).post("requeue", (key, records))

    def _pump(self):
        """Take buffered messages one at a time, paced, and hand them to every shard.

        The next push is due ``pushMessagesSpeed`` after this one went out, never earlier: after
        an idle spell the first message goes at once, and the one behind it waits its full turn
        (an idle pump must not bank time for a burst). Stopping drains the buffer unpaced."""
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
                while (delay := next_at - time.monotonic()) > 0 and not self._draining.is_set():
                    self._draining.wait(delay)
                next_at = max(next_at, time.monotonic()) + speed
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
                self.slots.release(len(batch))

    def _hand_out_now(self, records):
        """Unpaced: hand committed records to the shards on the committing thread, in order."""
        with self._hand_lock:
            try:
                self._hand_out(records)
            except Exception:  # noqa: BLE001 - it is committed; never fail the commit for this
                log.exception("handing out %d messages failed; consumers will catch up from the"
                              " store", len(records))

    def _hand_out(self, batch):
        """Post ``batch`` to the shards whose consumers take its topics, a run of one topic at a
        time (a batch publish is one run)."""
        now = time.time()
        observe = self.metrics.push_seconds.observe
        for since, count in _per_time(batch):
            observe(max(0.0, now - since), count)
        pumped, targets, posts = self.pumped, {}, {}
        for topic, run in itertools.groupby(batch, _TOPIC):
            run = list(run)
            newest = max(map(_OFFSET, run))
            if newest > pumped.get(topic, 0):      # from two sources, see _on_remote
                pumped[topic] = newest
            shards = targets.get(topic)
            if shards is None:
                shards = targets[topic] = [s for s in self.shards if topic in s.topics]
            if shards:
                items = [(record, message.frame(record)) for record in run]
                for shard in shards:
                    posts.setdefault(shard, []).extend(items)
        for shard, mine in posts.items():
            shard.post("msgs", mine)
        self.pushed += len(batch)

    def topic_counts(self):
        """``{topic: [published, delivered, acked, redelivered, failed, dead_lettered]}``."""
        return merge([self.counts] + [shard.counts for shard in self.shards])

    # -- consumers ---------------------------------------------------------------------------
    def shard_for(self, topic, key):
        return self.shards[hash((topic, key)) % len(self.shards)]

    def subscribe(self, conn, closer, topic, consumer_id, group=None, ack=False, since=None,
                  durable=True, identity=None):
        """Register a connected consumer; raises Refused or Forbidden (with its close code) if it
        may not join. ``identity`` (auth on) must own the subscription or may take it over;
        ``durable=False`` asks for an ephemeral subscription (see :mod:`dpmq.broker.ownership`)."""
        mq = self.settings.mq
        check_name("topic", topic, mq.maxTopicLength)
        check_name("consumerId", consumer_id, mq.maxConsumerIdLength)
        if group is not None:
            check_name("group", group, mq.maxConsumerIdLength)
        member = Member(conn, closer, topic, consumer_id, group, ack, since)
        sub = subscription_key(member)
        owned = self.owners.claim(topic, sub, group or consumer_id, identity, durable)
        key = (topic, consumer_id)
        limit = self.settings.server.maxConsumers
        with self._lock:
            if not self.accepting:
                raise Refused("DPMQ is shutting down; reconnect later", CLOSE_GOING_AWAY)
            if key in self._members:
                raise Refused(f"consumerId {consumer_id!r} is already connected to topic {topic!r};"
                              " use another id or close the other connection", CLOSE_DUPLICATE)
            if len(self._members) >= limit:
                raise Refused(f"too many consumers: the limit is {limit} (server.maxConsumers);"
                              " try again later", CLOSE_TRY_AGAIN)
            self._members[key] = None
        try:
            self._lock_consumer(topic, consumer_id)
            try:
                self.owners.join(topic, sub, group or consumer_id, identity, durable, owned)
                self.shard_for(topic, sub).join(member)
            except BaseException:
                self.owners.leave(topic, sub)
                self._unlock_consumer(topic, consumer_id)
                raise
        except BaseException:
            with self._lock:
                del self._members[key]
            raise
        with self._lock:
            self._members[key] = member
        log.info("consumer connected topic=%r id=%r group=%r ack=%s durable=%s from=%s",
                 topic, consumer_id, group, ack, durable, conn.remote_addr)
        return member

    def unsubscribe(self, member, reason="closed"):
        """Forget a consumer whose connection ended; what it held goes back for redelivery, and
        an ephemeral subscription is forgotten (before its consumerId is free again)."""
        member.conn.detach()
        sub = subscription_key(member)
        self.shard_for(member.topic, sub).leave(member)
        log.info("consumer disconnected topic=%r id=%r reason=%r delivered=%d acked=%d",
                 member.topic, member.consumer_id, reason, member.conn.delivered, member.acked)
        self.owners.leave(member.topic, sub)
        self._unlock_consumer(member.topic, member.consumer_id)
        with self._lock:
            self._members.pop((member.topic, member.consumer_id), None)

    def _lock_consumer(self, topic, consumer_id):
        """With a shared store, one consumerId is connected to one process of the broker."""
        try:
            locked = self.engine.lock_consumer(topic, consumer_id)
        except StoreError as exc:
            raise Refused(f"the store is unavailable ({exc}); reconnect later",
                          CLOSE_TRY_AGAIN) from None
        if not locked:
            raise Refused(f"consumerId {consumer_id!r} is already connected to topic {topic!r}"
                          " (through another DPMQ process); use another id or close the other"
                          " connection", CLOSE_DUPLICATE)

    def _unlock_consumer(self, topic, consumer_id):
        try:
            self.engine.unlock_consumer(topic, consumer_id)
        except StoreError as exc:
            log.warning("could not release consumerId %r of topic %r; retrying: %s",
                        consumer_id, topic, exc)
            with self._lock:
                self._unlock_later.add((topic, consumer_id))

    def retry_unlocks(self):
        """Release the consumerIds whose release failed (the store was away), unless they came
        back meanwhile; called by the housekeeping thread."""
        with self._lock:
            pending = [key for key in self._unlock_later if key not in self._members]
            self._unlock_later.clear()
        for topic, consumer_id in pending:
            self._unlock_consumer(topic, consumer_id)

    def reply(self, member, kind, code):
        """An ack or nack from a consumer; the shard answers a bad one with an error frame."""
        self.shard_for(member.topic, subscription_key(member)).post("reply", (member, kind, code))

    def close_member(self, member, code, reason):
        """Close a consumer's WebSocket from any thread; its route thread then unsubscribes it.

        The close frame is queued first; then the socket's reading side is shut, so that the
        inbound thread sees the connection end now, without waiting for the consumer's answer.
        """
        try:
            member.closer.close(code, reason)
        except Exception:  # noqa: BLE001 - already closed by the peer
            pass
        member.conn.stop_reading()

    def members(self):
        with self._lock:
            return [member for member in self._members.values() if member is not None]

    # -- dead letters ------------------------------------------------------------------------
    def requeue(self, topic, sub=None, code=None):
        """Deliver dead letters again; returns how many were requeued."""
        requeued = self.engine.requeue(topic, sub, code)
        for (t, key), records in requeued.items():
            self.shard_for(t, key).post("requeue", ((t, key), records))
        return sum(len(records) for records in requeued.values())

    def positions(self, timeout=5.0):
        """The cursors of the active subscriptions as the shards compute them now, to show."""
        return self._ask_shards("positions", None, timeout)

    def cursors_to_save(self, stale=None, timeout=5.0):
        """The cursors that moved since the last call, and those last taken at or before
        ``stale`` (a ``time.time()``), for the housekeeping thread to save."""
        # Shards where nothing moved are not asked (and not woken) between sweeps.
        shards = [shard for shard in self.shards if stale is not None or shard.touched]
        return self.owners.durable_cursors(lambda: self._ask_shards("cursors", stale, timeout,
                                                                    shards))

    def _ask_shards(self, kind, arg, timeout, shards=None):
        replies = []
        for shard in self.shards if shards is None else shards:
            reply = queue.SimpleQueue()
            shard.post(kind, (reply, arg))
            replies.append(reply)
        merged = {}
        for reply in replies:
            try:
                merged.update(reply.get(timeout=timeout))
            except queue.Empty:
                log.warning("a delivery shard did not report its cursors in %ss", timeout)
        return merged
