"""Delivery shards: the threads that write messages to consumers.

Each shard is one long-lived task on the broker's fan-out ``ThreadPoolExecutor`` and owns a share of
the subscriptions (all members of a group land on the same shard): only its thread touches their
state, so a message costs one hand-off per shard, not one per consumer. The broker posts each
message, encoded once, to every shard with a subscription to its topic (from the
committing thread, or from the pump when pushes are paced); the shard offers it to each subscription
of the topic and writes with non-blocking sends, watching unwritable sockets in its selector. A
consumer that cannot keep up never blocks the shard: its subscription falls behind and catches up
from the store later, up to what the broker has already handed out, so pacing holds for catch-up
too. A consumer that stopped reading costs the shard nothing per message: a subscription that is
behind is not offered live messages (it will read them), one whose members cannot take anything
is set aside (parked) until a write, an ack or a timer gives them room, and a socket known to be
full is not tried again until the selector says it is writable (docs/BENCHMARKS.md measures what
such consumers cost a publish).

Under load, a shard gathers messages for a short window and writes them in rounds
(:mod:`.gathering`).

Everything else a shard does comes through :meth:`Shard.post`: members joining and leaving, acks,
requeued dead letters, and requests for the cursors to save.
"""

import heapq
import logging
import math
import queue
import time

from ..errors import CLOSE_BAD_INPUT, CLOSE_TRY_AGAIN, Refused, StoreError
from ..gathering import Gathering
from ..message import Run
from ..metrics import ACKED, DEAD_LETTERED, DELIVERED, TopicCounts
from .catch_up_cache import CatchUpCache
from .cursors import CursorLedger
from .shard_waits import ShardWaits
from .shared_group import SharedGroup
from .starting import start
from .subscription import Subscription

log = logging.getLogger(__name__)

SHARED_POLL = 1.0
#: How often parked subscriptions are looked at again without an event of their own: room in the
#: shared budget (mq.consumerBuffersTotalBytes) comes back without telling them.
PARKED_RECHECK = 1.0
#: How soon subscriptions with work whose members had no room are looked at again.
IDLE_RECHECK = 1.0


def _unavailable(exc):
    return Refused(f"the store is unavailable ({exc}); reconnect later", CLOSE_TRY_AGAIN)


def subscription_key(member):
    return f"g:{member.group}" if member.group is not None else f"c:{member.consumer_id}"


