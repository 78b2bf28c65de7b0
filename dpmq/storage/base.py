"""The storage-engine interface: the one seam between the broker and its stores.

A store holds, per topic, an append-only log of :class:`~dpmq.message.Record` with offsets 1, 2, 3…;
delayed messages that are not due yet (they enter the log when due, so they never hold up the
messages behind them); and per subscription a cursor (every offset up to it is done), the failed
attempts of messages not yet done, the dead letters, and the dead letters requeued for redelivery.
A subscription is a topic and a key: ``c:<consumerId>`` for a lone consumer, ``g:<group>`` for a
group. Beside its cursor the store keeps who owns it (:class:`Ownership`): with auth on, the
subscription belongs to the identity that created it, and that must survive a restart.

Every method is thread-safe and may block on I/O; none holds a lock while calling back into the
broker except :meth:`Engine.open`'s ``on_commit``, which is called in commit order and must not block.
Failures raise :class:`~dpmq.errors.StoreError` and change nothing.
"""

import abc
from typing import NamedTuple, Optional


class Ownership(NamedTuple):
    """Who a subscription belongs to: an identity's stable id (never a secret; None when it was
    made with auth off), and whether it outlives its consumer's connection."""

    owner: Optional[str]
    durable: bool


class Engine(abc.ABC):
    """What every engine provides. ``durable`` says whether a commit survives the process."""

    name = "?"
    durable = False
    shared = False      # several processes use the store at once (see "sharing" below)

    # -- lifecycle ---------------------------------------------------------------------------
    @abc.abstractmethod
    def open(self, on_commit, on_remote=None, on_requeue=None):
        """Open the store. From then on ``on_commit(records)`` is called once per commit of this
        engine object that adds records to logs, in offset order per topic, one call at a time,
        before the call that added them returns. The broker feeds its buffer from it, so the
        buffer follows log order.

        A shared engine also calls, from a thread of its own, ``on_remote(records)`` with what
        other processes committed (in offset order per topic; it may block, to wait for room) and
        ``on_requeue((topic, sub), records)`` when another process requeued dead letters of a
        lone consumer's subscription. The others ignore both."""

    @abc.abstractmethod
    def close(self):
        """Finish pending writes and release the store. Idempotent."""

    @abc.abstractmethod
    def ping(self):
        """Raise StoreError if the store cannot be read and written now."""

    # -- messages ----------------------------------------------------------------------------
    @abc.abstractmethod
    def append(self, messages):
        """Store :class:`~dpmq.message.NewMessage` items all or nothing; returns
        :class:`~dpmq.message.Appended`.

        Blocks until committed (durably, for a durable engine). A message whose ``idempotency_key``
        was seen on its topic before is not stored again: its code is the first message's. One with
        ``due`` in the future is kept aside until :meth:`promote_due`. Concurrent callers share
        commits (group commit) where the engine can.
        """

    @abc.abstractmethod
    def next_due(self):
        """The earliest ``due`` of the delayed messages, or None if there are none."""

    @abc.abstractmethod
    def promote_due(self, now, limit):
        """Move up to ``limit`` delayed messages due by ``now`` into their logs, in order of due time;
        returns their records (also handed to ``on_commit``)."""

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
    def find(self, topic, code):
        """The offset of the retained message ``code`` of ``topic``, or None."""

    # -- browsing, for the console ----------------------------------------------------------
    @abc.abstractmethod
    def topics(self):
        """``{topic: {"head", "retained", "subscriptions", "deadLetters", "delayed"}}``."""

    @abc.abstractmethod
    def messages(self, topic=None, status=None, limit=50, before=None, code=None):
        """Messages newest first, as dicts (offset, code, topic, data, created, key, status).

        ``status`` is ``delayed`` (not due yet), ``pending`` (after the cursor of some subscription
        of its topic), ``delivered`` (done by every subscription, or nobody subscribes) or ``dead``
        (a dead letter of some subscription); None means any but dead. ``before`` pages by offset;
        ``code`` finds one message in any topic.
        """

    @abc.abstractmethod
    def count_messages(self, topic=None):
        """``{"delayed": n, "pending": n, "delivered": n, "dead": n}``."""

    # -- subscriptions -----------------------------------------------------------------------
    @abc.abstractmethod
    def cursor(self, topic, sub):
        """The saved cursor of subscription ``(topic, sub)``, or None if it was never seen."""

    @abc.abstractmethod
    def save_cursors(self, cursors):
        """Save ``{(topic, sub): offset}``; a cursor only ever moves forward here."""

    @abc.abstractmethod
    def set_cursor(self, topic, sub, offset):
        """Put a cursor anywhere (replay from an earlier message); forgets its failed attempts."""

    @abc.abstractmethod
    def attempts(self, topic, sub, after):
        """``{offset: failed attempts}`` of this subscription's messages after offset ``after``."""

    @abc.abstractmethod
    def add_attempts(self, topic, sub, offsets):
        """Count one more failed delivery of each message in ``offsets`` to ``(topic, sub)``;
        returns ``{offset: count}``."""

    @abc.abstractmethod
    def own(self, topic, sub, owner, durable):
        """Record ``owner`` (None with auth off) as the owner of ``(topic, sub)``, durable or not,
        unless it is on record already; returns the :class:`Ownership` on record.

        Atomic: of two owners racing for a new subscription, one is recorded and both are told
        which. A subscription on record without an owner (made with auth off) takes the first
        owner that comes; one with a cursor but no record (from before owners were kept) is
        recorded as durable."""

    @abc.abstractmethod
    def forget(self, topic, sub):
        """Delete everything kept for ``(topic, sub)``: cursor, attempts, dead letters,
        requeued messages and ownership (an ephemeral subscription whose consumer left)."""

    # -- dead letters ------------------------------------------------------------------------
    @abc.abstractmethod
    def dead_letter(self, topic, sub, record, reason, attempts):
        """Keep ``record`` as a dead letter of ``(topic, sub)``, with why and after how many attempts."""

    @abc.abstractmethod
    def dead_letters(self, topic=None, sub=None, limit=100):
        """Dead letters, newest first, as dicts: topic, sub, offset, code, data, key, reason, attempts,
        created (of the message), dead_at."""

    @abc.abstractmethod
    def requeue(self, topic, sub=None, code=None):
        """Turn dead letters of ``topic`` (of one subscription, or one message) into redeliveries;
        returns ``{(topic, sub): [Record, …]}`` of what was requeued."""

    @abc.abstractmethod
    def redeliveries(self, topic, sub):
        """The requeued records waiting for ``(topic, sub)``, oldest offset first."""

    @abc.abstractmethod
    def redelivered(self, topic, sub, offset):
        """A requeued message was delivered: forget it."""

    # -- retention ---------------------------------------------------------------------------
    @abc.abstractmethod
    def purge(self, before, keep_messages, limit):
        """Delete at most ``limit`` messages created before ``before`` or beyond the newest
        ``keep_messages`` of their topic (0 = no count limit), and the cursors, attempts, dead
        letters and idempotency keys older than ``before``, with the ownership of the
        subscriptions whose cursors went (or that were recorded before ``before`` and never got
        one); returns how many messages went."""

    # -- sharing, for engines several processes use at once ---------------------------------
    def lock_consumer(self, topic, consumer_id):
        """Take ``consumer_id`` on ``topic`` for this process; False if another live process
        has it. One process needs no lock: the broker's own registry refuses duplicates."""
        return True

    def unlock_consumer(self, topic, consumer_id):
        """Let ``consumer_id`` go (after its connection ended)."""
        return None

    def serve_reports(self, report):
        """Shared engines: answer the other processes' :meth:`gather_reports` with ``report()``,
        a JSON-able dict of what this process holds (its consumers, counters), called on a thread
        of the engine's own that may wait for it. One process has no one to answer."""
        return None

    def gather_reports(self, timeout):
        """Shared engines: ask every other live process for its report and wait at most
        ``timeout`` seconds; returns ``({node: report}, [node…])``, the reports that came and
        the live processes that did not answer in time. One process: ``({}, [])``."""
        return {}, []

    def claim(self, topic, sub, upto, limit, cursor):
        """Shared engines: take up to ``limit`` messages of group ``(topic, sub)`` for this
        process (requeued, then to retry, then new ones up to ``upto``; a group seen for the
        first time starts after ``cursor``); returns ``[(record, attempts, requeued)]``."""
        raise NotImplementedError

    def settle(self, topic, sub, items, retry=False):
        """Shared engines: claimed ``(offset, requeued)`` items are done, or with ``retry`` are
        to be handed out again (to any process); returns the group's cursor, which follows."""
        raise NotImplementedError
