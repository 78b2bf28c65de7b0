"""Subscriptions: which member gets which message, and when a message is done.

A subscription reads one topic's log from its cursor. A lone consumer (``c:<id>``) is a subscription
with one member; a group (``g:<name>``) is one subscription shared by its members, each message
going to one of them. A message handed to a member is *in flight* until it is done: written whole
to the socket (without ack) or acked (with ``?ack=1``). A failure (nack, ack timeout, a member that
leaves) puts it back for redelivery with one more attempt, up to ``mq.sendRetryCount``, after which
it becomes a dead letter. The cursor saved in the store is the low-water mark: every offset up to it
is done, so a crash redelivers what was in flight (at least once) and never skips anything.

A lone consumer without ack that gets a message for the first time holds it in its connection's
buffer only, without a :class:`Flight`: that buffer already says which messages are written, and
most messages of a busy broker go this way (without a Flight made and dropped per frame, fan-out
to 50 such consumers went about a tenth faster).

Not thread-safe: a subscription and its members belong to one delivery shard's thread.
"""

import collections
import heapq
import itertools
import logging
import threading
import time

from .. import message
from ..metrics import EXPIRED, FAILED, GAPS, MISSED, REDELIVERED
from .catch_up_cache import CatchUpCache
from .consumer_connection import WRITTEN

log = logging.getLogger(__name__)

STICKY_KEYS = 100_000       # ordering keys remembered per group before the oldest are forgotten


class Member:
    """One connected consumer. ``flights`` maps the MessageCodes it holds to their flights."""

    def __init__(self, conn, closer, topic, consumer_id, group=None, ack=False, since=None,
                 start=None, resume=None):
        self.conn = conn
        self.closer = closer        # the transport's side: close(code, reason), from any thread
        self.topic = topic
        self.consumer_id = consumer_id
        self.group = group
        self.ack = ack
        self.since = since
        # The topic's head when the consumer's handshake began: a new subscription starts
        # there, not at the head when the shard gets round to the join (messages committed in
        # between were published after the consumer had connected).
        self.start = start
        # The last message the consumer says it received (an event stream's Last-Event-ID): a
        # lone consumer without ack goes on right after it if the store still has it.
        self.resume = resume
        self.flights = {}
        self.subscription = None
        self.connected_at = time.time()
        self.owner = None           # the id of the identity it connected as (auth on)
        self.acked = 0
        self.joined = threading.Event()
        self.error = None           # why joining failed (a Refused), set before ``joined``
        self.removed = threading.Event()

    def load(self):
        return len(self.flights), self.conn.pending_bytes


class Flight:
    """A message handed to a member and not done yet."""

    __slots__ = ("record", "member", "attempts", "written", "deadline", "requeued")

    def __init__(self, record, member, attempts, deadline, requeued):
        self.record = record
        self.member = member
        self.attempts = attempts
        self.written = False
        self.deadline = deadline
        self.requeued = requeued


