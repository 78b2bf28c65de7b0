"""HTTP and WebSocket endpoints, one module per audience: producers, consumers, the console."""

from flask import current_app, jsonify


def broker():
    """The broker of the app serving this request."""
    return current_app.extensions["dpmq"]


def reply(msg="ok", data=None, code=0, status=200):
    """The reply shape of the original API: ``{"code": 0|-1, "msg": …}`` plus ``data`` if any."""
    body = {"code": code, "msg": msg}
    if data is not None:
        body["data"] = data
    return jsonify(body), status
