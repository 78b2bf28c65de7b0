"""Lifecycle events: what happens to the broker, published on the reserved topic ``_dpmq.events``.

Each event is a normal durable message whose MessageData is a JSON object: ``type`` (one of
:data:`~dpmq.config.schema.EVENT_TYPES`), ``time`` (ISO 8601 UTC with milliseconds, e.g.
``2024-05-01T12:00:00.123Z``), ``node`` (the host name) and ``process`` (its pid), then the details
of the type. Whoever reports an event only puts it on a bounded in-memory queue
(:meth:`Events.emit`: no lock held for long, no I/O); one thread publishes the queue through
``broker.publish``, in order, so a delivery shard never waits for a store commit. While the store
cannot take them, events wait on that queue; past :data:`QUEUE_LIMIT` the oldest go, with a log line.

Storms are coalesced: ``buffer.full`` is one event a second at most (with how many publishes were
refused), and so is ``message.deadLettered`` per subscription (``(topic, subscription)``): the first
dead letter is an event at once, with its details and ``count: 1``; those that follow within the
second are folded into one event, sent when the second is over (by the publishing thread, or at
stop), with the details of the latest and ``count``, how many dead letters it stands for. A
consumer nacking thousands a second costs one event write a second, not one per dead letter.

No event is told about the events topic itself (its consumers coming and going, its dead letters,
gaps or forgotten subscriptions): those could feed on themselves (a dead letter of an event is
another event, itself dead-lettered by the same consumer...), so they are only logged.

Producers may not publish to ``_dpmq.events`` (:func:`check_topics`); consuming it takes an admin
token when auth is on (:func:`check_consumer`).

Thread-safe: ``emit`` and the store hooks are called from any thread.
"""

import collections
import datetime
import itertools
import json
import logging
import os
import socket
import threading
import time
from operator import attrgetter

from ..errors import DPMQError, Forbidden

log = logging.getLogger(__name__)

EVENTS_TOPIC = "_dpmq.events"
#: Events kept in memory while the store cannot take them; past it the oldest are dropped.
QUEUE_LIMIT = 10_000
#: The most events published in one commit.
BATCH = 100
#: At most one ``buffer.full`` event per this many seconds (a storm of 503s is one event each
#: second, with how many publishes were refused since the last one).
BUFFER_FULL_EVERY = 1.0
#: At most one ``message.deadLettered`` event per subscription per this many seconds; the dead
#: letters between are folded into the next one (its ``count``).
DEAD_LETTER_EVERY = 1.0
_TOPIC = attrgetter("topic")
#: Backoff after a failed publish of events: first, then doubled up to the last.
BACKOFF = (0.1, 5.0)


