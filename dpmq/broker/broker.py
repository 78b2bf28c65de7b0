"""The broker: accepts messages and hands them to the delivery shards, paced or not.

"The buffer" is one thing: the room of ``mq.messageChanBuffer`` messages that are accepted and not
yet handed to the delivery shards (:mod:`.slots`). Publishing reserves room first (waiting at most
``mq.publishTimeout``), then commits to the store; only a committed message is answered
``code:0``. The engine hands committed records back in log order (``on_commit``). Unpaced
(``mq.pushMessagesSpeed`` 0, the default), the committing thread hands them straight to the
delivery shards and gives their room back, so only messages being committed hold room. Paced, they
wait in the pacing queue for their push (:mod:`.pacing`). Either way each message is posted once
to the delivery shards running on the fan-out ``ThreadPoolExecutor``. Delayed messages wait in the
store; the scheduler moves each into its topic's log (and on to the shards) when it is due.

The connected consumers are kept by :mod:`.consumers`. Everything hangs off one :class:`Broker`
object, so one process can run several brokers.
"""

import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from operator import attrgetter

from .. import message
from ..auth import Identity
from ..delivery.shards import Shard, subscription_key
from ..errors import CLOSE_GOING_AWAY, BadRequest, StoreError, TooLarge, Unavailable
from ..metrics import PUBLISHED, History, Metrics, TopicCounts, merge
from ..storage import open_engine
from ..token_expiry import Expiry
from ..tracing import Tracing
from ..transport.budget import Budget
from ..transport.inbound import Inbound
from ..validation import new_messages
from .consumers import Consumers
from .events import EVENTS_TOPIC, Events, check_topics
from .farewells import Farewells
from .housekeeping import Housekeeping
from .ownership import Owners
from .pacing import Pacer
from .pulls import Pulls
from .sequencing import Sequencer
from .slots import Slots
from .webhooks import Webhooks

log = logging.getLogger(__name__)


_TOPIC, _OFFSET, _DUE = attrgetter("topic"), attrgetter("offset"), attrgetter("due")
#: Seconds an ack over HTTP waits for the other processes when its consumer is not in this one.
SETTLE_ELSEWHERE = 2.0


def _per_time(records):
    """(when each became due, how many) for each run of ``records`` that share that time."""
    for (created, due), run in itertools.groupby(records, attrgetter("created", "due")):
        yield max(created, due), len(list(run))


