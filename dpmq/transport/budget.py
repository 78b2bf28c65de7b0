"""What waits for all of one broker's consumers together, bounded by
``mq.consumerBuffersTotalBytes``.

Each consumer's buffer is bounded on its own (``mq.consumerBufferBytes``), but a thousand consumers
that stop reading would each fill theirs: the sum needs a bound of its own. A consumer refused
here catches up from the store later, as one whose own buffer is full does.
"""

import threading


class Budget:
    """The bytes waiting in the outgoing buffers of all of one broker's consumers, and how many
    more they may take (``mq.consumerBuffersTotalBytes``). Thread-safe: connections count into
    it from the delivery shards and from the inbound thread.

    Half of it goes first come, first served (each consumer up to its own limit). Past that half,
    a connection may add a frame only while it holds less than an equal share of the other half,
    or nothing at all, and nothing goes past the whole. So consumers that stop reading can take
    half of the budget and their shares of the rest, and a consumer that reads, whose buffer
    empties at every write, still finds room instead of being made to catch up from the store
    because others do not read. Frames that are not messages (Pongs, Closes, error replies) are
    never refused: each connection's are bounded by its own limit (see ``write_control``); nor is
    a message larger than the whole budget when nothing else waits.
    """

    def __init__(self, total):
        self.total = total
        self.used = 0
        self.connections = 0
        self._lock = threading.Lock()

    def admits(self, held, size, single=True):
        """Whether a connection holding ``held`` bytes may queue ``size`` more (one frame, unless
        ``single`` is false). Without the lock, as a guess for whoever decides what to offer;
        :meth:`take` decides under it. A run written straight to an empty socket is decided by
        this guess, and only what the socket left is :meth:`add`-ed: the total may be passed by
        what the delivery threads write at the same moment, a run each at most."""
        used = self.used + size
        if used > self.total:       # but a frame larger than the whole budget, when nothing waits
            return single and not self.used
        if used * 2 <= self.total or not held:
            return True
        return (held + size) * 2 * max(1, self.connections) <= self.total

    def take(self, held, size, single=True):
        """Count ``size`` more bytes queued by a connection holding ``held``, if admitted."""
        with self._lock:
            if not self.admits(held, size, single):
                return False
            self.used += size
            return True

    def add(self, size):
        """Count bytes that may not be refused: frames that are not messages, and what a
        socket left of a run already admitted (see :meth:`admits`)."""
        with self._lock:
            self.used += size

    def give_back(self, size):
        """Bytes written to their socket, or thrown away with a closed connection."""
        with self._lock:
            self.used -= size

    def join(self, held):
        with self._lock:
            self.connections += 1
            self.used += held

    def leave(self, held):
        with self._lock:
            self.connections -= 1
            self.used -= held
