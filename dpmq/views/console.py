"""The console API: consumers, configuration, dead letters, liveness."""

import time

from flask import Blueprint, request

from ..broker import check_name
from ..errors import BadRequest
from ..message import format_time
from ..metrics import EVENTS
from . import authorize, broker, reply

bp = Blueprint("console", __name__, url_prefix="/Console")


@bp.before_request
def admins_only():
    authorize("admin")


@bp.get("/GetConsumers")
def get_consumers():
    b = broker()
    positions = b.positions()
    data = []
    for member in b.members():
        sub = member.subscription
        position = positions.get((member.topic, sub.key), 0) if sub else 0
        data.append({
            "topic": member.topic,
            "consumerId": member.consumer_id,
            "group": member.group,
            "remoteAddr": member.conn.remote_addr,
            "connectedAt": format_time(member.connected_at),
            "delivered": member.conn.delivered,
            "pending": max(0, b.heads.get(member.topic, 0) - position),
            "ack": member.ack,
            "inFlight": len(member.flights),
        })
    return reply(data=data)


@bp.get("/GetConfig")
def get_config():
    return reply(data=broker().settings.as_dict(redact=True))


@bp.get("/Ping")
def ping():
    return reply("pong", data=overview(broker()))


def overview(b):
    """The broker's vital signs: what Ping answers and the console's overview shows."""
    totals = [sum(column) for column in zip(*b.topic_counts().values())] or [0] * len(EVENTS)
    return {"engine": b.engine.name, "accepting": b.accepting,
            "uptime": round(time.time() - b.started, 3), "buffered": b.buffer.qsize(),
            "bufferCapacity": b.slots.capacity, "consumers": len(b.members()), "pushed": b.pushed,
            **{_camel(event): totals[index] for index, event in enumerate(EVENTS)}}


def _camel(name):
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _subscription(fields, required_topic=True):
    """(topic, subscription key or None) from topic and consumerId or group fields."""
    mq = broker().settings.mq
    topic = fields.get("topic")
    if topic is None and not required_topic:
        return None, None
    check_name("topic", topic, mq.maxTopicLength)
    consumer_id, group = fields.get("consumerId") or None, fields.get("group") or None
    if consumer_id and group:
        raise BadRequest("name either consumerId or group, not both")
    if group:
        return topic, "g:" + check_name("group", group, mq.maxConsumerIdLength)
    if consumer_id:
        return topic, "c:" + check_name("consumerId", consumer_id, mq.maxConsumerIdLength)
    return topic, None


def _dead_letter_view(dead):
    kind, name = dead["sub"][0], dead["sub"][2:]
    return {"topic": dead["topic"], "consumerId": name if kind == "c" else None,
            "group": name if kind == "g" else None, "MessageCode": dead["code"],
            "MessageData": dead["data"], "key": dead["key"], "offset": dead["offset"],
            "reason": dead["reason"], "attempts": dead["attempts"],
            "CreateTime": format_time(dead["created"]), "deadAt": format_time(dead["dead_at"])}


@bp.get("/GetDeadLetters")
def get_dead_letters():
    topic, sub = _subscription(request.args, required_topic=False)
    try:
        limit = int(request.args.get("limit", 100))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= 10000:
        raise BadRequest("limit must be between 1 and 10000")
    dead = broker().engine.dead_letters(topic=topic, sub=sub, limit=limit)
    return reply(data=[_dead_letter_view(d) for d in dead])


@bp.post("/Requeue")
def requeue():
    fields = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(fields, dict) and not hasattr(fields, "get"):
        raise BadRequest("send topic, and consumerId or group, and optionally messageCode")
    topic, sub = _subscription(fields)
    code = fields.get("messageCode") or None
    if code is not None and sub is None:
        raise BadRequest("requeueing one message needs consumerId or group to name its subscription")
    count = broker().requeue(topic, sub, code)
    if code is not None and count == 0:
        return reply(f"no dead letter {code} for that subscription", code=-1, status=404)
    return reply("ok", data={"requeued": count})
