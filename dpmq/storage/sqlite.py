"""The ``sqlite`` engine: the default, one file in WAL mode, with group commit.

All writes go through one committer thread that owns the write connection. A caller hands it a job
and waits; the committer takes every job waiting at that moment and runs them in one transaction,
so many producers share one fsync (with ``synchronous=FULL`` a commit survives power loss, and any
setting survives ``kill -9``). Reads use a second connection: WAL lets them run beside a commit.
"""

import logging
import os
import queue
import sqlite3
import threading

from ..errors import StoreError
from ..message import Record
from .base import Engine

log = logging.getLogger(__name__)

SCHEMA = [
    """create table if not exists messages (
        topic text not null, offset integer not null, code text not null, data text not null,
        created real not null, primary key (topic, offset)) without rowid""",
    "create index if not exists messages_code on messages (code)",
    """create table if not exists subscriptions (
        topic text not null, sub text not null, cursor integer not null, updated real not null,
        primary key (topic, sub)) without rowid""",
    """create table if not exists attempts (
        topic text not null, sub text not null, offset integer not null, count integer not null,
        primary key (topic, sub, offset)) without rowid""",
    """create table if not exists dead_letters (
        topic text not null, sub text not null, offset integer not null, code text not null,
        data text not null, reason text not null, attempts integer not null, created real not null,
        dead_at real not null, primary key (topic, sub, offset)) without rowid""",
]


class _Job:
    """One write waiting for the committer; ``run(db)`` executes inside the shared transaction."""

    __slots__ = ("run", "appends", "done", "result", "error")

    def __init__(self, run, appends=False):
        self.run = run
        self.appends = appends  # the result is a list of new records to hand to on_commit
        self.done = threading.Event()
        self.result = None
        self.error = None


