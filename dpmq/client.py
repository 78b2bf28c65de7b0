"""A small Python client for DPMQ: :class:`Producer` over HTTP, :class:`Consumer` over WebSocket
or Server-Sent Events, :class:`PullConsumer` over plain HTTP requests.

It needs nothing beyond DPMQ's own dependencies: the standard library's ``http.client`` (one
keep-alive connection), a WebSocket client on wsproto (:mod:`dpmq.websocket_client`) and an event
stream reader (:mod:`dpmq.event_stream_client`). This module holds the push :class:`Consumer`, the
one with a connection to keep; the rest lives beside what it shares (requests and errors in
:mod:`dpmq.http_client`, pulls in :mod:`dpmq.pull_client`, what is received in
:mod:`dpmq.client_messages`) and is imported here, so ``dpmq.client`` is the one name to import.

    from dpmq.client import Producer, Consumer

    Producer("http://127.0.0.1:8080").send("orders", "hello")
    for message in Consumer("http://127.0.0.1:8080", "orders", "worker-1", group="workers", ack=True):
        print(message.data)                 # acked when the loop body is done
        if message.data == "stop":
            break                           # closes the consumer; "stop" is not acked: redelivered

``Producer`` and ``PullConsumer`` are thread-safe (calls share one connection, one at a time).
``Consumer`` is not: use it from one thread, except :meth:`Consumer.close`, which any thread may
call. Messages a subscription missed because they were gone when it resumed (purged by retention,
or the subscription forgotten for idleness) are not messages: they reach ``on_gap`` as a
:class:`Gap`, or the log as a warning when no ``on_gap`` is given.
"""

import http.client
import json
import logging
import random
import threading
import time
import urllib.parse

from simple_websocket import ConnectionClosed
from simple_websocket import ConnectionError as HandshakeRefused

from .client_messages import Gap, Message, as_message, report_gap
from .errors import CLOSE_DUPLICATE
from .event_stream_client import EventStreamClient
from .http_client import ClientError, ConnectionFailed, HttpClient, NotSettled, Producer, settle, split_url
from .pull_client import PullConsumer
from .websocket_client import WebSocketClient

__all__ = ["PERMANENT_CLOSE_CODES", "ClientError", "ConnectionFailed", "Consumer", "EventStreamClient",
           "Gap", "Message", "NotSettled", "Producer", "PullConsumer", "WebSocketClient"]

log = logging.getLogger(__name__)

#: Close codes after which reconnecting cannot help (4409 only on the first connection), with the
#: words that start the ClientError's message (the broker's reason follows).
PERMANENT_CLOSE_CODES = {1008: "bad request", 4401: "not authorised", 4403: "forbidden",
                         4409: "consumerId already connected"}


