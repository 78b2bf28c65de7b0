"""The ``memory`` engine: the original behaviour, fast, and nothing survives a restart.

It keeps the same contract as the durable engines (offsets, cursors, dead letters) so that the
broker has one delivery path; only durability is missing.
"""

import threading

from ..message import Record
from .base import Engine


class MemoryEngine(Engine):
    name = "memory"
    durable = False

    def __init__(self, storage_settings=None):
        self._lock = threading.Lock()
        self._logs = {}        # topic -> list of Record, offsets 1..n at index offset - 1
        self._cursors = {}     # (topic, sub) -> offset
        self._attempts = {}    # (topic, sub, offset) -> count
        self._dead = []        # dicts, oldest first
        self._on_commit = None

    def open(self, on_commit):
        self._on_commit = on_commit

    def close(self):
        pass

    def append(self, messages):
        with self._lock:
            records = []
            for code, topic, data, created in messages:
                log = self._logs.setdefault(topic, [])
                record = Record(len(log) + 1, code, topic, data, created)
                log.append(record)
                records.append(record)
            self._on_commit(records)
        return records

    def read(self, topic, after, limit, upto=None):
        with self._lock:
            log = self._logs.get(topic, [])
            end = len(log) if upto is None else min(upto, len(log))
            return log[max(after, 0):min(end, max(after, 0) + limit)]

    def head(self, topic):
        with self._lock:
            return len(self._logs.get(topic, ()))

    def heads(self):
        with self._lock:
            return {topic: len(log) for topic, log in self._logs.items() if log}

    def cursor(self, topic, sub):
        with self._lock:
            return self._cursors.get((topic, sub))

    def save_cursors(self, cursors):
        with self._lock:
            for key, offset in cursors.items():
                if offset > self._cursors.get(key, -1):
                    self._cursors[key] = offset

    def attempts(self, topic, sub, after):
        with self._lock:
            return {o: n for (t, s, o), n in self._attempts.items()
                    if t == topic and s == sub and o > after}

    def add_attempt(self, topic, sub, offset):
        with self._lock:
            key = (topic, sub, offset)
            self._attempts[key] = self._attempts.get(key, 0) + 1
            return self._attempts[key]

    def dead_letter(self, topic, sub, record, reason, attempts):
        with self._lock:
            self._attempts.pop((topic, sub, record.offset), None)
            self._dead.append({"topic": topic, "sub": sub, "offset": record.offset,
                               "code": record.code, "data": record.data, "reason": reason,
                               "attempts": attempts, "created": record.created})

    def dead_letters(self, topic=None, sub=None, limit=100):
        with self._lock:
            found = [d for d in reversed(self._dead)
                     if (topic is None or d["topic"] == topic) and (sub is None or d["sub"] == sub)]
            return found[:limit]

    def ping(self):
        pass
