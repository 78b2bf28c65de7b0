"""The storage-engine interface: the one seam between the broker and its stores.

A store holds, per topic, an append-only log of :class:`~dpmq.message.Record` with offsets 1, 2, 3…;
delayed messages that are not due yet (they enter the log when due, so they never hold up the
messages behind them); and per subscription a cursor (every offset up to it is done), the failed
attempts of messages not yet done, the dead letters, and the dead letters requeued for redelivery.
A subscription is a topic and a key: ``c:<consumerId>`` for a lone consumer, ``g:<group>`` for a
group. Beside its cursor the store keeps who owns it (:class:`Ownership`): with auth on, the
subscription belongs to the identity that created it, and that must survive a restart.

The interface is split by who calls it, because each caller needs different promises:

- :class:`DeliveryStore`, the publish and delivery path: producers wait on it, so it must be quick
  and never wait behind the other two;
- :class:`ConsoleStore`, browsing for people at the console: it may scan, slowly;
- :class:`CoordinationStore`, what processes and consumers must agree on: owners, consumerIds,
  group claims, reports from the other processes.

:class:`Engine` is all three, plus opening and closing; the broker holds one. Failures raise
:class:`~dpmq.errors.StoreError` and change nothing.
"""

import abc
from typing import NamedTuple, Optional


class Ownership(NamedTuple):
    """Who a subscription belongs to: an identity's stable id (never a secret; None when it was
    made with auth off), and whether it outlives its consumer's connection."""

    owner: Optional[str]
    durable: bool


class DeliveryStore(abc.ABC):
    """The log and the delivery state: what the publish and delivery path reads and writes.

    Callers: the request threads of producers (:meth:`append`), the delivery shards (reads,
    cursors, attempts, dead letters, redeliveries) and the broker's housekeeping thread (delayed
    messages, cursor sweeps, retention), all at once: every method is thread-safe.

    Blocking: a write returns once committed (durably, for a durable engine), because a producer
    is answered ``code:0`` only after that; it may wait for the commit ahead of it, which it then
    shares. Any call may wait on the store: sqlite on the file's lock up to its busy timeout
    (30 s), redis up to ``storage.redisTimeout`` per round trip (an append whose reply was lost
    waits up to twice that again to learn whether it was stored). The memory engine only takes a
    lock for the length of the call. No method holds a lock while calling back into the broker
    except the ``on_commit`` of :meth:`Engine.open`.
    """

    # -- messages ----------------------------------------------------------------------------
    @abc.abstractmethod
    def append(self, messages):
        """Store :class:`~dpmq.message.NewMessage` items all or nothing; returns
        :class:`~dpmq.message.Appended`.

        A message whose ``idempotency_key`` was seen on its topic before is not stored again: its
        code is the first message's, so a producer that retries after a lost reply stores once.
        One with ``due`` in the future is kept aside until :meth:`promote_due`, so that it never
        holds up the messages behind it. A message's ``expires`` (0.0 = never) and ``trace``
        (its traceparent, or None) are kept with it and given back on every
        :class:`~dpmq.message.Record` of it (read, promoted, dead-lettered and requeued,
        claimed): delivery, not the store, decides what is too late.
        """

    @abc.abstractmethod
    def next_due(self):
        """The earliest ``due`` of the delayed messages, or None if there are none: how long the
        scheduler may sleep."""

    @abc.abstractmethod
    def promote_due(self, now, limit):
        """Move up to ``limit`` delayed messages due by ``now`` into their logs, in order of due time;
        returns their records (also handed to ``on_commit``). ``limit`` is the room left in the
        broker's buffer."""

    @abc.abstractmethod
    def read(self, topic, after, limit, upto=None):
        """Up to ``limit`` records of ``topic`` with ``after < offset <= upto``, in offset order:
        how a subscription catches up on what its buffer no longer holds."""

    @abc.abstractmethod
    def head(self, topic):
        """The offset of the newest message of ``topic``; 0 for an empty or unknown topic. It
        never goes back, not even when retention deletes every message of the topic."""

    @abc.abstractmethod
    def heads(self):
        """``{topic: newest offset}`` for every topic that has had messages."""

    @abc.abstractmethod
    def find(self, topic, code):
        """The offset of the retained message ``code`` of ``topic``, or None: where a consumer
        that asks to start after that message starts."""

    # -- subscriptions -----------------------------------------------------------------------
    @abc.abstractmethod
    def cursor(self, topic, sub):
        """The saved cursor of subscription ``(topic, sub)``, or None if it was never seen."""

    @abc.abstractmethod
    def forgotten(self, topic, sub):
        """Where the cursor of ``(topic, sub)`` stood when retention forgot the subscription for
        idleness (see :meth:`purge`), or None: a subscription that comes back within another
        retention period is told what it missed (a gap), not started afresh in silence. The
        entry goes when the subscription gets a cursor again or is forgotten on purpose."""

    @abc.abstractmethod
    def forgotten_since(self, since, limit):
        """The subscriptions retention forgot for idleness at or after ``since`` (``time.time()``
        seconds) and still remembers (see :meth:`forgotten`): up to ``limit``
        ``(topic, sub, cursor, forgotten_at)`` tuples, oldest ``forgotten_at`` first.
        ``forgotten_at`` is the ``now`` of the :meth:`purge` that forgot it, given back exactly,
        so that a caller can tell its own purge's subscriptions from another process's."""

    @abc.abstractmethod
    def save_cursors(self, cursors):
        """Save ``{(topic, sub): offset}``. A cursor only ever moves forward here, so that a sweep
        that computed its positions before a concurrent save cannot undo it. A subscription that
        gets a cursor here anew is no longer :meth:`forgotten`."""

    @abc.abstractmethod
    def set_cursor(self, topic, sub, offset):
        """Put a cursor anywhere (replay from an earlier message); forgets its failed attempts,
        which belonged to the deliveries that went before, and that it was :meth:`forgotten`."""

    @abc.abstractmethod
    def attempts(self, topic, sub, after):
        """``{offset: failed attempts}`` of this subscription's messages after offset ``after``,
        so that retries count on across a restart."""

    @abc.abstractmethod
    def add_attempts(self, topic, sub, offsets):
        """Count one more failed delivery of each message in ``offsets`` to ``(topic, sub)``;
        returns ``{offset: count}``."""

    # -- dead letters and redeliveries -------------------------------------------------------
    @abc.abstractmethod
    def dead_letter(self, topic, sub, record, reason, attempts):
        """Keep ``record`` as a dead letter of ``(topic, sub)``, with why and after how many
        attempts; it is no longer retried nor waiting for redelivery."""

    @abc.abstractmethod
    def redeliveries(self, topic, sub):
        """The requeued records waiting for ``(topic, sub)`` (see :meth:`ConsoleStore.requeue`),
        oldest offset first."""

    @abc.abstractmethod
    def redelivered(self, topic, sub, offset):
        """A requeued message was delivered: forget it, or it would come again after a restart."""

    # -- retention ---------------------------------------------------------------------------
    @abc.abstractmethod
    def purge(self, before, keep_messages, limit, now=None):
        """Delete at most ``limit`` messages created before ``before`` or beyond the newest
        ``keep_messages`` of their topic (0 = no count limit), and the cursors, attempts, dead
        letters and idempotency keys older than ``before``, with the ownership of the
        subscriptions whose cursors went (or that were recorded before ``before`` and never got
        one); returns how many messages went. A subscription whose cursor went for idleness is
        remembered with that cursor (:meth:`forgotten`, :meth:`forgotten_since`) as forgotten at
        ``now`` (default ``time.time()``) until a later purge whose ``before`` is past that time:
        one more retention period. ``limit`` keeps one call short, so the
        housekeeping thread calls again while there is more."""