class Consumer:
    """Receives messages of one topic as a durable subscription; iterate it, or :meth:`run` it.

    It reconnects by itself with backoff when the connection drops or the broker restarts, and
    resumes where it left off (the broker keeps the subscription's cursor). ``since`` applies to the
    first connection only. ``durable=False`` asks for an ephemeral subscription instead (the
    broker's ``?durable=0``): it starts at "now" (or ``since``) and is forgotten when the consumer
    leaves, so a throwaway consumerId leaves nothing behind.

    With ``ack=True`` each message is acked when the loop body (or the handler) returns, unless
    ``auto_ack=False``: then call :meth:`ack` or :meth:`nack` yourself. Leaving a ``for`` loop over
    the consumer (``break``, ``return``, an exception) closes the consumer, and the message the
    body was on is *not* acked: the broker delivers it again, to this subscription's next
    connection or another member of its group. Call ``consumer.ack(message)`` before ``break`` to
    settle it. A consumer is iterated once.

    ``first_connect_timeout`` bounds how long it tries to make its first connection: after that
    many seconds without ever reaching the broker it raises :class:`ConnectionFailed` (None, the
    default: it keeps trying, as it does after a drop, e.g. while the broker starts).
    ``handshake_timeout`` bounds one connection's WebSocket handshake. The broker pings the
    connection; ``ping_interval`` makes the client ping too (a second thread then writes to the
    socket, so keep it off unless a proxy needs client traffic).

    ``transport="sse"`` receives the same subscription as Server-Sent Events instead of a
    WebSocket (for networks that let only plain HTTP through): it reconnects with
    ``Last-Event-ID``, the last MessageCode it received, and the broker resumes right after it;
    acks and nacks go as ``POST /ConsumerAck``. ``ping_interval`` does not apply to it.

    ``on_gap(gap)`` is called (on the consumer's thread, before the next message) with a
    :class:`Gap` when the subscription resumed past messages that were gone; a WebSocket consumer
    asks for these notices (``?notices=1``) only when ``on_gap`` is given. Without it, gaps that
    come are logged as warnings.
    """

    TRANSPORTS = ("websocket", "sse")

    def __init__(self, url, topic, consumer_id, group=None, ack=False, since=None, token=None,
                 auto_ack=True, reconnect=True, max_backoff=30.0, ping_interval=None, durable=True,
                 first_connect_timeout=None, handshake_timeout=10.0, transport="websocket",
                 on_gap=None):
        if transport not in self.TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(self.TRANSPORTS)}, got"
                             f" {transport!r} (PullConsumer pulls)")
        secure, host, port, prefix = split_url(url)
        sse = transport == "sse"
        query = {k: v for k, v in (("group", group), ("ack", "1" if ack else None),
                                   ("durable", None if durable else "0"),
                                   ("notices", "1" if on_gap and not sse else None)) if v}
        scheme = ("https" if secure else "http") if sse else ("wss" if secure else "ws")
        self._base = (f"{scheme}://{host}:{port}{prefix}/ConsumersConn/"
                      f"{urllib.parse.quote(topic, safe='')}/{urllib.parse.quote(consumer_id, safe='')}")
        self._query = query
        self.transport = transport
        self.on_gap = on_gap
        self._acks = HttpClient(url, token=token, retries=1) if sse else None
        self._last_code = None          # the last MessageCode received: Last-Event-ID (sse)
        self._since = since
        self.topic, self.consumer_id, self.group, self.ack_mode = topic, consumer_id, group, ack
        self.durable = durable
        self.auto_ack = auto_ack
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.ping_interval = ping_interval
        self.first_connect_timeout = first_connect_timeout
        self.handshake_timeout = handshake_timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._ws = None
        self._closed = threading.Event()
        self._unacked = None
        self._was_connected = False
        self._give_up_at = None         # monotonic deadline of the first connection, once started
        self._reached = False           # a connection was made once: reconnect for ever

    # -- connection --------------------------------------------------------------------------
    def _url(self):
        query = dict(self._query)
        if self._since:
            query["since"] = self._since
        return self._base + ("?" + urllib.parse.urlencode(query) if query else "")

    def _connect(self):
        backoff = 0.2
        if not self._reached and self.first_connect_timeout is not None and self._give_up_at is None:
            self._give_up_at = time.monotonic() + self.first_connect_timeout
        while not self._closed.is_set():
            left = None if self._reached or self._give_up_at is None \
                else self._give_up_at - time.monotonic()
            try:
                self._ws = self._open(_least(self.handshake_timeout,
                                             None if left is None else max(left, 0.5)))
                self._since = None          # later connections resume from the saved cursor
                self._reached = True
                return
            except (OSError, http.client.HTTPException, HandshakeRefused, ConnectionClosed) as exc:
                sse = self.transport == "sse"
                reason = exc if not isinstance(exc, HandshakeRefused) else (
                    f"the server did not answer the {'request' if sse else 'WebSocket handshake'}"
                    if exc.status_code is None else f"the server answered HTTP {exc.status_code}"
                    f" instead of {'an event stream' if sse else 'a WebSocket'}")
                if isinstance(exc, HandshakeRefused):
                    reason += ": is it a DPMQ broker, with the right URL?"
                if not self.reconnect:
                    raise ConnectionFailed(f"cannot connect to {self._base}: {reason}") from None
                wait = backoff * (0.5 + random.random())
                if left is not None:
                    left = self._give_up_at - time.monotonic()
                    if left <= 0:
                        raise ConnectionFailed(f"no connection to {self._base} in"
                                               f" {self.first_connect_timeout:g} s: {reason}") from None
                    wait = min(wait, left)
                log.info("DPMQ consumer %s: connect failed (%s); retrying in %.1fs",
                         self.consumer_id, reason, wait)
            self._closed.wait(wait)
            backoff = min(backoff * 2, self.max_backoff)

    def _receive(self, deadline=None):
        """The next pushed object, reconnecting as needed; None once closed or past ``deadline``."""
        while not self._closed.is_set():
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                return None
            if self._ws is None:
                self._connect()
                continue
            try:
                text = self._ws.receive(timeout=wait)
            except ConnectionClosed as exc:
                self._drop()
                code = exc.reason
                if self._closed.is_set():
                    return None
                if code == CLOSE_DUPLICATE and self._was_connected and self.reconnect:
                    # After a drop, the broker (or the process that had this consumerId) may not
                    # have noticed the old connection's end yet: it lets the id go within
                    # server.pingInterval, or storage.nodeTimeout if that process died.
                    log.info("DPMQ consumer %s: the broker still holds the previous connection;"
                             " retrying", self.consumer_id)
                    self._closed.wait(0.5 + random.random())
                    continue
                if code in PERMANENT_CLOSE_CODES:
                    raise ClientError(f"{PERMANENT_CLOSE_CODES[code]}: {exc.message}", code) from None
                if not self.reconnect:
                    raise ConnectionFailed(f"connection closed ({code} {exc.message})") from None
                log.info("DPMQ consumer %s: connection closed (%s); reconnecting",
                         self.consumer_id, code)
                continue
            self._was_connected = True      # it was not refused: later refusals may be stale
            if text is None:
                continue
            body = json.loads(text)
            if "MessageCode" in body:
                self._last_code = body["MessageCode"]
                return body
            if body.get("Notice") == "gap":
                report_gap(self.on_gap, body, self.consumer_id)
                continue
            log.warning("DPMQ consumer %s: broker says %s", self.consumer_id, body)
        return None

    def _open(self, handshake_timeout):
        if self.transport == "sse":
            return EventStreamClient.connect(self._url(), headers=self._headers,
                                             handshake_timeout=handshake_timeout,
                                             last_event_id=self._last_code)
        return WebSocketClient.connect(self._url(), headers=self._headers,
                                       ping_interval=self.ping_interval,
                                       handshake_timeout=handshake_timeout)

    def _drop(self):
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - already closed
                pass

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, timeout=None):
        """The next message, or None after ``timeout`` seconds (or once closed). With ack and
        ``auto_ack``, the message returned by the previous call is acked first."""
        self._ack_pending()
        body = self._receive(None if timeout is None else time.monotonic() + timeout)
        if body is None:
            return None
        message = as_message(body)
        if self.ack_mode and self.auto_ack:
            self._unacked = message
        return message

    def __iter__(self):
        """Messages until :meth:`close`. Leaving the loop closes the consumer, and does not ack the
        message the body was on (see the class docstring)."""
        try:
            while True:
                message = self.receive()
                if message is None:
                    return
                yield message
        finally:
            self._unacked = None        # the body did not finish it: the broker redelivers it
            self.close()

    def run(self, handler):
        """Call ``handler(message)`` for each message until :meth:`close`. With ack, a message is
        acked as soon as its handler returns; a handler that raises gets it redelivered (nack)."""
        auto, self.auto_ack = self.auto_ack, False
        try:
            for message in self:
                try:
                    handler(message)
                except Exception:  # noqa: BLE001 - one bad message must not stop the consumer
                    log.exception("DPMQ consumer %s: handler failed on %s", self.consumer_id,
                                  message.code)
                    if self.ack_mode:
                        self.nack(message)
                    continue
                if self.ack_mode and auto:
                    self.ack(message)
        finally:
            self.auto_ack = auto

    def _ack_pending(self):
        message, self._unacked = self._unacked, None
        if message is not None:
            self.ack(message)

    def ack(self, message):
        """Tell the broker ``message`` is done (ack mode)."""
        if self._acks is not None:
            self._settle(message, nack=False)
        else:
            self._send(message.code)

    def nack(self, message):
        """Ask the broker to deliver ``message`` again now (ack mode)."""
        if self._acks is not None:
            self._settle(message, nack=True)
        else:
            self._send(json.dumps({"nack": message.code}))

    def _settle(self, message, nack):
        """An ack or nack of the SSE transport, as ``POST /ConsumerAck``. As a WebSocket's error
        frame about an ack, a refusal is logged, not raised; unsent, the broker redelivers."""
        try:
            settle(self._acks, self.topic, self.consumer_id, self.group, [message.code], nack)
        except (ClientError, ConnectionFailed) as exc:
            log.warning("DPMQ consumer %s: %s of %s failed: %s", self.consumer_id,
                        "nack" if nack else "ack", message.code, exc)

    def _send(self, text):
        if self._ws is not None:
            try:
                self._ws.send(text)
            except (ConnectionClosed, OSError):
                self._drop()        # unacked: the broker redelivers it after reconnecting

    def close(self):
        """Stop iterating and disconnect; safe from any thread."""
        self._closed.set()
        self._drop()
        if self._acks is not None:
            self._acks.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _least(*limits):
    """The smallest of the limits that are set (None: no limit)."""
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None
