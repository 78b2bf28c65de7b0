"""The ``redis`` engine: topic logs as Redis Streams, shared by every DPMQ process with one prefix.

Several processes (gunicorn workers, machines) with the same ``storage.redisUrl`` and
``storage.prefix`` are one broker. Every write that must be atomic is a Lua script
(:mod:`dpmq.storage.redis.lua`), so offsets stay contiguous whoever appends. Appends go through one
committer thread that sends every append waiting at that moment in one script call (group commit),
and hands the new records to ``on_commit`` in order. What other processes append, and this
process's heartbeat, are :mod:`dpmq.storage.redis.feed`'s.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` a ``code:0`` survives a
Redis restart; DPMQ warns at start when Redis keeps nothing on disk.
"""

import json
import logging
import os
import queue
import socket
import threading
import time
import uuid

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...errors import ConfigError, StoreError
from ...message import Appended, Record
from ..base import Engine
from . import lua
from .browse import BrowseQueries
from .feed import FeedFollower, from_json, record, text
from .owners import SubscriptionOwners
from .reports import ProcessReports

log = logging.getLogger(__name__)

MAX_BATCH = 1000            # messages per append script, so that one call never holds Redis long


class RedisEngine(FeedFollower, ProcessReports, BrowseQueries, SubscriptionOwners, Engine):
    name = "redis"
    durable = True
    shared = True

    def __init__(self, storage_settings):
        self.url = storage_settings.redisUrl
        prefix = storage_settings.prefix
        self.p = f"{{{prefix}}}"                # the hash tag keeps a broker's keys in one slot
        self.node_timeout = storage_settings.nodeTimeout
        self.timeout = storage_settings.redisTimeout
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        try:
            # No automatic retries: a script retried after a timeout could run twice. DPMQ's own
            # loops retry, and an append whose reply was lost is settled by CANCEL instead.
            self.client = redis.Redis.from_url(
                self.url, socket_timeout=storage_settings.redisTimeout,
                socket_connect_timeout=storage_settings.redisTimeout, health_check_interval=10,
                retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise ConfigError(f"storage.redisUrl is not a Redis URL ({exc});"
                              " write it like redis://127.0.0.1:6379/0") from None
        kwargs = self.client.connection_pool.connection_kwargs
        self.where = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        self._scripts = {name: self.client.register_script(getattr(lua, name))
                         for name in ("APPEND", "CANCEL", "PROMOTE", "SAVE_CURSORS", "REQUEUE", "CLAIM",
                                      "SETTLE", "HEARTBEAT", "LOCK", "UNLOCK", "PURGE", "OWN", "FORGET",
                                      "PURGE_OWNERS", "PURGE_CURSORS")}
        self._jobs = queue.SimpleQueue()
        self._closed = threading.Event()
        self._threads = []
        self._on_commit = self._on_remote = self._on_requeue = None
        self._fed = {}              # topic -> newest offset seen by the listener
        self._down_since = None
        self._reporter = None       # answers the other processes' gather_reports
        self._asks = queue.SimpleQueue()    # their requests, answered by the report thread

    # -- plumbing ----------------------------------------------------------------------------
    def _run(self, name, *args):
        return self._call(self._scripts[name], args=[self.p, *args])

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreError(f"Redis at {self.where} is unavailable ({exc.__class__.__name__}:"
                             f" {exc}); check that Redis is running and that storage.redisUrl"
                             " points at it") from None

    def _key(self, *parts):
        return ":".join((self.p,) + parts)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self, on_commit, on_remote=None, on_requeue=None):
        self._on_commit, self._on_remote, self._on_requeue = on_commit, on_remote, on_requeue
        self._check_redis_settings()
        self._fed = {topic: head for topic, head in self.heads().items()}
        self._heartbeat()
        targets = [("dpmq-redis-commit", self._commit_loop), ("dpmq-redis-beat", self._beat_loop),
                   ("dpmq-redis-report", self._report_loop)]
        if on_remote is not None:
            targets.append(("dpmq-redis-listen", self._listen_loop))
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _check_redis_settings(self):
        """Warn about Redis settings that would lose what DPMQ acknowledged."""
        config = self._call(self.client.config_get, "*")
        if config.get("appendonly") != "yes":
            log.warning("Redis at %s keeps nothing on disk (appendonly no): accepted messages are"
                        " lost if Redis restarts; set appendonly yes and appendfsync always", self.where)
        policy = config.get("maxmemory-policy", "noeviction")
        if config.get("maxmemory", "0") != "0" and policy != "noeviction":
            log.warning("Redis at %s may evict keys when full (maxmemory-policy %s): it would drop"
                        " messages DPMQ accepted; set maxmemory-policy noeviction", self.where, policy)

    def close(self):
        if self._closed.is_set():
            return
        self._closed.set()
        self._jobs.put(None)
        self._asks.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        try:        # expired at once: the others take over whatever it still holds
            self.client.zadd(self._key("nodes"), {self.node: 0})
        except redis.RedisError:
            pass
        self.client.close()

    def ping(self):
        self._call(self.client.ping)
        self._heartbeat()

    # -- the committer -----------------------------------------------------------------------
    def _commit_loop(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            size = len(job[0])
            while size < MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)
                    break
                batch.append(job)
                size += len(job[0])
            self._commit(batch)

    def _commit(self, batch):
        rows = [[m.code, m.topic, m.data, repr(m.created), m.key or False,
                 m.idempotency_key or False, repr(m.due), repr(m.expires), m.trace or False]
                for messages, _ in batch for m in messages]
        batch_id = uuid.uuid4().hex
        try:
            results = self._run("APPEND", self.node, repr(time.time()), json.dumps(rows), batch_id)
        except StoreError as exc:
            results = self._outcome(batch_id, rows, exc)
            if isinstance(results, StoreError):
                for _, reply in batch:
                    reply.put(results)
                return
        position = 0
        for messages, reply in batch:
            codes, records = [], []
            for m in messages:
                result = text(results[position])
                position += 1
                if result[0] == "o":
                    codes.append(m.code)
                    records.append(Record(int(result[1:]), m.code, m.topic, m.data, m.created, m.key,
                                          0.0, m.expires, m.trace))
                else:
                    codes.append(result[1:] if result[0] == "c" else m.code)
            if records:
                self._on_commit(records)
            reply.put(Appended(codes, records))

    def _outcome(self, batch_id, rows, error):
        """An append got no reply: it may have run, or still be on its way. Ask Redis, atomically:
        either it ran (its results, rebuilt) or it is cancelled for good (an error saying nothing
        was stored). If Redis cannot even be asked, the producer is told the outcome is unknown."""
        args = [batch_id] + [part for row in rows for part in (row[1], row[0], row[5] or "")]
        deadline = time.monotonic() + 2 * self.timeout
        while True:
            try:
                offsets = self._run("CANCEL", *args)
                break
            except StoreError:
                if time.monotonic() >= deadline or self._closed.is_set():
                    return StoreError(f"{error}. The message may or may not have been stored:"
                                      " publish it again with the same idempotencyKey to be sure"
                                      " it is stored once")
                time.sleep(0.1)
        if not offsets:
            return StoreError(f"{error}; nothing was stored")
        log.warning("an append whose reply was lost had been stored (batch %s)", batch_id)
        return offsets

    def append(self, messages):
        if self._closed.is_set():
            raise StoreError("the store is closed: the broker is shutting down")
        reply = queue.SimpleQueue()
        self._jobs.put((messages, reply))
        result = reply.get()
        if isinstance(result, Exception):
            raise result
        return result

    # -- messages ----------------------------------------------------------------------------
    def next_due(self):
        first = self._call(self.client.zrange, self._key("delayed"), 0, 0, withscores=True)
        return first[0][1] if first else None

    def promote_due(self, now, limit):
        rows = json.loads(self._run("PROMOTE", self.node, repr(now), limit))
        records = [Record(off, code, topic, data, float(created), key or None, float(due),
                          float(expires), trace or None)
                   for off, code, topic, data, created, key, due, expires, trace in rows]
        if records:
            self._on_commit(records)
        return records

    def read(self, topic, after, limit, upto=None):
        end = "+" if upto is None else f"{upto}-0"
        if upto is not None and upto <= after:
            return []
        entries = self._call(self.client.xrange, self._key("log", topic), f"{after + 1}-0", end,
                             count=limit)
        return [record(topic, entry_id, fields) for entry_id, fields in entries]

    def head(self, topic):
        value = self._call(self.client.hget, self._key("heads"), topic)
        return int(value) if value else 0

    def heads(self):
        found = self._call(self.client.hgetall, self._key("heads"))
        return {text(topic): int(head) for topic, head in found.items() if int(head)}

    def find(self, topic, code):
        value = self._call(self.client.hget, self._key("codes", topic), code)
        return int(value) if value is not None else None

    # -- subscriptions -----------------------------------------------------------------------
    def cursor(self, topic, sub):
        value = self._call(self.client.hget, self._key("cursors"), f"{topic}|{sub}")
        return int(value) if value is not None else None

    def forgotten(self, topic, sub):
        value = self._call(self.client.hget, self._key("forgotten"), f"{topic}|{sub}")
        return int(value) if value is not None else None

    def forgotten_since(self, since, limit):
        found = self._call(self.client.zrangebyscore, self._key("forgottent"), repr(float(since)),
                           "+inf", start=0, num=limit, withscores=True)
        if not found:
            return []
        cursors = self._call(self.client.hmget, self._key("forgotten"), [name for name, _ in found])
        return [(*text(name).split("|", 1), int(cursor), at)
                for (name, at), cursor in zip(found, cursors) if cursor is not None]

    def save_cursors(self, cursors):
        if cursors:
            args = [repr(time.time())]
            for (topic, sub), offset in cursors.items():
                args += [f"{topic}|{sub}", offset]
            self._run("SAVE_CURSORS", *args)

    def set_cursor(self, topic, sub, offset):
        name = f"{topic}|{sub}"
        pipe = self.client.pipeline()
        pipe.hset(self._key("cursors"), name, offset)
        pipe.zadd(self._key("cursorst"), {name: time.time()})
        pipe.delete(self._key("att", name))
        pipe.hdel(self._key("forgotten"), name)
        pipe.zrem(self._key("forgottent"), name)
        if sub.startswith("g:"):
            pipe.hset(self._key("gnext"), name, offset + 1)
            pipe.delete(self._key("gpend", name), self._key("gown", name), self._key("gretry", name))
        self._call(pipe.execute)

    def attempts(self, topic, sub, after):
        found = self._call(self.client.hgetall, self._key("att", f"{topic}|{sub}"))
        return {int(o): int(n) for o, n in found.items() if int(o) > after}

    def add_attempts(self, topic, sub, offsets):
        pipe = self.client.pipeline()
        for offset in offsets:
            pipe.hincrby(self._key("att", f"{topic}|{sub}"), offset, 1)
        return dict(zip(offsets, self._call(pipe.execute)))

    # -- dead letters ------------------------------------------------------------------------
    def dead_letter(self, topic, sub, record, reason, attempts):
        name, member = f"{topic}|{sub}", f"{topic}|{sub}|{record.offset}"
        now = time.time()
        letter = {"topic": topic, "sub": sub, "offset": record.offset, "code": record.code,
                  "data": record.data, "key": record.key, "reason": reason, "attempts": attempts,
                  "created": record.created, "expires": record.expires, "dead_at": now,
                  "trace": record.trace}
        pipe = self.client.pipeline()
        pipe.hdel(self._key("att", name), record.offset)
        pipe.zremrangebyscore(self._key("rq", name), record.offset, record.offset)
        pipe.zadd(self._key("dead"), {member: now})
        pipe.hset(self._key("deadmsg"), member, json.dumps(letter))
        self._call(pipe.execute)

    def dead_letters(self, topic=None, sub=None, limit=100):
        members = self._call(self.client.zrevrange, self._key("dead"), 0, -1)
        start = f"{topic}|{sub}|" if sub is not None else f"{topic}|" if topic is not None else ""
        chosen = [m for m in members if text(m).startswith(start)]
        if not chosen:
            return []
        found = [{"expires": 0.0, "trace": None, **json.loads(raw)}  # without: an earlier version
                 for raw in self._call(self.client.hmget, self._key("deadmsg"), chosen) if raw]
        found.sort(key=lambda d: (d["dead_at"], d["offset"]), reverse=True)
        return found[:limit]

    def requeue(self, topic, sub=None, code=None):
        moved = self._run("REQUEUE", topic, sub or "", code or "")
        out = {}
        for raw in moved:
            letter = json.loads(raw)
            out.setdefault((topic, letter["sub"]), []).append(from_json(raw))
        for key, records in out.items():
            records.sort()
            if key[1].startswith("c:"):     # a lone consumer may be connected to another process
                event = {"node": self.node, "kind": "requeue", "topic": key[0], "sub": key[1],
                         "records": [json.dumps(r._asdict()) for r in records]}
                self._call(self.client.publish, self._key("events"), json.dumps(event))
        return out

    def redeliveries(self, topic, sub):
        found = self._call(self.client.zrange, self._key("rq", f"{topic}|{sub}"), 0, -1)
        return [from_json(raw) for raw in found]

    def redelivered(self, topic, sub, offset):
        self._call(self.client.zremrangebyscore, self._key("rq", f"{topic}|{sub}"), offset, offset)

    # -- groups and consumers shared by processes --------------------------------------------
    def claim(self, topic, sub, upto, limit, cursor):
        """Take up to ``limit`` messages of group ``(topic, sub)`` for this process; returns
        ``[(record, attempts, requeued)]`` in offset order."""
        name = f"{topic}|{sub}"
        requeued, offsets = self._run("CLAIM", name, self.node, upto, limit, cursor)
        requeued = [from_json(raw) for raw in requeued]
        offsets = sorted(int(o) for o in offsets)
        if not requeued and not offsets:
            return []
        counts = self._call(self.client.hmget, self._key("att", name),
                            [r.offset for r in requeued] + offsets)
        out = [(record, int(n or 0), True) for record, n in zip(requeued, counts)]
        found = {record.offset: record for record in self._read_offsets(topic, offsets)}
        gone = [o for o in offsets if o not in found]
        if gone:                            # purged by retention meanwhile: nothing to deliver
            self.settle(topic, sub, [(o, False) for o in gone])
        out += [(found[o], int(n or 0), False) for o, n in zip(offsets, counts[len(requeued):])
                if o in found]
        out.sort(key=lambda item: item[0].offset)
        return out

    def _read_offsets(self, topic, offsets):
        """The records at ``offsets`` (sorted), one range read per run of consecutive offsets."""
        records, start = [], 0
        for i in range(1, len(offsets) + 1):
            if i == len(offsets) or offsets[i] != offsets[i - 1] + 1:
                first, last = offsets[start], offsets[i - 1]
                records += self.read(topic, first - 1, last - first + 1, last)
                start = i
        return records

    def settle(self, topic, sub, items, retry=False):
        """Messages of a group this process claimed are done (or, with ``retry``, to be handed
        out again); ``items`` are ``(offset, requeued)``."""
        return self._run("SETTLE", f"{topic}|{sub}", "retry" if retry else "done",
                         *[f"r{o}" if requeued else str(o) for o, requeued in items])

    def lock_consumer(self, topic, consumer_id):
        return self._run("LOCK", f"{topic}|{consumer_id}", self.node) == 1

    def unlock_consumer(self, topic, consumer_id):
        self._run("UNLOCK", f"{topic}|{consumer_id}", self.node)

    # -- retention ---------------------------------------------------------------------------
    def purge(self, before, keep_messages, limit, now=None):
        topics = list(self.heads())
        removed = self._run("PURGE", before, keep_messages, limit, *topics) if topics else 0
        now = time.time() if now is None else now
        self._run("PURGE_CURSORS", repr(float(before)), repr(float(now)))
        pipe = self.client.pipeline()
        for zset in ("dead", "idemt"):
            old = self._call(self.client.zrangebyscore, self._key(zset), "-inf", f"({before}")
            if not old:
                continue
            pipe.zrem(self._key(zset), *old)
            for member in old:
                name = text(member)
                if zset == "dead":
                    pipe.hdel(self._key("deadmsg"), name)
                else:
                    topic, _, key = name.partition("|")
                    pipe.hdel(self._key("idem", topic), key)
        self._call(pipe.execute)
        self._run("PURGE_OWNERS", before)
        return removed