class ConsoleStore(abc.ABC):
    """What the console shows and the one thing it changes: topics, messages, dead letters.

    Callers: the console's request threads, for people. Thread-safe. The reads scan and may take
    seconds on a big store, so they must never make delivery wait: sqlite runs them on a connection
    and a lock of their own, redis as separate round trips (each bounded by
    ``storage.redisTimeout``). What they return is a snapshot that may be stale once shown.
    :meth:`requeue` is a write and blocks like one of :class:`DeliveryStore`.
    """

    @abc.abstractmethod
    def topics(self):
        """``{topic: {"head", "retained", "subscriptions", "deadLetters", "delayed"}}`` for every
        topic with messages, subscriptions, dead letters or delayed messages."""

    @abc.abstractmethod
    def messages(self, topic=None, status=None, limit=50, before=None, code=None):
        """Messages newest first (by offset within one topic, by creation time across topics), as
        dicts (offset, code, topic, data, created, key, expires, status).

        ``status`` is ``delayed`` (not due yet; these come soonest due first, with offset 0, as
        they have none yet), ``pending`` (after the cursor of some subscription of its topic),
        ``delivered`` (done by every subscription, or nobody subscribes) or ``dead`` (a dead
        letter of some subscription); None means any but delayed and dead. ``before`` pages by
        offset; ``code`` finds one message in any topic.
        """

    @abc.abstractmethod
    def count_messages(self, topic=None):
        """``{"delayed": n, "pending": n, "delivered": n, "dead": n}``, as :meth:`messages`
        counts them."""

    @abc.abstractmethod
    def dead_letters(self, topic=None, sub=None, limit=100):
        """Dead letters, newest first, as dicts: topic, sub, offset, code, data, key, reason,
        attempts, created, expires and trace (of the message), dead_at."""

    @abc.abstractmethod
    def requeue(self, topic, sub=None, code=None):
        """Turn dead letters of ``topic`` (of one subscription, or one message) into redeliveries
        (:meth:`DeliveryStore.redeliveries`); returns ``{(topic, sub): [Record, …]}`` of what was
        requeued, for the broker to hand to the subscriptions now."""


