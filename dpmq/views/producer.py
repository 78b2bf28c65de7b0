"""The producer API: ``POST /ProducerSend`` (form, multipart or JSON), as the original had it."""

from urllib.parse import parse_qsl

from flask import Blueprint, current_app, request

from ..auth import bearer
from ..errors import BadRequest
from . import authorize, broker, reply

bp = Blueprint("producer", __name__)


def _fields():
    """The request's fields, from a JSON object body or from form/multipart fields."""
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest("the body is not a JSON object; send"
                             ' {"topic": "...", "messageData": "..."}')
        return body
    if request.mimetype == "application/x-www-form-urlencoded":
        # Parsed here rather than by Werkzeug, which would replace bytes that are not UTF-8 with
        # U+FFFD and so store something other than what the producer sent.
        try:
            return dict(parse_qsl(request.get_data().decode("utf-8"), keep_blank_values=True,
                                  errors="strict", max_num_fields=1000))
        except UnicodeDecodeError:
            raise BadRequest("the form body is not valid UTF-8; encode topic and messageData as"
                             " UTF-8") from None
        except ValueError:
            raise BadRequest("the form body has too many fields") from None
    return request.form


_FIELDS = ("topic", "messageData", "delay", "key", "idempotencyKey")


@bp.before_request
def producers_only():
    authorize("producer")


def _within_rate(count):
    """Spend ``count`` messages of this producer's publish rate (its token, or its address)."""
    limiter = current_app.extensions["dpmq_rate"]
    if limiter.rate:
        token = bearer(request) if current_app.extensions["dpmq_auth"].enabled else None
        limiter.take(("token", token) if token else ("addr", request.remote_addr), count)


@bp.post("/ProducerSend")
def producer_send():
    fields = _fields()
    if fields.get("messageData") is None:
        raise BadRequest("messageData is required (form field or JSON key)")
    authorize("producer", fields.get("topic"))
    _within_rate(1)
    (code,) = broker().publish([{name: fields.get(name) for name in _FIELDS}])
    return reply(code)


@bp.post("/ProducerSendBatch")
def producer_send_batch():
    """``{"topic": "t", "messages": ["a", …]}`` or ``{"messages": [{"topic": …, "messageData": …}]}``;
    all or nothing, in one commit."""
    body = request.get_json(silent=True) if request.mimetype == "application/json" else None
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise BadRequest('send a JSON object {"topic": "t", "messages": ["a", "b"]} or'
                         ' {"messages": [{"topic": "t", "messageData": "a"}, ...]}')
    shared = {name: body.get(name) for name in ("topic", "delay", "key")}
    items = []
    for position, entry in enumerate(body["messages"]):
        if isinstance(entry, str):
            items.append(dict(shared, messageData=entry))
        elif isinstance(entry, dict):
            items.append(dict(shared, **{name: entry[name] for name in _FIELDS if name in entry}))
        else:
            raise BadRequest(f"messages[{position}] must be a string or an object with messageData")
    for topic in {item.get("topic") for item in items if isinstance(item.get("topic"), str)}:
        authorize("producer", topic)
    _within_rate(len(items))
    return reply("ok", data=broker().publish(items))