class Shard:
    """A delivery thread and the subscriptions it owns. ``post`` is its only thread-safe entry."""

    def __init__(self, index, broker, clock=time.monotonic, on_event=None, on_deliver=None,
                 on_moved=None):
        self.index = index
        self.clock = clock              # for timers, gathering and retries; tests give their own
        # on_event(type, **details): a lifecycle event (dead letter, gap); it only queues it
        self.on_event = on_event or (lambda kind, **details: None)
        # on_deliver(subscription, member, record, attempts): a traced message handed to a
        # member (the broker's tracing, set before the shard runs); None when tracing is off
        self.on_deliver = on_deliver
        # on_moved(): a turn left cursors to save (the broker's housekeeping, which may doze)
        self.on_moved = on_moved
        self.broker = broker
        self.engine = broker.engine
        self.limits = broker.settings.mq
        self.batch = self.limits.catchUpBatch
        self.counts = TopicCounts()     # what this shard delivered, acked, failed…
        self.budget = broker.consumer_buffers    # one per broker, shared by the shards
        self._inbox = queue.SimpleQueue()
        self._waits = ShardWaits()
        self._subs = {}                 # (topic, key) -> Subscription
        # topic -> [Subscription]. The hand-out reads its keys to skip shards without a
        # subscription to a message's topic: a key is added before the new subscription's first
        # catch-up reads how far the hand-out got, so a message it skipped is one that catch-up
        # will read.
        self.topics = {}
        self._active = set()            # subscriptions with messages to catch up or redeliver
        self._parked = set()            # ... that their members could not take lately
        self._next_unpark = 0.0
        self._dirty = set()             # members whose sockets need a flush
        self._blocked = set()           # members whose sockets took nothing more: not tried
                                        # again until writable
        self._cursors = CursorLedger()
        self._timers = []               # ack deadlines (see Subscription.timers)
        self._retry_at = 0.0            # after a store error, no catch-up before this time
        self._shared = set()            # shared groups (their messages may come back from the store)
        self._next_poll = 0.0
        self._gathering = Gathering(self.limits.writeCoalesce)
        # messages read from the store and their frames, shared by the subscriptions catching up
        self.catch_up_cache = CatchUpCache(self.limits.catchUpCacheBytes // self.limits.fanoutWorkers,
                                           self.limits.retentionSeconds,
                                           self.limits.retentionMessages)

    # -- the thread-safe side ----------------------------------------------------------------
    def post(self, kind, item=None):
        self._inbox.put((kind, item))
        self._waits.wake()

    @property
    def touched(self):
        """Whether a subscription was touched since the cursors were last taken (any thread)."""
        return self._cursors.touched

    def join(self, member, timeout=30.0):
        """Attach a connected member; raises Refused if it cannot join."""
        member.conn.on_progress = lambda conn: self.post("watch", member)
        self.post("join", member)
        if not member.joined.wait(timeout):
            raise Refused("the broker is too busy to register the consumer; reconnect later",
                          CLOSE_TRY_AGAIN)
        if member.error is not None:
            raise member.error

    def leave(self, member, timeout=10.0):
        """Detach a member whose connection ended; returns once the shard no longer touches it."""
        self.post("leave", member)
        member.removed.wait(timeout)

    # -- the shard's thread ------------------------------------------------------------------
    def run(self, stop):
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a delivery thread must never die silently
                log.exception("delivery shard %d failed; continuing in 0.5 s", self.index)
                stop.wait(0.5)
        self._waits.close()

    def run_once(self):
        """One turn of the loop: wait for a post, a writable socket or the next timer, then take
        what came and write. Only the shard's thread calls it. With nothing to catch up and no
        timer, it sleeps until a post: an idle broker's shards do not wake."""
        now = self.clock()
        timeout = self._until_next(now)
        quiet = self._gathering.until - now
        if quiet > 0:
            timeout = min(timeout, quiet)     # gathering: posts do not wake the shard
        else:
            self._waits.asleep = True   # before the inbox is looked at: a post after it wakes us
            if not self._inbox.empty():
                timeout = 0
        _, writable = self._waits.sleep(None if timeout == math.inf else timeout)
        self._blocked.difference_update(writable)
        self._dirty.update(writable)
        now = self.clock()
        self._take_inbox(now)
        self._fire_timers(now)
        if self._shared and now >= self._next_poll:
            self._poll_shared(now)
        if self._parked and now >= self._next_unpark:
            self._active |= self._parked
            self._parked.clear()
        if self._active and now >= self._retry_at:
            self._catch_up(now)
        if self.catch_up_cache.size and not (self._active or self._parked):
            self.catch_up_cache.clear()
        self._flush_dirty()
        if self._cursors.moved and self.on_moved is not None:
            self.on_moved()

    def _until_next(self, now):
        """Seconds until the shard has something to do of its own (a timer, parked or shared
        subscriptions to look at, catch-up): ``math.inf`` when only a post can bring work."""
        timeout = math.inf
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - now))
        if self._parked:
            timeout = min(timeout, max(0.0, self._next_unpark - now))
        if self._shared:
            timeout = min(timeout, max(0.0, self._next_poll - now))
        if self._active:
            if now < self._retry_at:            # the store failed lately
                timeout = min(timeout, self._retry_at - now)
            elif any(s.room(1) for s in self._active):
                timeout = 0
            else:
                timeout = min(timeout, IDLE_RECHECK)
        return timeout

    def _poll_shared(self, now):
        """Other processes put a shared group's messages back (failures, takeovers) without
        telling this one: look at the store for them every ``SHARED_POLL`` seconds."""
        self._next_poll = now + SHARED_POLL
        for sub in self._shared:
            sub.poll()
            if sub.has_work:
                self._active.add(sub)

    def _take_inbox(self, now):
        """Take what was posted. Posts of one kind that come one after another are taken
        together: messages are offered as runs, and joins and leaves save their cursors in
        one write (with sqlite, one flush for a crowd arriving or leaving, not one each)."""
        kind_taking, taking, arrived = None, [], 0
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if taking and kind != kind_taking:
                arrived += self._take_together(kind_taking, taking, now)
                taking = []
            if kind == "msgs":
                taking += item
            elif kind in ("join", "leave"):
                taking.append(item)
            else:
                self._handle(kind, item, now)
                continue
            kind_taking = kind
        if taking:
            arrived += self._take_together(kind_taking, taking, now)
        if arrived:
            self._gathering.arrived(arrived, now)

    def _take_together(self, kind, items, now):
        """Messages, joins or leaves posted one after another; returns how many messages."""
        if kind == "msgs":
            return self._offer(items, now)
        if kind == "join":
            self._join_all(items)
        else:
            self._leave_all(items)
        return 0

    def _handle(self, kind, item, now):
        if kind == "watch":
            self._blocked.discard(item)     # another thread wrote: look at the socket again
            self._dirty.add(item)
            item.conn.progress_seen()
            sub = item.subscription         # or it has room again (a pull came): hand out
            if sub is not None and sub.has_work:
                self._parked.discard(sub)
                self._active.add(sub)
        elif kind == "http_ack":
            self._ack_over_http(*item, now)
        elif kind == "reply":
            self._reply(*item, now)
        elif kind == "requeue":
            self._requeue(*item)
        elif kind == "positions":
            item[0].put({key: sub.position() for key, sub in self._subs.items()})
        elif kind == "cursors":
            reply, stale = item
            reply.put(self._cursors.take(self._subs, stale))

    def _offer(self, items, now):
        """Live messages from the broker: offer each topic's run of them to the subscriptions of
        the topic. Returns how many there were."""
        runs = {}
        for item in items:
            runs.setdefault(item[0].topic, []).append(item)
        moved = self._cursors.moved
        for topic, mine in runs.items():
            subs = self.topics.get(topic)
            if subs:
                run = Run(mine)
                written = behind = 0
                for sub in subs:
                    if not sub.behind:      # one behind reads them when it has room
                        if sub.offer_live(run, now):    # straight to its socket: nothing to flush
                            moved.add(sub)
                            written += 1
                            continue
                        self._touch(sub)
                    behind += sub.behind
                if behind:
                    self.catch_up_cache.keep(mine)
                if written:
                    self.counts.of(topic)[DELIVERED] += written * len(mine)
        return len(items)

    def _touch(self, sub):
        self._cursors.moved.add(sub)
        for member in sub.members:
            self._dirty.add(member)
        if sub.has_work:
            self._active.add(sub)

    # -- joining and leaving -----------------------------------------------------------------
    def _join_all(self, members):
        """Members that came to join together: the cursors of the new subscriptions among them
        are saved in one write, before any of them is told it joined. With sqlite that is one
        flush for a crowd arriving at once, during which the consumers already joined wait."""
        fresh = {}          # (topic, key) -> the cursor of each subscription new here
        taken = []
        for member in members:
            try:
                taken.append((member, self._subscription_for(member, fresh)))
            except Refused as exc:
                member.error = exc
            except StoreError as exc:
                member.error = _unavailable(exc)
        if fresh:
            try:
                self.engine.save_cursors(fresh)
            except StoreError as exc:
                refused = _unavailable(exc)
                for member, sub in taken:
                    if (sub.topic, sub.key) in fresh:
                        member.error = refused
                for key in fresh:
                    self._forget(self._subs[key])
                taken = [(member, sub) for member, sub in taken if member.error is None]
        for member, sub in taken:
            sub.join(member)
            member.conn.attach(self.budget)
            self._active.add(sub)
        for member in members:
            member.joined.set()

    def _subscription_for(self, member, fresh):
        """The subscription ``member`` joins: this shard's, or one made for it here. The cursor
        of one that starts anew goes in ``fresh`` for the caller to save."""
        topic, key = member.topic, subscription_key(member)
        sub = self._subs.get((topic, key))
        if sub is not None:
            if member.since is not None:
                raise Refused(f"since= cannot move group {member.group!r} while it has connected"
                              " members; connect without since", CLOSE_BAD_INPUT)
            return sub
        engine = self.engine
        cursor, saved_at, forgotten, lost, unsaved = start(engine, self.broker.heads.get(topic, 0),
                                                           member, topic, key)
        if engine.shared and key.startswith("g:"):
            sub = SharedGroup(topic, key, cursor, engine, self.limits, self._dead_letter,
                              self._timers, self.counts.of(topic))
        else:
            sub = Subscription(topic, key, cursor, engine.attempts(topic, key, cursor),
                               engine.redeliveries(topic, key), engine, self.limits,
                               self._dead_letter, self._timers, self.counts.of(topic))
        sub.on_gap = self._gap_told
        sub.on_deliver = self.on_deliver
        sub.catch_up_cache = self.catch_up_cache
        if lost:
            sub.tell_gap(None, None, "lost")
        # a forgotten one is told by its gap; its subscription.forgotten event went out when
        # retention forgot it (the housekeeping sweeper), not again now
        sub.forgotten = forgotten
        self._subs[(topic, key)] = sub
        self._cursors.loaded((topic, key), cursor, saved_at)
        self.topics.setdefault(topic, []).append(sub)
        if isinstance(sub, SharedGroup):
            self._shared.add(sub)
        if unsaved:
            fresh[(topic, key)] = cursor
        return sub

    def _leave_all(self, members):
        """Members whose connections ended, taken together: the last cursors of the
        subscriptions they leave without members are saved in one write, before any of them is
        told it is out (a stop closes the store once every consumer is)."""
        last = {}
        try:
            for member in members:
                self._leave(member, last)
            if last:
                self.engine.save_cursors(last)
        except StoreError as exc:
            log.warning("could not save where %d subscriptions left off, saving them with the"
                        " next cursors: %s", len(last), exc)
            self._cursors.left.update(last)
        finally:
            for member in members:
                member.removed.set()

    def _leave(self, member, last):
        sub = member.subscription
        try:
            if sub is not None and member in sub.members:
                self._take_progress(member, sub)    # what it took is done, not redelivered
                sub.leave(member)
                if sub.idle:
                    self._drop(sub, last)
                else:
                    self._active.add(sub)
                    self._cursors.moved.add(sub)
        except StoreError as exc:
            log.error("could not record what %s left unfinished: %s", member.consumer_id, exc)
        finally:
            self._dirty.discard(member)
            self._blocked.discard(member)
            self._waits.unwatch(member)
            member.conn.release()

    def _drop(self, sub, last):
        """The last member left: forget the subscription until it returns, its cursor into
        ``last`` for the caller to save."""
        self._forget(sub)
        last[(sub.topic, sub.key)] = sub.position()

    def _forget(self, sub):
        del self._subs[(sub.topic, sub.key)]
        self._cursors.forget((sub.topic, sub.key))
        self._shared.discard(sub)
        self._parked.discard(sub)
        self._active.discard(sub)
        subs = self.topics[sub.topic]
        subs.remove(sub)
        if not subs:
            del self.topics[sub.topic]

    # -- acks, requeues, cursors -------------------------------------------------------------
    def _reply(self, member, kind, code, now):
        sub = member.subscription
        if sub is None or member not in sub.members:
            return
        done = sub.ack(member, code) if kind == "ack" else sub.nack(member, code, now)
        if done and kind == "ack":
            self.counts.of(sub.topic)[ACKED] += 1
        if not done:
            error = {"error": f"{kind} of {code!r}: this consumer holds no such message (unknown,"
                              " already acked, or timed out and redelivered)", kind: code}
            member.conn.reply(error)
        self._touch(sub)

    def _ack_over_http(self, topic, key, codes, nack, identity, reply, now):
        """Acks or nacks that came over HTTP (``POST /ConsumerAck``): settle each code held by a
        member of subscription ``(topic, key)``, whatever transport carried it. Answers
        ``reply`` with (settled codes, codes no member holds); None if the subscription has no
        consumer in this process; False if ``identity`` may not settle for it: only an
        identity a member connected as, or one that may take the subscription over (admin, or
        granted it), may, since an ack ends another consumer's work."""
        sub = self._subs.get((topic, key))
        if sub is None:
            reply.put(None)
            return
        name = key[2:]
        if identity is not None and not identity.may_take(name) and all(
                member.owner != identity.id for member in sub.members):
            reply.put(False)
            return
        settled, unknown = [], []
        holders = {code: m for m in sub.members for code in m.flights}
        for code in codes:
            member = holders.get(code)
            if member is None:
                unknown.append(code)
            elif nack:
                sub.nack(member, code, now)
                settled.append(code)
            else:
                sub.ack(member, code)
                self.counts.of(topic)[ACKED] += 1
                settled.append(code)
        self._touch(sub)
        reply.put((settled, unknown))

    def _requeue(self, key, records):
        sub = self._subs.get(key)
        if sub is None:
            return          # kept in the store; delivered when the subscription comes back
        sub.requeue(records)
        self._active.add(sub)

    def _dead_letter(self, sub, record, attempts, reason):
        self.engine.dead_letter(sub.topic, sub.key, record, reason, attempts)
        self.counts.of(sub.topic)[DEAD_LETTERED] += 1
        log.warning("dead letter code=%s topic=%r subscription=%r reason=%r",
                    record.code, sub.topic, sub.key, reason)
        self.on_event("message.deadLettered", topic=sub.topic, subscription=sub.key,
                      MessageCode=record.code, reason=reason, attempts=attempts)

    def _gap_told(self, sub, missed, after, reason):
        """A subscription of this shard was told a gap: the lifecycle event (queued only)."""
        self.on_event("subscription.gap", topic=sub.topic, subscription=sub.key, Missed=missed,
                      After=after, Reason=reason)

    # -- timers, catch-up, writes ------------------------------------------------------------
    def _fire_timers(self, now):
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, sub, flight = heapq.heappop(timers)
            if sub.members or sub.flights:
                try:
                    sub.expire(flight, now)
                except StoreError as exc:
                    log.warning("ack timeout bookkeeping failed: %s", exc)
                self._touch(sub)

    def _catch_up(self, now):
        pumped = self.broker.pumped
        for sub in list(self._active):
            sent = sub.sent
            try:
                done = sub.catch_up(self.engine.read, pumped.get(sub.topic, 0), self.batch, now)
            except StoreError as exc:
                log.warning("catch-up from the store failed, retrying in 1 s: %s", exc)
                self._retry_at = now + 1.0
                return
            self._touch(sub)
            if done:
                self._active.discard(sub)
            elif sub.sent == sent:
                self._park(sub, now)

    def _park(self, sub, now):
        """Its members can take nothing now (full, or an ordering key's member is): leave it
        until a write, an ack or a timer gives one of them room, instead of trying it again
        for every message."""
        self._active.discard(sub)
        if not self._parked:
            self._next_unpark = now + PARKED_RECHECK
        self._parked.add(sub)

    def _flush_dirty(self):
        dirty, self._dirty = self._dirty, set()
        blocked = self._blocked
        for member in dirty:
            conn = member.conn
            if conn.closed or member in blocked:
                continue
            before = conn.pending_bytes
            if conn.flush():
                self._waits.unwatch(member)
            else:
                self._waits.watch(member)
                blocked.add(member)
            sub = member.subscription
            if sub is None:
                continue
            moved = self._take_progress(member, sub)
            if sub.has_work and (moved or conn.pending_bytes < before):
                self._active.add(sub)

    def _take_progress(self, member, sub):
        """What ``member``'s connection wrote whole, or gave back unwritten, since the last
        look; True if anything."""
        conn = member.conn
        written, returned = conn.take_written(), conn.take_returned()
        if written:
            self.counts.of(sub.topic)[DELIVERED] += len(written)
            sub.written(member, written)
        if returned:
            sub.take_back(member, returned)
        if written or returned:
            self._cursors.moved.add(sub)
        return bool(written or returned)
