"""The consumer endpoint: ``GET /ConsumersConn/{topic}/{consumerId}`` over WebSocket, or as
Server-Sent Events.

flask-sock and simple-websocket accept the consumer: the route, and the handshake. Before they do,
the request's socket is swapped for a :class:`~dpmq.transport.connection.GuardedSocket`, so that the
consumer's :class:`~dpmq.transport.connection.Connection` is the only writer of the socket, and the
permessage-deflate offer is dropped: every consumer then receives the same prebuilt frame bytes
(declining an extension is allowed by RFC 6455, and DPMQ's small JSON objects gain little).
simple-websocket's reader thread is never started (:class:`NoReaderThread`, its documented
``thread_class`` option): from the handshake on, the stream is DPMQ's own
(:class:`~dpmq.transport.websocket.WebSocketChannel`), read with every other consumer by the
broker's :class:`~dpmq.transport.inbound.Inbound` thread. Under DPMQ's worker the route thread
then returns (``dpmq.detach``: the worker keeps the connection open); under another server it
waits for the end. What the consumer sends (acks and nacks with ``?ack=1``, and ``{"token":
"<jwt>"}`` replacing the connection's token) is handled on the inbound thread as it arrives. A
consumer that connected with a JWT is closed with 4401 when its token expires
(:class:`~dpmq.token_expiry.Expiry`), unless it sent a fresh one in time.

The same path without an Upgrade and with ``Accept: text/event-stream`` is the same subscription
as Server-Sent Events (:mod:`dpmq.transport.events`): refusals are plain HTTP errors, and once
it is taken the response head goes out and, as for a WebSocket, the inbound thread watches the
stream (or, under another server, the route thread waits for its end).
"""

import functools
import logging
import socket

from flask import Blueprint, Response, current_app, request
from flask_sock import Sock

from ..delivery.shards import subscription_key
from ..errors import CLOSE_BAD_INPUT, BadRequest, Forbidden, Refused, Unauthorized
from ..transport.connection import Connection
from ..transport.events import EVENTS, EventStream, HeadFirst, response_head
from ..transport.frames import WEBSOCKET, WEBSOCKET_NOTICES
from ..transport.websocket import WebSocketChannel
from ..validation import is_message_code
from . import authorize, broker, json_or_none

log = logging.getLogger(__name__)
bp = Blueprint("consumer", __name__)
#: The largest message a consumer may send (an ack is about 60 bytes); larger closes it with 1009.
MAX_MESSAGE_BYTES = 65536
sock = Sock()
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
_EVENTS_ENDPOINT = "consumer.consumers_events"
_URL_HELP = ("the URL must be /ConsumersConn/{topic}/{consumerId}, each 1 to 128 characters"
             " without '/' or '|'")


class NoReaderThread:
    """Given to simple-websocket as its ``thread_class``: the thread it makes is never started,
    as the broker's inbound thread reads the connection instead."""

    def __init__(self, target):
        self.name = "dpmq-consumer-reader"

    def start(self):
        pass


@bp.before_request
def guard_socket():
    framing = _framing()
    if framing is None:
        return
    environ = request.environ
    for key in _SOCKET_KEYS:
        if key in environ:
            raw = HeadFirst(environ[key]) if framing is EVENTS else environ[key]
            conn = Connection(raw, broker().settings.mq.consumerBufferBytes, framing,
                              remote_addr=request.remote_addr or "")
            environ[key] = conn.socket
            environ["dpmq.transport.connection"] = conn
            topic = (request.view_args or {}).get("topic")
            if topic is not None:   # before the 101 goes out: what "connected" means
                environ["dpmq.start"] = broker().heads.get(topic, 0)
            environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
            return


def _framing():
    """How this consumer request's stream is written: an event stream for the plain GET that
    asks for one, a WebSocket (with notices if asked) for the WebSocket routes, else None."""
    endpoint = request.endpoint or ""
    if endpoint == _EVENTS_ENDPOINT:
        return EVENTS if _wants_events() else None
    if endpoint not in ("consumer.consumers_conn", "consumer.consumers_conn_malformed"):
        return None
    if not (request.headers.get("Sec-WebSocket-Key") and request.headers.get("Sec-WebSocket-Version")):
        # refused here, before the WebSocket library's handshake would fail with a 500
        raise BadRequest("a WebSocket handshake needs the Sec-WebSocket-Key and"
                         " Sec-WebSocket-Version headers")
    return WEBSOCKET_NOTICES if request.args.get("notices") in ("1", "true") else WEBSOCKET


def _wants_events():
    return "text/event-stream" in request.headers.get("Accept", "").lower()


def _take_over():
    """The consumer's stream from now on: simple-websocket's part ended with the handshake."""
    environ = request.environ
    conn = environ["dpmq.transport.connection"]
    conn.socket.seal()          # flask-sock closes ``ws`` when the route returns: nothing to send
    return WebSocketChannel(conn, MAX_MESSAGE_BYTES, trailing=environ.get("dpmq.trailing", b""))


