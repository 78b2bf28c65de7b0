"""DPMQ's request/reply endpoints from Python: :class:`Producer` (publish) and the acks and nacks
of ``POST /ConsumerAck``, both over :class:`HttpClient`.

One module holds what the producer, the pull consumer and the SSE consumer's acks share, so that
there is one place that retries, one that turns the broker's ``code -1`` into a
:class:`ClientError`, and one reading of an ack's answer. It needs only the standard library's
``http.client``: one keep-alive connection per client, used one request at a time.
"""

import http.client
import json
import threading
import time
import urllib.parse
import uuid

from .client_messages import Message
from .errors import DPMQError


class ClientError(DPMQError):
    """Raised when the broker refuses a request (``code: -1``) or a consumer connection for good.

    ``status`` is the HTTP status or WebSocket close code; the message is the broker's reason;
    ``data`` is the reply's ``data``, if it had one.
    """

    def __init__(self, message, status=None, data=None):
        super().__init__(message)
        self.status = status
        self.data = data


class NotSettled(ClientError):
    """Raised when an ack or nack over HTTP names messages the subscription does not hold: unknown,
    already acked, or timed out and already delivered again (the work may be done twice).
    ``settled`` and ``unknown`` list the codes of each kind; the settled ones are done."""

    def __init__(self, message, status=None, data=None):
        super().__init__(message, status, data)
        self.settled = list((data or {}).get("settled", []))
        self.unknown = list((data or {}).get("unknown", []))


class ConnectionFailed(DPMQError):
    """Raised when the broker cannot be reached (after the retries, for a Producer)."""


def split_url(url):
    """(secure, host, port, path prefix) of a broker URL; a bare ``host:port`` is http."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"DPMQ URL must start with http:// or https://, got {url!r}")
    secure = parts.scheme in ("https", "wss")
    return secure, parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80), \
        parts.path.rstrip("/")


class HttpClient:
    """JSON requests to the broker over one keep-alive connection, one at a time (thread-safe).

    Network errors and 503 (buffer full, shutting down) are retried up to ``retries`` times with
    backoff; any other ``code -1`` raises :class:`ClientError` with the broker's ``msg``.
    """

    def __init__(self, url, token=None, timeout=10.0, retries=3):
        self.secure, self.host, self.port, self.prefix = split_url(url)
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self._conn = None
        self._lock = threading.Lock()

    def _post(self, path, body, timeout=None):
        """POST ``body`` as JSON; the reply once it has ``code 0``. ``timeout`` (seconds) bounds
        this request's wait for its reply instead of ``self.timeout``."""
        payload = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                status, reply = self._request(path, payload, headers, timeout or self.timeout)
            except (OSError, http.client.HTTPException) as exc:
                if attempt == self.retries:
                    raise ConnectionFailed(f"cannot reach DPMQ at {self.host}:{self.port}: {exc}") \
                        from None
            else:
                if reply.get("code") == 0:
                    return reply
                if status != 503 or attempt == self.retries:
                    raise ClientError(reply.get("msg") or f"HTTP {status}", status,
                                      reply.get("data"))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _request(self, path, payload, headers, timeout):
        with self._lock:
            if self._conn is None:
                cls = http.client.HTTPSConnection if self.secure else http.client.HTTPConnection
                self._conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.timeout = timeout        # for a new socket; a kept one is set below
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(timeout)
                self._conn.request("POST", self.prefix + path, payload, headers)
                response = self._conn.getresponse()
                text = response.read()
            except BaseException:
                self._conn.close()
                self._conn = None
                raise
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, {"code": -1, "msg": f"HTTP {response.status}: {text[:200]!r}"}

    def close(self):
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Producer(HttpClient):
    """Publishes messages; raises :class:`ClientError` carrying the broker's ``msg`` on ``code -1``.

    Network errors and 503 (buffer full, shutting down) are retried up to ``retries`` times with
    backoff; each message carries an ``idempotencyKey`` across its retries, so a retry never stores
    a message twice.
    """

    def send(self, topic, data, delay=None, key=None, idempotency_key=None, ttl=None):
        """Publish one message; returns its MessageCode. ``ttl`` (seconds): a subscription that
        has not had it (acked it, with ack) that long after it was made never gets it."""
        body = {"topic": topic, "messageData": data,
                "idempotencyKey": idempotency_key or uuid.uuid4().hex}
        for name, value in (("delay", delay), ("key", key), ("ttl", ttl)):
            if value is not None:
                body[name] = value
        return self._post("/ProducerSend", body)["msg"]

    def send_batch(self, topic, messages, delay=None, ttl=None):
        """Publish many messages to ``topic`` all or nothing, in one commit; returns their codes.

        ``messages`` are strings, or dicts with ``messageData`` and optionally ``topic``, ``delay``,
        ``key``, ``ttl`` and ``idempotencyKey``; ``ttl`` here is the ``ttl`` of those without one.
        """
        entries = []
        for entry in messages:
            entry = {"messageData": entry} if isinstance(entry, str) else dict(entry)
            entry.setdefault("idempotencyKey", uuid.uuid4().hex)
            if ttl is not None:
                entry.setdefault("ttl", ttl)
            entries.append(entry)
        body = {"topic": topic, "messages": entries}
        if delay is not None:
            body["delay"] = delay
        return self._post("/ProducerSendBatch", body)["data"]


def subscription(topic, consumer_id, group):
    """The fields that name a subscription in a pull or an ack: a consumerId, a group, or both."""
    return {k: v for k, v in (("topic", topic), ("consumerId", consumer_id), ("group", group)) if v}


def settle(client, topic, consumer_id, group, messages, nack):
    """``POST /ConsumerAck`` through ``client`` (an :class:`HttpClient`); the codes settled.

    The broker answers 409 when it did not hold some of them; that is a :class:`NotSettled`, so a
    caller can tell work that may be done twice from a refusal."""
    if isinstance(messages, (str, Message)):
        messages = [messages]
    codes = [m.code if isinstance(m, Message) else m for m in messages]
    if not codes:
        return []
    body = dict(subscription(topic, consumer_id, group), messageCode=codes)
    if nack:
        body["nack"] = True
    try:
        reply = client._post("/ConsumerAck", body)
    except ClientError as exc:
        if exc.status == 409 and isinstance(exc.data, dict):
            raise NotSettled(str(exc), exc.status, exc.data) from None
        raise
    return list((reply.get("data") or {}).get("settled", codes))
