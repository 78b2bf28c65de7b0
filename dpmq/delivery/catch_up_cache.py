"""The catch-up cache: what consumers catching up read from the store, read and encoded once.

A live message is encoded once at commit and framed once per transport for every consumer that
takes it then (:class:`~dpmq.message.Run`). A subscription that fell behind reads its messages from
the store instead, and would read, encode and frame each one for itself: with twenty consumers of
64 KB messages behind together, twenty reads and twenty JSON encodes of each message, more than
everything else the broker does for it, and they stay behind while producers go on. So a shard
keeps, by (topic, offset), the live messages that one of its subscriptions skipped (it will want
them soon) with their payloads, each message read from the store for a first attempt, and the
frames built for them; the oldest go first to stay within the shard's share of
``mq.catchUpCacheBytes``. A subscription catching up takes what is kept right after its cursor from
here, and reads from the store only from the first message not kept. Nothing is kept while every
subscription keeps up: the shard empties the cache once none of its subscriptions has anything to
catch up.

What retention may have purged from the store is not handed out from here: the store says what
is left, and the consumer is told what it missed. A redelivery is framed on its own: its
``Status`` differs.

Only its shard's thread changes it; ``/metrics`` reads its sizes and counts from other threads,
and ``size`` never passes ``limit``, even between two of its steps.
"""

import collections
import sys
import time

from .. import message

#: Bytes counted for each message kept besides its text, payload and frames: the Python objects
#: that hold them (the record, its key, the entry, the frames' table). Small messages are mostly
#: these; without them 32 MB of 100-byte messages took twice that.
OVERHEAD = 800


class CatchUpCache:
    """Records, payloads and frames of recent first attempts, at most ``limit`` bytes of them."""

    def __init__(self, limit, retention_seconds=None, retention_messages=0):
        self.limit = limit
        self.retention_seconds = retention_seconds      # mq.retentionSeconds; None: none
        self.retention_messages = retention_messages    # mq.retentionMessages; 0: none
        self.size = 0               # bytes of messages, payloads and frames kept
        self.built = 0              # frames built for a first attempt read from the store
        self.reused = 0             # ... and frames given again from here
        self.from_store = 0         # messages read from the store for a subscription behind
        self.from_cache = 0         # ... and taken from here instead
        # (topic, offset) -> [record, payload, {framing: frame}, bytes], oldest first
        self._entries = collections.OrderedDict()

    def __len__(self):
        return len(self._entries)

    def keep(self, items):
        """Live ``(record, payload)`` items that a subscription skipped: it will want them. Only
        the newest that fit are kept: a batch larger than the cache would evict its own start."""
        if not self.limit:
            return
        newest, room = [], self.limit
        for record, payload in reversed(items):
            size = cost(record, payload)
            room -= size
            if room < 0:
                break
            newest.append((record, payload, size))
        for record, payload, size in reversed(newest):
            self._add(record, payload, size)

    def read(self, read, topic, offset, limit, upto, store_only=False):
        """``read(topic, offset, limit, upto)`` (the store's), beginning with what is kept here
        unless ``store_only``: ``(records, kept)``, with ``kept`` when they came from here (the
        store may hold more after them)."""
        records = [] if store_only else self.after(topic, offset, limit, upto)
        if records:
            self.from_cache += len(records)
            return records, True
        records = read(topic, offset, limit, upto)
        self.from_store += len(records)
        return records, False

    def after(self, topic, offset, limit, upto):
        """The records kept of ``topic`` right after ``offset``, each the one after the one
        before, at most ``limit`` and none past ``upto`` (the newest handed out): what a read
        from the store would begin with. Empty when the next one is not kept, or when retention
        may have purged it (older than its time, or not among the newest of its count)."""
        if self.retention_messages and offset < upto - self.retention_messages:
            return []
        oldest = time.time() - self.retention_seconds if self.retention_seconds else 0.0
        records = []
        get = self._entries.get
        while len(records) < limit and offset < upto:
            offset += 1
            entry = get((topic, offset))
            if entry is None or entry[0].created < oldest:
                break
            records.append(entry[0])
        return records

    def frame(self, record, framing):
        """``record``'s frame in ``framing`` for a first attempt, built once while it is kept."""
        key = (record.topic, record.offset)
        entry = self._entries.get(key)
        if entry is None or entry[0].code != record.code:
            payload = message.payload(record)
            entry = self._add(record, payload, cost(record, payload))
            if entry is None:       # larger than the cache
                self.built += 1
                return framing.message(payload)
        payload, frames = entry[1], entry[2]
        frame = frames.get(framing)
        if frame is not None:
            self.reused += 1
            return frame
        self.built += 1
        frame = framing.message(payload)
        extra = 0 if frame is payload else len(frame)     # a pull's frame is its payload
        self._entries.move_to_end(key)
        if self._make_room(extra, spare=key):
            frames[framing] = frame
            entry[3] += extra
            self.size += extra
        return frame

    def clear(self):
        """Forget everything: nobody is behind, and what is kept would only wait."""
        self._entries.clear()
        self.size = 0

    def _add(self, record, payload, size):
        """Keep ``record``, taking ``size`` bytes (in place of another message kept at its
        offset, from a store emptied and filled again); the new entry, or None if it is larger
        than the cache."""
        key = (record.topic, record.offset)
        if key in self._entries:
            self._drop(key)
        if not self._make_room(size):
            return None
        entry = self._entries[key] = [record, payload, {}, size]
        self.size += size
        return entry

    def _make_room(self, size, spare=None):
        """Drop the oldest entries, never ``spare``, until ``size`` more bytes fit; False if
        they cannot."""
        entries = self._entries
        while self.size + size > self.limit:
            oldest = next(iter(entries), spare)
            if oldest == spare:
                return False
            self._drop(oldest)
        return True

    def _drop(self, key):
        self.size -= self._entries.pop(key)[3]


def cost(record, payload):
    """The bytes a kept message takes before its frames (a text's size depends on its widest
    character: one emoji makes each of its characters four bytes)."""
    return OVERHEAD + sys.getsizeof(record.data) + len(payload)
