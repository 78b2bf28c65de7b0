"""The console API: who is connected, and the effective configuration."""

import time

from flask import Blueprint

from ..message import format_time
from . import broker, reply

bp = Blueprint("console", __name__, url_prefix="/Console")


@bp.get("/GetConsumers")
def get_consumers():
    b = broker()
    data = []
    for sub in b.subscribers():
        written = sub.conn.written_offset
        data.append({
            "topic": sub.topic,
            "consumerId": sub.consumer_id,
            "group": sub.group,
            "remoteAddr": sub.conn.remote_addr,
            "connectedAt": format_time(sub.connected_at),
            "delivered": sub.conn.delivered,
            "pending": max(0, b.heads.get(sub.topic, 0) - written),
        })
    return reply(data=data)


@bp.get("/GetConfig")
def get_config():
    return reply(data=broker().settings.as_dict(redact=True))


@bp.get("/Ping")
def ping():
    b = broker()
    stats = b.stats
    return reply("pong", data={
        "engine": b.engine.name, "accepting": b.accepting,
        "uptime": round(time.time() - stats.started, 3), "buffered": b.buffer.qsize(),
        "consumers": len(b.subscribers()), "published": stats.published, "pushed": stats.pushed,
        "failed": stats.failed, "deadLettered": stats.dead_lettered})
