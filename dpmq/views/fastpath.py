"""The publish fast path: ``POST /ProducerSend`` and ``/ProducerSendBatch`` without Flask's
request machinery.

A publish is the request a busy producer makes thousands of times a second, and most of its cost
was never DPMQ's: Flask's request context, Werkzeug's request and response objects and the
blueprint hooks took about as long as the commit. This WSGI middleware answers the common case
itself (a form-encoded or JSON body with a Content-Length, no CORS) through the very functions the
Flask views use, and hands everything else to Flask unchanged, so there is one behaviour and one
place that defines it.
"""

import json
import logging

from werkzeug.exceptions import InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from ..auth import bearer_token
from ..errors import BadRequest, DPMQError
from . import reply_body
from .producer import PARSED_TYPES, batch_items, parse_fields, send_batch, send_one

log = logging.getLogger(__name__)

_JSON = ("Content-Type", "application/json")


def _encode(body):
    """JSON bytes exactly as Flask's ``jsonify`` writes them with DPMQ's settings."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _codes_reply(codes):
    """``{"code":0,"msg":"ok","data":[…codes]}`` as :func:`_encode` writes it. MessageCodes are
    hex, so they are joined as they are: escaping a hundred of them one by one cost a
    twentieth of a batch publish."""
    if not "".join(codes).encode().isalnum():      # bytes: ASCII letters and digits only
        return _encode(reply_body("ok", data=codes))
    return b'{"code":0,"msg":"ok","data":["' + '","'.join(codes).encode() + b'"]}\n'


def _single(app, mimetype, body, token, address, trace):
    return _encode(reply_body(send_one(app, parse_fields(mimetype, body), token, address, trace)))


def _batch(app, mimetype, body, token, address, trace):
    return _codes_reply(send_batch(app, batch_items(mimetype, body, trace), token, address))


#: path -> (the body types served here, what answers them with the reply's bytes)
ROUTES = {
    "/ProducerSend": (PARSED_TYPES, _single),
    "/ProducerSendBatch": (("application/json",), _batch),
}


def mimetype_of(content_type):
    """The media type of a Content-Type value, lowercased, without its parameters."""
    return content_type.partition(";")[0].strip().lower()


class PublishFastPath:
    def __init__(self, app, flask_wsgi):
        self.app = app
        self.flask_wsgi = flask_wsgi
        self.max_body = app.config["MAX_CONTENT_LENGTH"]
        self.auth = app.extensions["dpmq_auth"]

    def route(self, path, method, mimetype, length, origin):
        """What answers this request here, or None when Flask should (anything but the common
        case). Also asked by :mod:`dpmq.serving.threads` for requests it answers directly."""
        route = ROUTES.get(path)
        if route is None or method != "POST" or origin:
            return None
        types, answer = route
        if (mimetype not in types or not (length.isascii() and length.isdigit())
                or int(length) > self.max_body):
            return None
        return answer

    def respond(self, answer, mimetype, authorization, read_body, address, trace=None):
        """``(status, reply bytes, extra headers)`` of a routed request; ``read_body()`` is only
        called once the token may publish at all. ``trace``: its ``traceparent`` header."""
        token = bearer_token(authorization)
        try:
            self.auth.require(token, "producer")
            reply = answer(self.app, mimetype, read_body(), token, address, trace)
        except DPMQError as exc:
            return exc.status, _encode(reply_body(str(exc), code=-1)), exc.headers()
        except Exception:  # noqa: BLE001 - answer like Flask would, with the reply shape
            log.exception("publish failed")
            return 500, _encode(reply_body(InternalServerError.description, code=-1)), ()
        return 200, reply, ()

    def __call__(self, environ, start_response):
        mimetype = mimetype_of(environ.get("CONTENT_TYPE", ""))
        length = environ.get("CONTENT_LENGTH", "")
        answer = self.route(environ.get("PATH_INFO"), environ.get("REQUEST_METHOD"), mimetype,
                            length, environ.get("HTTP_ORIGIN"))
        if answer is None:
            return self.flask_wsgi(environ, start_response)
        status, data, headers = self.respond(
            answer, mimetype, environ.get("HTTP_AUTHORIZATION", ""),
            lambda: self._read(environ["wsgi.input"], int(length)), environ.get("REMOTE_ADDR"),
            environ.get("HTTP_TRACEPARENT"))
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                       [_JSON, ("Content-Length", str(len(data))), *headers])
        return [data]

    @staticmethod
    def _read(stream, length):
        try:
            body = stream.read(length)
        except OSError:         # the producer went away mid-body (gunicorn's NoMoreData is one)
            body = b""
        if len(body) != length:
            raise BadRequest("the body ended before its Content-Length; send it whole")
        return body
