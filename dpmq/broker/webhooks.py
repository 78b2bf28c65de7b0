"""Webhooks: each lifecycle event POSTed to the URLs of ``events.webhooks``, signed, in order.

Each webhook is a durable subscription of ``_dpmq.events`` (``c:webhook|<hash of its URL>``: a
consumerId no client can take, as ``|`` is refused in names) read by one thread of its own, so a
dead receiver holds up only its own events. The thread reads the log from the subscription's
cursor, POSTs each event of its ``types`` (glob patterns; none means all) as the event's JSON, with
``X-DPMQ-Signature: sha256=<hex HMAC-SHA256 of the body under the secret>`` and
``X-DPMQ-Event-Id`` (the event's MessageCode), retrying while the receiver fails (not 2xx, or no
answer) after 1 s, doubling to 60 s. The cursor moves, and is saved, only after a 2xx: a restart
(a crash included) goes on from the first event not yet accepted, so each event arrives at least
once, in order.

Why the log is read directly rather than through a pulling member: a member's messages are
redelivered after ``mq.ackTimeout`` and dead-lettered after ``mq.sendRetryCount`` tries, so a
receiver down for a few minutes would lose events to the dead letters, and get the rest out of
order. With a shared store (redis) the webhook's consumerId is locked like a consumer's: one
process of the broker delivers it, another takes over when that one goes.

Thread-safe: :meth:`Webhooks.report` reads what the threads write (plain attributes).
"""

import fnmatch
import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request

from ..errors import StoreError
from .events import EVENTS_TOPIC

log = logging.getLogger(__name__)

#: Seconds before the first retry of a failed POST; doubled each time up to the second.
BACKOFF = (1.0, 60.0)
#: Seconds a receiver has to answer a POST.
POST_TIMEOUT = 10.0
#: How often an idle webhook looks for new events.
POLL = 0.25
#: Events read from the store at a time.
READ = 100


def signature(secret, body):
    """The ``X-DPMQ-Signature`` of ``body`` (bytes)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhook:
    """One ``events.webhooks`` entry and the thread that delivers its events."""

    def __init__(self, broker, config, backoff):
        self.broker = broker
        self.config = config
        self.backoff = backoff
        self.consumer_id = "webhook|" + hashlib.sha256(config.url.encode()).hexdigest()[:16]
        self.key = "c:" + self.consumer_id
        self.cursor = None          # the offset of the last event done, once this process holds it
        self.delivered = 0
        self.failures = 0           # failed tries of the event being delivered now
        self.last_error = None
        self.last_error_at = None
        self._thread = None

    def wants(self, kind):
        types = self.config.types
        return not types or any(fnmatch.fnmatchcase(kind, pattern) for pattern in types)

    def start(self, stop):
        self._thread = threading.Thread(target=self._run, args=(stop,), daemon=True,
                                        name=f"dpmq-webhook-{self.consumer_id[8:16]}")
        self._thread.start()

    def join(self, timeout):
        if self._thread is not None:
            self._thread.join(timeout)

    def report(self):
        head = self.broker.heads.get(EVENTS_TOPIC, 0)
        return {"url": self.config.url, "types": list(self.config.types),
                "subscription": self.key, "active": self.cursor is not None,
                "backlog": None if self.cursor is None else max(0, head - self.cursor),
                "delivered": self.delivered, "failures": self.failures,
                "lastError": self.last_error, "lastErrorAt": self.last_error_at}

    # -- the webhook's thread ------------------------------------------------------------------
    def _run(self, stop):
        engine = self.broker.engine
        try:
            while not stop.is_set():
                try:
                    if self.cursor is None and not self.take(engine):
                        stop.wait(1.0)
                        continue
                    if not self._deliver(engine, stop):
                        stop.wait(POLL)
                except StoreError as exc:
                    log.warning("webhook %s cannot reach the store, retrying in 1 s: %s",
                                self.config.url, exc)
                    stop.wait(1.0)
                except Exception:  # noqa: BLE001 - the thread must not die
                    log.exception("webhook %s failed; retrying in 1 s", self.config.url)
                    stop.wait(1.0)
        finally:
            if self.cursor is not None:
                try:
                    engine.unlock_consumer(EVENTS_TOPIC, self.consumer_id)
                except StoreError:
                    pass        # it goes with this process's beat
                self.cursor = None

    def take(self, engine):
        """Hold the webhook in this process (with a shared store, one process delivers it) and
        load its cursor; False if another process holds it."""
        if not engine.lock_consumer(EVENTS_TOPIC, self.consumer_id):
            return False
        cursor = engine.cursor(EVENTS_TOPIC, self.key)
        if cursor is None:
            cursor = engine.forgotten(EVENTS_TOPIC, self.key)
        if cursor is None:      # a new webhook: from now on
            cursor = self.broker.heads.get(EVENTS_TOPIC, 0)
            engine.save_cursors({(EVENTS_TOPIC, self.key): cursor})
        self.cursor = cursor
        return True

    def _deliver(self, engine, stop):
        """POST the events after the cursor; False if there were none."""
        records = engine.read(EVENTS_TOPIC, self.cursor, READ)
        for record in records:
            try:
                kind = json.loads(record.data).get("type", "")
            except ValueError:
                kind = ""
            if self.wants(kind) and not self._post(record, stop):
                return True      # stopping
            self.cursor = record.offset
            engine.save_cursors({(EVENTS_TOPIC, self.key): record.offset})
        return bool(records)

    def _post(self, record, stop):
        """POST one event until the receiver takes it; False if the broker stops first."""
        body = record.data.encode()
        request = urllib.request.Request(self.config.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "DPMQ-webhook",
            "X-DPMQ-Signature": signature(self.config.secret, body),
            "X-DPMQ-Event-Id": record.code})
        delay = self.backoff[0]
        while not stop.is_set():
            error = self._try(request)
            if error is None:
                self.delivered += 1
                self.failures = 0
                return True
            self.failures += 1
            self.last_error, self.last_error_at = error, time.time()
            log.warning("webhook %s: event %s not accepted (%s); retrying in %.1f s",
                        self.config.url, record.code, error, delay)
            stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
        return False

    @staticmethod
    def _try(request):
        """None if the receiver answered 2xx, else what went wrong."""
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return f"no answer: {getattr(exc, 'reason', exc)}"
        return None if 200 <= status < 300 else f"HTTP {status}"


class Webhooks:
    """The webhooks of one broker."""

    def __init__(self, broker, backoff=None):
        self.broker = broker
        self.hooks = [Webhook(broker, config, backoff or BACKOFF)
                      for config in broker.settings.events.webhooks]
        self._stop = threading.Event()

    def start(self):
        """Start each webhook's thread, taking its subscription first where it can, so that a new
        webhook gets the events from its first start on."""
        for hook in self.hooks:
            try:
                hook.take(self.broker.engine)
            except StoreError as exc:
                log.warning("webhook %s cannot reach the store yet: %s", hook.config.url, exc)
            hook.start(self._stop)

    def stop(self, timeout=2.0):
        self._stop.set()
        for hook in self.hooks:
            hook.join(timeout)

    def report(self):
        return [hook.report() for hook in self.hooks]
