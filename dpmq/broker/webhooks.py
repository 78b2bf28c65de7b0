"""Webhooks: each lifecycle event POSTed to the URLs of ``events.webhooks``, signed, in order.

Each webhook is a durable subscription of ``_dpmq.events`` (``c:webhook|<hash of its URL>``: a
consumerId no client can take, as ``|`` is refused in names) read by one thread of its own, so a
dead receiver holds up only its own events. The thread reads the log from the subscription's
cursor, POSTs each event of its ``types`` (glob patterns; none means all) as the event's JSON, with
``X-DPMQ-Signature: sha256=<hex HMAC-SHA256 of the body under the secret>`` and
``X-DPMQ-Event-Id`` (the event's MessageCode), retrying while the receiver fails (not 2xx, or no
answer) after 1 s, doubling to 60 s. Redirects are not followed: urllib would turn a POST
answered 301/302/303 into a GET without the body, and the event would count as delivered; any 3xx
is a failure naming where the receiver redirected to (its host only). The cursor moves, and is
saved, only after a 2xx: a restart (a crash included) goes on from the first event not yet
accepted, so each event arrives at least once, in order.

A webhook's URL is a secret (hook URLs of Slack, Discord or GitHub carry their credentials in the
path or query): logs and the console show only ``scheme://host[:port]`` and the webhook's id (the
hash in its consumerId).

Stopping: :meth:`Webhooks.stop` sets the stop event, cuts the connection of every POST in flight
(a receiver that never answers would otherwise hold its thread for :data:`POST_TIMEOUT`), then
joins every thread within one deadline. A thread touches the store only while the broker is not
stopping, as the store closes after.

Why the log is read directly rather than through a pulling member: a member's messages are
redelivered after ``mq.ackTimeout`` and dead-lettered after ``mq.sendRetryCount`` tries, so a
receiver down for a few minutes would lose events to the dead letters, and get the rest out of
order. With a shared store (redis) the webhook's consumerId is locked like a consumer's: one
process of the broker delivers it, another takes over when that one goes.

Thread-safe: :meth:`Webhooks.report` reads what the threads write (plain attributes).
"""

import fnmatch
import functools
import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from ..config.schema import url_origin
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


class _TellsItsSocket:
    """Mixed into an HTTP connection: tells its webhook its socket once connected (so that stop
    can cut a POST in flight)."""

    def __init__(self, host, *, on_connect, **kwargs):
        super().__init__(host, **kwargs)
        self.on_connect = on_connect

    def connect(self):
        super().connect()
        self.on_connect(self.sock)


class _Connection(_TellsItsSocket, http.client.HTTPConnection):
    pass


