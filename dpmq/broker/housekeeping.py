"""The broker's background chores: saving cursors, promoting delayed messages, retention.

Two threads, each stopped through an Event, logging and backing off on errors, never dying:

- the scheduler sleeps until the earliest delayed message is due (or a new, earlier one arrives),
  then moves due messages into their logs, as many at a time as the buffer has room for;
- the sweeper saves the cursors that moved every ``mq.cursorFlushInterval`` seconds, and every
  ``mq.sweepInterval`` seconds refreshes those of connected subscriptions before retention would
  forget them and purges what retention says is expired, at most ``mq.sweepBatch``
  messages at a time so that a sweep never holds the store for long, then emits a
  ``subscription.forgotten`` event for each subscription that purge forgot for idleness.

When nothing has happened for a few seconds (no message, no cursor moved), the sweeper dozes
until the next sweep, and the first commit, moved cursor or consumerId left locked
(:meth:`Housekeeping.wake_sweeper`) wakes it: an idle broker's threads sleep.
"""

import logging
import threading
import time

from ..errors import StoreError

log = logging.getLogger(__name__)

#: The most ``subscription.forgotten`` events one sweep emits; past it the rest are only counted
#: in a log line (the events queue holds 10,000 at most anyway).
FORGOTTEN_EVENTS = 1000
#: Seconds of the sweeper finding nothing to do before it dozes until the next sweep: more than
#: a history sample apart, so that a change is always seen before a doze.
QUIET = 2.0


class Housekeeping:
    def __init__(self, broker):
        self.broker = broker
        self._stop = threading.Event()
        self._stop_scheduler = threading.Event()
        self._wake = threading.Event()
        self._sweeper_wake = threading.Event()  # ends the sweeper's doze (and its turn, at a stop)
        self.dozing = False
        self._next_sweep = self._next_sample = 0.0     # the sweeper's schedule
        self._last_counts = None    # the counts at its last history sample
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
        self._sweeper_wake.set()
        for thread in self._threads:
            thread.join(10)

    def wake_scheduler(self):
        self._wake.set()

    def wake_sweeper(self):
        """Something happened (a commit, a cursor moved, a consumerId left locked): a dozing
        sweeper goes back to its turns. Any thread; costs a look when it does not doze."""
        if self.dozing:
            self.dozing = False
            self._sweeper_wake.set()

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
        turn = min(mq.cursorFlushInterval, 1.0)
        self._next_sweep = time.monotonic() + mq.sweepInterval
        self._next_sample, self._last_counts = 0.0, None
        changed = time.monotonic()
        while True:
            wait = turn
            if time.monotonic() - changed >= QUIET:
                self.dozing = True      # before the look: a cursor moving after it wakes us
                if not any(shard.touched for shard in self.broker.shards):
                    wait = max(turn, self._next_sweep - time.monotonic())
            self._sweeper_wake.wait(wait)
            self._sweeper_wake.clear()
            self.dozing = False
            if self._stop.is_set():
                break
            try:
                if self._sweeper_turn(mq):
                    changed = time.monotonic()
            except StoreError as exc:
                changed = time.monotonic()
                log.warning("housekeeping could not reach the store, retrying: %s", exc)
            except Exception:  # noqa: BLE001
                changed = time.monotonic()
                log.exception("housekeeping failed; retrying")
        try:
            self.save_cursors()
        except Exception:  # noqa: BLE001
            log.exception("final cursor save failed")

    def _sweeper_turn(self, mq):
        """Sample the history, save what moved, retry unlocks and sweep when due; returns
        whether anything had changed."""
        now, changed = time.monotonic(), False
        self.broker.hand_out_held()
        if now >= self._next_sample:
            self._next_sample = now + 1.0
            counts = self.broker.topic_counts()
            self.broker.history.sample(counts, self.broker.slots.used)
            if counts != self._last_counts:
                changed, self._last_counts = True, counts
        sweeping = now >= self._next_sweep
        changed |= self.save_cursors(refresh=sweeping)
        changed |= self.broker.consumers.retry_unlocks()
        if sweeping:
            self._next_sweep = time.monotonic() + mq.sweepInterval
            self.purge()
        return changed

    def save_cursors(self, refresh=False):
        """Save the cursors that moved; with ``refresh``, also those last saved more than half
        the retention ago, so that retention never forgets a connected but quiet subscription.
        What a failed save held is kept for the next one."""
        stale = time.time() - self.broker.settings.mq.retentionSeconds / 2 if refresh else None
        self._unsaved.update(self.broker.cursors_to_save(stale))
        if not self._unsaved:
            return False
        self.broker.engine.save_cursors(self._unsaved)
        self._unsaved = {}
        return True

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