class Broker:
    """One broker: a store, its buffer's room, a pump when paced, delivery shards and the
    consumers connected to it."""

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
        self.slots = Slots(mq.messageChanBuffer)    # the buffer: accepted, not yet handed out
        # What waits in every consumer's outgoing buffer, together (each connection counts into
        # it from when its member joins); shared by the delivery shards.
        self.consumer_buffers = Budget(mq.consumerBuffersTotalBytes)
        self.events = Events(self)
        self.consumers = Consumers(self)
        self.webhooks = Webhooks(self)
        self.pulls = Pulls(self)
        self.tracing = Tracing()    # off until start() finds an OpenTelemetry SDK set up
        self._trace_publish = None  # tracing.published once it is on (see start)
        self._stopping = threading.Event()
        self._stop_delivery = threading.Event()
        self.accepting = False
        self.housekeeping = Housekeeping(self)
        self.shards = [Shard(i, self, on_event=self.events.emit,
                             on_moved=self.housekeeping.wake_sweeper)
                       for i in range(mq.fanoutWorkers)]
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.shards), thread_name_prefix="dpmq-fanout")
        self._paced = bool(mq.pushMessagesSpeed)
        self._hand_lock = threading.Lock()     # unpaced: one hand-out at a time, in order
        # several processes: their records and ours, in offset order (sequencing.py)
        self._sequencer = (Sequencer(lambda topic: self.pumped.get(topic, 0))
                           if self.engine.shared else None)
        self.pacer = Pacer(mq.pushMessagesSpeed, self._hand_out, self.slots.release)
        self.owners = Owners(self.engine)
        self.inbound = Inbound(settings.server.pingInterval)
        self.farewells = Farewells()    # consumers' leaving, off the inbound thread
        self.expiry = Expiry()      # closes consumers whose JWT expires (the app's Auth uses it)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        self.engine.open(self._on_commit, self._on_remote, self._on_requeue)
        self.heads.update(self.engine.heads())
        self.pumped.update(self.heads)
        if self.tracing.start():
            self._trace_publish = self.tracing.published
            for shard in self.shards:
                shard.on_deliver = self.tracing.delivered
        for shard in self.shards:
            self._pool.submit(shard.run, self._stop_delivery)
        if self._paced:
            self.pacer.start()
        self.housekeeping.start()
        self.inbound.start()
        self.pulls.start()
        self.webhooks.start()
        self.events.start()
        self.accepting = True
        log.info("broker started engine=%s buffer=%d pace=%s retries=%d auth=%s",
                 self.engine.name, self.slots.capacity, self.settings.mq.pushMessagesSpeed,
                 self.settings.mq.sendRetryCount, "on" if self.settings.auth.enabled else "off")
        return self

    def stop(self, timeout=None):
        """Stop gracefully: refuse new messages, push what awaits its paced push, close
        consumers with 1001."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        timeout = self.settings.server.shutdownTimeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.accepting = False
        log.info("broker stopping awaiting_paced_push=%d consumers=%d", self.pacer.waiting(),
                 len(self.members()))
        self.housekeeping.stop_scheduler()
        self.webhooks.stop()
        self.pacer.stop(deadline - time.monotonic())
        self.pulls.close_all()
        for member in self.members():
            while member.conn.pending_bytes and member.conn.open and time.monotonic() < deadline:
                time.sleep(0.01)
            self.close_member(member, CLOSE_GOING_AWAY, "DPMQ is shutting down; reconnect later")
        while self.consumers.joining_or_joined() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.pulls.stop()
        self.events.stop()
        self.housekeeping.stop()
        self.inbound.stop()
        # the consumers' leavings, even past the deadline a little: the stop is given 2 s more
        self.farewells.stop(max(0, deadline - time.monotonic()) + 1.5)
        self.expiry.stop()          # after inbound: no token frame watches a consumer again
        self._stop_delivery.set()
        for shard in self.shards:
            shard.post("stop")
        self._pool.shutdown(wait=True)
        self.engine.close()
        log.info("broker stopped")

    # -- publishing --------------------------------------------------------------------------
    def publish(self, items, internal=False):
        """Accept messages (mappings with topic, messageData and optional delay, key,
        idempotencyKey, or a :class:`~dpmq.validation.Uniform` batch) all or nothing; returns
        their MessageCodes once committed. ``internal``: the broker's own lifecycle events (to
        the reserved topic, also while stopping). They take no room in the buffer and are never
        paced (see :meth:`_on_commit`): the buffer and the pace are the producers', and a
        consumer connecting must not delay their messages nor take their room."""
        if not self.accepting and not internal:
            raise Unavailable("DPMQ is shutting down and accepts no messages; retry on another"
                              " instance or after the restart")
        if not items:
            raise BadRequest("no messages: send at least one")
        messages = new_messages(items, time.time(), self.settings.mq)
        if not internal:
            check_topics(messages)
        immediate = 0 if internal else list(map(_DUE, messages)).count(0.0)
        if immediate > self.slots.capacity:
            raise TooLarge(f"a batch of {immediate} messages is larger than the whole buffer"
                           f" (mq.messageChanBuffer={self.slots.capacity}); send smaller batches")
        timeout = self.settings.mq.publishTimeout
        if immediate and not self.slots.acquire(immediate, timeout):
            self.events.buffer_full(self.slots.capacity)
            raise Unavailable(f"the buffer is full ({self.slots.capacity} messages accepted and not"
                              " yet handed out, mq.messageChanBuffer); retry in a moment",
                              retry_after=max(1, int(timeout)))
        started = time.perf_counter()
        try:
            appended = self.engine.append(messages)
        except BaseException as exc:
            self.slots.release(immediate)
            if isinstance(exc, StoreError):
                self.events.store_failed(exc)
            raise
        if self.events.store_failing:
            self.events.store_worked()
        if internal:
            return appended.codes
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.slots.release(immediate - len(appended.records))
        if len(appended.records) < len(messages):
            self.housekeeping.wake_scheduler()
        if self._trace_publish is not None:
            self._trace_publish(messages, appended.codes)
        return appended.codes

    def _on_commit(self, records):
        self.housekeeping.wake_sweeper()
        internal = False
        for topic, run in itertools.groupby(records, _TOPIC):   # a batch: one run
            run = list(run)
            self.heads[topic] = run[-1].offset
            self.counts.of(topic)[PUBLISHED] += len(run)
            internal = internal or topic == EVENTS_TOPIC
        if internal:        # lifecycle events: they hold no room and are not paced
            self._hand_out_now([r for r in records if r.topic == EVENTS_TOPIC], timed=False)
            records = [r for r in records if r.topic != EVENTS_TOPIC]
        if not self._paced:
            if records:
                self._hand_out_now(records)
                self.slots.release(len(records))
            return
        for record in records:
            self.pacer.put(record)

    def _on_remote(self, records):
        """What other processes sharing the store committed: hand it out, or (paced) wait for
        room in the buffer and queue it for its paced push."""
        if not self._paced:
            for record in records:
                self.heads[record.topic] = max(record.offset, self.heads.get(record.topic, 0))
            self._hand_out_now(records)
            return
        for record in records:
            if record.topic == EVENTS_TOPIC:
                self.heads[record.topic] = max(record.offset, self.heads.get(record.topic, 0))
                self._hand_out_now([record], timed=False)
                continue
            while not self.slots.acquire(1, 0.5):
                if self.pacer.stopped:
                    return      # it is in the store; consumers catch up from there
            self.heads[record.topic] = max(record.offset, self.heads.get(record.topic, 0))
            self.pacer.put(record)

    def _on_requeue(self, key, records):
        self.shard_for(*key).post("requeue", (key, records))

    def _hand_out_now(self, records, timed=True):
        """Unpaced: hand committed records to the shards on the committing thread, in order."""
        with self._hand_lock:
            try:
                if self._sequencer is not None:
                    records = self._sequencer.order(records, time.monotonic())
                    if self._sequencer.holding:
                        self.housekeeping.wake_sweeper()    # hands them out if none follows
                if records:
                    self._hand_out(records, timed)
            except Exception:  # noqa: BLE001 - it is committed; never fail the commit for this
                log.exception("handing out %d messages failed; consumers will catch up from the"
                              " store", len(records))

    def hand_out_held(self):
        """Hand out the records held for a gap (another process's records below them) whose
        time is up, should no further records come to do it. Any thread."""
        if self._sequencer is not None and self._sequencer.holding:
            self._hand_out_now([])

    def _hand_out(self, batch, timed=True):
        """Post ``batch`` to the shards whose consumers take its topics, a run of one topic at a
        time (a batch publish is one run). ``timed``: its time from publish to push is
        measured (the producers' messages; not the broker's lifecycle events)."""
        if timed:
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
                items = [(record, message.payload(record)) for record in run]
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

    def subscribe(self, *args, **kwargs):
        """See :meth:`dpmq.broker.consumers.Consumers.subscribe`."""
        return self.consumers.subscribe(*args, **kwargs)

    def unsubscribe(self, member, reason="closed"):
        self.consumers.unsubscribe(member, reason)

    def members(self):
        return self.consumers.members()

    def close_member(self, member, code, reason):
        """Close a consumer's WebSocket from any thread; its route thread then unsubscribes it."""
        self.consumers.close(member, code, reason)

    def reply(self, member, kind, code):
        """An ack or nack from a consumer; the shard answers a bad one with an error frame."""
        self.shard_for(member.topic, subscription_key(member)).post("reply", (member, kind, code))

    def settle(self, topic, key, codes, nack=False, identity=None):
        """Acks (or nacks) over HTTP for subscription ``(topic, key)``: ``(settled, unknown)``
        codes; None if no consumer of it is connected to any process of the broker, False if
        ``identity`` may not settle its messages. Where the consumer is connected to another
        process (a shared store; a group's members may be spread over several), that process
        settles them."""
        answer = self._settle_here(topic, key, codes, nack, identity)
        if not self.engine.shared or answer is False or (answer is not None and not answer[1]):
            return answer
        rest = codes if answer is None else answer[1]
        question = {"settle": [topic, key, rest, nack, identity]}
        answers, _ = self.engine.gather_reports(SETTLE_ELSEWHERE, question)
        others = [a for a in answers.values() if a is not None]
        if answer is None and (not others or all(a is False for a in others)):
            return others[0] if others else None
        settled = (answer[0] if answer else []) + [c for a in others if a for c in a[0]]
        done = set(settled)
        return settled, [code for code in rest if code not in done]

    def answer(self, question):
        """Another process's question (see :meth:`settle`), answered JSON-able."""
        if "settle" in question:
            topic, key, codes, nack, identity = question["settle"]
            try:
                return self._settle_here(topic, key, codes, nack,
                                         identity and Identity(*identity), SETTLE_ELSEWHERE / 2)
            except Unavailable:
                return None     # too busy to answer in time: the asker counts them unknown
        return None

    def _settle_here(self, topic, key, codes, nack, identity, timeout=10.0):
        reply = queue.SimpleQueue()
        self.shard_for(topic, key).post("http_ack", (topic, key, codes, nack, identity, reply))
        try:
            return reply.get(timeout=timeout)
        except queue.Empty:
            raise Unavailable("the broker is too busy to settle the messages now; retry") from None

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
