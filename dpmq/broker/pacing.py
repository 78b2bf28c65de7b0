"""Peak shaving: the pacing queue and the pump (used only when ``mq.pushMessagesSpeed`` > 0).

Paced, each committed message waits in the pacing queue for its push, and the pump thread hands
them to the delivery shards one at a time, ``mq.pushMessagesSpeed`` seconds apart. Unpaced (the
default) there is no pump: the committing thread hands messages straight to the shards, because a
hand-off to a pump thread and back would cost more than the hand-out itself; nothing ever waits
here then, and :meth:`Pacer.waiting` is 0.

The queue needs no bound of its own: every message in it holds room in the broker's buffer
(:class:`~dpmq.broker.slots.Slots`, ``mq.messageChanBuffer``), taken when it was published and
given back by the pump once the message is handed out.

The clock and the wait are injectable, so that a test can check the pace without waiting for it.
"""

import logging
import queue
import threading
import time

log = logging.getLogger(__name__)


class Pacer:
    """The pacing queue and the pump thread that empties it.

    ``hand_out(records)`` posts records to the delivery shards and ``release(count)`` gives their
    room in the buffer back; both are called on the pump thread only. ``put`` may be called from
    any thread (the engine's commit callback).
    """

    def __init__(self, speed, hand_out, release, clock=time.monotonic, wait=None):
        self.speed = speed
        self._queue = queue.SimpleQueue()
        # Counted apart from the queue, so that the one the pump holds while it waits for its
        # turn still counts as waiting.
        self._waiting = 0
        self._count_lock = threading.Lock()
        self._hand_out, self._release = hand_out, release
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._clock = clock
        # Returns early once draining starts, so a stop never waits out the pace.
        self._wait = wait or self._draining.wait
        self._thread = None

    def waiting(self):
        """Committed messages waiting for their paced push now, the one the pump holds included."""
        return self._waiting

    def put(self, record):
        with self._count_lock:
            self._waiting += 1
        self._queue.put_nowait(record)

    @property
    def stopped(self):
        return self._stop.is_set()

    def start(self):
        self._thread = threading.Thread(target=self._pump, name="dpmq-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout):
        """Hand out what waits without the pace, then end the pump; at most ``timeout`` seconds."""
        self._draining.set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))

    def _pump(self):
        """Take waiting messages one at a time, paced, and hand them out.

        The next push is due ``speed`` after this one went out, never earlier: after an idle spell
        the first message goes at once, and the one behind it waits its full turn (an idle pump
        must not bank time for a burst). Stopping drains the queue unpaced, in batches."""
        next_at = self._clock()
        while True:
            try:
                record = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [record]
            if self.speed and not self._draining.is_set():
                while (delay := next_at - self._clock()) > 0 and not self._draining.is_set():
                    self._wait(delay)
                next_at = max(next_at, self._clock()) + self.speed
            else:
                while len(batch) < 256:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            try:
                self._hand_out(batch)
            except Exception:  # noqa: BLE001 - the pump must never die; the store still has them
                log.exception("pump failed to hand out %d messages; consumers will catch up"
                              " from the store", len(batch))
            finally:
                with self._count_lock:
                    self._waiting -= len(batch)
                self._release(len(batch))
