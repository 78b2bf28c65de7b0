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

from .auth import bearer_token
from .errors import BadRequest, DPMQError
from .views import reply_body
from .views.producer import PARSED_TYPES, batch_items, parse_fields, send_batch, send_one

log = logging.getLogger(__name__)

_JSON = ("Content-Type", "application/json")


def _encode(body):
    """JSON bytes exactly as Flask's ``jsonify`` writes them with DPMQ's settings."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _single(app, mimetype, body, token, address):
    return reply_body(send_one(app, parse_fields(mimetype, body), token, address))


def _batch(app, mimetype, body, token, address):
    return reply_body("ok", data=send_batch(app, batch_items(mimetype, body), token, address))


#: path -> (the body types served here, what answers them)
ROUTES = {
    "/ProducerSend": (PARSED_TYPES, _single),
    "/ProducerSendBatch": (("application/json",), _batch),
}


class PublishFastPath:
    def __init__(self, app, flask_wsgi):
        self.app = app
        self.flask_wsgi = flask_wsgi
        self.max_body = app.config["MAX_CONTENT_LENGTH"]
        self.auth = app.extensions["dpmq_auth"]

    def __call__(self, environ, start_response):
        route = ROUTES.get(environ.get("PATH_INFO"))
        if route is None or environ.get("REQUEST_METHOD") != "POST" or "HTTP_ORIGIN" in environ:
            return self.flask_wsgi(environ, start_response)
        types, answer = route
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if (mimetype not in types or not (length.isascii() and length.isdigit())
                or int(length) > self.max_body):
            return self.flask_wsgi(environ, start_response)
        token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        try:
            self.auth.require(token, "producer")
            body = self._read(environ["wsgi.input"], int(length))
            result = answer(self.app, mimetype, body, token, environ.get("REMOTE_ADDR"))
        except DPMQError as exc:
            return self._reply(start_response, exc.status, reply_body(str(exc), code=-1),
                               exc.headers())
        except Exception:  # noqa: BLE001 - answer like Flask would, with the reply shape
            log.exception("publish failed")
            return self._reply(start_response, 500,
                               reply_body(InternalServerError.description, code=-1))
        return self._reply(start_response, 200, result)

    @staticmethod
    def _read(stream, length):
        try:
            body = stream.read(length)
        except OSError:         # the producer went away mid-body (gunicorn's NoMoreData is one)
            body = b""
        if len(body) != length:
            raise BadRequest("the body ended before its Content-Length; send it whole")
        return body

    @staticmethod
    def _reply(start_response, status, body, headers=()):
        data = _encode(body)
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                       [_JSON, ("Content-Length", str(len(data))), *headers])
        return [data]