class SQLiteEngine(Engine):
    name = "sqlite"
    durable = True

    def __init__(self, storage_settings):
        self.path = storage_settings.path
        self.synchronous = storage_settings.synchronous.upper()
        self._jobs = queue.SimpleQueue()
        self._heads = {}            # topic -> newest offset; touched by the committer only
        self._read_lock = threading.Lock()
        self._reader = None
        self._writer = None
        self._thread = None
        self._on_commit = None
        self._closed = threading.Event()

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

    def open(self, on_commit):
        self._on_commit = on_commit
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._writer = self._connect()
        try:
            for statement in SCHEMA:
                self._writer.execute(statement)
            self._writer.execute("pragma quick_check(1)")
            self._heads = dict(self._writer.execute(
                "select topic, max(offset) from messages group by topic"))
        except sqlite3.DatabaseError as exc:
            self._writer.close()
            raise StoreError(f"the SQLite store {self.path!r} is unusable: {exc}. Restore it from a"
                             " backup or point storage.path at a new file.") from None
        self._reader = self._connect()
        self._thread = threading.Thread(target=self._commit_loop, name="dpmq-sqlite-commit",
                                        daemon=True)
        self._thread.start()

    def close(self):
        if self._closed.is_set() or self._thread is None:
            return
        self._closed.set()
        self._jobs.put(None)
        self._thread.join(timeout=10)
        for db in (self._reader, self._writer):
            try:
                db.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    # -- the committer -----------------------------------------------------------------------
    def _commit_loop(self):
        stopping = False
        while not stopping:
            batch = [self._jobs.get()]
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                stopping = True
                batch = [job for job in batch if job is not None]
            if batch:
                self._commit(batch)

    def _commit(self, batch):
        db = self._writer
        heads = dict(self._heads)
        committed = []
        try:
            db.execute("begin immediate")
            for job in batch:
                job.result = job.run(db, heads)
                if job.appends:
                    committed.append(job.result)
            db.execute("commit")
        except sqlite3.Error as exc:
            try:
                db.execute("rollback")
            except sqlite3.Error:
                pass
            log.error("sqlite commit of %d writes failed: %s", len(batch), exc)
            error = StoreError(f"the SQLite store {self.path!r} could not commit: {exc}."
                               " Free disk space or fix the file's permissions; nothing was stored.")
            for job in batch:
                job.error = error
                job.done.set()
            return
        self._heads = heads
        for records in committed:
            if records:
                self._on_commit(records)
        for job in batch:
            job.done.set()

    def _write(self, run, appends=False):
        if self._closed.is_set():
            raise StoreError("the store is closed: the broker is shutting down")
        job = _Job(run, appends)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    # -- writes ------------------------------------------------------------------------------
    def append(self, messages):
        def run(db, heads):
            records = []
            for code, topic, data, created in messages:
                offset = heads.get(topic, 0) + 1
                heads[topic] = offset
                records.append(Record(offset, code, topic, data, created))
            db.executemany("insert into messages (topic, offset, code, data, created)"
                           " values (?, ?, ?, ?, ?)",
                           [(r.topic, r.offset, r.code, r.data, r.created) for r in records])
            return records
        return self._write(run, appends=True)

    def save_cursors(self, cursors):
        if not cursors:
            return

        def run(db, heads):
            db.executemany(
                "insert into subscriptions (topic, sub, cursor, updated) values (?, ?, ?, julianday())"
                " on conflict (topic, sub) do update set cursor = max(cursor, excluded.cursor),"
                " updated = excluded.updated",
                [(topic, sub, offset) for (topic, sub), offset in cursors.items()])
        self._write(run)

    def add_attempt(self, topic, sub, offset):
        def run(db, heads):
            db.execute("insert into attempts (topic, sub, offset, count) values (?, ?, ?, 1)"
                       " on conflict (topic, sub, offset) do update set count = count + 1",
                       (topic, sub, offset))
            return db.execute("select count from attempts where topic = ? and sub = ? and offset = ?",
                              (topic, sub, offset)).fetchone()[0]
        return self._write(run)

    def dead_letter(self, topic, sub, record, reason, attempts):
        def run(db, heads):
            db.execute("delete from attempts where topic = ? and sub = ? and offset = ?",
                       (topic, sub, record.offset))
            db.execute("insert or replace into dead_letters (topic, sub, offset, code, data, reason,"
                       " attempts, created, dead_at) values (?, ?, ?, ?, ?, ?, ?, ?, julianday())",
                       (topic, sub, record.offset, record.code, record.data, reason, attempts,
                        record.created))
        self._write(run)

    # -- reads -------------------------------------------------------------------------------
    def _query(self, sql, args=()):
        try:
            with self._read_lock:
                return self._reader.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"the SQLite store {self.path!r} could not be read: {exc}") from None

    def read(self, topic, after, limit, upto=None):
        rows = self._query("select offset, code, topic, data, created from messages where topic = ?"
                           " and offset > ? and offset <= ? order by offset limit ?",
                           (topic, after, (1 << 62) if upto is None else upto, limit))
        return [Record(*row) for row in rows]

    def head(self, topic):
        return self._query("select coalesce(max(offset), 0) from messages where topic = ?",
                           (topic,))[0][0]

    def heads(self):
        return dict(self._query("select topic, max(offset) from messages group by topic"))

    def cursor(self, topic, sub):
        rows = self._query("select cursor from subscriptions where topic = ? and sub = ?", (topic, sub))
        return rows[0][0] if rows else None

    def attempts(self, topic, sub, after):
        return dict(self._query("select offset, count from attempts where topic = ? and sub = ?"
                                " and offset > ?", (topic, sub, after)))

    def dead_letters(self, topic=None, sub=None, limit=100):
        rows = self._query(
            "select topic, sub, offset, code, data, reason, attempts, created from dead_letters"
            " where (?1 is null or topic = ?1) and (?2 is null or sub = ?2)"
            " order by dead_at desc limit ?3", (topic, sub, limit))
        keys = ("topic", "sub", "offset", "code", "data", "reason", "attempts", "created")
        return [dict(zip(keys, row)) for row in rows]

    def ping(self):
        self._query("select 1")
        self._write(lambda db, heads: None)
