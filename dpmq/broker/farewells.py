"""Consumers' leaving, done on one thread of the broker's.

Under DPMQ's worker a WebSocket consumer holds no thread once it has joined: its route thread
returns and the broker's inbound thread reads it with every other consumer (a thread per idle
consumer was most of what one cost). When such a consumer ends, what its route thread did after
the wait is still to do: forget its token's expiry, unsubscribe it (which may save its cursor in
the store) and close its socket. The inbound thread sees the end but must never wait on the
store, so it hands the leaving here, in order.
"""

import logging
import queue
import threading

log = logging.getLogger(__name__)


class Farewells:
    """One thread running the leavings handed to :meth:`put`, in the order they came."""

    def __init__(self):
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None
        self._stopped = False

    def put(self, *steps):
        """Run ``steps`` (callables) one after the other on the farewell thread; once it has
        stopped, at once on the caller's."""
        with self._lock:
            inline = self._stopped
            if not inline and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dpmq-farewells",
                                                daemon=True)
                self._thread.start()
            if not inline:
                self._queue.put(steps)
        if inline:
            _run_steps(steps)

    def stop(self, timeout=5.0):
        """Run what was handed over so far, then stop; later leavings run on their caller."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self):
        while (steps := self._queue.get()) is not None:
            _run_steps(steps)


def _run_steps(steps):
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - one consumer's leaving must not stop the others'
            log.exception("a consumer's leaving failed")
