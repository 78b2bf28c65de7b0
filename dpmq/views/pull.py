"""Consuming over plain HTTP: ``POST /ConsumerPull`` and ``POST /ConsumerAck``.

A pull answers at once with what is ready, or holds the request until something is or ``wait``
passes (a long poll); DPMQ's worker gives it a thread of its own, so waiting pulls never hold the
threads producers need. The messages come in the pushed objects' shape. Without ``autoAck`` they
are in flight until acked here (see :mod:`dpmq.broker.pulls`); acks here settle the messages of any
``ack=1`` subscription, whichever transport carried them, and say which codes they settled.
"""

import json
import select
import socket

from flask import Blueprint, Response, request

from ..errors import BadRequest, Forbidden
from ..validation import check_name, is_message_code
from . import authorize, broker, json_or_none, reply

bp = Blueprint("pull", __name__)


def _fields():
    """The body's fields, JSON or form, as ``(get, getlist)``."""
    if request.is_json:
        body = json_or_none(request.get_data())
        if not isinstance(body, dict):
            raise BadRequest('the body is not a JSON object; send {"topic": "...",'
                             ' "consumerId": "...", …}')

        def getlist(name):
            value = body.get(name)
            return value if isinstance(value, list) else [] if value is None else [value]
        return body.get, getlist
    return request.form.get, request.form.getlist


def _truth(value, name):
    if value in (None, "", False, "0", "false", 0):
        return False
    if value in (True, "1", "true", 1):
        return True
    raise BadRequest(f"{name} must be true or false")


def _number(value, name, default, low, high, kind=float):
    if value in (None, ""):
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"{name} must be a number between {low:g} and {high:g}") from None
    if isinstance(value, bool) or (isinstance(value, float) and number != value) \
            or not low <= number <= high:
        raise BadRequest(f"{name} must be between {low:g} and {high:g}")
    return number


def _who(get):
    """(topic, consumerId, group) of the request, checked."""
    mq = broker().settings.mq
    topic = get("topic")
    if not isinstance(topic, str):
        raise BadRequest("topic is required")
    check_name("topic", topic, mq.maxTopicLength)
    consumer_id, group = get("consumerId") or None, get("group") or None
    if consumer_id is None and group is None:
        raise BadRequest("name the subscription: consumerId, or group, or both")
    for name, value in (("consumerId", consumer_id), ("group", group)):
        if value is not None:
            if not isinstance(value, str):
                raise BadRequest(f"{name} must be a string")
            check_name(name, value, mq.maxConsumerIdLength)
    return topic, consumer_id, group


@bp.post("/ConsumerPull")
def consumer_pull():
    b = broker()
    mq = b.settings.mq
    get, _ = _fields()
    topic, consumer_id, group = _who(get)
    identity = authorize("consumer", topic)
    count = _number(get("max"), "max", 1, 1, mq.maxPullMessages, int)
    wait = _number(get("wait"), "wait", 0.0, 0, mq.maxPullWait)
    ack = not _truth(get("autoAck"), "autoAck")
    if consumer_id is None:
        consumer_id = b.pulls.group_member(group)
        if len(consumer_id) > mq.maxConsumerIdLength:
            raise BadRequest("that group's name is too long for a pull without a consumerId;"
                             " give a consumerId too")
    payloads, gap = b.pulls.pull(topic, consumer_id, group, ack, count, wait, identity,
                                 request.remote_addr or "", _client_gone(request.environ))
    body = b'{"code":0,"msg":"ok","data":[' + b",".join(payloads) + b"]"
    if gap is not None:
        body += b',"gap":' + json.dumps(gap).encode()
    return Response(body + b"}", mimetype="application/json")


def _client_gone(environ):
    """A check of whether the client of this request has closed its connection (its socket reads
    end of file), for a long poll to stop waiting for it; never true where the server does not
    say which socket the request came on."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False
    poller = select.poll()      # poll, not select: descriptors may be numbered past 1023
    poller.register(sock.fileno(), select.POLLIN)

    def gone():
        if not poller.poll(0):
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
    return gone


@bp.post("/ConsumerAck")
def consumer_ack():
    b = broker()
    get, getlist = _fields()
    topic, consumer_id, group = _who(get)
    identity = authorize("consumer", topic)
    codes = [code for value in getlist("messageCode")
             for code in (value.split(",") if isinstance(value, str) else [value])]
    if not codes or not all(isinstance(code, str) and is_message_code(code) for code in codes):
        raise BadRequest("messageCode is required: one MessageCode (40 hex characters) or a list"
                         " of them")
    limit = b.settings.mq.maxPullMessages
    if len(codes) > limit:
        raise BadRequest(f"{len(codes)} messageCodes in one ack; at most {limit}"
                         " (mq.maxPullMessages, what one pull answers): ack in parts")
    nack = _truth(get("nack"), "nack")
    key = f"g:{group}" if group is not None else f"c:{consumer_id}"
    answer = b.settle(topic, key, codes, nack, identity)
    if answer is False:
        raise Forbidden("this subscription belongs to someone else: another token made it; use"
                        " your own, or a token granted it in tokens[].consumers")
    settled, unknown = answer if answer else ([], codes)
    data = {"settled": settled, "unknown": unknown}
    if not unknown:
        return reply(data=data)
    if answer is None:
        why = (f"no consumer of {key[2:]!r} on topic {topic!r} is connected (or pulling) here, so"
               " nothing it held is waiting for an ack: what it held was redelivered")
    else:
        why = (f"{len(unknown)} of {len(codes)} not held by {key[2:]!r}: unknown, already acked,"
               " or timed out and redelivered")
    return reply(why, data=data, code=-1, status=409)
