"""HTTP and WebSocket endpoints, one module per audience: producers, consumers, the console."""

import json

from flask import current_app, jsonify, request

from ..auth import bearer


def broker():
    """The broker of the app serving this request."""
    return current_app.extensions["dpmq"]


def json_or_none(data):
    """``data`` (str or bytes) parsed as JSON, or None if it is not JSON. Nesting too deep for the
    parser is "not JSON" too: a hostile body must get a 400, not a RecursionError's 500."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


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
    """Raise Unauthorized or Forbidden unless this request's token may act as ``role``; returns
    who it is (an :class:`~dpmq.auth.Identity`, None with auth off)."""
    return current_app.extensions["dpmq_auth"].require(bearer(request, allow_query), role, topic)
