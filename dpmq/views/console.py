"""The console API: consumers, configuration, dead letters, liveness.

With the redis engine several processes are one broker, and each holds its own consumers and
counters. Whichever of them answers, what the console shows covers them all: the consumers, the
topics' consumer counts and counters and the overview merge this process's :func:`process_report`
with those of the other live processes, which the engine gathers for it (each process answers
with its own report). A process that does not answer in time is named in the reply's ``msg``;
every consumer names the process that holds it.
"""

import os
import socket
import time

from flask import Blueprint, request

from ..errors import BadRequest, StoreError
from ..message import format_time
from ..metrics import EVENTS
from ..validation import check_name
from . import authorize, broker, json_or_none, reply

bp = Blueprint("console", __name__, url_prefix="/Console")


@bp.before_request
def admins_only():
    authorize("admin")


#: Seconds a console answer waits for the other processes of the broker.
GATHER_TIMEOUT = 1.0
#: Seconds a process answering another's question waits for its delivery shards' positions:
#: well within GATHER_TIMEOUT.
POSITIONS_TIMEOUT = 0.5


def process_name():
    """This process as an operator finds it in ``ps`` and in the logs: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_report(b, positions_timeout=None):
    """What this process holds, JSON-able: its consumers, its per-topic counters and recent rates,
    its vital signs. Without ``positions_timeout`` the consumers' ``pending`` is left out, and the
    delivery shards are not asked for their positions."""
    return {"process": process_name(), "consumers": _consumers(b, positions_timeout),
            "counts": b.topic_counts(), "rates": b.history.topic_rates(), "overview": overview(b)}


def _consumers(b, positions_timeout):
    positions = b.positions(positions_timeout) if positions_timeout else None
    process, data = process_name(), []
    for member in b.members():
        entry = {
            "topic": member.topic,
            "consumerId": member.consumer_id,
            "group": member.group,
            "remoteAddr": member.conn.remote_addr,
            "connectedAt": format_time(member.connected_at),
            "delivered": member.conn.delivered,
            "pending": None,
            "ack": member.ack,
            "inFlight": len(member.flights),
            "transport": member.conn.framing.name,
            "expired": sub.expired if (sub := member.subscription) else 0,
            "gaps": sub.gaps if sub else 0,
            "missed": sub.missed if sub else 0,
            "process": process,
        }
        if positions is not None:
            sub = member.subscription
            position = positions.get((member.topic, sub.key), 0) if sub else 0
            entry["pending"] = max(0, b.heads.get(member.topic, 0) - position)
        data.append(entry)
    return data


def everywhere(b, positions_timeout=None):
    """The reports of every process of the broker, this one first, and what is missing from
    them (None, or which processes did not answer within GATHER_TIMEOUT, and why)."""
    reports, missing = {}, None
    try:
        reports, silent = b.engine.gather_reports(GATHER_TIMEOUT)
    except StoreError as exc:       # this process's own view still helps during an outage
        missing = f"the other DPMQ processes of this broker could not be asked ({exc})"
    else:
        if silent:
            missing = (f"{len(silent)} DPMQ process(es) of this broker did not answer within"
                       f" {GATHER_TIMEOUT:g} s ({', '.join(silent)})")
    return [process_report(b, positions_timeout)] + list(reports.values()), missing


def _answer(data, missing):
    if missing is None:
        return reply(data=data)
    return reply(f"incomplete: {missing}, so what they hold is missing; ask again, or look at"
                 " their logs", data=data)


@bp.get("/GetConsumers")
def get_consumers():
    reports, missing = everywhere(broker(), positions_timeout=5.0)
    return _answer([entry for report in reports for entry in report["consumers"]], missing)


@bp.get("/GetConfig")
def get_config():
    return reply(data=broker().settings.as_dict(redact=True))


@bp.get("/GetWebhooks")
def get_webhooks():
    """Each webhook of this process: its backlog (events not yet passed), deliveries, last error."""
    return reply(data=broker().webhooks.report())


@bp.get("/Ping")
def ping():
    """This process's vital signs: a liveness probe asks the process it reached, and no other."""
    return reply("pong", data=overview(broker()))


def overview(b):
    """A process's vital signs: what Ping answers and each process reports.

    What waits, and where: ``bufferUsed`` of ``bufferCapacity`` (``mq.messageChanBuffer``) is the
    messages accepted and not yet handed to the delivery shards, those being committed included;
    ``awaitingPacedPush`` the part of them committed and waiting for their paced push (always 0
    unpaced); ``inFlight`` the messages handed to consumers and not done yet; and
    ``consumerBufferedBytes`` the bytes waiting in the consumers' outgoing buffers."""
    totals = [sum(column) for column in zip(*b.topic_counts().values())] or [0] * len(EVENTS)
    members = b.members()
    return {"engine": b.engine.name, "process": process_name(), "accepting": b.accepting,
            "uptime": round(time.time() - b.started, 3), "bufferUsed": b.slots.used,
            "bufferCapacity": b.slots.capacity, "awaitingPacedPush": b.pacer.waiting(),
            "inFlight": sum(len(member.flights) for member in members),
            "consumerBufferedBytes": b.consumer_buffers.used, "consumers": len(members),
            "pushed": b.pushed, **{_camel(event): totals[index] for index, event in enumerate(EVENTS)}}