class CoordinationStore(abc.ABC):
    """What consumers and processes must agree on: who owns a subscription, who holds a
    consumerId, which process delivers which message of a group, and what each process holds.

    Callers: the threads of consumers joining and leaving (owners, consumer locks), group
    delivery on a shared engine (:meth:`claim`, :meth:`settle`) and the console
    (:meth:`gather_reports`). Thread-safe.

    With one process (memory, sqlite; see :class:`OneProcess`) the broker's own registry does the
    agreeing, and only owners touch the store. A shared engine (``Engine.shared``) agrees through
    it: each call is one atomic round trip, bounded by ``storage.redisTimeout``, and a process that
    misses its heartbeats for ``storage.nodeTimeout`` loses its consumerIds and group claims to the
    others.
    """

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
        requeued messages, ownership and its :meth:`~DeliveryStore.forgotten` cursor (an
        ephemeral subscription whose consumer left)."""

    @abc.abstractmethod
    def lock_consumer(self, topic, consumer_id):
        """Take ``consumer_id`` on ``topic`` for this process; False if another live process
        has it. Taking it again in the process that holds it succeeds."""

    @abc.abstractmethod
    def unlock_consumer(self, topic, consumer_id):
        """Let ``consumer_id`` go (after its connection ended), if this process holds it."""

    @abc.abstractmethod
    def claim(self, topic, sub, upto, limit, cursor):
        """Take up to ``limit`` messages of group ``(topic, sub)`` for this process (requeued,
        then to retry, then new ones up to ``upto``; a group seen for the first time starts after
        ``cursor``); returns ``[(record, attempts, requeued)]`` in offset order. What one process
        claimed no other gets until it is settled for retry or its process stops beating."""

    @abc.abstractmethod
    def settle(self, topic, sub, items, retry=False):
        """Claimed ``(offset, requeued)`` items are done, or with ``retry`` are to be handed out
        again (to any process); returns the group's cursor, which follows the lowest offset that
        is not done."""

    @abc.abstractmethod
    def serve_reports(self, report):
        """Answer the other processes' :meth:`gather_reports` with ``report(question)``, a
        JSON-able answer (for ``question`` None, a dict of what this process holds: its
        consumers, counters), called on a thread of the engine's own that may wait for it."""

    @abc.abstractmethod
    def gather_reports(self, timeout, question=None):
        """Ask every other live process ``question`` (JSON-able; None asks for its report: see
        :meth:`serve_reports`) and wait at most ``timeout`` seconds; returns ``({node: answer},
        [node…])``, the answers that came and the live processes that did not answer in time.
        A question is how one process reaches what another holds: its consumers' state, such as
        the messages in flight that an ack over HTTP settles."""


class OneProcess(CoordinationStore):
    """The coordination of a store only one process uses (``Engine.shared`` is False): there is
    no one to agree with, so the process parts answer at once without touching the store."""

    def lock_consumer(self, topic, consumer_id):
        """Always True: the broker's own registry refuses a consumerId already connected."""
        return True

    def unlock_consumer(self, topic, consumer_id):
        return None

    def serve_reports(self, report):
        """No other process will ask."""
        return None

    def gather_reports(self, timeout, question=None):
        """``({}, [])``: there are no other processes."""
        return {}, []

    def claim(self, topic, sub, upto, limit, cursor):
        """Refused: one process delivers its groups from the broker's own state (the broker
        checks ``engine.shared`` before it claims)."""
        raise NotImplementedError(f"the {self.name} engine has no groups shared by processes:"
                                  " claim is for an engine with shared = True")

    def settle(self, topic, sub, items, retry=False):
        """Refused, as :meth:`claim` is."""
        raise NotImplementedError(f"the {self.name} engine has no groups shared by processes:"
                                  " settle is for an engine with shared = True")


class Engine(DeliveryStore, ConsoleStore, CoordinationStore):
    """A whole store: the three interfaces, and its life. ``durable`` says whether a commit
    survives the process; ``shared`` whether several processes use the store at once."""

    name = "?"
    durable = False
    shared = False

    @abc.abstractmethod
    def open(self, on_commit, on_remote=None, on_requeue=None):
        """Open the store. From then on ``on_commit(records)`` is called once per commit of this
        engine object that adds records to logs, in offset order per topic, one call at a time,
        before the call that added them returns. The broker feeds its buffer from it, so the
        buffer follows log order; it is called under the engine's commit lock, so it must not
        block.

        A shared engine also calls, from a thread of its own, ``on_remote(records)`` with what
        other processes committed (in offset order per topic; it may block, to wait for room) and
        ``on_requeue((topic, sub), records)`` when another process requeued dead letters of a
        lone consumer's subscription. The others ignore both."""

    @abc.abstractmethod
    def close(self):
        """Finish pending writes, stop the engine's threads and release the store. Idempotent."""

    @abc.abstractmethod
    def ping(self):
        """Raise StoreError if the store cannot be read and written now (readiness probes)."""
