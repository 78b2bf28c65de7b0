"""The Redis engine's read-only queries for the console: topics, the message browser, counts.

Kept apart from the engine's write path. They scan hashes and streams: they are for people looking
at the broker, not for delivery.
"""

import json

from .feed import record, text

FAR = 1 << 62


class BrowseQueries:
    """Mixed into :class:`~dpmq.storage.redis.engine.RedisEngine`."""

    def _floors(self):
        """``{topic: lowest cursor}`` and ``{topic: subscriptions}``."""
        floors, subs = {}, {}
        for name, cursor in self._call(self.client.hgetall, self._key("cursors")).items():
            topic = text(name).split("|", 1)[0]
            floors[topic] = min(floors.get(topic, FAR), int(cursor))
            subs[topic] = subs.get(topic, 0) + 1
        return floors, subs

    def _delayed(self):
        codes = self._call(self.client.zrange, self._key("delayed"), 0, -1)
        if not codes:
            return []
        raws = self._call(self.client.hmget, self._key("delayedmsg"), codes)
        return [json.loads(raw) for raw in raws if raw]

    def topics(self):
        heads = self.heads()
        floors, subs = self._floors()
        names = set(heads) | set(subs)
        dead = [d["topic"] for d in self.dead_letters(limit=FAR)]
        delayed = [m[1] for m in self._delayed()]
        names |= set(dead) | set(delayed)
        pipe = self.client.pipeline()
        for topic in sorted(names):
            pipe.xlen(self._key("log", topic))
        lengths = dict(zip(sorted(names), self._call(pipe.execute)))
        return {topic: {"head": heads.get(topic, 0), "retained": lengths[topic],
                        "subscriptions": subs.get(topic, 0), "deadLetters": dead.count(topic),
                        "delayed": delayed.count(topic)} for topic in names}

    def messages(self, topic=None, status=None, limit=50, before=None, code=None):
        if status == "delayed":
            return [dict(offset=0, code=m[0], topic=m[1], data=m[2], created=float(m[3]),
                         key=m[4] or None, expires=float(m[7]) if len(m) > 7 else 0.0,
                         status="delayed") for m in self._delayed()
                    if topic in (None, m[1]) and code in (None, m[0])][:limit]
        if status == "dead":
            found = [dict(offset=d["offset"], code=d["code"], topic=d["topic"], data=d["data"],
                          created=d["created"], key=d["key"], expires=d["expires"], status="dead")
                     for d in self.dead_letters(topic=topic, limit=FAR)
                     if code in (None, d["code"]) and (before is None or d["offset"] < before)]
            return sorted(found, key=lambda d: -d["offset"])[:limit]
        floors, _ = self._floors()
        found = []
        for name in ([topic] if topic is not None else sorted(self.heads())):
            found += self._browse(name, floors.get(name, FAR), status, limit, before, code)
        if topic is None:                   # one topic is newest first already, by offset
            found.sort(key=lambda m: (-m["created"], -m["offset"]))
        return found[:limit]

    def _browse(self, topic, floor, status, limit, before, code):
        """Newest first, up to ``limit`` messages of one topic that match."""
        found, end, start, count = [], "+" if before is None else f"({before}-0", "-", max(limit, 100)
        if code is not None:
            offset = self.find(topic, code)
            if offset is None or (before is not None and offset >= before):
                return []
            end = start = f"{offset}-0"
        while len(found) < limit:
            entries = self._call(self.client.xrevrange, self._key("log", topic), end, start,
                                 count=count)
            for entry_id, fields in entries:
                message = record(topic, entry_id, fields)._asdict()
                del message["due"], message["trace"]
                message["status"] = "pending" if message["offset"] > floor else "delivered"
                if status in (None, message["status"]):
                    found.append(message)
            if len(entries) < count:
                break
            end = f"({entries[-1][0].decode()}"
        return found[:limit]

    def count_messages(self, topic=None):
        floors, _ = self._floors()
        pending = retained = 0
        for name, head in self.heads().items():
            if topic not in (None, name):
                continue
            length = self._call(self.client.xlen, self._key("log", name))
            retained += length
            if length:
                first = self._call(self.client.xrange, self._key("log", name), "-", "+", count=1)
                lowest = int(first[0][0].split(b"-", 1)[0])
                pending += max(0, head - max(floors.get(name, FAR), lowest - 1))
        delayed = sum(1 for m in self._delayed() if topic in (None, m[1]))
        dead = len(self.dead_letters(topic=topic, limit=FAR))
        return {"delayed": delayed, "pending": pending, "delivered": retained - pending, "dead": dead}