def _camel(name):
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


#: The overview's counters that add up over the processes of a broker.
_SUMMED = ("consumers", "inFlight", "consumerBufferedBytes", "pushed", *map(_camel, EVENTS))


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
            "CreateTime": format_time(dead["created"]), "deadAt": format_time(dead["dead_at"]),
            "expiresAt": _expiry(dead["expires"])}


def _expiry(expires):
    """When a message with a ttl stops being delivered (server local time), or None."""
    return format_time(expires) if expires else None


@bp.get("/GetDeadLetters")
def get_dead_letters():
    topic, sub = _subscription(request.args, required_topic=False)
    limit = _int(request.args, "limit", 100, 1, 10000)
    dead = broker().engine.dead_letters(topic=topic, sub=sub, limit=limit)
    return reply(data=[_dead_letter_view(d) for d in dead])


@bp.post("/Requeue")
def requeue():
    fields = json_or_none(request.get_data()) if request.is_json else request.form
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


@bp.get("/GetTopics")
def get_topics():
    b = broker()
    reports, missing = everywhere(b)
    stats = b.engine.topics()
    counts, rates, consumers = {}, {}, {}
    for report in reports:
        for topic, row in report["counts"].items():
            counts[topic] = [x + y for x, y in zip(counts.get(topic, [0] * len(EVENTS)), row)]
        for topic, rate in report["rates"].items():
            rates[topic] = round(rates.get(topic, 0.0) + rate, 2)
        for entry in report["consumers"]:
            consumers[entry["topic"]] = consumers.get(entry["topic"], 0) + 1
    pending = b.engine.count_messages
    data = []
    for topic in sorted(set(stats) | set(consumers)):
        entry = stats.get(topic, {"head": 0, "retained": 0, "subscriptions": 0, "deadLetters": 0,
                                  "delayed": 0})
        row = counts.get(topic, [0] * len(EVENTS))
        data.append({"topic": topic, "published": entry["head"], "retained": entry["retained"],
                     "pending": pending(topic)["pending"], "delayed": entry["delayed"],
                     "subscriptions": entry["subscriptions"], "consumers": consumers.get(topic, 0),
                     "deadLetters": entry["deadLetters"], "delivered": row[EVENTS.index("delivered")],
                     "expired": _count(row, "expired"), "gaps": _count(row, "gaps"),
                     "missed": _count(row, "missed"), "rate": rates.get(topic, 0.0)})
    return _answer(data, missing)


def _count(row, event):
    """One event's count in a row of counts (0 where a process of an older DPMQ has no such
    column)."""
    index = EVENTS.index(event)
    return row[index] if index < len(row) else 0


STATUSES = ("pending", "delivered", "delayed", "dead")


@bp.get("/GetMessageList")
def get_message_list():
    args = request.args
    topic, code, status = args.get("topic") or None, args.get("code") or None, args.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    if topic is None and code is None and status not in ("delayed", "dead"):
        raise BadRequest("name a topic, or search by code")
    if topic is not None:
        check_name("topic", topic, broker().settings.mq.maxTopicLength)
    limit, before = _int(args, "limit", 50, 1, 1000), _int(args, "before", None, 1, 1 << 62)
    found = broker().engine.messages(topic=topic, status=status, limit=limit, before=before, code=code)
    return reply(data=[{"MessageCode": m["code"], "MessageData": m["data"], "Topic": m["topic"],
                        "CreateTime": format_time(m["created"]), "offset": m["offset"],
                        "key": m["key"], "status": m["status"],
                        "expiresAt": _expiry(m["expires"])} for m in found])


@bp.get("/CountMessage")
def count_message():
    topic = request.args.get("topic") or None
    if topic is not None:
        check_name("topic", topic, broker().settings.mq.maxTopicLength)
    counts = broker().engine.count_messages(topic)
    counts["total"] = counts["pending"] + counts["delivered"] + counts["delayed"]
    return reply(data=counts)


@bp.get("/GetOverview")
def get_overview():
    """The vital signs of every process, summed where they add up, those of each (``processes``),
    and the rate history behind the console's charts (of the process that answered, ``process``)."""
    b = broker()
    reports, missing = everywhere(b)
    processes = [report["overview"] for report in reports]
    data = dict(processes[0], processes=processes, missing=missing,
                history=b.history.rates()[-300:])
    for name in _SUMMED:
        data[name] = sum(vitals.get(name, 0) for vitals in processes)   # an older process lacks new ones
    return _answer(data, missing)


def _int(args, name, default, low, high):
    raw = args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value