class _TLSConnection(_TellsItsSocket, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, on_connect):
        super().__init__()
        self.connection = functools.partial(_Connection, on_connect=on_connect)

    def http_open(self, req):
        return self.do_open(self.connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, on_connect):
        self.tls = ssl.create_default_context()
        super().__init__(context=self.tls)
        self.connection = functools.partial(_TLSConnection, on_connect=on_connect)

    def https_open(self, req):
        return self.do_open(self.connection, req, context=self.tls)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: a 3xx reaches the caller as an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Webhook:
    """One ``events.webhooks`` entry and the thread that delivers its events."""

    def __init__(self, broker, config, backoff):
        self.broker = broker
        self.config = config
        self.backoff = backoff
        self.id = hashlib.sha256(config.url.encode()).hexdigest()[:16]
        self.consumer_id = "webhook|" + self.id
        self.key = "c:" + self.consumer_id
        #: What logs and the console show of it: never the URL's path or query.
        self.name = f"{url_origin(config.url)} (id {self.id})"
        self.opener = urllib.request.build_opener(
            _HTTPHandler(self._connected), _HTTPSHandler(self._connected), _NoRedirect())
        self.cursor = None          # the offset of the last event done, once this process holds it
        self.delivered = 0
        self.failures = 0           # failed tries of the event being delivered now
        self.last_error = None
        self.last_error_at = None
        self._thread = None
        self._stop = None
        self._lock = threading.Lock()   # guards _sock between this thread and cut()
        self._sock = None               # the socket of the POST in flight

    def wants(self, kind):
        types = self.config.types
        return not types or any(fnmatch.fnmatchcase(kind, pattern) for pattern in types)

    def start(self, stop):
        self._stop = stop
        self._thread = threading.Thread(target=self._run, args=(stop,), daemon=True,
                                        name=f"dpmq-webhook-{self.consumer_id[8:16]}")
        self._thread.start()

    def join(self, timeout):
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def cut(self):
        """Called by stop, once the stop event is set: end the POST in flight now."""
        with self._lock:
            if self._sock is not None:
                _shut(self._sock)

    def _connected(self, sock):
        with self._lock:
            self._sock = sock
            if self._stop is not None and self._stop.is_set():
                _shut(sock)     # stop came while it was connecting

    def report(self):
        head = self.broker.heads.get(EVENTS_TOPIC, 0)
        return {"url": url_origin(self.config.url), "id": self.id,
                "types": list(self.config.types),
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
                                self.name, exc)
                    stop.wait(1.0)
                except Exception:  # noqa: BLE001 - the thread must not die
                    log.exception("webhook %s failed; retrying in 1 s", self.name)
                    stop.wait(1.0)
        finally:
            if self.cursor is not None:
                try:
                    engine.unlock_consumer(EVENTS_TOPIC, self.consumer_id)
                except Exception as exc:  # noqa: BLE001 - the store may be closed already
                    # the lock goes with this process's beat anyway
                    log.warning("webhook %s: releasing its subscription at stop failed: %s",
                                self.name, exc)
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
            if stop.is_set():    # the store may be closing: the event comes again after a restart
                return True
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
            if stop.is_set():
                return False
            if error is None:
                self.delivered += 1
                self.failures = 0
                return True
            self.failures += 1
            self.last_error, self.last_error_at = error, time.time()
            log.warning("webhook %s: event %s not accepted (%s); retrying in %.1f s",
                        self.name, record.code, error, delay)
            stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
        return False

    def _try(self, request):
        """None if the receiver answered 2xx, else what went wrong (never the URL's path)."""
        try:
            with self.opener.open(request, timeout=POST_TIMEOUT) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                return _redirected(request.full_url, exc.code, exc.headers.get("Location"))
            return f"HTTP {exc.code}"
        except (OSError, http.client.HTTPException) as exc:
            return f"no answer: {getattr(exc, 'reason', exc) or type(exc).__name__}"
        except ValueError as exc:       # its text may hold the URL
            return f"cannot POST: {type(exc).__name__}"
        finally:
            with self._lock:
                self._sock = None
        return None if 200 <= status < 300 else f"HTTP {status}"


def _redirected(url, code, location):
    """lastError for a 3xx: where to, by host only (the rest of a URL may be a secret)."""
    host = urllib.parse.urlsplit(urllib.parse.urljoin(url, location or "")).hostname
    return (f"HTTP {code}: the receiver redirected to {host or 'nowhere'}; webhooks follow no"
            " redirect (the POST would lose its body), so configure the URL it redirects to")


def _shut(sock):
    """Wake whatever blocks on ``sock`` (a TLS one included, below its TLS layer)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass            # closed already


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
                log.warning("webhook %s cannot reach the store yet: %s", hook.name, exc)
            hook.start(self._stop)

    def stop(self, timeout=2.0):
        """Stop every webhook's thread within ``timeout`` seconds in all: signal them all, cut
        the POSTs in flight, then join each within what is left."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        for hook in self.hooks:
            hook.cut()
        for hook in self.hooks:
            hook.join(max(0.0, deadline - time.monotonic()))
        left = [hook.name for hook in self.hooks if hook.alive()]
        if left:
            log.warning("webhooks still running after stop=%d: %s", len(left), ", ".join(left))

    def report(self):
        return [hook.report() for hook in self.hooks]
