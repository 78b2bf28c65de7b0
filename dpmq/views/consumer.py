"""The consumer endpoint: ``GET /ConsumersConn/{topic}/{consumerId}`` over WebSocket.

Before flask-sock builds its simple-websocket ``Server``, the request's socket is swapped for a
:class:`~dpmq.connection.GuardedSocket`, so that the Connection is the only writer of the socket,
and the permessage-deflate offer is dropped: every consumer then receives the same prebuilt frame
bytes (declining an extension is allowed by RFC 6455, and DPMQ's small JSON objects gain little).
The route thread only holds the connection open and reads what the consumer sends.
"""

import logging

from flask import Blueprint, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from ..connection import Connection
from ..errors import CLOSE_BAD_INPUT, BadRequest, Refused
from . import broker

log = logging.getLogger(__name__)
bp = Blueprint("consumer", __name__)
sock = Sock()
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


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
    unsupported = sorted(set(request.args) & {"group", "ack", "since"})
    if unsupported:
        _refuse(ws, CLOSE_BAD_INPUT, f"?{unsupported[0]}= is not supported by this DPMQ version")
        return
    try:
        subscriber = broker().subscribe(request.environ["dpmq.connection"], ws, topic, consumer_id)
    except (BadRequest, Refused) as exc:
        _refuse(ws, getattr(exc, "close_code", CLOSE_BAD_INPUT), str(exc))
        return
    reason = "closed by the consumer"
    try:
        while True:
            ws.receive()        # broadcast consumers send nothing DPMQ needs; read and drop
    except ConnectionClosed as exc:
        if exc.reason not in (1000, 1005):
            reason = f"closed with code {exc.reason}"
    finally:
        broker().unsubscribe(subscriber, reason)


@sock.route("/ConsumersConn/<path:rest>", bp=bp)
def consumers_conn_malformed(ws, rest):
    _refuse(ws, CLOSE_BAD_INPUT, "the URL must be /ConsumersConn/{topic}/{consumerId}, each 1 to 128"
            " characters without '/' or '|'")