class Subscription:
    """The delivery state of one ``(topic, key)``; ``store`` is the engine, ``limits`` the mq settings."""

    def __init__(self, topic, key, cursor, attempts, requeued, store, limits, on_dead, timers,
                 counts):
        self.topic = topic
        self.key = key
        self.is_group = key.startswith("g:")
        self.store = store
        self.retry_count = limits.sendRetryCount
        self.ack_timeout = limits.ackTimeout
        self.max_in_flight = limits.maxInFlight
        self.on_dead = on_dead      # on_dead(subscription, record, attempts, reason)
        # The heap shared with the shard's other subscriptions: (deadline, id of the flight,
        # subscription, flight). Equal deadlines are common (a run offered to several
        # subscriptions at once): the flight's id, unique among the flights alive, decides
        # between them before the subscriptions (which do not compare) are reached.
        self.timers = timers
        self.counts = counts        # this topic's event counts in the shard's table
        self.members = []
        # its one member when that is all it has, without ack and not a group: the consumer a
        # live run can be written to whole (see offer_live); else None
        self.lone = None
        self.next = cursor + 1      # the next log offset to hand out
        self.behind = True          # there may be messages in the store not handed out yet
        self.flights = {}           # offset -> Flight
        self.attempts = attempts    # offset -> failed attempts, for messages not in flight
        self.sticky = collections.OrderedDict()     # ordering key -> Member
        self._turn = 0              # where _choose starts looking among equally loaded members
        self.sent = 0               # messages handed out or dead-lettered, to tell progress from a stall
        self._retry = []            # heap of (offset, seq, record, attempts, requeued)
        self._reads = 1 << 20       # the most one catch-up read asks for (see _fetch)
        self._seq = itertools.count()
        # A gap to tell before the next message (see _gap): a dict without its "Resume".
        self.notice = None
        self.forgotten = False      # back after retention forgot it: tell it so on the first read
        self.on_gap = None          # on_gap(subscription, missed, after, reason), its shard's
        # on_deliver(subscription, member, record, attempts): its shard's, for a message with a
        # traceparent handed to a member; None (tracing off) costs the others nothing
        self.on_deliver = None
        # what it reads and frames when catching up comes through its shard's, shared with the
        # shard's other subscriptions (outside a shard, as in unit tests, one that keeps nothing)
        self.catch_up_cache = CatchUpCache(0)
        self.expired = self.gaps = self.missed = 0      # for the console
        for record in requeued:
            self._push_retry(record, 0, True)

    # -- members -----------------------------------------------------------------------------
    def can_take(self, member):
        if not member.conn.has_room():
            return False
        return not member.ack or len(member.flights) < self.max_in_flight

    def _choose(self, record):
        members = self.members
        if len(members) == 1 and (record.key is None or not self.is_group):
            return members[0] if self.can_take(members[0]) else None
        if record.key is not None:
            member = self.sticky.get(record.key)
            if member is not None:
                return member if self.can_take(member) else None
        # The least loaded member that can take it; among equals, the next one after the member
        # chosen last. A trickle of messages finds every member idle, all equal: without the
        # turn, the first member in the list got every one of them.
        count, turn = len(members), self._turn
        best = best_load = best_index = None
        for index in range(turn, turn + count):
            member = members[index % count]
            if self.can_take(member):
                load = member.load()
                if best is None or load < best_load:
                    best, best_load, best_index = member, load, index
        if best is None:
            return None
        self._turn = (best_index + 1) % count
        if record.key is not None:
            self.sticky[record.key] = best
            if len(self.sticky) > STICKY_KEYS:
                self.sticky.popitem(last=False)
        return best

    def join(self, member):
        member.subscription = self
        self.members.append(member)
        self._find_lone()

    def _find_lone(self):
        members = self.members
        self.lone = members[0] if (len(members) == 1 and not self.is_group
                                   and not members[0].ack) else None

    def leave(self, member):
        """A member is gone: what it held goes back for redelivery to the others (or the next one).

        With ack, each message it had received and not acked failed once; without, only the one
        whose frame was being written did. Returns how many failed.
        """
        self.members.remove(member)
        self._find_lone()
        for key in [k for k, m in self.sticky.items() if m is member]:
            del self.sticky[key]
        flights = sorted(member.flights.values(), key=lambda f: f.record.offset)
        unwritten = member.conn.unwritten()
        # The first unwritten message may have been cut off mid-write: that attempt failed.
        first_unwritten = unwritten[0].offset if unwritten and member.conn.partial_writes else None
        bare = [record for record in unwritten if record.offset not in self.flights]  # no Flight
        failed = {f.record.offset for f in flights
                  if (f.written if member.ack else f.record.offset == first_unwritten)}
        if bare and bare[0].offset == first_unwritten:
            failed.add(first_unwritten)
        self.counts[FAILED] += len(failed)
        durable = [offset for offset in sorted(failed)
                   if offset not in self.flights or not self.flights[offset].requeued]
        counts = self.store.add_attempts(self.topic, self.key, durable) if durable else {}
        for flight in flights:
            self._forget(flight)
            offset = flight.record.offset
            attempts = counts.get(offset, flight.attempts + (offset in failed))
            self._push_retry(flight.record, attempts, flight.requeued)
        for record in bare:
            self._push_retry(record, counts.get(record.offset, int(record.offset in failed)), False)
        return len(failed)

    # -- handing out -------------------------------------------------------------------------
    def offer_live(self, run, now):
        """Messages the broker just handed out (a :class:`~dpmq.message.Run`): send those this
        subscription expects. A lone consumer without ack that is caught up, most of a busy
        broker's, takes the whole run at once, most often straight to its socket: True then
        (its connection has nothing to flush and does not report them in ``take_written``)."""
        if self._retry:
            self.redeliver(now)
        if self.forgotten:          # its first message comes with the notice: read it (_fetch)
            self.behind = True
            return False
        lone = self.lone
        if (lone is not None and run.first == self.next
                and not (self.behind or self._retry or self.attempts)
                and self.notice is None and run.contiguous and not run.expiring):
            taken = lone.conn.offer_all(*run.joined(lone.conn.framing))
            if taken:
                self.sent += len(run.items)
                self.next = run.last + 1
                if self.on_deliver is not None:     # tracing off: one look per run
                    self._traced(lone, run)
                return taken == WRITTEN
        for index, (record, _) in enumerate(run.items):
            if record.offset < self.next:
                continue
            if record.offset > self.next or self.behind or not self._send(
                    record, self.attempts.get(record.offset, 0), False, now, run, index):
                self.behind = True
                return False
        return False

    def redeliver(self, now):
        """Send what waits for redelivery, lowest offset first, while members can take it."""
        while self._retry:
            _, _, record, attempts, requeued = self._retry[0]
            if not self._send(record, attempts, requeued, now):
                return False
            heapq.heappop(self._retry)
        return True

    def room(self, batch):
        """How many messages the members can take now, at most ``batch``."""
        room = 0
        for member in self.members:
            if self.can_take(member):
                room += self.max_in_flight - len(member.flights) if member.ack else batch
        return min(room, batch)

    def catch_up(self, read, upto, batch, now):
        """Hand out messages from the store after ``next``, up to ``upto``; True if caught up."""
        if not self.redeliver(now):
            return False
        limit = self.room(batch)
        if not self.behind or limit == 0:
            return not self.behind
        return self._fetch(read, upto, limit, now)

    def _fetch(self, read, upto, limit, now):
        """Read up to ``limit`` messages after ``next`` and hand them out; True if caught up.
        Those its shard keeps (``catch_up_cache``) come from there, without a read.

        A member's buffer is bounded in bytes, not messages: with large messages a read of a
        whole batch could end after one or two sends, and the next pass would read the same
        batch again. So a read that stopped early makes the next one ask for about what was
        sent (doubling again as reads are used up), and a slow consumer costs the store what it
        takes, not a batch per message."""
        limit = min(limit, self._reads)
        records, kept = self.catch_up_cache.read(read, self.topic, self.next - 1, limit, upto,
                                                 store_only=self.forgotten)
        if records and (records[0].offset > self.next or self.forgotten):
            self._gap(read, records[0].offset - self.next, "forgotten" if self.forgotten else "purged")
            self.next = records[0].offset
        for sent, record in enumerate(records):
            if not self._send(record, self.attempts.get(record.offset, 0), False, now):
                self._reads = max(1, 2 * sent)
                return False
        self._reads = min(2 * max(self._reads, len(records)), 1 << 20)
        if len(records) < limit and not kept:   # what is kept may end before the store does
            self.behind = False
        return not self.behind

    def _gap(self, read, missed, reason):
        """Messages after ``next - 1`` that this subscription never received are gone (retention
        purged them, or it was itself forgotten): its members are told before the next message,
        never left to find a hole in silence."""
        self.forgotten = False
        after = read(self.topic, self.next - 2, 1, self.next - 1) if self.next > 1 else []
        self.tell_gap(missed, after[0].code if after else None, reason)

    def tell_gap(self, missed, after, reason):
        """Tell the members, before the next message, that ``missed`` messages (None: how many
        is unknown) after MessageCode ``after`` are gone, and why. A gap not told yet (a loss,
        then a purge before any message) grows into one notice, with its first cause."""
        notice = {"Notice": "gap", "Topic": self.topic, "Missed": missed, "After": after,
                  "Reason": reason}
        if self.notice is not None:
            earlier = self.notice
            total = None if None in (missed, earlier["Missed"]) else missed + earlier["Missed"]
            notice = dict(earlier, Missed=total)
        self.notice = notice
        self.gaps += 1
        self.missed += missed or 0
        self.counts[GAPS] += 1
        self.counts[MISSED] += missed or 0
        log.warning("gap topic=%r subscription=%r missed=%s after=%s reason=%s", self.topic,
                    self.key, missed, after, reason)
        if self.on_gap is not None:
            self.on_gap(self, missed, after, reason)

    def _send(self, record, attempts, requeued, now, run=None, index=0):
        """Hand one message to a member; False if none can take it now (nothing changes then).
        A live message comes with its ``run`` and its ``index`` in it (see :meth:`_frame`)."""
        if record.expires and record.expires <= time.time():
            self._expire(record, requeued)
            return True
        if attempts > self.retry_count:
            self.attempts.pop(record.offset, None)
            reason = (f"not delivered after {attempts} attempt{'s' if attempts != 1 else ''}"
                      f" (mq.sendRetryCount is {self.retry_count})")
            self._dead(record, attempts, requeued, reason)
            self.sent += 1
            return True
        member = self._choose(record)
        if member is None:
            return False
        if self.notice is not None:
            member.conn.notice(dict(self.notice, Resume=record.code))
            self.notice = None
        if not member.conn.offer(self._frame(record, attempts, member.conn.framing, run, index),
                                 record):
            return False
        self.sent += 1
        if record.trace is not None and self.on_deliver is not None:
            self.on_deliver(self, member, record, attempts)
        if not (attempts or requeued or member.ack or self.is_group):
            if record.offset >= self.next:      # the connection's buffer holds it: no Flight
                self.next = record.offset + 1
            return True
        self.attempts.pop(record.offset, None)
        if attempts or requeued:
            self.counts[REDELIVERED] += 1
        deadline = now + self.ack_timeout if member.ack else None
        flight = Flight(record, member, attempts, deadline, requeued)
        self.flights[record.offset] = flight
        member.flights[record.code] = flight
        if deadline is not None:
            heapq.heappush(self.timers, (deadline, id(flight), self, flight))
        self._advance(record, requeued)
        return True

    def _frame(self, record, attempts, framing, run, index):
        """The bytes of ``record`` in ``framing``, built once for every consumer that gets the
        same: a live message's are its run's, a first attempt read from the store's the catch-up
        cache's; only a redelivery's, whose Status differs, are built for it alone."""
        if attempts:
            return framing.message(message.payload(record, attempts))
        if run is None:
            return self.catch_up_cache.frame(record, framing)
        return run.frames(framing)[index]

    def _traced(self, member, run):
        """``run`` went whole to ``member`` (see :meth:`offer_live`): tell ``on_deliver`` of
        each of its messages that has a traceparent."""
        for record, _ in run.items:
            if record.trace is not None:
                self.on_deliver(self, member, record, 0)

    def _expire(self, record, requeued):
        """Its ttl passed before this subscription got it (acked it, with ack): never deliver it
        late; count it."""
        self.attempts.pop(record.offset, None)
        self.expired += 1
        self.counts[EXPIRED] += 1
        self.sent += 1
        if requeued:
            self.store.redelivered(self.topic, self.key, record.offset)
        self._advance(record, requeued)

    def _dead(self, record, attempts, requeued, reason):
        self.on_dead(self, record, attempts, reason)
        self._advance(record, requeued)

    def _advance(self, record, requeued):
        if not requeued and record.offset >= self.next:
            self.next = record.offset + 1

    def requeue(self, records):
        """Dead letters requeued from the console: deliver them again, attempts from zero."""
        for record in records:
            self._push_retry(record, 0, True)

    @property
    def has_work(self):
        """Messages to catch up from the store or to redeliver."""
        return self.behind or bool(self._retry)

    def _push_retry(self, record, attempts, requeued):
        heapq.heappush(self._retry, (record.offset, next(self._seq), record, attempts, requeued))

    # -- outcomes ----------------------------------------------------------------------------
    def written(self, member, records):
        """Frames written whole to ``member``'s socket; without ack that makes them done."""
        flights = self.flights
        if not flights:
            return
        for record in records:
            flight = flights.get(record.offset)
            if flight is not None and flight.member is member:
                flight.written = True
                if not member.ack:
                    self._done(flight)

    def take_back(self, member, records):
        """``member``'s connection gave these back unwritten (a pull whose client went away):
        hand them out again, as if never offered (no attempt failed)."""
        for record in records:
            flight = self.flights.get(record.offset)
            if flight is not None and flight.member is member:
                self._forget(flight)
                self._push_retry(record, flight.attempts, flight.requeued)
            else:
                self._push_retry(record, self.attempts.get(record.offset, 0), False)

    def ack(self, member, code):
        """The member acked ``code``; returns False if it holds no such message."""
        flight = member.flights.get(code)
        if flight is None:
            return False
        member.acked += 1
        self._done(flight)
        return True

    def nack(self, member, code, now):
        flight = member.flights.get(code)
        if flight is None:
            return False
        self._fail(flight, now)
        return True

    def expire(self, flight, now):
        """An ack timer fired; redeliver the message unless it was done meanwhile."""
        if self.flights.get(flight.record.offset) is flight:
            self._fail(flight, now)

    def _fail(self, flight, now):
        self._forget(flight)
        self.counts[FAILED] += 1
        attempts = flight.attempts + 1
        if not flight.requeued:
            attempts = self.store.add_attempts(self.topic, self.key,
                                               [flight.record.offset])[flight.record.offset]
        self._push_retry(flight.record, attempts, flight.requeued)
        self.redeliver(now)

    def _done(self, flight):
        self._forget(flight)
        if flight.requeued:
            self.store.redelivered(self.topic, self.key, flight.record.offset)

    def _forget(self, flight):
        self.flights.pop(flight.record.offset, None)
        flight.member.flights.pop(flight.record.code, None)

    # -- the cursor --------------------------------------------------------------------------
    def position(self):
        """The cursor to save: the highest offset below which everything is done."""
        low = self.next
        for offset, flight in self.flights.items():
            if offset < low and not flight.requeued:
                low = offset
        for offset, _, _, _, requeued in self._retry:
            if offset < low and not requeued:
                low = offset
        if not self.is_group:
            flights = self.flights
            for member in self.members:     # what waits in its buffer without a Flight
                record = member.conn.oldest_unwritten(lambda r: r.offset not in flights)
                if record is not None:
                    low = min(low, record.offset)
        return low - 1

    @property
    def idle(self):
        return not self.members
