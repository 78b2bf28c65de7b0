"""Who may use a subscription, and the life of an ephemeral one.

With auth on, a subscription (a consumerId, or a group) belongs to the identity that created it:
without that, any token that may read a topic could connect as someone else's consumerId and
receive what was kept for it while its owner was away. The store records the owner beside the
cursor (:meth:`~dpmq.storage.base.Engine.own`), so that it holds across restarts and processes.
Another identity is refused with 4403 (HTTP 403) unless it is admin or its token's ``consumers``
patterns grant that name. With auth off, owners are not checked.

``?durable=0`` asks for an ephemeral subscription: it starts at "now" (or ``since``) and everything
the store keeps for it is forgotten when its consumer leaves. It is for a lone consumer only: a
group is shared and kept. A durable subscription is never turned into an ephemeral one (that would
delete what waits for it): such a request is refused with 1008. An ephemeral subscription still on
record when its id connects again (its broker died before it could forget it) is forgotten then,
under the consumer lock, so a consumer never resumes from a cursor it did not know it had. The
sweeps do not save an ephemeral subscription's cursor (see :meth:`Owners.durable_cursors`), so
retention may drop its rows while it is connected for longer than ``mq.retentionSeconds``: its
consumer, whose position is in memory, does not notice.

Thread-safe: consumers join and leave on their own threads, the housekeeping thread saves cursors.
"""

import logging
import threading

from ..errors import CLOSE_BAD_INPUT, CLOSE_TRY_AGAIN, Forbidden, Refused, StoreError

log = logging.getLogger(__name__)


class Owners:
    """The broker's side of subscription owners and ephemeral subscriptions, over one engine."""

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._ephemeral = set()     # (topic, sub) of connected ephemeral consumers
        self._left = None           # while cursors are being taken: ephemeral ones that left

    def claim(self, topic, sub, name, identity, durable):
        """Record ``identity`` as the owner of a new subscription, or check that it may use the
        one on record; returns the :class:`~dpmq.storage.base.Ownership` on record. Raises
        Forbidden (4403) for someone else's, Refused (1008) for durable=0 on a durable one."""
        kind = "group" if sub.startswith("g:") else "consumerId"
        if not durable and kind == "group":
            raise Refused("durable=0 is for a lone consumer: a group's subscription is shared by"
                          " its members and kept; connect without one of the two", CLOSE_BAD_INPUT)
        owner = identity.id if identity is not None else None
        owned = self._store(self.engine.own, topic, sub, owner, durable)
        if identity is not None and owned.owner not in (None, owner) and not identity.may_take(name):
            # A WebSocket close reason holds 123 bytes: these fit.
            raise Forbidden(f"this {kind} belongs to someone else: another token made it; use your"
                            " own, or a token granted it in tokens[].consumers")
        if not durable and owned.durable:
            raise Refused("this consumerId has a durable subscription here, which durable=0 would"
                          " delete: connect without durable=0, or use another id", CLOSE_BAD_INPUT)
        return owned

    def join(self, topic, sub, name, identity, durable, owned):
        """The consumer holds its consumerId now (no one else is connected with it): an
        ephemeral subscription still on record is a leftover, and goes; an ephemeral one starts
        afresh. Call :meth:`leave` if the join fails after this."""
        if not owned.durable and (durable or self._store(self.engine.cursor, topic, sub) is not None):
            self._store(self.engine.forget, topic, sub)
            self.claim(topic, sub, name, identity, durable)
        if not durable:
            with self._lock:
                self._ephemeral.add((topic, sub))

    def leave(self, topic, sub):
        """The consumer left (its shard has let go of it), or could not join: forget an
        ephemeral subscription. If the store cannot, the next join with that id will."""
        key = (topic, sub)
        with self._lock:
            if key not in self._ephemeral:
                return
        try:
            self.engine.forget(topic, sub)
        except StoreError as exc:
            log.warning("could not forget the ephemeral subscription %r of topic %r (it is"
                        " forgotten when its id next connects, or by retention): %s", sub, topic, exc)
        finally:
            with self._lock:
                self._ephemeral.discard(key)
                if self._left is not None:
                    self._left.add(key)

    def durable_cursors(self, take):
        """``take()``'s cursors without those of ephemeral subscriptions, which are not saved:
        one saved just after its consumer left would bring back what leaving forgot. A key
        reported by a shard was in ``_ephemeral`` when the shard reported it, so it is still
        there or in ``_left`` at the end. Called by one thread at a time (housekeeping)."""
        with self._lock:
            self._left = set()
        try:
            cursors = take()
        finally:
            with self._lock:
                skip, self._left = self._ephemeral | self._left, None
        if not skip:
            return cursors
        return {key: cursor for key, cursor in cursors.items() if key not in skip}

    @staticmethod
    def _store(call, *args):
        try:
            return call(*args)
        except StoreError as exc:
            raise Refused(f"the store is unavailable ({exc}); reconnect later",
                          CLOSE_TRY_AGAIN) from None
