"""What the broker accepts from producers and consumers: names, message fields and their limits.

Checked before anything is stored or registered, each error saying what to change.
"""

import re
from itertools import repeat

from . import message
from .errors import BadRequest, TooLarge


class Uniform:
    """A batch whose messages share every field but messageData: ``{"topic": "t", "messages":
    ["a", "b"]}``, the shape busy producers send. Its shared fields are checked once and its
    texts in bulk, instead of message by message."""

    __slots__ = ("fields", "texts")

    def __init__(self, fields, texts):
        self.fields = fields    # topic, delay, ttl, key, traceparent: the same for every message
        self.texts = texts      # each message's messageData, every one a str

    def __len__(self):
        return len(self.texts)

    def expanded(self):
        """The batch as one mapping of fields per message."""
        return [dict(self.fields, messageData=text) for text in self.texts]


def is_message_code(text):
    """Whether ``text`` has the shape of a MessageCode: 40 lowercase hex characters."""
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def check_name(kind, value, max_length):
    """Validate a topic, consumer id or group; raise BadRequest saying what is wrong with it."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{kind} is required: 1 to {max_length} printable characters")
    if len(value) > max_length:
        raise BadRequest(f"{kind} is {len(value)} characters long; the limit is {max_length}")
    if "|" in value or "/" in value:
        raise BadRequest(f"{kind} must not contain '|' or '/'")
    if not value.isprintable():
        raise BadRequest(f"{kind} must contain printable characters only")
    if value != value.strip():
        # A blank name is an empty row in the console, and "orders " a second topic that looks
        # like "orders" while its consumers wait on the first: both are typos, so say so.
        if not value.strip():
            raise BadRequest(f"{kind} is blank: give it a character other than spaces")
        raise BadRequest(f"{kind} {value!r} begins or ends with a space; remove it (spaces"
                         " inside a name are fine)")
    if "\ufffd" in value:      # what a URL path's bytes that are not UTF-8 decode to
        raise BadRequest(f"{kind} is not valid UTF-8 (it holds U+FFFD); percent-encode UTF-8 bytes")
    return value


def new_messages(items, now, mq):
    """The :class:`~dpmq.message.NewMessage` of each of ``items`` (mappings of a publish's
    fields, or a :class:`Uniform` batch), or BadRequest / TooLarge naming the first bad one."""
    if isinstance(items, Uniform):
        messages = _uniform(items, now, mq)
        if messages is not None:
            return messages
        items = items.expanded()    # one is bad (say which) or holds non-ASCII text
    messages, checked = [], set()
    for position, (fields, code) in enumerate(zip(items, message.new_codes(len(items)))):
        try:
            messages.append(new_message(fields, now, code, mq, checked))
        except (BadRequest, TooLarge) as exc:
            if len(items) > 1:
                exc.args = (f"messages[{position}]: {exc}",)
            raise
    return messages


def _uniform(batch, now, mq):
    """The messages of a uniform batch if they are all good and ASCII (the size of such a text is
    its length), else None. Checked and built without a Python call per message: message by
    message, checking was about a sixth of a batched message's cost in the broker."""
    texts = batch.texts
    if (not texts or not all(map(str.isascii, texts))
            or max(map(len, texts)) > mq.maxMessageBytes):
        return None
    try:
        shared = new_message(dict(batch.fields, messageData=""), now, "", mq, set())
    except (BadRequest, TooLarge):
        return None
    return message.from_columns(message.NewMessage, message.new_codes(len(texts)),
                                repeat(shared.topic), texts, repeat(now), repeat(shared.key),
                                repeat(None), repeat(shared.due), repeat(shared.expires),
                                repeat(shared.trace))


