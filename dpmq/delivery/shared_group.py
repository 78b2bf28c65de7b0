"""Groups whose members are spread over several DPMQ processes sharing one store (``redis``).

A lone consumer is connected to one process at a time (the store locks its consumerId), so its
subscription can live in that process's memory. A group cannot: its members may sit on every
process. So a process *claims* a group's messages from the store before handing them to its local
members (new offsets, offsets to retry, requeued dead letters: each claimed by exactly one
process), and *settles* them when done. A failure (nack, ack timeout, a member that leaves) puts
the message back in the store for any process to claim; a process that dies stops renewing its
heartbeat and the others take back what it held. The group's cursor is kept by the store, as the
lowest offset not settled.

Not thread-safe: like every subscription, it belongs to one delivery shard's thread.
"""

from ..metrics import EXPIRED, FAILED
from .subscription import Subscription


class SharedGroup(Subscription):
    def __init__(self, topic, key, cursor, store, limits, on_dead, timers, counts):
        super().__init__(topic, key, cursor, {}, [], store, limits, on_dead, timers, counts)
        self.start_after = cursor   # where the group starts if no process has claimed from it yet
        self.cursor = cursor        # as the store last reported it

    def position(self):
        """The store keeps the group's cursor; saving this one again changes nothing."""
        return self.cursor

    def _settle(self, items, retry=False):
        self.cursor = max(self.cursor, self.store.settle(self.topic, self.key, items, retry))

    def offer_live(self, run, now):
        """New messages: they are claimed from the store like the others, by whichever process
        asks first (so none is written here now)."""
        self.behind = True
        return False

    def poll(self):
        """Look in the store again: other processes may have put messages back."""
        if self.members:
            self.behind = True

    def _fetch(self, read, upto, limit, now):
        """Claim up to ``limit`` messages from the store and hand them out; True if caught up."""
        claimed = self.store.claim(self.topic, self.key, upto, limit, self.start_after)
        for position, (record, attempts, requeued) in enumerate(claimed):
            if not self._send(record, attempts, requeued, now):
                for record, attempts, requeued in claimed[position:]:
                    self._push_retry(record, attempts, requeued)
                return False
        if len(claimed) < limit:
            self.behind = False
        return not self.behind

    def requeue(self, records):
        """Requeued dead letters wait in the store; claim them."""
        self.behind = True

    def leave(self, member):
        """What the member held goes back to the store for any process to hand out; so does what
        this process claimed and could not send yet, once its last member here is gone."""
        self.members.remove(member)
        for key in [k for k, m in self.sticky.items() if m is member]:
            del self.sticky[key]
        flights = list(member.flights.values())
        first_unwritten = member.conn.first_unwritten() if member.conn.partial_writes else None
        failed = [f.record.offset for f in flights
                  if (f.written if member.ack else f.record.offset == first_unwritten)]
        self.counts[FAILED] += len(failed)
        if failed:
            self.store.add_attempts(self.topic, self.key, sorted(failed))
        for flight in flights:
            self._forget(flight)
        items = [(f.record.offset, f.requeued) for f in flights]
        if not self.members:
            items += [(entry[0], entry[4]) for entry in self._retry]
            self._retry = []
        self._settle(items, retry=True)
        self.behind = True
        return len(failed)

    def take_back(self, member, records):
        """Given back unwritten: to the store, for any process to hand out."""
        items = []
        for record in records:
            flight = self.flights.get(record.offset)
            if flight is not None and flight.member is member:
                self._forget(flight)
            items.append((record.offset, flight.requeued if flight is not None else False))
        self._settle(items, retry=True)
        self.behind = True

    def _fail(self, flight, now):
        self._forget(flight)
        self.counts[FAILED] += 1
        self.store.add_attempts(self.topic, self.key, [flight.record.offset])
        self._settle([(flight.record.offset, flight.requeued)], retry=True)
        self.behind = True

    def _done(self, flight):
        self._forget(flight)
        self._settle([(flight.record.offset, flight.requeued)])

    def _dead(self, record, attempts, requeued, reason):
        self.on_dead(self, record, attempts, reason)
        self._settle([(record.offset, requeued)])

    def _expire(self, record, requeued):
        self.expired += 1
        self.counts[EXPIRED] += 1
        self.sent += 1
        self._settle([(record.offset, requeued)])
