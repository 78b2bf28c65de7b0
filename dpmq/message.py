"""Messages: the MessageCode, the pushed JSON object, and the runs that carry them to consumers.

The JSON object pushed for a message is the same for every consumer, and so are the bytes a
transport wraps it in (a WebSocket server's frames are never masked): the broker encodes each
message once, and a :class:`Run` frames it once per transport, for every connection of that
transport to share (only a redelivery, whose ``Status`` differs, is framed on its own). Messages of
one topic handed out together go further: their frames are joined once and a consumer that takes
them all gets them in one append.
"""

import functools
import itertools
import json
import operator
import os
import struct
import time
from typing import NamedTuple, Optional


class Record(NamedTuple):
    """One message as stored in a topic's log."""

    offset: int
    code: str
    topic: str
    data: str
    created: float              # seconds since the epoch
    key: Optional[str] = None   # ordering key: within a group, one key goes to one member
    due: float = 0.0            # for a delayed message just promoted: when it became due
    expires: float = 0.0        # not delivered after this time (created + ttl); 0 = never
    trace: Optional[str] = None  # the producer's W3C traceparent, pushed as TraceParent


class NewMessage(NamedTuple):
    """A message accepted from a producer, before the store gives it an offset."""

    code: str
    topic: str
    data: str
    created: float
    key: Optional[str] = None
    idempotency_key: Optional[str] = None
    due: float = 0.0            # not pushed before this time (created + delay); 0 = now
    expires: float = 0.0        # not delivered after this time (created + ttl); 0 = never
    trace: Optional[str] = None  # a W3C traceparent (validated), see Record.trace


class Appended(NamedTuple):
    """What an append did: the MessageCode of each message (the earlier one for a repeated
    idempotencyKey), and the records it added to the logs now (delayed ones come later)."""

    codes: list
    records: list


def from_columns(kind, *columns):
    """One ``kind`` (a named tuple class) per row of ``columns``, built in C by ``tuple.__new__``:
    about half the cost of calling ``kind`` once per row, which a batch of a hundred did twice."""
    return list(map(tuple.__new__, itertools.repeat(kind), zip(*columns)))


def new_codes(count):
    """``count`` fresh MessageCodes: 40 lowercase hex characters, unique without coordination.

    The first 16 are the time in nanoseconds (plus the code's place in the list) and the other
    24 random (96 bits, so codes made in the same nanosecond, in any process, still differ). Codes
    made later sort later, so the store's index on codes grows at its end instead of at random
    pages: with random codes that index was most of the cost of inserting a message into SQLite.
    One call to the kernel's random source serves a whole batch, and the hex encoder cuts both
    halves into pieces, so that making a code is one C-level concatenation.
    """
    now = time.time_ns()
    stamps = struct.pack(f">{count}Q", *range(now, now + count)).hex(" ", 8).split()
    noise = os.urandom(12 * count).hex(" ", 12).split()
    return list(map(operator.add, stamps, noise))


def new_code():
    """One MessageCode (see :func:`new_codes`)."""
    return new_codes(1)[0]


def format_time(created):
    """``CreateTime`` as the original gave it: server local time, ``YYYY-MM-DD HH:MM:SS``."""
    return _format_second(int(created))


@functools.lru_cache(maxsize=64)
def _format_second(second):
    """Messages come many to a second: each second is formatted once."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def payload(record, status=0):
    """The JSON object pushed to a consumer, as UTF-8 bytes. The five original fields never change;
    a message published with a ``traceparent`` has the extra field ``TraceParent`` after them."""
    body = _encode({
        "MessageCode": record.code,
        "MessageData": record.data,
        "Topic": record.topic,
        "CreateTime": format_time(record.created),
        "Status": status,
    })
    if record.trace is None:
        return body.encode("utf-8")
    # A validated traceparent is lowercase hex and dashes: nothing in it needs escaping.
    return (body[:-1] + ',"TraceParent":"' + record.trace + '"}').encode("utf-8")


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Run:
    """Messages of one topic handed out together, in log order: ``items`` are (record, payload).

    A *framing* is how a transport puts a payload on its stream (``framing.message(payload)``
    returns the bytes); the run frames its messages once per framing it is asked for."""

    __slots__ = ("items", "first", "last", "_contiguous", "_expiring", "_framed", "_joined")

    def __init__(self, items):
        self.items = items
        self.first = items[0][0].offset
        self.last = items[-1][0].offset
        self._contiguous = None
        self._expiring = None
        self._framed = {}
        self._joined = {}

    @property
    def contiguous(self):
        """Whether each offset is the one after the previous: none missing, repeated or out of
        order (messages from several processes sharing a store can come in any order)."""
        if self._contiguous is None:
            self._contiguous = (self.last - self.first + 1 == len(self.items) and all(
                record.offset == offset
                for (record, _), offset in zip(self.items, itertools.count(self.first))))
        return self._contiguous

    @property
    def expiring(self):
        """Whether a message of the run has a ttl (each must then be looked at as it is sent)."""
        if self._expiring is None:
            self._expiring = any(record.expires for record, _ in self.items)
        return self._expiring

    def frames(self, framing):
        """The messages' bytes in ``framing``, in order, built once for all its connections."""
        frames = self._framed.get(framing)
        if frames is None:
            frames = self._framed[framing] = list(map(framing.message, map(_PAYLOAD, self.items)))
        return frames

    def joined(self, framing):
        """``(every frame in one bytes, where each ends in it, the records)`` in ``framing``,
        built once for all the consumers that take the whole run."""
        joined = self._joined.get(framing)
        if joined is None:
            frames = self.frames(framing)
            joined = self._joined[framing] = (
                b"".join(frames), list(itertools.accumulate(map(len, frames))),
                list(map(_RECORD, self.items)))
        return joined


_RECORD = operator.itemgetter(0)
_PAYLOAD = operator.itemgetter(1)
