"""The consumer endpoint: ``GET /ConsumersConn/{topic}/{consumerId}`` over WebSocket.

Before flask-sock builds its simple-websocket ``Server``, the request's socket is swapped for a
:class:`~dpmq.connection.GuardedSocket`, so that the Connection is the only writer of the socket,
and the permessage-deflate offer is dropped: every consumer then receives the same prebuilt frame
bytes (declining an extension is allowed by RFC 6455, and DPMQ's small JSON objects gain little).
simple-websocket would start a reader thread per connection (:class:`NoReaderThread` stands in for
it): the broker's :class:`~dpmq.inbound.Inbound` reads every consumer and pings them instead, and
the route thread only waits for its connection to end. What the consumer sends (acks and nacks
with ``?ack=1``) is handled on the inbound thread as it arrives.
"""

import json
import logging

from flask import Blueprint, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from ..connection import Connection
from ..errors import CLOSE_BAD_INPUT, BadRequest, Forbidden, Refused, Unauthorized
from ..message import text_frame
from . import authorize, broker, json_or_none

log = logging.getLogger(__name__)
bp = Blueprint("consumer", __name__)
sock = Sock()
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


class NoReaderThread:
    """Given to simple-websocket as its ``thread_class``: the thread it makes is never started,
    as the broker's inbound thread reads the connection instead."""

    def __init__(self, target):
        self.name = "dpmq-consumer-reader"

    def start(self):
        pass


def _close_reason(text):
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 section 5.5)."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


@bp.before_request
def guard_socket():
    if not (request.endpoint or "").startswith("consumer."):
        return
    environ = request.environ
    for key in _SOCKET_KEYS:
        if key in environ:
            conn = Connection(environ[key], broker().settings.mq.consumerBufferBytes,
                              remote_addr=request.remote_addr or "")
            environ[key] = conn.socket
            environ["dpmq.connection"] = conn
            environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
            return


def _refuse(ws, code, text):
    try:
        ws.close(code, _close_reason(text))
    except ConnectionClosed:
        pass


@sock.route("/ConsumersConn/<topic>/<consumer_id>", bp=bp)
def consumers_conn(ws, topic, consumer_id):
    b = broker()
    try:
        identity = authorize("consumer", topic, allow_query=True)
        options = _options(request.args)
        member = b.subscribe(request.environ["dpmq.connection"], ws, topic, consumer_id,
                             identity=identity, **options)
    except (BadRequest, Refused, Unauthorized, Forbidden) as exc:
        _refuse(ws, getattr(exc, "close_code", CLOSE_BAD_INPUT), str(exc))
        return
    try:
        reader = b.inbound.add(ws, member.conn, lambda: _take_input(b, member, ws))
        reader.wait()
    finally:
        code = ws.close_reason
        reason = "closed by the consumer" if code in (1000, 1005) else f"closed with code {code}"
        b.unsubscribe(member, reason)


def _take_input(b, member, ws):
    """Frames the consumer sent: acks and nacks with ?ack=1, nothing DPMQ needs otherwise."""
    while ws.input_buffer:
        text = ws.input_buffer.pop(0)
        if member.ack:
            _answer(b, member, text)


def _options(args):
    """group, ack, since and durable from the query string, checked."""
    unknown = sorted(set(args) - {"group", "ack", "since", "durable", "token"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; DPMQ knows group, ack, since"
                         " and durable")
    ack = args.get("ack", "0")
    if ack not in ("0", "1", "true", "false"):
        raise BadRequest("ack must be 1 or 0")
    durable = args.get("durable", "1")
    if durable not in ("0", "1", "true", "false"):
        raise BadRequest("durable must be 1 (the default: a subscription that is kept) or 0 (one"
                         " forgotten when this consumer leaves)")
    since = args.get("since")
    if since is not None and since != "beginning" and not _is_code(since):
        raise BadRequest("since must be a MessageCode (40 hex characters) or 'beginning'")
    group = args.get("group")
    if group == "":
        raise BadRequest("group must not be empty")
    return {"group": group, "ack": ack in ("1", "true"), "since": since,
            "durable": durable in ("1", "true")}


def _is_code(text):
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def _answer(b, member, text):
    """An ack-mode consumer's frame: a MessageCode, {"ack": code} or {"nack": code}, as text."""
    kind, code = "ack", text.strip() if isinstance(text, str) else None
    if code and not _is_code(code):
        body = json_or_none(code)
        if isinstance(body, dict) and len(body) == 1 and next(iter(body)) in ("ack", "nack"):
            kind, code = next(iter(body.items()))
        else:
            code = None
    if not isinstance(code, str):
        member.conn.send_text(text_frame(json.dumps(
            {"error": 'expected a MessageCode, {"ack": "<code>"} or {"nack": "<code>"}'}).encode()))
        member.conn.on_progress(member.conn)
        return
    b.reply(member, kind, code)


@sock.route("/ConsumersConn/<path:rest>", bp=bp)
def consumers_conn_malformed(ws, rest):
    _refuse(ws, CLOSE_BAD_INPUT, "the URL must be /ConsumersConn/{topic}/{consumerId}, each 1 to 128"
            " characters without '/' or '|'")