def new_message(fields, now, code, mq, checked):
    """A producer's fields as a :class:`~dpmq.message.NewMessage`, or BadRequest / TooLarge
    saying what is wrong with them (``mq``: the limits). ``checked`` holds the topics found
    good so far: a batch's messages mostly share one, checked once."""
    topic, data = fields.get("topic"), fields.get("messageData")
    if type(topic) is not str or topic not in checked:
        check_name("topic", topic, mq.maxTopicLength)
        checked.add(topic)
    if not isinstance(data, str):
        raise BadRequest("messageData is required and must be a string")
    try:
        size = len(data) if data.isascii() or len(data) > mq.maxMessageBytes \
            else len(data.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("messageData is not valid Unicode (it holds a lone surrogate)") from None
    if size > mq.maxMessageBytes:
        raise TooLarge(f"messageData is larger than mq.maxMessageBytes ({mq.maxMessageBytes}"
                       " bytes); split it or raise the limit")
    delay = delay_of(fields.get("delay"), mq.maxDelaySeconds)
    ttl = ttl_of(fields.get("ttl"), delay, mq.maxTtl)
    key = optional_text("key", fields.get("key"), mq.maxKeyLength)
    idempotency_key = optional_text("idempotencyKey", fields.get("idempotencyKey"),
                                    mq.maxKeyLength)
    trace = fields.get("traceparent")
    if trace is not None:
        trace = traceparent_of(trace)
    return message.NewMessage(code, topic, data, now, key, idempotency_key,
                              now + delay if delay else 0.0, now + ttl if ttl else 0.0, trace)


def delay_of(value, limit):
    if value in (None, ""):
        return 0.0
    try:
        delay = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"delay must be a number of seconds, got {value!r}") from None
    if not 0 <= delay <= limit:
        raise BadRequest(f"delay must be between 0 and {limit:g} seconds (mq.maxDelaySeconds)")
    return delay


def ttl_of(value, delay, limit):
    """A publish's ``ttl`` in seconds (0.0 when it has none): more than 0, at most ``limit``
    (``mq.maxTtl``) and longer than the message's ``delay``, or it could never be delivered."""
    if value in (None, ""):
        return 0.0
    try:
        ttl = float(value) if not isinstance(value, bool) else None  # JSON true is no number
    except (TypeError, ValueError):
        ttl = None
    if ttl is None:
        raise BadRequest(f"ttl must be a number of seconds, got {value!r}")
    if not 0 < ttl <= limit:
        raise BadRequest(f"ttl must be more than 0 and at most {limit:g} seconds (mq.maxTtl);"
                         " leave it out for a message that never expires")
    if ttl <= delay:
        raise BadRequest(f"ttl ({ttl:g} s) must be longer than delay ({delay:g} s): the message"
                         " would expire before it is due and never be delivered; raise ttl or"
                         " shorten delay")
    return ttl


#: W3C Trace Context's ``traceparent``: version, trace-id, parent-id, trace-flags, in lowercase hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def traceparent_of(value):
    """A publish's ``traceparent`` (a W3C Trace Context header value), or None for an empty one;
    BadRequest naming the rule it breaks."""
    if value == "":
        return None
    match = _TRACEPARENT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise BadRequest("traceparent must be a W3C traceparent: 00-<32 lowercase hex trace-id>-"
                         f"<16 lowercase hex parent-id>-<2 hex trace-flags>, got {value!r:.80}")
    version, trace_id, parent_id, _ = match.groups()
    if version == "ff":
        raise BadRequest("traceparent version ff is invalid (W3C Trace Context)")
    if trace_id == "0" * 32:
        raise BadRequest("traceparent's trace-id must not be all zeros (W3C Trace Context)")
    if parent_id == "0" * 16:
        raise BadRequest("traceparent's parent-id must not be all zeros (W3C Trace Context)")
    return value


def traceparent_header(value):
    """A ``traceparent`` HTTP header's value if it is a valid one, else None: W3C Trace Context
    asks a receiver to ignore a header it cannot parse (and start a trace of its own) rather
    than fail the request, since proxies and tracing libraries set it, not the producer's code.
    A later version's header is read for the fields this version knows (its first 55
    characters). The publish *field* is the producer's own, and a bad one is refused."""
    if not value:
        return None
    if len(value) > 55 and value[55] == "-" and not value.startswith("00-"):
        value = value[:55]
    try:
        return traceparent_of(value)
    except BadRequest:
        return None


def optional_text(name, value, limit):
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRequest(f"{name} must be a string of 1 to {limit} characters")
    return value
