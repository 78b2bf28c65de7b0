"""Consumers' leaving, done on a few threads of the broker's.

Under DPMQ's worker a WebSocket or event-stream consumer holds no thread once it has joined: its
route thread returns and the broker's inbound thread reads it with every other consumer (a thread
per idle consumer was most of what one cost). When such a consumer ends, what its route thread
did after the wait is still to do: forget its token's expiry, unsubscribe it (a round trip to its
delivery shard, and store writes: its cursor, its ownership, its lock) and close its socket. The
inbound thread sees the end but must never wait on the store, so it hands the leaving here.

A few threads, not one: each leaving mostly waits (for the shard, for the store), and a mass
disconnect, or a stop with thousands of consumers, must not queue them one round trip at a time
(a consumer reconnecting with the same id is refused until its old self has left).
"""

import concurrent.futures
import logging
import threading

log = logging.getLogger(__name__)

#: How many leavings run at once.
THREADS = 8


class Farewells:
    """Runs the leavings handed to :meth:`put`, each one's steps in order."""

    def __init__(self, threads=THREADS):
        self._pool = concurrent.futures.ThreadPoolExecutor(threads,
                                                           thread_name_prefix="dpmq-farewell")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._stopped = False

    def put(self, *steps):
        """Run ``steps`` (callables) one after the other on a farewell thread; once stopped, at
        once on the caller's."""
        with self._lock:
            if not self._stopped:
                self._pending += 1
                self._pool.submit(self._run, steps)
                return
        _run_steps(steps)

    def stop(self, timeout):
        """Wait up to ``timeout`` seconds for the leavings handed over so far (the broker stops
        only once its consumers have left: their locks and ephemeral subscriptions are in the
        store); later ones run on their caller. Returns how many had not finished."""
        with self._lock:
            self._stopped = True
            self._idle.wait_for(lambda: not self._pending, timeout)
            left = self._pending
        if left:
            log.warning("%d consumers had not finished leaving when DPMQ stopped; a durable"
                        " consumer resumes from its saved cursor", left)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return left

    def _run(self, steps):
        try:
            _run_steps(steps)
        finally:
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._idle.notify_all()


def _run_steps(steps):
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - one consumer's leaving must not stop the others'
            log.exception("a consumer's leaving failed")
