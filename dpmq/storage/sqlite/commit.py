"""The SQLite engine's writer: group commit on one connection.

Writers take turns at one lock that guards the write connection. A caller queues its job, then
takes the lock: if an earlier holder already committed the job, it is done; if not, it runs every
job waiting at that moment in one transaction, its own and those of everyone queued behind it, so
many producers share one fsync (with ``synchronous=FULL`` a commit survives power loss, and any
setting survives ``kill -9``). A lone producer commits on its own thread, with no hand-off to a
committer thread and back.
"""

import logging
import queue
import sqlite3
import threading

from ...errors import StoreError

log = logging.getLogger(__name__)


class _Job:
    """One write waiting for a commit; ``run(db, heads)`` executes inside the shared transaction."""

    __slots__ = ("run", "appends", "alone", "finished", "result", "error")

    def __init__(self, run, appends=False, alone=False):
        self.run = run
        self.appends = appends  # the result is an Appended whose records go to on_commit
        self.alone = alone      # one statement: if no other job waits, it commits by itself
        self.finished = False   # set under the commit lock
        self.result = None
        self.error = None


class GroupCommit:
    """The only writer of one SQLite connection, and keeper of the topic heads it assigns.

    Thread-safe: :meth:`write` blocks its caller until its job is committed, by itself or by the
    caller ahead of it. ``heads`` (``{topic: newest offset}``) is replaced whole after each commit,
    so it may be read without the lock.
    """

    def __init__(self, db, heads, on_commit, path):
        self.db = db
        self.heads = heads
        self._on_commit = on_commit
        self._path = path
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False

    def write(self, run, appends=False, alone=False):
        """Run ``run(db, heads)`` in a transaction; returns its result once committed. ``run``
        may move ``heads`` on (a copy, kept only if the transaction commits). With ``appends``
        the result is an :class:`~dpmq.message.Appended` whose records go to ``on_commit``; with
        ``alone`` it is one statement, committed by itself when no other job waits."""
        if self._closed:
            raise StoreError("the store is closed: the broker is shutting down")
        job = _Job(run, appends, alone)
        self._jobs.put(job)
        with self._lock:
            if not job.finished:
                self._commit(self._waiting())
        if job.error is not None:
            raise job.error
        return job.result

    def close(self, *others):
        """Refuse further writes, after the commit under way, and close the connection and the
        ``others`` (the engine's read connections). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for db in (*others, self.db):
                try:
                    db.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

    def _waiting(self):
        batch = []
        while True:
            try:
                batch.append(self._jobs.get_nowait())
            except queue.Empty:
                return batch

    def _commit(self, batch):
        """Run ``batch`` in one transaction; every job in it is finished on return."""
        try:
            if self._closed:
                raise StoreError("the store is closed: the broker is shutting down")
            committed = self._transaction(batch)
            for records in committed:
                if records:
                    self._on_commit(records)
        except StoreError as exc:
            for job in batch:
                job.error = exc
        except BaseException as exc:
            for job in batch:
                job.error = StoreError(f"the SQLite store {self._path!r} could not commit: {exc!r}")
            raise
        finally:
            for job in batch:
                job.finished = True

    def _transaction(self, batch):
        db = self.db
        heads = dict(self.heads)
        committed = []
        try:
            # A lone single-statement job is its own transaction: no begin and commit around it,
            # each of which would let the interpreter go to another thread and wait to get it back.
            alone = len(batch) == 1 and batch[0].alone
            if not alone:
                db.execute("begin immediate")
            for job in batch:
                job.result = job.run(db, heads)
                if job.appends:
                    committed.append(job.result.records)
            if not alone:
                db.execute("commit")
        except BaseException as exc:
            try:
                db.execute("rollback")
            except sqlite3.Error:
                pass
            if not isinstance(exc, sqlite3.Error):
                raise
            log.error("sqlite commit of %d writes failed: %s", len(batch), exc)
            raise StoreError(f"the SQLite store {self._path!r} could not commit: {exc}. Free disk"
                             " space, or fix the file's permissions or a file system that turned"
                             " read-only; nothing was stored.") from None
        self.heads = heads
        return committed
