"""Records from two sources handed out in offset order, for a store several processes share.

With the redis engine and several workers, a worker hands on its own messages as it commits them
and the other workers' a moment later, when Redis tells it of them. On a topic both write to, its
consumers would see offset 8 before 7: each subscription then counts itself behind and reads the
store on its own, building its own frames, several times the work of a live hand-out. So a record
that comes before the ones below it waits, a topic at a time, until they come (Redis's notices
and the follower's polls bring every record of the log). Once it has waited :data:`HOLD` seconds
the next hand-out, or the housekeeping's next turn, lets it go anyway, and the subscriptions read
the gap from the store as they would have.
"""

import itertools
from operator import attrgetter

#: The longest a record waits for those below it (seconds): long enough for the listener of a
#: busy process, which may wait its turn at the interpreter lock several times per notice.
HOLD = 0.5

_TOPIC = attrgetter("topic")


class Sequencer:
    """Not thread-safe: the broker calls it under its hand-out lock. ``start(topic)`` is the
    newest offset already handed out of a topic it has not seen yet: 0 for a topic created
    since, whose first offset is 1 whichever process writes it first."""

    def __init__(self, start, hold=HOLD):
        self._start = start
        self._hold = hold
        self._next = {}         # topic -> the offset it waits for
        self._held = {}         # topic -> (deadline, {offset: record})

    @property
    def holding(self):
        return bool(self._held)

    def order(self, records, now):
        """The records to hand out now, each topic's in offset order, and with them any held
        ones they complete or whose time is up; the rest are held."""
        out = self.due(now)
        for topic, run in itertools.groupby(records, _TOPIC):
            expected = self._next.get(topic)
            if expected is None:
                expected = self._start(topic) + 1
            held = self._held.pop(topic, None)
            pending = held[1] if held else {}
            for record in run:
                if record.offset < expected:
                    out.append(record)      # older than what went out: as it comes
                else:
                    pending[record.offset] = record
            while expected in pending:
                out.append(pending.pop(expected))
                expected += 1
            self._next[topic] = expected
            if pending:
                self._held[topic] = (held[0] if held else now + self._hold, pending)
        return out

    def due(self, now):
        """What has waited its time: handed out anyway, in offset order, topic by topic."""
        out = []
        for topic, (deadline, pending) in list(self._held.items()):
            if deadline <= now:
                del self._held[topic]
                for offset in sorted(pending):
                    out.append(pending[offset])
                self._next[topic] = max(pending) + 1
        return out