def event_time(now=None):
    """``now`` (``time.time()``) as ISO 8601 UTC with milliseconds."""
    moment = datetime.datetime.fromtimestamp(time.time() if now is None else now,
                                             datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def check_topics(messages):
    """Refuse a producer's messages for the reserved topic."""
    if EVENTS_TOPIC in map(_TOPIC, messages):      # no Python call per message
        raise Forbidden(f"topic {EVENTS_TOPIC!r} is reserved for the broker's lifecycle events:"
                        " producers may not publish to it; use another topic")


def check_consumer(topic, identity):
    """Refuse a consumer of the events topic that is not an admin (``identity`` None: auth off)."""
    if topic == EVENTS_TOPIC and identity is not None and identity.role != "admin":
        raise Forbidden(f"topic {EVENTS_TOPIC!r} (the broker's lifecycle events) is for admin"
                        " tokens only; connect with an admin token")


class Events:
    """The lifecycle events of one broker: the queue they wait on and the thread publishing them."""

    def __init__(self, broker, clock=time.monotonic, limit=QUEUE_LIMIT):
        self.broker = broker
        self.enabled = broker.settings.events.enabled
        self.clock = clock
        self.node = socket.gethostname()
        self.process = os.getpid()
        self.store_failing = False      # read on every publish: one attribute, no lock
        self.dropped = 0
        self._queue = collections.deque(maxlen=limit)  # (sequence number, event), oldest first
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = None
        self._full_at = None            # when the last buffer.full event was emitted
        self._full_refused = 0          # publishes refused since then
        self._dead = {}                 # (topic, subscription) -> [window start, folded, details]

    # -- reporting (any thread) ----------------------------------------------------------------
    def emit(self, kind, **details):
        """Queue an event of type ``kind``; never blocks on I/O, never raises."""
        if not self.enabled or details.get("topic") == EVENTS_TOPIC:
            return
        if kind == "message.deadLettered":
            self._dead_lettered(details)
        else:
            self._put(kind, details)

    def _put(self, kind, details):
        event = {"type": kind, "time": event_time(), "node": self.node, "process": self.process}
        event.update(details)
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("lifecycle events dropped=%d: the store has not taken them and"
                                " %d are waiting; the oldest go first", self.dropped,
                                len(self._queue))
            self._seq += 1
            self._queue.append((self._seq, event))
            self._cond.notify_all()         # the publishing thread (and stop, when it waits)

    def _dead_lettered(self, details):
        """One dead letter: an event now if its subscription had none this second, else folded
        into the next one."""
        key = (details.get("topic"), details.get("subscription"))
        now = self.clock()
        with self._cond:
            window = self._dead.get(key)
            if window is not None and now - window[0] < DEAD_LETTER_EVERY:
                window[1] += 1
                window[2] = details
                return
            folded = window[1] if window is not None else 0
            self._dead[key] = [now, 0, None]
        self._put("message.deadLettered", dict(details, count=folded + 1))

    def _flush_dead(self, force=False):
        """Send the folded dead letters of the subscriptions whose second is over (every one
        when ``force``); returns the seconds until the next is due, or None."""
        now = self.clock()
        due, soonest = [], None
        with self._cond:
            for key, (start, folded, details) in list(self._dead.items()):
                left = start + DEAD_LETTER_EVERY - now
                if left > 0 and not force:
                    soonest = left if soonest is None else min(soonest, left)
                elif folded:
                    due.append(dict(details, count=folded))
                    self._dead[key] = [now, 0, None]
                    soonest = DEAD_LETTER_EVERY if soonest is None else soonest
                else:
                    del self._dead[key]
        for details in due:
            self._put("message.deadLettered", details)
        return soonest

    def buffer_full(self, capacity):
        """A publish was refused because the buffer was full: at most one event a second."""
        if not self.enabled:
            return
        now = self.clock()
        with self._cond:
            self._full_refused += 1
            if self._full_at is not None and now - self._full_at < BUFFER_FULL_EVERY:
                return
            self._full_at, refused, self._full_refused = now, self._full_refused, 0
        self.emit("buffer.full", capacity=capacity, refused=refused)

    def store_failed(self, exc):
        """A write to the store failed: ``store.error`` when it was working until now."""
        with self._cond:
            if self.store_failing:
                return
            self.store_failing = True
        log.warning("the store is failing: %s", exc)
        self.emit("store.error", error=str(exc))

    def store_worked(self):
        """A write to the store succeeded: ``store.recovered`` when it was failing."""
        with self._cond:
            if not self.store_failing:
                return
            self.store_failing = False
        log.info("the store works again")
        self.emit("store.recovered")

    # -- the publishing thread -----------------------------------------------------------------
    def start(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="dpmq-events", daemon=True)
            self._thread.start()

    def stop(self, timeout=2.0):
        """Publish what is queued (the folded dead letters included), then stop; all of it
        within ``timeout`` seconds."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        self._flush_dead(force=True)
        with self._cond:        # the publishing thread notifies as it takes each batch off
            while self._queue and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self.waiting():
            log.warning("lifecycle events lost at stop=%d: the store did not take them in time",
                        self.waiting())

    def waiting(self):
        with self._cond:
            return len(self._queue)

    def _run(self):
        delay = BACKOFF[0]
        while not self._stop.is_set():
            due = self._flush_dead()
            with self._cond:
                if not self._queue and not self._stop.is_set():
                    self._cond.wait(due)        # None: until an event comes
                batch = list(itertools.islice(self._queue, min(BATCH, self.broker.slots.capacity)))
            if not batch:
                continue
            try:
                self.broker.publish([{"topic": EVENTS_TOPIC, "messageData": json.dumps(event)}
                                     for _, event in batch], internal=True)
            except DPMQError as exc:
                log.debug("publishing %d lifecycle events failed, retrying in %.1f s: %s",
                          len(batch), delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            except Exception:  # noqa: BLE001 - the thread must not die
                log.exception("publishing lifecycle events failed; retrying in %.1f s", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            delay = BACKOFF[0]
            last = batch[-1][0]
            with self._cond:      # those dropped meanwhile are gone already
                while self._queue and self._queue[0][0] <= last:
                    self._queue.popleft()
                self._cond.notify_all()     # stop may be waiting for the queue to empty
