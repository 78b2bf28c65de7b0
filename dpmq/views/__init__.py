"""HTTP and WebSocket endpoints, one module per audience: producers, consumers, the console."""

from flask import current_app, jsonify, request

from ..auth import bearer


def broker():
    """The broker of the app serving this request."""
    return current_app.extensions["dpmq"]


def reply_body(msg="ok", data=None, code=0):
    """The reply shape of the original API: ``{"code": 0|-1, "msg": …}`` plus ``data`` if any."""
    body = {"code": code, "msg": msg}
    if data is not None:
        body["data"] = data
    return body


def reply(msg="ok", data=None, code=0, status=200):
    """A Flask response with :func:`reply_body`."""
    return jsonify(reply_body(msg, data, code)), status


def authorize(role, topic=None, allow_query=False):
    """Raise Unauthorized or Forbidden unless this request's token may act as ``role``."""
    current_app.extensions["dpmq_auth"].require(bearer(request, allow_query), role, topic)
