"""Pulling consumers: a subscription's member that lives between its pulls.

A pull (``POST /ConsumerPull``) is a request, but what it takes with ack is in flight until acked,
and the flights belong to a member of the subscription. So the first pull of a consumerId joins
the subscription as a member whose connection is an :class:`~dpmq.transport.pull.Outbox` (a
*session*), the pulls after it use the same one, and it leaves once no pull has come for
:data:`LINGER` seconds and nothing it took is waiting for an ack. While it is there, it is a
connected consumer like any other: it counts against ``server.maxConsumers``, a WebSocket with
the same consumerId is refused (4409), and the console shows it with transport ``pull``.

A pull that names only a group is a member named ``~<group>``, shared by every pull of that group
that names no consumerId and reaches this process (with a shared store, ``~<group>@<process>``:
each process has its own, as a consumerId is held by one process at a time); pulls that name one
are members of their own, beside the group's pushing members.

Thread-safe: pulls come on their own threads; a reaper thread lets idle sessions go.
"""

import logging
import threading
import time
import uuid

from ..errors import CLOSE_DUPLICATE, CLOSE_TRY_AGAIN, Forbidden, Refused
from ..transport.pull import Outbox

log = logging.getLogger(__name__)

#: Seconds a session with nothing in flight stays after its last pull (a consumer pulling in a
#: loop keeps one session; one that stops leaves its consumerId free soon after).
LINGER = 5.0
#: How often the reaper looks for sessions to let go.
REAP = 0.5


class Session:
    """One pulling member; also its *closer* (what the broker calls to close a consumer)."""

    def __init__(self, topic, consumer_id, group, ack, outbox):
        self.topic = topic
        self.consumer_id = consumer_id
        self.group = group
        self.ack = ack
        self.outbox = outbox
        self.member = None
        self.error = None           # why joining failed
        self.users = 0              # pulls using it now (under the Pulls' lock)
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.ending = False

    def close(self, code, reason):
        self.outbox.close()


class Pulls:
    """The pull sessions of one broker, keyed by (topic, consumerId)."""

    def __init__(self, broker):
        self.broker = broker
        self._sessions = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._some = threading.Event()      # set while there are sessions for the reaper
        self._thread = None
        self._process = "@" + uuid.uuid4().hex[:8] if broker.engine.shared else ""

    def group_member(self, group):
        """The consumerId of this process's member for the pulls of ``group`` that name none."""
        return f"~{group}{self._process}"

    def start(self):
        self._thread = threading.Thread(target=self._reap_loop, name="dpmq-pulls", daemon=True)
        self._thread.start()

    def stop(self):
        """End every session (after :meth:`close_all` and the pulls' answers)."""
        self._stop.set()
        self._some.set()
        if self._thread is not None:
            self._thread.join(10)
        self._reap(force=True)

    def close_all(self):
        """The broker is stopping: waiting pulls answer now, and no session takes more."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close(1001, "DPMQ is shutting down")

    def pull(self, topic, consumer_id, group, ack, count, wait, identity=None, remote_addr="",
             gone=lambda: False):
        """Up to ``count`` messages of the subscription, waiting up to ``wait`` seconds for the
        first: ``(payloads, gap notice or None)``; ``gone()`` says whether the client left."""
        session = self._enter(topic, consumer_id, group, ack, identity, remote_addr)
        try:
            return session.outbox.take(count, wait, gone)
        finally:
            with self._lock:
                session.users -= 1

    def _enter(self, topic, consumer_id, group, ack, identity, remote_addr):
        """The session of ``(topic, consumer_id)``, joined now if there is none; the caller's pull
        is counted as using it (``users``) from before it is returned."""
        key = (topic, consumer_id)
        session, created = self._take_session(key, topic, consumer_id, group, ack, remote_addr)
        try:
            if created:
                self._join(key, session, identity)
            else:
                self._check(session, group, ack, identity)
        except BaseException:
            with self._lock:
                session.users -= 1
            raise
        return session

    def _take_session(self, key, topic, consumer_id, group, ack, remote_addr):
        """``(session, whether it is new)`` of ``key``, counted as used; one whose member is
        leaving is waited for, and a new one made after it."""
        while True:
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    outbox = Outbox(self.broker.settings.mq.consumerBufferBytes, remote_addr)
                    session = self._sessions[key] = Session(topic, consumer_id, group, ack, outbox)
                    session.users += 1
                    self._some.set()
                    return session, True
                if not session.ending:
                    session.users += 1
                    return session, False
            session.ended.wait(10)

    def _join(self, key, session, identity):
        try:
            session.member = self.broker.subscribe(
                session.outbox, session, session.topic, session.consumer_id, group=session.group,
                ack=session.ack, identity=identity)
        except BaseException as exc:
            session.error = exc
            with self._lock:
                self._sessions.pop(key, None)
            raise
        finally:
            session.ready.set()

    @staticmethod
    def _check(session, group, ack, identity):
        """A pull that comes to a session another pull made must ask for the same thing."""
        if not session.ready.wait(35):
            raise Refused("the broker is too busy to register the consumer; retry later",
                          CLOSE_TRY_AGAIN)
        if session.error is not None:
            raise session.error
        if session.group != group or session.ack != ack:
            raise Refused(f"consumerId {session.consumer_id!r} is pulling from topic"
                          f" {session.topic!r} with group={session.group!r} and"
                          f" autoAck={not session.ack}; pull with the same, or use another"
                          " consumerId", CLOSE_DUPLICATE)
        owner = session.member.owner
        if identity is not None and owner not in (None, identity.id) \
                and not identity.may_take(group or session.consumer_id):
            raise Forbidden("this consumerId is being pulled by someone else: another token made"
                            " it; use your own, or a token granted it in tokens[].consumers")

    # -- letting sessions go -------------------------------------------------------------------
    def _reap_loop(self):
        """Every ``REAP`` seconds while there are sessions; without any, an idle broker's reaper
        sleeps until one is made."""
        while self._some.wait() and not self._stop.wait(REAP):
            try:
                self._reap()
            except Exception:  # noqa: BLE001 - the reaper must not die
                log.exception("letting idle pull sessions go failed; trying again")
            with self._lock:
                if not self._sessions:
                    self._some.clear()

    def _reap(self, force=False):
        now = time.monotonic()
        done = []
        with self._lock:
            for key, session in list(self._sessions.items()):
                outbox = session.outbox
                if not session.ready.is_set() or session.member is None or session.users:
                    continue
                idle = outbox.abandoned or now - outbox.last_used >= LINGER
                if force or outbox.closed or (idle and not session.member.flights):
                    session.ending = True
                    done.append((key, session))
        for key, session in done:
            reason = ("closed" if session.outbox.closed else "its client went away"
                      if session.outbox.abandoned else "no pull for a while")
            try:
                self.broker.unsubscribe(session.member, reason)
            finally:
                with self._lock:
                    self._sessions.pop(key, None)
                session.ended.set()
