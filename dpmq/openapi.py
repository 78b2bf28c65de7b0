"""The OpenAPI 3 document of DPMQ's HTTP API, served at ``GET /openapi.json``.

Built from the broker's settings, so the limits it states (topic length, message size) are the
ones in force. The consumer WebSocket is described in prose: OpenAPI has no words for it.
"""

from . import __version__


def _reply(data=None, description="ok"):
    schema = {"type": "object", "required": ["code", "msg"], "properties": {
        "code": {"type": "integer", "enum": [0]}, "msg": {"type": "string"}}}
    if data is not None:
        schema["required"].append("data")
        schema["properties"]["data"] = data
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = {"$ref": "#/components/responses/Error"}
ERRORS = {str(status): ERROR for status in (400, 401, 403)}


def _get(summary, data, params=(), errors=True):
    operation = {"summary": summary, "responses": {"200": _reply(data)}}
    if params:
        operation["parameters"] = list(params)
    if errors:
        operation["responses"].update(ERRORS)
    return {"get": operation}


def _query(name, schema, description):
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def document(settings):
    mq = settings.mq
    name = {"type": "string", "minLength": 1, "maxLength": mq.maxTopicLength,
            "pattern": "^[^|/]+$"}
    code = {"type": "string", "pattern": "^[0-9a-f]{40}$"}
    message = {"type": "object", "required": ["topic", "messageData"], "properties": {
        "topic": dict(name, description="1 to mq.maxTopicLength printable characters, no | or /"),
        "messageData": {"type": "string", "description": f"at most {mq.maxMessageBytes} bytes of UTF-8"},
        "delay": {"type": "number", "minimum": 0, "maximum": mq.maxDelaySeconds},
        "key": {"type": "string", "minLength": 1, "maxLength": mq.maxKeyLength},
        "idempotencyKey": {"type": "string", "minLength": 1, "maxLength": mq.maxKeyLength}}}
    publish_errors = dict(ERRORS, **{"413": ERROR, "429": ERROR, "503": ERROR})
    counts = {"type": "object"}
    listing = {"type": "array", "items": {"type": "object"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "DPMQ", "version": __version__, "description": (
            "A small, durable message queue. Producers publish over HTTP; consumers receive over "
            "WebSocket at GET /ConsumersConn/{topic}/{consumerId} (query: group, ack=1, since, "
            "token), one JSON object per message: MessageCode, MessageData, Topic, CreateTime, "
            "Status. Every reply is {code, msg[, data]}: code 0 on success, -1 with a reason.")},
        "paths": {
            "/ProducerSend": {"post": {
                "summary": "Publish one message; msg is its MessageCode once it is committed",
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": message},
                    "multipart/form-data": {"schema": message},
                    "application/json": {"schema": message}}},
                "responses": dict({"200": _reply(description="accepted; msg is the MessageCode")},
                                  **publish_errors)}},
            "/ProducerSendBatch": {"post": {
                "summary": "Publish many messages, all or nothing, in one commit",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["messages"], "properties": {
                        "topic": name,
                        "delay": message["properties"]["delay"],
                        "key": message["properties"]["key"],
                        "messages": {"type": "array", "minItems": 1, "items": {"oneOf": [
                            {"type": "string"},
                            {"type": "object", "required": ["messageData"],
                             "properties": message["properties"]}]}}}}}}},
                "responses": dict({"200": _reply({"type": "array", "items": code})},
                                  **publish_errors)}},
            "/Console/GetConsumers": _get("The connected consumers", listing),
            "/Console/GetConfig": _get("The effective configuration, secrets as ***", counts),
            "/Console/GetTopics": _get("Per topic: published, pending, consumers, dead letters, rate",
                                       listing),
            "/Console/GetMessageList": _get("Messages, newest first, paged", listing, [
                _query("topic", name, "the topic (or search by code)"),
                _query("status", {"type": "string", "enum": ["pending", "delivered", "delayed", "dead"]},
                       "only messages in this status"),
                _query("code", code, "one message by its MessageCode"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                _query("before", {"type": "integer", "minimum": 1}, "offsets below this one")]),
            "/Console/CountMessage": _get("Messages by status", counts,
                                          [_query("topic", name, "one topic, or all")]),
            "/Console/GetDeadLetters": _get("Dead letters, newest first", listing, [
                _query("topic", name, "a topic"), _query("consumerId", name, "a consumer"),
                _query("group", name, "a group"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "at most")]),
            "/Console/Requeue": {"post": {
                "summary": "Deliver dead letters again: one (messageCode) or all of a topic",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"type": "object", "required": ["topic"],
                                                    "properties": {"topic": name,
                                                                   "consumerId": name,
                                                                   "group": name,
                                                                   "messageCode": code}}}}},
                "responses": dict({"200": _reply({"type": "object"}), "404": ERROR}, **ERRORS)}},
            "/Console/Ping": _get("Liveness and counters", counts),
            "/Console/GetOverview": _get("Counters and the rate history of the console's charts",
                                         counts),
            "/healthz": _get("The process is alive", None, errors=False),
            "/readyz": {"get": {"summary": "The store answers and the broker accepts messages",
                                "responses": {"200": _reply({"type": "object"}), "503": ERROR}}},
            "/metrics": {"get": {"summary": "Prometheus text format", "responses": dict({
                "200": {"description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}, **ERRORS)}},
        },
        "components": {"responses": {"Error": {
            "description": "refused: code -1 and a reason a person can act on",
            "content": {"application/json": {"schema": {
                "type": "object", "required": ["code", "msg"], "properties": {
                    "code": {"type": "integer", "enum": [-1]}, "msg": {"type": "string"}}}}}}}},
    }
