"""The storage-engine interface: the one seam between the broker and its stores.

A store holds, per topic, an append-only log of :class:`~dpmq.message.Record` with offsets 1, 2, 3…,
and per subscription a cursor (the offset of the last message delivered), the failed-attempt counts
of messages not yet delivered, and the dead letters. A subscription is named by its topic and a key:
``c:<consumerId>`` for a lone consumer (later ``g:<group>`` for a group).

Every method is thread-safe and may block on I/O; none holds a lock while calling back into the
broker except :meth:`Engine.open`'s ``on_commit``, which is called in commit order and must not block.
"""

import abc


class Engine(abc.ABC):
    """What every engine provides. ``durable`` says whether a commit survives the process."""

    name = "?"
    durable = False

    @abc.abstractmethod
    def open(self, on_commit):
        """Open the store. From then on ``on_commit(records)`` is called once per committed append,
        in offset order per topic, before :meth:`append` returns to its caller. The broker uses it to
        feed its buffer in log order however many producers append at once."""

    @abc.abstractmethod
    def close(self):
        """Finish pending writes and release the store. Idempotent."""

    @abc.abstractmethod
    def append(self, messages):
        """Append ``messages`` (``(code, topic, data, created)`` tuples) all or nothing.

        Blocks until the messages are committed (durably, for a durable engine) and returns their
        :class:`Record` list with offsets. Raises :class:`~dpmq.errors.StoreError` if nothing was
        stored. Concurrent callers share commits (group commit) where the engine can.
        """

    @abc.abstractmethod
    def read(self, topic, after, limit, upto=None):
        """Up to ``limit`` records of ``topic`` with ``after < offset <= upto``, in offset order."""

    @abc.abstractmethod
    def head(self, topic):
        """The offset of the newest message of ``topic``; 0 for an empty or unknown topic."""

    @abc.abstractmethod
    def heads(self):
        """``{topic: newest offset}`` for every topic that has messages."""

    @abc.abstractmethod
    def cursor(self, topic, sub):
        """The saved cursor of subscription ``(topic, sub)``, or None if it was never seen."""

    @abc.abstractmethod
    def save_cursors(self, cursors):
        """Save ``{(topic, sub): offset}`` durably; a cursor only ever moves forward."""

    @abc.abstractmethod
    def attempts(self, topic, sub, after):
        """``{offset: failed attempts}`` of this subscription's messages after offset ``after``."""

    @abc.abstractmethod
    def add_attempt(self, topic, sub, offset):
        """Count one more failed delivery of message ``offset`` to ``(topic, sub)``; returns the count."""

    @abc.abstractmethod
    def dead_letter(self, topic, sub, record, reason, attempts):
        """Keep ``record`` as a dead letter of ``(topic, sub)`` with why and after how many attempts."""

    @abc.abstractmethod
    def dead_letters(self, topic=None, sub=None, limit=100):
        """Dead letters, newest first, as dicts (topic, sub, offset, code, data, reason, attempts)."""

    @abc.abstractmethod
    def ping(self):
        """Raise :class:`~dpmq.errors.StoreError` if the store cannot be read and written now."""
