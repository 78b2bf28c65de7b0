"""The producer API: ``POST /ProducerSend`` (form, multipart or JSON), as the original had it."""

from flask import Blueprint, request

from ..errors import BadRequest
from . import broker, reply

bp = Blueprint("producer", __name__)


def _fields():
    """The request's fields, from a JSON object body or from form/multipart fields."""
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest("the body is not a JSON object; send"
                             ' {"topic": "...", "messageData": "..."}')
        return body
    return request.form


@bp.post("/ProducerSend")
def producer_send():
    fields = _fields()
    topic, data = fields.get("topic"), fields.get("messageData")
    if data is None:
        raise BadRequest("messageData is required (form field or JSON key)")
    (code,) = broker().publish([(topic, data)])
    return reply(code)
