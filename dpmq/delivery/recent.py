"""Recent messages: what consumers catching up read from the store, read and encoded once.

A live message is encoded once at commit and framed once per transport for every consumer that
takes it then (:class:`~dpmq.message.Run`). A subscription that fell behind reads its messages from
the store instead, and would read, encode and frame each one for itself: with twenty consumers of
64 KB messages behind together, twenty reads and twenty JSON encodes of each message, more than
everything else the broker does for it, and they stay behind while producers go on. So a shard
keeps, by (topic, offset), the live messages that one of its subscriptions skipped (it will want
them soon) with their payloads, each message read from the store for a first attempt, and the
frames built for them; the oldest go first once they pass the shard's share of
``mq.catchUpCacheBytes``. A subscription catching up takes what is kept right after its cursor from
here, and reads from the store only from the first message not kept. Nothing is kept while every
subscription keeps up: the shard empties it once none of its subscriptions has anything to catch
up.

A message kept here that retention purges from the store meanwhile is still handed out from here:
delivered, where a read would have told the consumer it missed it. A redelivery is framed on its
own: its ``Status`` differs.

Not thread-safe: it belongs to one delivery shard's thread.
"""

import collections

from .. import message

#: Bytes counted for each message kept besides its text, payload and frames: the Python objects
#: that hold them (the record, its key, the entry, the frames' table). Small messages are mostly
#: these; without them 32 MB of 100-byte messages took twice that.
OVERHEAD = 800


class RecentMessages:
    """Records, payloads and frames of recent first attempts, at most ``limit`` bytes of them."""

    def __init__(self, limit):
        self.limit = limit
        self.size = 0               # bytes of messages, payloads and frames kept
        self.built = 0              # frames built for a first attempt read from the store
        self.reused = 0             # ... and frames given again from here (for /metrics)
        # (topic, offset) -> (record, payload, {framing: frame}), oldest first
        self._entries = collections.OrderedDict()

    def __len__(self):
        return len(self._entries)

    def keep(self, items):
        """Live ``(record, payload)`` items that a subscription skipped: it will want them."""
        if not self.limit:
            return
        entries = self._entries
        for record, payload in items:
            key = (record.topic, record.offset)
            if key not in entries:
                entries[key] = (record, payload, {})
                self.size += OVERHEAD + len(record.data) + len(payload)
        self._trim()

    def after(self, topic, offset, limit, upto):
        """The records kept of ``topic`` right after ``offset``, each the one after the one
        before, at most ``limit`` and none past ``upto``: what a read from the store would
        begin with (empty when the next one is not kept)."""
        records = []
        get = self._entries.get
        while len(records) < limit and offset < upto:
            offset += 1
            entry = get((topic, offset))
            if entry is None:
                break
            records.append(entry[0])
        return records

    def frame(self, record, framing):
        """``record``'s frame in ``framing`` for a first attempt, built once while it is kept."""
        if not self.limit:
            self.built += 1
            return framing.message(message.payload(record))
        key = (record.topic, record.offset)
        entry = self._entries.get(key)
        if entry is None or entry[0].code != record.code:
            # not kept, or another message at that offset (a store emptied and filled again)
            if entry is not None:
                self._drop(key)
            entry = self._entries[key] = (record, message.payload(record), {})
            self.size += OVERHEAD + len(record.data) + len(entry[1])
        frames = entry[2]
        frame = frames.get(framing)
        if frame is None:
            self.built += 1
            frame = frames[framing] = framing.message(entry[1])
            self.size += _extra(frame, entry[1])
            self._trim()
        else:
            self.reused += 1
        return frame

    def clear(self):
        self._entries.clear()
        self.size = 0

    def _trim(self):
        entries = self._entries
        while self.size > self.limit and entries:
            self._drop(next(iter(entries)))

    def _drop(self, key):
        record, payload, frames = self._entries.pop(key)
        self.size -= OVERHEAD + len(record.data) + len(payload) + sum(
            _extra(frame, payload) for frame in frames.values())


def _extra(frame, payload):
    """The bytes ``frame`` adds to its payload's (a pull's frame is the payload itself)."""
    return 0 if frame is payload else len(frame)
