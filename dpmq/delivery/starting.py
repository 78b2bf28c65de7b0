"""Where a subscription starts when it becomes active in this process.

A consumer names where it wants to start (``since``, an event stream's ``Last-Event-ID``) or
takes the subscription's saved cursor, or "now" for one that is new. The store may disagree with
what the consumer or the cursor remembers: retention may have forgotten the subscription while it
was away, or a store restored from an older copy may have lost messages the cursor passed. Each
case decides both where delivery starts and what the consumer is told (a gap), so they are
decided together here, from the store alone, before the shard makes the subscription.
"""

import collections
import time

from ..errors import CLOSE_BAD_INPUT, Refused

#: ``cursor``: the offset delivered up to; ``saved_at``: when the store got it (0 if unknown);
#: ``forgotten``: retention had forgotten the subscription; ``lost``: the store lost messages
#: the cursor had passed; ``unsaved``: the store does not have this cursor yet.
Start = collections.namedtuple("Start", "cursor saved_at forgotten lost unsaved")


def start(engine, head, member, topic, key):
    """The :class:`Start` of subscription ``key`` of ``topic``, which ``member`` joins, when the
    topic's newest message is ``head``; a ``since`` the store has not is :class:`Refused`."""
    cursor = engine.cursor(topic, key)
    saved_at = 0.0      # loaded: when it was last written is unknown, so the first sweep does
    forgotten = lost = unsaved = False
    # an event stream's Last-Event-ID: what was written after it may never have arrived
    resumed = None if member.resume is None or member.ack or member.group else \
        engine.find(topic, member.resume)
    if resumed is not None:
        if resumed != cursor:
            engine.set_cursor(topic, key, resumed)
            cursor, saved_at = resumed, time.time()
    elif member.since is not None:
        cursor = since_cursor(engine, head, topic, member.since)
        engine.set_cursor(topic, key, cursor)
        saved_at = time.time()
    elif cursor is None and (cursor := engine.forgotten(topic, key)) is not None:
        forgotten = unsaved = True  # retention forgot it while it was away: it goes on, told
        saved_at = time.time()
    elif cursor is None:
        # a new subscription starts at "now": when the consumer connected (its handshake),
        # which may be well before the shard takes the join on a busy machine
        cursor = head if member.start is None else member.start
        unsaved = True
        saved_at = time.time()
    if cursor > head and not engine.shared:
        # the store has lost its newest messages (restored from an older copy): what comes
        # next gets offsets this cursor already passed, and would be skipped
        lost, cursor, unsaved = True, head, False
        engine.set_cursor(topic, key, cursor)
        saved_at = time.time()
    return Start(cursor, saved_at, forgotten, lost, unsaved)


def since_cursor(engine, head, topic, since):
    """Where a subscription that asks for ``since`` starts: right after that message, or
    before the oldest one retained (not before offset 1: what retention purged is no gap
    for a consumer that asked for what there is)."""
    if since == "beginning":
        oldest = engine.read(topic, 0, 1)
        return oldest[0].offset - 1 if oldest else head
    cursor = engine.find(topic, since)
    if cursor is None:
        raise Refused(f"since: no retained message {since} on topic {topic!r};"
                      " use since=beginning or a newer MessageCode", CLOSE_BAD_INPUT)
    return cursor