@sock.route("/ConsumersConn/<topic>/<consumer_id>", bp=bp)
def consumers_conn(ws, topic, consumer_id):
    b = broker()
    channel = _take_over()
    if not channel.open:            # it sent a Close right behind its handshake
        return
    try:
        identity = authorize("consumer", topic, allow_query=True)
        options = _options(request.args)
        member = b.subscribe(channel.conn, channel, topic, consumer_id, identity=identity,
                             start=request.environ.get("dpmq.start"), **options)
    except (BadRequest, Refused, Unauthorized, Forbidden) as exc:
        code = getattr(exc, "close_code", CLOSE_BAD_INPUT)
        log.info("consumer refused topic=%r id=%r code=%d: %s", topic, consumer_id, code, exc)
        channel.close(code, str(exc))
        return
    auth = current_app.extensions["dpmq_auth"]
    leave = functools.partial(_leave, b, auth, member, channel)
    detach = request.environ.get("dpmq.detach")
    try:
        _watch_expiry(b, auth, member, identity, _close_expired)
        on_input = functools.partial(_take_input, b, auth, member)
        if detach is None:
            b.inbound.add(channel, member.conn, on_input).wait()
        else:
            # DPMQ's worker keeps the connection open when this route returns and gives the
            # thread back; the consumer's end (on the inbound thread) is handed to the broker's
            # farewell thread, then to the worker's, which closes the connection
            b.inbound.add(channel, member.conn, on_input, on_end=functools.partial(
                b.farewells.put, leave, detach()))
            leave = None
    finally:
        if leave is not None:
            leave()


def _leave(b, auth, member, channel):
    """What a WebSocket consumer's end takes: its token is no longer watched, and it leaves."""
    auth.expiry.forget(member)
    code = channel.close_code
    reason = "closed by the consumer" if code in (1000, 1005) else f"closed with code {code}"
    b.unsubscribe(member, reason)


def _take_input(b, auth, member, messages):
    """Frames the consumer sent: a fresh token (``{"token": "<jwt>"}``), acks and nacks with
    ?ack=1, nothing DPMQ needs otherwise."""
    for text in messages:
        body = json_or_none(text) if isinstance(text, str) and '"token"' in text else None
        if isinstance(body, dict) and "token" in body:
            _refresh(b, auth, member, body)
        elif member.ack:
            _answer(b, member, text)


# -- token expiry ------------------------------------------------------------------------------
#: Why a consumer whose token expired is closed (4401); fits a WebSocket close reason.
EXPIRED = 'the token has expired: reconnect with a fresh one, or send {"token": "<jwt>"} in time'


def _watch_expiry(b, auth, member, identity, close):
    """Close ``member`` with ``close`` when its token (a JWT's) stops being accepted."""
    if identity is not None and identity.expires is not None:
        auth.expiry.watch(member, identity.expires, lambda: close(b, member))


def _close_expired(b, member):
    b.close_member(member, Unauthorized.close_code, EXPIRED)


def _end_expired_stream(b, member):
    """An event stream's end on expiry: ``event: error`` naming the cause, then its close."""
    member.conn.reply({"error": EXPIRED, "code": Unauthorized.close_code})
    b.close_member(member, Unauthorized.close_code, EXPIRED)


def _refresh(b, auth, member, body):
    """``{"token": "<jwt>"}``: the connection's token from now on, if it is valid for the same
    identity, still allows the topic and, where the subscription is someone else's, still grants
    its name (``consumers``); else the consumer is closed with 4401 or 4403. Nothing once the
    consumer is closing: its expiry is forgotten, or about to be."""
    if not member.conn.open:
        return
    token = body["token"]
    if not isinstance(token, str) or len(body) != 1:
        member.conn.reply({"error": 'a token frame is {"token": "<jwt>"}, the token a string'})
        member.conn.on_progress(member.conn)
        return
    try:
        identity = auth.require(token, "consumer", member.topic)
    except (Unauthorized, Forbidden) as exc:
        b.close_member(member, exc.close_code, f"the new token is refused: {exc}")
        return
    if identity is None:
        return                      # auth is off: there is no token to replace
    if identity.id != member.owner:
        b.close_member(member, Forbidden.close_code, "the new token is for another identity (sub)"
                       " than the one this consumer connected as")
        return
    name = member.group or member.consumer_id
    if not identity.may_take(name):     # it may have relied on the old token's consumers grant
        try:
            b.owners.claim(member.topic, subscription_key(member), name, identity, durable=True)
        except (Forbidden, Refused) as exc:
            b.close_member(member, exc.close_code, str(exc))
            return
    if identity.expires is None:
        auth.expiry.forget(member)
    else:
        _watch_expiry(b, auth, member, identity, _close_expired)


