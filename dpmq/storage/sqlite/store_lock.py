"""One broker per SQLite file: an OS lock on ``<store>.lock`` held for the engine's life.

Two brokers on one file both run, split the consumers between them and then fail to publish with
a constraint error that says nothing about the cause. So the engine takes an exclusive ``flock``
on a lock file beside the store when it opens and lets it go when it closes. The OS releases it
when the process dies, ``kill -9`` included, so a crash never leaves a stale lock behind. The file
says who holds it (pid, parent pid, since when), so the refusal can name the process.

Under gunicorn a graceful restart (HUP) starts the new worker before the old one has let go of the
store; the new worker is a sibling of the holder (same parent, the master), and waits for it for
up to ``SIBLING_WAIT`` seconds instead of refusing.
"""

import fcntl
import os
import time

from ...errors import ConfigError, StoreError

#: How long a gunicorn worker waits for a sibling (the worker it replaces) to let the store go;
#: below gunicorn's 30 s worker timeout, which a worker still starting up is held to.
SIBLING_WAIT = 25.0


class StoreLock:
    """The lock on one store file. Not thread-safe: the engine takes and releases it once."""

    def __init__(self, store_path):
        self.store_path = store_path
        # Beside the file itself: a symlink to the store, or another spelling of its path, is
        # the same store and must meet the same lock.
        self.path = os.path.realpath(store_path) + ".lock"
        self._file = None

    def acquire(self, sibling_wait=SIBLING_WAIT):
        """Take the lock, or raise ConfigError naming the process that holds it."""
        try:
            handle = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path!r} beside the SQLite store:"
                             f" {exc.strerror}. Make its folder writable, or set storage.path to a"
                             " file in a writable folder.") from None
        deadline = None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(handle)
                if deadline is None and _is_sibling(holder):
                    deadline = time.monotonic() + sibling_wait
                if deadline is None or time.monotonic() >= deadline:
                    handle.close()
                    raise ConfigError(self._refusal(holder)) from None
                time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid={os.getpid()} parent={os.getppid()}"
                     f" since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        handle.flush()
        self._file = handle

    def release(self):
        """Let the store go (idempotent); the file stays, empty, for the next holder."""
        handle, self._file = self._file, None
        if handle is None:
            return
        try:
            handle.truncate(0)
        except OSError:
            pass            # a file system turned read-only: the lock still goes with the close
        handle.close()

    def _refusal(self, holder):
        who = (f"process {holder['pid']} (running since {holder['since']})" if holder.get("pid")
               else "another process")
        if holder.get("pid") == str(os.getpid()):
            who = f"this process ({holder['pid']}): another broker in it has the store open"
        return (f"the SQLite store {self.store_path!r} is already in use by {who}, which holds"
                f" {self.path!r}. Two brokers must not share one store: stop that one first"
                f" (kill {holder.get('pid', '<pid>')}), or give this one its own storage.path;"
                " to run several processes on one store, use storage.engine redis")


def _holder(handle):
    """What the holder wrote in the lock file: pid, parent and since, as far as they are there."""
    handle.seek(0)
    fields = {}
    for part in handle.read(200).split():
        name, _, value = part.partition("=")
        fields[name] = value
    if "since" in fields:
        fields["since"] = fields["since"].replace("T", " ")
    return fields


def _is_sibling(holder):
    """Another worker of the gunicorn master that started this process: a graceful restart."""
    parent = os.getppid()
    return (parent != 1 and holder.get("parent") == str(parent)
            and holder.get("pid") != str(os.getpid()))
