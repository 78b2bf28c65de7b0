"""Which cursors a shard hands the housekeeping thread to save, and when each was last saved.

Only the cursors of subscriptions that moved since the last save are computed and written: with
many idle consumers, rewriting every cursor at every sweep was most of what an idle broker wrote.
The ones that did not move are written again only when retention asks (``stale``), so that it
never takes a connected but quiet subscription for a forgotten one.
"""

import time


class CursorLedger:
    """A shard's record of cursors to save. Not thread-safe: the shard's thread owns it, except
    :attr:`touched`, which the housekeeping thread reads without a lock (a subscription touched
    just after is taken the next time)."""

    def __init__(self):
        self.moved = set()          # subscriptions touched since the cursors were last taken
        self.left = {}              # (topic, key) -> cursor of a subscription that left, unsaved
        self._saved = {}            # (topic, key) -> (cursor, time.time()) when last taken

    @property
    def touched(self):
        return bool(self.moved or self.left)

    def loaded(self, key, cursor, saved_at):
        """A subscription came into the shard with ``cursor``, saved at ``saved_at`` (0 when
        unknown: the first sweep then saves it)."""
        self._saved[key] = (cursor, saved_at)

    def forget(self, key):
        self._saved.pop(key, None)

    def take(self, subs, stale):
        """The cursors to save now, ``{(topic, key): position}``: those of the subscriptions in
        ``subs`` (the shard's, by key) that moved since the last call, those in :attr:`left`
        and, when ``stale`` is a time, those last taken then or before."""
        now = time.time()
        out = {}
        for sub in self.moved:
            key = (sub.topic, sub.key)
            if subs.get(key) is sub:
                position = sub.position()
                if position != self._saved[key][0]:
                    out[key] = position
        self.moved = set()
        if stale is not None:
            for key, (_, saved_at) in self._saved.items():
                if saved_at <= stale and key not in out:
                    out[key] = subs[key].position()      # the two are kept in step
        self._saved.update((key, (position, now)) for key, position in out.items())
        left, self.left = self.left, {}
        return {**left, **out}      # a subscription back since it left is where it is now
