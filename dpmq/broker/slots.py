"""The buffer (``mq.messageChanBuffer``): room for the messages accepted and not yet handed to the
delivery shards, counted in messages. It is the only thing DPMQ calls "the buffer" (a consumer's
outgoing bytes are its connection's, :mod:`dpmq.transport.connection`).

A publish reserves room for its messages before it commits, waiting at most
``mq.publishTimeout``, so a message the store accepted always fits in the buffer; the room is
given back once the message is handed to the delivery shards. Paced, a committed message holds
its room while it waits in the pacing queue (:mod:`.pacing`); unpaced, it is handed out as it
commits, so only messages being committed hold room. A delayed message takes none while it waits
in the store; when it is due, the scheduler moves as many as there is room for.
"""

import threading


class Slots:
    """Room in the buffer, reserved before a commit so an accepted message always fits."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.used = 0               # read without the lock by the console and the metrics
        self._cond = threading.Condition()

    def acquire(self, count, timeout):
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + count <= self.capacity, timeout):
                return False
            self.used += count
            return True

    def acquire_up_to(self, count):
        """Take as many as are free now, at most ``count``; returns how many."""
        with self._cond:
            taken = max(0, min(count, self.capacity - self.used))
            self.used += taken
            return taken

    def release(self, count):
        if count:
            with self._cond:
                self.used -= count
                self._cond.notify_all()
