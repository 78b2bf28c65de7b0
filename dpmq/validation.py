"""What the broker accepts from producers and consumers: names, message fields and their limits.

Checked before anything is stored or registered, each error saying what to change.
"""

from . import message
from .errors import BadRequest, TooLarge


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
    if "\ufffd" in value:      # what a URL path's bytes that are not UTF-8 decode to
        raise BadRequest(f"{kind} is not valid UTF-8 (it holds U+FFFD); percent-encode UTF-8 bytes")
    return value


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
    key = optional_text("key", fields.get("key"), mq.maxKeyLength)
    idempotency_key = optional_text("idempotencyKey", fields.get("idempotencyKey"),
                                    mq.maxKeyLength)
    return message.NewMessage(code, topic, data, now, key, idempotency_key,
                              now + delay if delay else 0.0)


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


def optional_text(name, value, limit):
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRequest(f"{name} must be a string of 1 to {limit} characters")
    return value
