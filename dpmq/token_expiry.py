"""Closing the long-lived consumers whose token expires: one timer for all of them.

A WebSocket or event-stream consumer that connected with a JWT may stay connected only while its
token is valid (or a fresh one it sent). :class:`Expiry` keeps their deadlines in a heap and runs
each one's action when it is due, on one thread of its own: started when the first deadline is
watched, gone again once none is left, so a broker without JWT consumers has no such thread.
The broker owns it and :meth:`Expiry.stop` ends it when the broker stops, whatever is still due.

Thread-safe: consumers are watched and forgotten on their route threads, their deadlines moved on
the inbound thread (a refreshed token), the actions run on the expiry thread, outside the lock.
"""

import heapq
import itertools
import logging
import threading
import time

log = logging.getLogger(__name__)
#: The longest the thread sleeps at once, so that a change of the wall clock is seen.
_LONGEST_WAIT = 30.0


class Expiry:
    """Deadlines (wall-clock seconds, as a JWT's ``exp``) by key, each with its action."""

    def __init__(self, now=time.time):
        self.now = now
        self._cond = threading.Condition()
        self._heap = []             # (deadline, seq, key); stale entries are skipped when popped
        self._due = {}              # key -> (deadline, seq, action)
        self._seq = itertools.count()
        self._thread = None
        self._stopped = False

    def watch(self, key, deadline, action):
        """Run ``action()`` at ``deadline`` unless ``key`` is forgotten or watched again first;
        nothing once stopped."""
        with self._cond:
            if self._stopped:
                return
            seq = next(self._seq)
            self._due[key] = (deadline, seq, action)
            heapq.heappush(self._heap, (deadline, seq, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dpmq-token-expiry",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def deadline(self, key):
        """When ``key``'s action is due, or None if it is not watched."""
        with self._cond:
            entry = self._due.get(key)
            return entry and entry[0]

    def forget(self, key):
        """Drop ``key``'s deadline (its consumer left)."""
        with self._cond:
            if self._due.pop(key, None) is not None:
                self._cond.notify()

    def stop(self, timeout=5.0):
        """Forget every deadline and end the thread, waiting up to ``timeout`` seconds for it (an
        action running then finishes first); :meth:`watch` does nothing from now on."""
        with self._cond:
            self._stopped = True
            self._due.clear()
            self._heap.clear()
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the token expiry thread did not end within %.1fs: an action of it is"
                            " still running", timeout)

    def __len__(self):
        with self._cond:
            return len(self._due)

    def _run(self):
        while True:
            with self._cond:
                action = self._next_due()
                if action is None:
                    return
            try:
                action()
            except Exception:  # noqa: BLE001 - one consumer's close must not stop the others'
                log.exception("closing a consumer whose token expired failed")

    def _next_due(self):
        """Wait (holding the condition) for the next due action; None once nothing is watched,
        the thread then being done."""
        while True:
            while self._heap and self._due.get(self._heap[0][2], (0, None))[1] != self._heap[0][1]:
                heapq.heappop(self._heap)       # forgotten, or watched again since
            if not self._heap:
                self._thread = None
                return None
            deadline, _, key = self._heap[0]
            wait = deadline - self.now()
            if wait <= 0:
                heapq.heappop(self._heap)
                return self._due.pop(key)[2]
            self._cond.wait(min(wait, _LONGEST_WAIT))
