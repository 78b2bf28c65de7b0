"""The producer API: ``POST /ProducerSend`` (form, multipart or JSON), as the original had it."""

from urllib.parse import unquote_to_bytes

from flask import Blueprint, current_app, request
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ..auth import bearer
from ..errors import BadRequest, StoreError
from ..validation import Uniform, traceparent_header
from . import authorize, json_or_none, reply
from .health import store_writes

bp = Blueprint("producer", __name__)

#: Bodies :func:`parse_fields` reads; a multipart form goes through Werkzeug's parser.
PARSED_TYPES = ("application/x-www-form-urlencoded", "application/json")


def parse_fields(mimetype, body):
    """The fields of a form-encoded or JSON object ``body``."""
    if mimetype == "application/json":
        fields = json_or_none(body)
        if not isinstance(fields, dict):
            raise BadRequest("the body is not a JSON object; send"
                             ' {"topic": "...", "messageData": "..."}')
        return fields
    try:
        return form_fields(body)
    except UnicodeDecodeError:
        raise BadRequest("the form body is not valid UTF-8; encode topic and messageData as"
                         " UTF-8") from None


#: The most fields a form body may have.
MAX_FORM_FIELDS = 1000


def form_fields(body):
    """The fields of a form-encoded ``body`` (bytes), the last of a repeated name winning, as
    ``dict(parse_qsl(body.decode(), keep_blank_values=True, errors="strict"))`` reads them;
    UnicodeDecodeError if a field is not UTF-8.

    Parsed here rather than by Werkzeug, which would replace bytes that are not UTF-8 with U+FFFD
    and so store something other than what the producer sent; and on the bytes rather than by
    ``parse_qsl``, whose unquoting of a str scans each message's whole text with a regular
    expression, a cost that grows with the message."""
    if body.count(b"&") >= MAX_FORM_FIELDS:
        raise BadRequest(f"the form body has more than {MAX_FORM_FIELDS} fields")
    fields = {}
    for field in body.split(b"&"):
        if field:
            name, _, value = field.replace(b"+", b" ").partition(b"=")
            fields[unquote_to_bytes(name).decode()] = unquote_to_bytes(value).decode()
    return fields


_FIELDS = ("topic", "messageData", "delay", "ttl", "key", "idempotencyKey", "traceparent")


def send_one(app, fields, token, address, trace=None):
    """Publish one producer's message once its body is parsed and its token may publish at all;
    returns the MessageCode. ``trace`` is the request's ``traceparent`` header, for a message
    without the field. Shared by the view below and :mod:`dpmq.views.fastpath`."""
    if fields.get("messageData") is None:
        raise BadRequest("messageData is required (form field or JSON key)")
    app.extensions["dpmq_auth"].require(token, "producer", fields.get("topic"))
    within_rate(app, token, address, 1)
    item = {name: fields.get(name) for name in _FIELDS}
    if item["traceparent"] is None:
        item["traceparent"] = traceparent_header(trace)
    (code,) = publish(app, [item])
    return code


def publish(app, items):
    """The broker's publish, telling readyz whether the store took it (see
    :class:`~dpmq.views.health.StoreWrites`)."""
    try:
        codes = app.extensions["dpmq"].publish(items)
    except StoreError as exc:
        store_writes(app).failed(exc)
        raise
    store_writes(app).succeeded()
    return codes


def within_rate(app, token, address, count):
    """Spend ``count`` messages of this producer's publish rate (its token, or its address)."""
    limiter = app.extensions["dpmq_rate"]
    if limiter.rate:
        token = token if app.extensions["dpmq_auth"].enabled else None
        limiter.take(("token", token) if token else ("addr", address), count)


@bp.before_request
def producers_only():
    authorize("producer")


def parse_multipart(boundary, body):
    """The fields of a ``multipart/form-data`` body, file parts included (``curl -F
    messageData=@file``), each decoded as strict UTF-8: Werkzeug's form parser would replace
    bytes that are not UTF-8 with U+FFFD, storing something other than what was sent."""
    if not boundary:
        raise BadRequest("a multipart body needs a boundary in its Content-Type")
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_parts=1000)
    fields, name, parts = {}, None, []
    try:
        decoder.receive_data(body)
        decoder.receive_data(None)
        while not isinstance(event := decoder.next_event(), (Epilogue, NeedData)):
            if isinstance(event, (Field, File)):
                name, parts = event.name, []
            elif isinstance(event, Data):
                parts.append(event.data)
                if not event.more_data:
                    fields[name] = b"".join(parts).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"the multipart field {name!r} is not valid UTF-8; send topic and"
                         " messageData as UTF-8") from None
    except ValueError as exc:           # Werkzeug's words for a malformed body
        raise BadRequest(f"the multipart body is malformed: {exc}") from None
    return fields


@bp.post("/ProducerSend")
def producer_send():
    if request.mimetype in PARSED_TYPES:
        fields = parse_fields(request.mimetype, request.get_data())
    elif request.mimetype == "multipart/form-data":
        fields = parse_multipart(request.mimetype_params.get("boundary"), request.get_data())
    else:
        fields = request.form
    return reply(send_one(current_app, fields, bearer(request), request.remote_addr,
                          request.headers.get("traceparent")))


@bp.post("/ProducerSendBatch")
def producer_send_batch():
    """``{"topic": "t", "messages": ["a", …]}`` or ``{"messages": [{"topic": …, "messageData": …}]}``;
    all or nothing, in one commit."""
    items = batch_items(request.mimetype, request.get_data(), request.headers.get("traceparent"))
    return reply("ok", data=send_batch(current_app, items, bearer(request), request.remote_addr))


def batch_items(mimetype, body, trace=None):
    """The messages of a batch body: each a mapping of a single publish's fields, or a
    :class:`~dpmq.validation.Uniform` batch when they are all plain strings. A ``traceparent``
    is a message's own, else the batch's field, else ``trace`` (the request's header)."""
    body = json_or_none(body) if mimetype == "application/json" else None
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise BadRequest('send a JSON object {"topic": "t", "messages": ["a", "b"]} or'
                         ' {"messages": [{"topic": "t", "messageData": "a"}, ...]}')
    shared = {name: body.get(name) for name in ("topic", "delay", "ttl", "key", "traceparent")}
    if shared["traceparent"] is None:
        shared["traceparent"] = traceparent_header(trace)
    if set(map(type, body["messages"])) == {str}:
        return Uniform(shared, body["messages"])
    items = []
    for position, entry in enumerate(body["messages"]):
        if isinstance(entry, str):
            items.append(dict(shared, messageData=entry))
        elif isinstance(entry, dict):
            items.append(dict(shared, **{name: entry[name] for name in _FIELDS if name in entry}))
        else:
            raise BadRequest(f"messages[{position}] must be a string or an object with messageData")
    return items


def send_batch(app, items, token, address):
    """Publish a batch once its token may publish at all; returns the MessageCodes. Shared by the
    view above and :mod:`dpmq.views.fastpath`."""
    auth = app.extensions["dpmq_auth"]
    topics = [items.fields] if isinstance(items, Uniform) else items
    for topic in {item.get("topic") for item in topics if isinstance(item.get("topic"), str)}:
        auth.require(token, "producer", topic)
    within_rate(app, token, address, len(items))
    return publish(app, items)
