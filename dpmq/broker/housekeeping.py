"""The broker's background chores: saving cursors, promoting delayed messages, retention.

Two threads, each stopped through an Event, logging and backing off on errors, never dying:

- the scheduler sleeps until the earliest delayed message is due (or a new, earlier one arrives),
  then moves due messages into their logs, as many at a time as the buffer has room for;
- the sweeper saves the cursors that moved every ``mq.cursorFlushInterval`` seconds, and every
  ``mq.sweepInterval`` seconds refreshes those of connected subscriptions before retention would
  forget them and purges what retention says is expired, at most ``mq.sweepBatch``
  messages at a time so that a sweep never holds the store for long, then emits a
  ``subscription.forgotten`` event for each subscription that purge forgot for idleness.
"""

import logging
import threading
import time

from ..errors import StoreError

log = logging.getLogger(__name__)

#: The most ``subscription.forgotten`` events one sweep emits; past it the rest are only counted
#: in a log line (the events queue holds 10,000 at most anyway).
FORGOTTEN_EVENTS = 1000


class Housekeeping:
    def __init__(self, broker):
        self.broker = broker
        self._stop = threading.Event()
        self._stop_scheduler = threading.Event()
        self._wake = threading.Event()
        self._unsaved = {}          # cursors taken from the shards that a failed save held
        self._threads = []

    def start(self):
        for name, target in (("dpmq-scheduler", self._schedule), ("dpmq-sweeper", self._sweep)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_scheduler(self):
        self._stop_scheduler.set()
        self._wake.set()

    def stop(self):
        """Stop both threads; the sweeper saves the cursors one last time."""
        self.stop_scheduler()
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def wake_scheduler(self):
        self._wake.set()

    # -- delayed messages --------------------------------------------------------------------
    def _schedule(self):
        engine, slots = self.broker.engine, self.broker.slots
        while not self._stop_scheduler.is_set():
            try:
                due = engine.next_due()
                now = time.time()
                if due is None or due > now:
                    # Other processes sharing the store add delayed messages without waking us.
                    longest = 1.0 if engine.shared else 60.0
                    self._wake.wait(longest if due is None else min(longest, due - now))
                    self._wake.clear()
                    continue
                room = slots.acquire_up_to(500)
                if not room:
                    self._stop_scheduler.wait(0.05)     # the buffer is full; pushes will free it
                    continue
                promoted = []
                try:
                    promoted = engine.promote_due(now, room)
                finally:
                    slots.release(room - len(promoted))
            except StoreError as exc:
                log.warning("could not promote delayed messages, retrying in 1 s: %s", exc)
                self._stop_scheduler.wait(1)
            except Exception:  # noqa: BLE001
                log.exception("scheduler failed; retrying in 1 s")
                self._stop_scheduler.wait(1)

    # -- cursors and retention ---------------------------------------------------------------
    def _sweep(self):
        mq = self.broker.settings.mq
        next_sweep = time.monotonic() + mq.sweepInterval
        next_sample = 0.0
        while not self._stop.wait(min(mq.cursorFlushInterval, 1.0)):
            try:
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + 1.0
                    self.broker.history.sample(self.broker.topic_counts(), self.broker.slots.used)
                sweeping = time.monotonic() >= next_sweep
                self.save_cursors(refresh=sweeping)
                self.broker.consumers.retry_unlocks()
                if sweeping:
                    next_sweep = time.monotonic() + mq.sweepInterval
                    self.purge()
            except StoreError as exc:
                log.warning("housekeeping could not reach the store, retrying: %s", exc)
            except Exception:  # noqa: BLE001
                log.exception("housekeeping failed; retrying")
        try:
            self.save_cursors()
        except Exception:  # noqa: BLE001
            log.exception("final cursor save failed")

    def save_cursors(self, refresh=False):
        """Save the cursors that moved; with ``refresh``, also those last saved more than half
        the retention ago, so that retention never forgets a connected but quiet subscription.
        What a failed save held is kept for the next one."""
        stale = time.time() - self.broker.settings.mq.retentionSeconds / 2 if refresh else None
        self._unsaved.update(self.broker.cursors_to_save(stale))
        if self._unsaved:
            self.broker.engine.save_cursors(self._unsaved)
            self._unsaved = {}

    def purge(self):
        mq = self.broker.settings.mq
        now = time.time()
        removed = self.broker.engine.purge(now - mq.retentionSeconds, mq.retentionMessages,
                                           mq.sweepBatch, now=now)
        if removed:
            log.info("retention purged=%d", removed)
        self._report_forgotten(now)
        return removed

    def _report_forgotten(self, now):
        """One ``subscription.forgotten`` event per subscription this purge forgot. Those are
        the ones forgotten at exactly ``now``: another process sharing the store stamps its own
        purges with its own time, so each forgetting is reported once, by the process whose
        purge did it."""
        found = self.broker.engine.forgotten_since(now, FORGOTTEN_EVENTS + 1)
        mine = [entry for entry in found if entry[3] == now]
        if len(mine) > FORGOTTEN_EVENTS:
            log.warning("retention forgot more than %d idle subscriptions in one sweep: events"
                        " for the first %d only", FORGOTTEN_EVENTS, FORGOTTEN_EVENTS)
        elif mine:
            log.info("retention forgot idle subscriptions=%d", len(mine))
        for topic, sub, cursor, _ in mine[:FORGOTTEN_EVENTS]:
            self.broker.events.emit("subscription.forgotten", topic=topic, subscription=sub,
                                    cursor=cursor, detected="retention")
