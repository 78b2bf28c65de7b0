"""Recent frames: a message read from the store is encoded once for all who catch up on it.

A live message is encoded once at commit and framed once per transport for every consumer that
takes it then (:class:`~dpmq.message.Run`). A subscription that fell behind reads its messages from
the store instead, and would encode and frame each one for itself: with twenty consumers of 64 KB
messages behind together, twenty JSON encodes of each message, more than everything else the broker
does for it, and they stay behind while producers go on. So a shard keeps, by (topic, offset), the
payloads of the live messages that one of its subscriptions skipped (it will read them soon), and
each frame built for a first attempt read from the store; the oldest go first once they pass the
shard's share of ``mq.catchUpCacheBytes``. Nothing is kept while every subscription keeps up:
the shard empties it once none of its subscriptions has anything to catch up.

A redelivery is framed on its own: its ``Status`` differs.

Not thread-safe: it belongs to one delivery shard's thread.
"""

import collections

from .. import message


class RecentFrames:
    """Payloads and frames of recent first attempts, at most ``limit`` bytes of them."""

    def __init__(self, limit):
        self.limit = limit
        self.size = 0               # bytes of payloads and frames kept
        self.built = 0              # frames built for a first attempt read from the store
        self.reused = 0             # ... and frames given again from here (for /metrics)
        # (topic, offset) -> (MessageCode, payload, {framing: frame}), oldest first
        self._entries = collections.OrderedDict()

    def __len__(self):
        return len(self._entries)

    def keep(self, items):
        """Live ``(record, payload)`` items that a subscription skipped: it will read them."""
        if not self.limit:
            return
        entries = self._entries
        for record, payload in items:
            key = (record.topic, record.offset)
            if key not in entries:
                entries[key] = (record.code, payload, {})
                self.size += len(payload)
        self._trim()

    def frame(self, record, framing):
        """``record``'s frame in ``framing`` for a first attempt, built once while it is kept."""
        if not self.limit:
            self.built += 1
            return framing.message(message.payload(record))
        key = (record.topic, record.offset)
        entry = self._entries.get(key)
        if entry is None or entry[0] != record.code:
            # not kept, or another message at that offset (a store emptied and filled again)
            if entry is not None:
                self._drop(key)
            entry = self._entries[key] = (record.code, message.payload(record), {})
            self.size += len(entry[1])
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
        _, payload, frames = self._entries.pop(key)
        self.size -= len(payload) + sum(_extra(frame, payload) for frame in frames.values())


def _extra(frame, payload):
    """The bytes ``frame`` adds to its payload's (a pull's frame is the payload itself)."""
    return 0 if frame is payload else len(frame)
