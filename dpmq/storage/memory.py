"""The ``memory`` engine: the original behaviour, fast, and nothing survives a restart.

It keeps the same contract as the durable engines (offsets, cursors, delays, dead letters) so that
the broker has one delivery path; only durability is missing.
"""

import heapq
import itertools
import threading
import time

from ..message import Appended, Record, from_columns
from .base import Engine, OneProcess, Ownership


def _newest_first(topic):
    """The order of :meth:`~dpmq.storage.base.ConsoleStore.messages`: by offset within one topic,
    by age across topics."""
    if topic is not None:
        return lambda m: -m["offset"]
    return lambda m: (-m["created"], -m["offset"])


class _Log:
    """One topic: records in offset order; ``first`` is the offset of ``records[0]``."""

    def __init__(self):
        self.records = []
        self.first = 1
        self.head = 0


class MemoryEngine(OneProcess, Engine):
    name = "memory"
    durable = False

    def __init__(self, storage_settings=None):
        self._lock = threading.Lock()
        self._logs = {}             # topic -> _Log
        self._codes = {}            # (topic, code) -> offset
        self._cursors = {}          # (topic, sub) -> [offset, updated]
        self._attempts = {}         # (topic, sub, offset) -> count
        self._dead = {}             # (topic, sub, offset) -> dict
        self._requeued = {}         # (topic, sub) -> {offset: Record}
        self._idempotency = {}      # (topic, key) -> (code, created)
        self._owners = {}           # (topic, sub) -> (Ownership, recorded at)
        self._forgotten = {}        # (topic, sub) -> (cursor, forgotten at), see purge
        self._delayed = []          # heap of (due, seq, NewMessage)
        self._seq = itertools.count()
        self._on_commit = None

    def open(self, on_commit, on_remote=None, on_requeue=None):
        self._on_commit = on_commit

    def close(self):
        pass

    def ping(self):
        pass

    # -- messages ----------------------------------------------------------------------------
    def _add(self, message):
        log = self._logs.setdefault(message.topic, _Log())
        log.head += 1
        record = Record(log.head, message.code, message.topic, message.data, message.created,
                        message.key, 0.0, message.expires, message.trace)
        log.records.append(record)
        if message.due:
            record = record._replace(due=message.due)
        self._codes[(message.topic, message.code)] = record.offset
        return record

    def _add_run(self, topic, codes, texts, created, keys, expires, traces):
        """:meth:`_add` for messages of one topic due now (a batch), in bulk."""
        log = self._logs.setdefault(topic, _Log())
        offsets = range(log.head + 1, log.head + 1 + len(codes))
        log.head = offsets[-1]
        records = from_columns(Record, offsets, codes, itertools.repeat(topic), texts, created,
                               keys, itertools.repeat(0.0), expires, traces)
        log.records += records
        self._codes.update(zip(zip(itertools.repeat(topic), codes), offsets))
        return records

    def append(self, messages):
        if messages:
            (codes, topics, texts, created, keys, idempotency_keys, dues, expires,
             traces) = zip(*messages)
            if (not any(dues) and idempotency_keys.count(None) == len(messages)
                    and topics.count(topics[0]) == len(topics)):
                with self._lock:
                    records = self._add_run(topics[0], codes, texts, created, keys, expires,
                                            traces)
                    self._on_commit(records)
                return Appended(list(codes), records)
        with self._lock:
            codes, records, seen = [], [], {}
            for message in messages:
                ikey = (message.topic, message.idempotency_key)
                if message.idempotency_key is not None:
                    earlier = seen.get(ikey) or self._idempotency.get(ikey)
                    if earlier:
                        codes.append(earlier[0])
                        continue
                    seen[ikey] = (message.code, message.created)
                codes.append(message.code)
                if message.due > time.time():
                    heapq.heappush(self._delayed, (message.due, next(self._seq), message))
                else:
                    records.append(self._add(message))
            self._idempotency.update(seen)
            if records:
                self._on_commit(records)
        return Appended(codes, records)

    def next_due(self):
        with self._lock:
            return self._delayed[0][0] if self._delayed else None

    def promote_due(self, now, limit):
        with self._lock:
            records = []
            while self._delayed and self._delayed[0][0] <= now and len(records) < limit:
                records.append(self._add(heapq.heappop(self._delayed)[2]))
            if records:
                self._on_commit(records)
            return records

    def read(self, topic, after, limit, upto=None):
        with self._lock:
            log = self._logs.get(topic)
            if log is None:
                return []
            end = log.head if upto is None else min(upto, log.head)
            start = max(after + 1, log.first)
            return log.records[start - log.first:max(start, min(end + 1, start + limit)) - log.first]

    def head(self, topic):
        with self._lock:
            log = self._logs.get(topic)
            return log.head if log else 0

    def heads(self):
        with self._lock:
            return {topic: log.head for topic, log in self._logs.items() if log.head}

    def find(self, topic, code):
        with self._lock:
            return self._codes.get((topic, code))

    # -- browsing, for the console ----------------------------------------------------------
    def _floor(self, topic):
        cursors = [c[0] for (t, _), c in self._cursors.items() if t == topic]
        return min(cursors) if cursors else 1 << 62

    def topics(self):
        with self._lock:
            out = {}
            for topic, log in self._logs.items():
                out[topic] = {"head": log.head, "retained": len(log.records), "subscriptions": 0,
                              "deadLetters": 0, "delayed": 0}
            empty = {"head": 0, "retained": 0, "subscriptions": 0, "deadLetters": 0, "delayed": 0}
            for topic, _ in self._cursors:
                out.setdefault(topic, dict(empty))["subscriptions"] += 1
            for topic, _, _ in self._dead:
                out.setdefault(topic, dict(empty))["deadLetters"] += 1
            for _, _, message in self._delayed:
                out.setdefault(message.topic, dict(empty))["delayed"] += 1
            return out

    def messages(self, topic=None, status=None, limit=50, before=None, code=None):
        with self._lock:
            if status == "delayed":
                found = [dict(offset=0, code=m.code, topic=m.topic, data=m.data, created=m.created,
                              key=m.key, expires=m.expires, status="delayed")
                         for _, _, m in sorted(self._delayed)
                         if (topic is None or m.topic == topic) and (code is None or m.code == code)]
                return found[:limit]
            if status == "dead":
                found = [dict(offset=d["offset"], code=d["code"], topic=d["topic"], data=d["data"],
                              created=d["created"], key=d["key"], expires=d["expires"],
                              status="dead")
                         for d in self._dead.values()
                         if (topic is None or d["topic"] == topic) and (code is None or d["code"] == code)
                         and (before is None or d["offset"] < before)]
                return sorted(found, key=lambda d: -d["offset"])[:limit]
            found = []
            for name, log in self._logs.items():
                if topic is not None and name != topic:
                    continue
                floor = self._floor(name)
                for record in reversed(log.records):
                    if (before is not None and record.offset >= before) or \
                            (code is not None and record.code != code):
                        continue
                    state = "pending" if record.offset > floor else "delivered"
                    if status is None or status == state:
                        found.append(dict(offset=record.offset, code=record.code, topic=name,
                                          data=record.data, created=record.created, key=record.key,
                                          expires=record.expires, status=state))
                        if len(found) >= limit and topic is not None:
                            break
            found.sort(key=_newest_first(topic))
            return found[:limit]

    def count_messages(self, topic=None):
        with self._lock:
            pending = retained = 0
            for name, log in self._logs.items():
                if topic is None or name == topic:
                    floor = self._floor(name)
                    retained += len(log.records)
                    pending += sum(1 for r in log.records if r.offset > floor)
            return {"delayed": sum(1 for _, _, m in self._delayed if topic in (None, m.topic)),
                    "pending": pending, "delivered": retained - pending,
                    "dead": sum(1 for t, _, _ in self._dead if topic in (None, t))}

    # -- subscriptions -----------------------------------------------------------------------
    def cursor(self, topic, sub):
        with self._lock:
            entry = self._cursors.get((topic, sub))
            return entry[0] if entry else None

    def forgotten(self, topic, sub):
        with self._lock:
            entry = self._forgotten.get((topic, sub))
            return entry[0] if entry else None

    def forgotten_since(self, since, limit):
        with self._lock:
            found = [(topic, sub, cursor, at) for (topic, sub), (cursor, at)
                     in self._forgotten.items() if at >= since]
        return sorted(found, key=lambda entry: entry[3])[:limit]

    def save_cursors(self, cursors):
        now = time.time()
        with self._lock:
            for key, offset in cursors.items():
                old = self._cursors.get(key)
                if old is None:
                    self._forgotten.pop(key, None)
                self._cursors[key] = [offset if old is None else max(old[0], offset), now]

    def set_cursor(self, topic, sub, offset):
        with self._lock:
            self._cursors[(topic, sub)] = [offset, time.time()]
            self._forgotten.pop((topic, sub), None)
            for key in [k for k in self._attempts if k[0] == topic and k[1] == sub]:
                del self._attempts[key]

    def attempts(self, topic, sub, after):
        with self._lock:
            return {o: n for (t, s, o), n in self._attempts.items()
                    if t == topic and s == sub and o > after}

    def add_attempts(self, topic, sub, offsets):
        with self._lock:
            counts = {}
            for offset in offsets:
                key = (topic, sub, offset)
                counts[offset] = self._attempts[key] = self._attempts.get(key, 0) + 1
            return counts

    def own(self, topic, sub, owner, durable):
        with self._lock:
            key = (topic, sub)
            found = self._owners.get(key)
            if found is None:
                found = (Ownership(owner, durable or key in self._cursors), time.time())
            elif found[0].owner is None and owner is not None:
                found = (found[0]._replace(owner=owner), found[1])
            self._owners[key] = found
            return found[0]

    def forget(self, topic, sub):
        with self._lock:
            key = (topic, sub)
            self._cursors.pop(key, None)
            self._owners.pop(key, None)
            self._requeued.pop(key, None)
            self._forgotten.pop(key, None)
            for table in (self._attempts, self._dead):
                for gone in [k for k in table if k[:2] == key]:
                    del table[gone]

    # -- dead letters ------------------------------------------------------------------------
    def dead_letter(self, topic, sub, record, reason, attempts):
        with self._lock:
            self._attempts.pop((topic, sub, record.offset), None)
            requeued = self._requeued.get((topic, sub))
            if requeued:
                requeued.pop(record.offset, None)
            self._dead[(topic, sub, record.offset)] = {
                "topic": topic, "sub": sub, "offset": record.offset, "code": record.code,
                "data": record.data, "key": record.key, "reason": reason, "attempts": attempts,
                "created": record.created, "expires": record.expires, "dead_at": time.time(),
                "trace": record.trace}

    def dead_letters(self, topic=None, sub=None, limit=100):
        with self._lock:
            found = [dict(d) for d in self._dead.values()
                     if (topic is None or d["topic"] == topic) and (sub is None or d["sub"] == sub)]
        found.sort(key=lambda d: (d["dead_at"], d["offset"]), reverse=True)
        return found[:limit]

    def requeue(self, topic, sub=None, code=None):
        with self._lock:
            chosen = [key for key, d in self._dead.items() if key[0] == topic
                      and (sub is None or key[1] == sub) and (code is None or d["code"] == code)]
            out = {}
            for key in chosen:
                d = self._dead.pop(key)
                record = Record(d["offset"], d["code"], d["topic"], d["data"], d["created"], d["key"],
                                0.0, d["expires"], d["trace"])
                self._requeued.setdefault(key[:2], {})[record.offset] = record
                out.setdefault(key[:2], []).append(record)
            for records in out.values():
                records.sort()
            return out

    def redeliveries(self, topic, sub):
        with self._lock:
            return sorted(self._requeued.get((topic, sub), {}).values())

    def redelivered(self, topic, sub, offset):
        with self._lock:
            self._requeued.get((topic, sub), {}).pop(offset, None)

    # -- retention ---------------------------------------------------------------------------
    def purge(self, before, keep_messages, limit, now=None):
        now = time.time() if now is None else now
        with self._lock:
            removed = 0
            for topic, log in self._logs.items():
                keep_from = log.head - keep_messages + 1 if keep_messages else 0
                records, count, most = log.records, 0, min(len(log.records), limit - removed)
                while count < most and (records[count].created < before
                                        or records[count].offset < keep_from):
                    count += 1
                for record in log.records[:count]:
                    self._codes.pop((topic, record.code), None)
                del log.records[:count]
                log.first += count
                removed += count
                if removed >= limit:
                    break
            for key in [k for k, (_, at) in self._forgotten.items() if at < before]:
                del self._forgotten[key]
            for key in [k for k, (_, updated) in self._cursors.items() if updated < before]:
                self._forgotten[key] = (self._cursors.pop(key)[0], now)
            for key in [k for k, (_, at) in self._owners.items()
                        if at < before and k not in self._cursors]:
                del self._owners[key]
            for key in [k for k, d in self._dead.items() if d["dead_at"] < before]:
                del self._dead[key]
            for key in [k for k, (_, created) in self._idempotency.items() if created < before]:
                del self._idempotency[key]
            for key in [k for k in self._attempts
                        if self._cursors.get(k[:2], (0,))[0] >= k[2] or k[:2] not in self._cursors]:
                del self._attempts[key]
            return removed
