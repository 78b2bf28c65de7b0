"""The ``sqlite`` engine: the default, one file in WAL mode, with group commit.

Every write goes through one writer that lets concurrent callers share a transaction and its
fsync (:mod:`~dpmq.storage.sqlite.commit`). An append that is plain (messages due now, no
idempotency keys, topics that have started) is one multi-row insert that SQLite commits by itself.
Reads use a second connection, and the console's scans a third: WAL lets them run beside a commit,
and delivery's reads never wait behind the console.
"""

import itertools
import os
import sqlite3
import threading
import time

from ...errors import StoreError
from ...message import Appended, Record, from_columns
from ..base import Engine, OneProcess
from .browse import BrowseQueries
from .commit import GroupCommit
from .owners import SubscriptionOwners
from .schema import SCHEMA, add_missing_columns
from .store_lock import StoreLock

#: The columns of a Record, but ``due`` (0.0 for what is read back from a log).
_RECORD = "offset, code, topic, data, created, key, 0.0, expires, trace"
_COLUMNS = "offset, code, topic, data, created, key, expires, trace"
#: The most messages inserted by one statement (8 values each, well under SQLite's 32,766).
_ONE_INSERT = 1000


class SQLiteEngine(BrowseQueries, SubscriptionOwners, OneProcess, Engine):
    name = "sqlite"
    durable = True

    def __init__(self, storage_settings):
        self.path = storage_settings.path
        self.synchronous = storage_settings.synchronous.upper()
        self._writes = None         # the GroupCommit on the write connection, once open
        self._inserts = {}          # (n, shared) -> the statement inserting n messages
        self._read_lock = threading.Lock()
        self._reader = None
        # The console's queries scan, and take seconds on a big store: they get a connection and
        # a lock of their own, so that delivery's reads and /readyz never wait behind them.
        self._browse_lock = threading.Lock()
        self._browser = None
        self._writer = None
        self._store_lock = StoreLock(self.path)

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect(self):
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                 check_same_thread=False)
            db.execute("pragma journal_mode=wal")
            db.execute(f"pragma synchronous={self.synchronous}")
            db.execute("pragma busy_timeout=30000")
            return db
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the SQLite store {self.path!r}: {exc}. Check that the file"
                             " is a DPMQ database and that its folder is writable, or set"
                             " storage.path to a new file.") from None

    def open(self, on_commit, on_remote=None, on_requeue=None):
        """Take the store's lock (a second broker on the file is refused with ConfigError, see
        :mod:`~dpmq.storage.sqlite.store_lock`), then open and check the file."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._store_lock.acquire()
        try:
            self._writer = self._connect()
            try:
                for statement in SCHEMA:
                    self._writer.execute(statement)
                add_missing_columns(self._writer)
                self._writer.execute("pragma quick_check(1)")
                heads = dict(self._writer.execute(
                    "select topic, max(head, coalesce((select max(offset) from messages m"
                    " where m.topic = t.topic), 0)) from topics t"))
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"the SQLite store {self.path!r} is unusable: {exc}. Restore it"
                                 " from a backup or point storage.path at a new file.") from None
            self._reader = self._connect()
            self._browser = self._connect()
            self._writes = GroupCommit(self._writer, heads, on_commit, self.path)
        except BaseException:
            for db in (self._browser, self._reader, self._writer):
                if db is not None:
                    db.close()
            self._browser = self._reader = self._writer = None
            self._store_lock.release()
            raise

    def close(self):
        if self._writes is None:
            return
        self._writes.close(self._browser, self._reader)
        self._store_lock.release()

    def _write(self, run, appends=False, alone=False):
        return self._writes.write(run, appends, alone)

    # -- writes ------------------------------------------------------------------------------
    @staticmethod
    def _numbered(heads, rows):
        """Records of ``rows`` of (code, topic, data, created, key, due, expires, trace), each given
        the offset after its topic's head (``heads`` moves on), and the topics that start here."""
        records, new_topics = [], []
        for code, topic, data, created, key, due, expires, trace in rows:
            offset = heads.get(topic, 0) + 1
            if topic not in heads:
                new_topics.append(topic)
            heads[topic] = offset
            records.append(Record(offset, code, topic, data, created, key, due, expires, trace))
        return records, new_topics

    def _insert(self, db, heads, rows):
        """Number ``rows`` and insert them; returns records."""
        records, new_topics = self._numbered(heads, rows)
        db.executemany(f"insert into messages ({_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?)",
                       [record[:6] + record[7:] for record in records])
        # A topic's row is written when it starts, and its head when messages are purged (see
        # purge), not on every commit: rewriting that page each time was a large part of the cost
        # of a single publish. Between the two the newest offset is the last message's, which
        # open() takes into account.
        if new_topics:
            db.executemany("insert into topics (topic, head) values (?, ?) on conflict (topic)"
                           " do update set head = max(head, excluded.head)",
                           [(topic, heads[topic]) for topic in set(new_topics)])
        return records

    def _insert_at_once(self, db, heads, columns):
        """``_insert`` in one statement, for messages of topics that have started; ``columns``:
        their codes, topics, texts, creation times, keys, expiry times and traceparents, of which
        the records are built without a Python call per message."""
        codes, topics, texts, created, keys, expires, traces = columns
        count, topic = len(codes), topics[0]
        one_topic = topics.count(topic) == count    # the usual batch
        if one_topic:
            first = heads[topic] + 1
            offsets = range(first, first + count)
            heads[topic] = offsets[-1]
        else:
            offsets = []
            for topic in topics:
                heads[topic] += 1
                offsets.append(heads[topic])
        shared = (one_topic and created.count(created[0]) == count
                  and keys.count(keys[0]) == count and expires.count(expires[0]) == count
                  and traces.count(traces[0]) == count)
        if shared:
            values = [offsets[0], topic, created[0], keys[0], expires[0], traces[0]]
            values += itertools.chain.from_iterable(zip(codes, texts))
        else:
            values = list(itertools.chain.from_iterable(
                zip(offsets, codes, topics, texts, created, keys, expires, traces)))
        db.execute(self._insert_sql(count, shared), values)
        return from_columns(Record, offsets, codes, topics, texts, created, keys,
                            itertools.repeat(0.0), expires, traces)

    def _insert_sql(self, count, shared):
        """The statement inserting ``count`` messages: eight values each or, when they ``shared``
        one topic, time, key, expiry and traceparent (a batch), the first offset and those once,
        then a code and a text each, so that a batch binds about a quarter as many values."""
        sql = self._inserts.get((count, shared))
        if sql is None:
            rows = ([f"(?1 + {n}, ?{7 + 2 * n}, ?2, ?{8 + 2 * n}, ?3, ?4, ?5, ?6)"
                     for n in range(count)] if shared else ["(?, ?, ?, ?, ?, ?, ?, ?)"] * count)
            sql = self._inserts[count, shared] = (f"insert into messages ({_COLUMNS}) values "
                                                  + ", ".join(rows))
        return sql

    def append(self, messages):
        now = time.time()
        if 0 < len(messages) <= _ONE_INSERT:
            (codes, topics, texts, created, keys, idempotency_keys, dues, expires,
             traces) = zip(*messages)
            if (not any(dues) and idempotency_keys.count(None) == len(messages)
                    and self._writes.heads.keys() >= set(topics)):
                columns = (codes, topics, texts, created, keys, expires, traces)
                return self._write(lambda db, heads: Appended(
                    list(codes), self._insert_at_once(db, heads, columns)), appends=True, alone=True)

        def run(db, heads):
            codes, fresh, delayed, seen = [], [], [], {}
            for m in messages:
                if m.idempotency_key is not None:
                    ikey = (m.topic, m.idempotency_key)
                    earlier = seen.get(ikey) or db.execute(
                        "select code from idempotency where topic = ? and key = ?", ikey).fetchone()
                    if earlier:
                        codes.append(earlier[0])
                        continue
                    seen[ikey] = (m.code,)
                    db.execute("insert into idempotency (topic, key, code, created) values (?, ?, ?, ?)",
                               (m.topic, m.idempotency_key, m.code, m.created))
                codes.append(m.code)
                row = (m.code, m.topic, m.data, m.created, m.key)
                if m.due > now:
                    delayed.append(row + (m.due, m.expires, m.trace))
                else:
                    fresh.append(row + (0.0, m.expires, m.trace))
            if delayed:
                db.executemany("insert into delayed (code, topic, data, created, key, due, expires,"
                               " trace) values (?, ?, ?, ?, ?, ?, ?, ?)", delayed)
            return Appended(codes, self._insert(db, heads, fresh))
        return self._write(run, appends=True)

    def next_due(self):
        return self._query("select min(due) from delayed")[0][0]

    def promote_due(self, now, limit):
        def run(db, heads):
            rows = db.execute("select code, topic, data, created, key, due, expires, trace from delayed"
                              " where due <= ? order by due, code limit ?", (now, limit)).fetchall()
            db.executemany("delete from delayed where code = ?", [(row[0],) for row in rows])
            return Appended([row[0] for row in rows], self._insert(db, heads, rows))
        return self._write(run, appends=True).records

    def save_cursors(self, cursors):
        if not cursors:
            return
        now = time.time()

        def run(db, heads):
            db.executemany(
                "insert into subscriptions (topic, sub, cursor, updated) values (?, ?, ?, ?)"
                " on conflict (topic, sub) do update set cursor = max(cursor, excluded.cursor),"
                " updated = excluded.updated",
                [(topic, sub, offset, now) for (topic, sub), offset in cursors.items()])
        self._write(run)

    def set_cursor(self, topic, sub, offset):
        def run(db, heads):
            db.execute("insert or replace into subscriptions (topic, sub, cursor, updated)"
                       " values (?, ?, ?, ?)", (topic, sub, offset, time.time()))
            db.execute("delete from attempts where topic = ? and sub = ?", (topic, sub))
        self._write(run)

    def add_attempts(self, topic, sub, offsets):
        def run(db, heads):
            counts = {}
            for offset in offsets:
                counts[offset] = db.execute(
                    "insert into attempts (topic, sub, offset, count) values (?, ?, ?, 1)"
                    " on conflict (topic, sub, offset) do update set count = count + 1"
                    " returning count", (topic, sub, offset)).fetchone()[0]
            return counts
        return self._write(run)

    def dead_letter(self, topic, sub, record, reason, attempts):
        def run(db, heads):
            where = (topic, sub, record.offset)
            db.execute("delete from attempts where topic = ? and sub = ? and offset = ?", where)
            db.execute("delete from requeued where topic = ? and sub = ? and offset = ?", where)
            db.execute("insert or replace into dead_letters (topic, sub, offset, code, data, key,"
                       " reason, attempts, created, dead_at, expires, trace)"
                       " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (topic, sub, record.offset, record.code, record.data, record.key, reason,
                        attempts, record.created, time.time(), record.expires, record.trace))
        self._write(run)

    def requeue(self, topic, sub=None, code=None):
        def run(db, heads):
            rows = db.execute(
                "select sub, offset, code, topic, data, created, key, 0.0, expires, trace"
                " from dead_letters"
                " where topic = ?1 and (?2 is null or sub = ?2) and (?3 is null or code = ?3)"
                " order by sub, offset", (topic, sub, code)).fetchall()
            out = {}
            for row in rows:
                record = Record(*row[1:])
                out.setdefault((topic, row[0]), []).append(record)
                db.execute("delete from dead_letters where topic = ? and sub = ? and offset = ?",
                           (topic, row[0], record.offset))
                db.execute("insert or replace into requeued (topic, sub, offset, code, data, key,"
                           " created, expires, trace) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (topic, row[0], record.offset, record.code, record.data, record.key,
                            record.created, record.expires, record.trace))
            return out
        return self._write(run)

    def redelivered(self, topic, sub, offset):
        self._write(lambda db, heads: db.execute(
            "delete from requeued where topic = ? and sub = ? and offset = ?", (topic, sub, offset)))

    def purge(self, before, keep_messages, limit, now=None):
        now = time.time() if now is None else now

        def run(db, heads):
            # Purging a whole topic must not let its offsets start again at 1 under cursors
            # that are already further: the heads are saved first.
            db.executemany("update topics set head = ? where topic = ? and head < ?",
                           [(head, topic, head) for topic, head in heads.items()])
            removed = 0
            for topic, head in list(heads.items()):
                if removed >= limit:
                    break
                keep_from = head - keep_messages + 1 if keep_messages else 0
                removed += db.execute(
                    "delete from messages where topic = ?1 and offset in (select offset from messages"
                    " where topic = ?1 and (created < ?2 or offset < ?3) order by offset limit ?4)",
                    (topic, before, keep_from, limit - removed)).rowcount
            # Where idle subscriptions stood is kept one more retention period (see forgotten).
            db.execute("delete from forgotten where forgotten_at < ?", (before,))
            db.execute("insert or replace into forgotten (topic, sub, cursor, forgotten_at)"
                       " select topic, sub, cursor, ? from subscriptions where updated < ?",
                       (now, before))
            db.execute("delete from subscriptions where updated < ?", (before,))
            db.execute("delete from owners where created < ? and not exists (select 1 from"
                       " subscriptions s where s.topic = owners.topic and s.sub = owners.sub)",
                       (before,))
            db.execute("delete from dead_letters where dead_at < ?", (before,))
            db.execute("delete from idempotency where created < ?", (before,))
            db.execute("delete from attempts where not exists (select 1 from subscriptions s where"
                       " s.topic = attempts.topic and s.sub = attempts.sub"
                       " and s.cursor < attempts.offset)")
            return removed
        return self._write(run)

    # -- reads -------------------------------------------------------------------------------
    def _query(self, sql, args=()):
        return self._read_on(self._reader, self._read_lock, sql, args)

    def _browse(self, sql, args=()):
        """A console query, on the browsing connection (see ``__init__``)."""
        return self._read_on(self._browser, self._browse_lock, sql, args)

    def _read_on(self, db, lock, sql, args):
        try:
            with lock:
                return db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"the SQLite store {self.path!r} could not be read: {exc}") from None

    def read(self, topic, after, limit, upto=None):
        rows = self._query(f"select {_RECORD} from messages where topic = ? and offset > ?"
                           " and offset <= ? order by offset limit ?",
                           (topic, after, (1 << 62) if upto is None else upto, limit))
        return [Record(*row) for row in rows]

    def head(self, topic):
        return self._writes.heads.get(topic, 0)     # replaced whole after each commit: safe to read

    def heads(self):
        return dict(self._writes.heads)

    def find(self, topic, code):
        rows = self._query("select offset from messages where code = ? and topic = ?", (code, topic))
        return rows[0][0] if rows else None

    def cursor(self, topic, sub):
        rows = self._query("select cursor from subscriptions where topic = ? and sub = ?", (topic, sub))
        return rows[0][0] if rows else None

    def forgotten(self, topic, sub):
        rows = self._query("select cursor from forgotten where topic = ? and sub = ?", (topic, sub))
        return rows[0][0] if rows else None

    def forgotten_since(self, since, limit):
        return [tuple(row) for row in self._query(
            "select topic, sub, cursor, forgotten_at from forgotten where forgotten_at >= ?"
            " order by forgotten_at limit ?", (since, limit))]

    def attempts(self, topic, sub, after):
        return dict(self._query("select offset, count from attempts where topic = ? and sub = ?"
                                " and offset > ?", (topic, sub, after)))

    def dead_letters(self, topic=None, sub=None, limit=100):
        rows = self._query(
            "select topic, sub, offset, code, data, key, reason, attempts, created, expires,"
            " dead_at, trace from dead_letters where (?1 is null or topic = ?1) and (?2 is null or sub = ?2)"
            " order by dead_at desc, offset desc limit ?3", (topic, sub, limit))
        keys = ("topic", "sub", "offset", "code", "data", "key", "reason", "attempts", "created",
                "expires", "dead_at", "trace")
        return [dict(zip(keys, row)) for row in rows]

    def redeliveries(self, topic, sub):
        rows = self._query(f"select {_RECORD} from requeued where topic = ? and sub = ?"
                           " order by offset", (topic, sub))
        return [Record(*row) for row in rows]

    def ping(self):
        self._query("select 1")
        self._write(lambda db, heads: db.execute(
            "insert or replace into probe (id, at) values (1, ?)", (time.time(),)))
