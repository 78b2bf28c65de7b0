"""The redis engine's record of who owns each subscription, and forgetting a subscription.

Both are Lua scripts (:mod:`dpmq.storage.redis.lua`: ``OWN``, ``FORGET``), so that two processes
racing to create one subscription record one owner, and a forgotten subscription leaves nothing
half deleted. The owner is read first without a script: it is on record for nearly every
connection after the first.
"""

import json
import time

from ..base import Ownership


class SubscriptionOwners:
    """Mixed into :class:`~dpmq.storage.redis.engine.RedisEngine`."""

    def own(self, topic, sub, owner, durable):
        name = f"{topic}|{sub}"
        raw = self._call(self.client.hget, self._key("subowner"), name)
        if raw is not None:
            found = _ownership(raw)
            if found.owner is not None or owner is None:
                return found
        return _ownership(self._run("OWN", name, owner or "", int(bool(durable)),
                                    repr(time.time())))

    def forget(self, topic, sub):
        self._run("FORGET", f"{topic}|{sub}")


def _ownership(raw):
    owner, durable = json.loads(raw)
    return Ownership(owner or None, bool(durable))