def _options(args):
    """group, ack, since and durable from the query string, checked (and notices, whose framing
    :func:`guard_socket` chose: an event stream always carries notices)."""
    unknown = sorted(set(args) - {"group", "ack", "since", "durable", "notices", "token"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; DPMQ knows group, ack, since,"
                         " durable, notices and token")
    ack = args.get("ack", "0")
    if ack not in ("0", "1", "true", "false"):
        raise BadRequest("ack must be 1 or 0")
    if args.get("notices", "0") not in ("0", "1", "true", "false"):
        raise BadRequest("notices must be 1 (gap notices as frames) or 0 (only messages)")
    durable = args.get("durable", "1")
    if durable not in ("0", "1", "true", "false"):
        raise BadRequest("durable must be 1 (the default: a subscription that is kept) or 0 (one"
                         " forgotten when this consumer leaves)")
    since = args.get("since")
    if since is not None and since != "beginning" and not is_message_code(since):
        raise BadRequest("since must be a MessageCode (40 hex characters) or 'beginning'")
    group = args.get("group")
    if group == "":
        raise BadRequest("group must not be empty")
    return {"group": group, "ack": ack in ("1", "true"), "since": since,
            "durable": durable in ("1", "true")}


def _answer(b, member, text):
    """An ack-mode consumer's frame: a MessageCode, {"ack": code} or {"nack": code}, as text."""
    kind, code = "ack", text.strip() if isinstance(text, str) else None
    if code and not is_message_code(code):
        body = json_or_none(code)
        if isinstance(body, dict) and len(body) == 1 and next(iter(body)) in ("ack", "nack"):
            kind, code = next(iter(body.items()))
        else:
            code = None
    if not isinstance(code, str):
        member.conn.reply(
            {"error": 'expected a MessageCode, {"ack": "<code>"} or {"nack": "<code>"}'})
        member.conn.on_progress(member.conn)
        return
    b.reply(member, kind, code)


@sock.route("/ConsumersConn/<path:rest>", bp=bp)
def consumers_conn_malformed(ws, rest):
    _take_over().close(CLOSE_BAD_INPUT, _URL_HELP)


# -- Server-Sent Events ------------------------------------------------------------------------
# flask-sock's rules match WebSocket requests only (``websocket=True``); these plain GET rules
# on the same paths take every other request.

@bp.get("/ConsumersConn/<topic>/<consumer_id>")
def consumers_events(topic, consumer_id):
    if not _wants_events():
        raise BadRequest("connect with a WebSocket, or ask for Server-Sent Events with Accept:"
                         " text/event-stream")
    b = broker()
    conn = request.environ["dpmq.transport.connection"]
    stream = EventStream(conn)
    identity = authorize("consumer", topic, allow_query=True)
    options = _options(request.args)
    if "Last-Event-ID" in request.headers:
        # EventSource reconnects to the same URL: its since= was for the first connection
        options["since"] = None
    # a refusal is an HTTP reply here (Refused has the status: 400, 409 or 503)
    member = b.subscribe(conn, stream, topic, consumer_id, identity=identity,
                         start=request.environ.get("dpmq.start"), resume=_last_event_id(),
                         **options)
    reason = "the response head could not be written"
    auth = current_app.extensions["dpmq_auth"]
    detach = request.environ.get("dpmq.detach")
    try:
        _watch_expiry(b, auth, member, identity, _end_expired_stream)
        conn.raw.start(response_head(_cors(b)))
        conn.on_progress(conn)      # what the shard queued meanwhile goes out now
        if detach is None:
            reason = stream.wait(b.settings.server.pingInterval)
        else:               # as a WebSocket's: the inbound thread watches it, and pings it
            leave = functools.partial(_leave_stream, b, auth, member, stream)
            b.inbound.add(stream, conn, _ignore, on_end=functools.partial(
                b.farewells.put, leave, detach()))
            member = None
    except OSError:
        pass
    finally:
        if member is not None:
            auth.expiry.forget(member)
            b.unsubscribe(member, reason)
    return _StreamEnded()


def _leave_stream(b, auth, member, stream):
    auth.expiry.forget(member)
    b.unsubscribe(member, stream.ended())


def _ignore(messages):
    """What an event stream's client sends: nothing DPMQ reads."""


def _last_event_id():
    """The MessageCode an EventSource last received, when it reconnects; anything else is
    ignored (the subscription then goes on from its cursor)."""
    value = request.headers.get("Last-Event-ID", "").strip()
    return value if is_message_code(value) else None


def _cors(b):
    """The stream's CORS header for an allowed Origin (server.corsOrigins), as the app adds it to
    its other replies: a page on another origin may then read the stream."""
    origin = request.headers.get("Origin")
    allowed = b.settings.server.corsOrigins
    if origin and (origin in allowed or "*" in allowed):
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    return []


class _StreamEnded(Response):
    """What the route returns once its stream is over: the server must write nothing more.

    Under gunicorn (DPMQ's worker) this raises StopIteration, flask-sock's way of saying "the
    route ended, close the connection". Under werkzeug's server the socket is shut first, so its
    attempt at a response fails as a dropped connection, and nothing reaches the client."""

    def __call__(self, environ, start_response):
        if "gunicorn.socket" in environ:
            raise StopIteration()
        try:
            environ["dpmq.transport.connection"].raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return super().__call__(environ, start_response)


@bp.get("/ConsumersConn/<path:rest>")
def consumers_events_malformed(rest):
    raise BadRequest(_URL_HELP)
