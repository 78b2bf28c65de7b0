"""The OpenAPI 3 document of DPMQ's HTTP API, served at ``GET /openapi.json``.

Built from the broker's settings, so the limits it states (topic length, message size, pull size
and wait) are the ones in force. The consumer WebSocket is described in prose: OpenAPI has no
words for it. Its Server-Sent Events form, the same path without an Upgrade, is documented as the
GET that it is, with its ``text/event-stream`` reply.
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


#: W3C Trace Context: version-traceid-parentid-flags, lowercase hex, ids not all zeros.
TRACEPARENT = {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
               "description": "a W3C traceparent, stored with the message and pushed as"
                              " TraceParent (a field wins over the header)"}
TRACEPARENT_HEADER = {"name": "traceparent", "in": "header", "required": False,
                      "schema": TRACEPARENT, "description": "a W3C traceparent for the messages"
                      " that give none in their fields"}


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
        "idempotencyKey": {"type": "string", "minLength": 1, "maxLength": mq.maxKeyLength},
        "ttl": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": mq.maxTtl,
                "description": "seconds: a subscription that has not had the message (acked it,"
                               " with ack=1) this long after its CreateTime never gets it; it"
                               " counts as expired for that subscription"},
        "traceparent": TRACEPARENT}}
    publish_errors = dict(ERRORS, **{"413": ERROR, "429": ERROR, "503": ERROR})
    counts = {"type": "object"}
    listing = {"type": "array", "items": {"type": "object"}}
    consumer_name = {"type": "string", "minLength": 1, "maxLength": mq.maxConsumerIdLength,
                     "pattern": "^[^|/]+$"}
    pushed = {"type": "object", "required": ["MessageCode", "MessageData", "Topic", "CreateTime",
                                             "Status"], "properties": {
        "MessageCode": code, "MessageData": {"type": "string"}, "Topic": {"type": "string"},
        "CreateTime": {"type": "string"}, "Status": {"type": "integer", "minimum": 0},
        "TraceParent": dict(TRACEPARENT, description="the traceparent the message was published"
                            " with; absent when it had none")}}
    gap = {"type": "object", "required": ["Notice", "Topic", "Missed", "Resume"],
           "description": "messages a resuming subscription never received are gone", "properties": {
               "Notice": {"type": "string", "enum": ["gap"]}, "Topic": {"type": "string"},
               "Missed": {"type": "integer", "minimum": 0},
               "After": {"type": "string", "nullable": True},
               "Resume": {"type": "string", "nullable": True},
               "Reason": {"type": "string", "enum": ["purged", "forgotten", "lost"]}}}
    subscription = {"topic": name, "consumerId": consumer_name, "group": consumer_name}
    pull = {"type": "object", "required": ["topic"], "properties": dict(
        subscription,
        max={"type": "integer", "minimum": 1, "maximum": mq.maxPullMessages,
             "description": "at most this many messages (default 1)"},
        wait={"type": "number", "minimum": 0, "maximum": mq.maxPullWait,
              "description": "seconds to wait for a message when none is ready (a long poll)"},
        autoAck={"type": "boolean", "description": "true: the pull moves the subscription past"
                 " what it answers; false (default): pulled messages are in flight until"
                 " POST /ConsumerAck, and delivered again after mq.ackTimeout"})}
    ack = {"type": "object", "required": ["topic", "messageCode"], "properties": dict(
        subscription,
        messageCode={"oneOf": [code, {"type": "array", "minItems": 1, "items": code}],
                     "description": "one MessageCode or a list (in a form, the field repeated)"},
        nack={"type": "boolean", "description": "true: deliver them again now instead"})}
    settled = {"type": "object", "required": ["settled", "unknown"], "properties": {
        "settled": {"type": "array", "items": code}, "unknown": {"type": "array", "items": code}}}
    pull_reply = _reply({"type": "array", "items": pushed}, "messages, oldest first (none when"
                        " wait passed with none ready)")
    pull_reply["content"]["application/json"]["schema"]["properties"]["gap"] = gap
    events = {"description": "one event per message (id: its MessageCode, data: the pushed JSON"
                             " object); event: gap (a gap notice), event: error, a final"
                             " event: close ({code, reason}); comment lines as heartbeats",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    connection_options = [
        {"name": "topic", "in": "path", "required": True, "schema": name},
        {"name": "consumer_id", "in": "path", "required": True, "schema": consumer_name,
         "description": "the consumerId: a durable subscription"},
        _query("group", consumer_name, "share the subscription of this group"),
        _query("ack", {"type": "string", "enum": ["0", "1", "true", "false"]},
               "1: messages are in flight until acked (POST /ConsumerAck)"),
        _query("since", {"type": "string"}, "a MessageCode, or beginning, to replay from"),
        _query("durable", {"type": "string", "enum": ["0", "1", "true", "false"]},
               "0: an ephemeral subscription, forgotten when the consumer leaves"),
        _query("notices", {"type": "string", "enum": ["0", "1", "true", "false"]},
               "WebSocket only: 1 sends gap notices as JSON text frames before the next message;"
               " an event stream always carries them"),
        _query("token", {"type": "string"}, "the auth token, for clients that cannot send a"
               " header (a browser's EventSource or WebSocket)"),
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": code,
         "description": "resume right after this message (sent by a reconnecting EventSource)"}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "DPMQ", "version": __version__, "description": (
            "A small, durable message queue. Producers publish over HTTP; consumers receive over "
            "WebSocket at GET /ConsumersConn/{topic}/{consumerId} (query: group, ack=1, since, "
            "durable, notices=1, token), one JSON object per message: MessageCode, MessageData, "
            "Topic, CreateTime, Status; the same path with Accept: text/event-stream and no "
            "Upgrade is the same subscription as Server-Sent Events; POST /ConsumerPull and "
            "POST /ConsumerAck consume with plain requests. Every reply is {code, msg[, data]}: "
            "code 0 on success, -1 with a reason. With auth on, every request carries a bearer "
            "token (a static token, or a JWT when auth.jwt is set; consumers may put it in "
            "?token=); a WebSocket consumer replaces an expiring JWT by sending the text frame "
            '{"token": "<jwt>"}. The lifecycle events topic _dpmq.events is for admins only.')},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/ProducerSend": {"post": {
                "summary": "Publish one message; msg is its MessageCode once it is committed",
                "parameters": [TRACEPARENT_HEADER],
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": message},
                    "multipart/form-data": {"schema": message},
                    "application/json": {"schema": message}}},
                "responses": dict({"200": _reply(description="accepted; msg is the MessageCode")},
                                  **publish_errors)}},
            "/ProducerSendBatch": {"post": {
                "summary": "Publish many messages, all or nothing, in one commit",
                "parameters": [TRACEPARENT_HEADER],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["messages"], "properties": {
                        "topic": name,
                        "delay": message["properties"]["delay"],
                        "key": message["properties"]["key"],
                        "traceparent": dict(TRACEPARENT, description="every message's that has"
                                            " none of its own (before the header)"),
                        "messages": {"type": "array", "minItems": 1, "items": {"oneOf": [
                            {"type": "string"},
                            {"type": "object", "required": ["messageData"],
                             "properties": message["properties"]}]}}}}}}},
                "responses": dict({"200": _reply({"type": "array", "items": code})},
                                  **publish_errors)}},
            "/ConsumersConn/{topic}/{consumer_id}": {"get": {
                "summary": "Consume as Server-Sent Events (send Accept: text/event-stream; with a"
                           " WebSocket Upgrade, the same path is the WebSocket consumer)",
                "parameters": connection_options,
                "responses": dict({"200": events, "409": ERROR, "503": ERROR}, **ERRORS)}},
            "/ConsumerPull": {"post": {
                "summary": "Pull messages of a durable subscription, waiting up to wait seconds",
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": pull},
                    "application/json": {"schema": pull}}},
                "responses": dict({"200": pull_reply, "409": ERROR, "503": ERROR}, **ERRORS)}},
            "/ConsumerAck": {"post": {
                "summary": "Ack (or nack) messages of an ack=1 or pulling subscription, whatever"
                           " carried them; 409 names those it did not hold",
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": ack},
                    "application/json": {"schema": ack}}},
                "responses": dict({"200": _reply(settled), "409": ERROR}, **ERRORS)}},
            "/Console/GetConsumers": _get("The connected consumers (transport: websocket, sse or"
                                          " pull; expired and gaps: their subscription's counts)",
                                          listing),
            "/Console/GetConfig": _get("The effective configuration, secrets as ***", counts),
            "/Console/GetWebhooks": _get("Each webhook (events.webhooks) of this process: url,"
                                         " types, backlog (events not yet passed to it),"
                                         " delivered, failures, lastError, lastErrorAt",
                                         listing),
            "/Console/GetTopics": _get("Per topic: published, pending, consumers, dead letters,"
                                       " expired, gaps, rate", listing),
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
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "a static token or a JWT",
            "description": "needed only with auth.enabled; roles producer, consumer, admin"}},
            "responses": {"Error": {
            "description": "refused: code -1 and a reason a person can act on",
            "content": {"application/json": {"schema": {
                "type": "object", "required": ["code", "msg"], "properties": {
                    "code": {"type": "integer", "enum": [-1]}, "msg": {"type": "string"}}}}}}}},
    }
