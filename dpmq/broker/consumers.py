"""The consumers connected to one broker: who may join, who is here, and letting them go.

A consumerId is connected once per topic: in this process (the registry below) and, with a shared
store, in every process of the broker (the engine's consumer lock). Joining takes the registry's
place first and the store's lock after it, outside the registry's lock, so that one consumer
waiting for the store never holds up the others.

Thread-safe: consumers join and leave on their own threads; the housekeeping thread retries the
releases that failed; the console and the metrics read the members from theirs.
"""

import logging
import threading

from ..delivery.shards import subscription_key
from ..delivery.subscription import Member
from ..errors import CLOSE_DUPLICATE, CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN, Refused, StoreError
from ..validation import check_name
from .events import check_consumer

log = logging.getLogger(__name__)


class Consumers:
    """The registry of one broker's connected consumers, keyed by (topic, consumerId)."""

    def __init__(self, broker):
        self.broker = broker
        self._members = {}          # (topic, consumer id) -> Member, or None while it joins
        self._lock = threading.Lock()
        self._unlock_later = set()  # (topic, consumer id) whose release in the store failed

    def subscribe(self, conn, closer, topic, consumer_id, group=None, ack=False, since=None,
                  durable=True, identity=None, start=None, resume=None):
        """Register a connected consumer; raises Refused or Forbidden (with its close code) if it
        may not join. ``identity`` (auth on) must own the subscription or may take it over;
        ``durable=False`` asks for an ephemeral subscription (see :mod:`dpmq.broker.ownership`);
        ``resume`` is the MessageCode the consumer last received (see :class:`Member`)."""
        broker = self.broker
        mq = broker.settings.mq
        check_name("topic", topic, mq.maxTopicLength)
        check_name("consumerId", consumer_id, mq.maxConsumerIdLength)
        if group is not None:
            check_name("group", group, mq.maxConsumerIdLength)
        check_consumer(topic, identity)
        member = Member(conn, closer, topic, consumer_id, group, ack, since, start, resume)
        member.owner = identity.id if identity is not None else None
        sub = subscription_key(member)
        owned = broker.owners.claim(topic, sub, group or consumer_id, identity, durable)
        key = (topic, consumer_id)
        self._take_place(key, consumer_id, topic)
        try:
            self._lock_consumer(topic, consumer_id)
            try:
                broker.owners.join(topic, sub, group or consumer_id, identity, durable, owned)
                broker.shard_for(topic, sub).join(member)
            except BaseException:
                broker.owners.leave(topic, sub)
                self._unlock_consumer(topic, consumer_id)
                raise
        except BaseException:
            with self._lock:
                del self._members[key]
            raise
        with self._lock:
            self._members[key] = member
        log.info("consumer connected topic=%r id=%r group=%r ack=%s durable=%s from=%s",
                 topic, consumer_id, group, ack, durable, conn.remote_addr)
        broker.events.emit("consumer.connected", **_described(member), ack=ack, durable=durable)
        return member

    def _take_place(self, key, consumer_id, topic):
        limit = self.broker.settings.server.maxConsumers
        with self._lock:
            if not self.broker.accepting:
                raise Refused("DPMQ is shutting down; reconnect later", CLOSE_GOING_AWAY)
            if key in self._members:
                raise Refused(f"consumerId {consumer_id!r} is already connected to topic {topic!r};"
                              " use another id or close the other connection", CLOSE_DUPLICATE)
            if len(self._members) >= limit:
                raise Refused(f"too many consumers: the limit is {limit} (server.maxConsumers);"
                              " try again later", CLOSE_TRY_AGAIN)
            self._members[key] = None

    def unsubscribe(self, member, reason="closed"):
        """Forget a consumer whose connection ended; what it held goes back for redelivery, and
        an ephemeral subscription is forgotten (before its consumerId is free again)."""
        broker = self.broker
        member.conn.detach()
        sub = subscription_key(member)
        broker.shard_for(member.topic, sub).leave(member)
        log.info("consumer disconnected topic=%r id=%r reason=%r delivered=%d acked=%d",
                 member.topic, member.consumer_id, reason, member.conn.delivered, member.acked)
        broker.owners.leave(member.topic, sub)
        self._unlock_consumer(member.topic, member.consumer_id)
        with self._lock:
            self._members.pop((member.topic, member.consumer_id), None)
        broker.events.emit("consumer.left", **_described(member), reason=reason,
                           delivered=member.conn.delivered, acked=member.acked)

    def _lock_consumer(self, topic, consumer_id):
        """With a shared store, one consumerId is connected to one process of the broker."""
        try:
            locked = self.broker.engine.lock_consumer(topic, consumer_id)
        except StoreError as exc:
            raise Refused(f"the store is unavailable ({exc}); reconnect later",
                          CLOSE_TRY_AGAIN) from None
        if not locked:
            raise Refused(f"consumerId {consumer_id!r} is already connected to topic {topic!r}"
                          " (through another DPMQ process); use another id or close the other"
                          " connection", CLOSE_DUPLICATE)

    def _unlock_consumer(self, topic, consumer_id):
        try:
            self.broker.engine.unlock_consumer(topic, consumer_id)
        except StoreError as exc:
            log.warning("could not release consumerId %r of topic %r; retrying: %s",
                        consumer_id, topic, exc)
            with self._lock:
                self._unlock_later.add((topic, consumer_id))
            self.broker.housekeeping.wake_sweeper()

    def retry_unlocks(self):
        """Release the consumerIds whose release failed (the store was away), unless they came
        back meanwhile; called by the housekeeping thread. Returns whether there were any."""
        with self._lock:
            pending = [key for key in self._unlock_later if key not in self._members]
            self._unlock_later.clear()
        for topic, consumer_id in pending:
            self._unlock_consumer(topic, consumer_id)
        return bool(pending)

    def members(self):
        """The consumers connected now (those still joining left out)."""
        with self._lock:
            return [member for member in self._members.values() if member is not None]

    def joining_or_joined(self):
        """How many places are taken, consumers still joining included."""
        with self._lock:
            return len(self._members)

    @staticmethod
    def close(member, code, reason):
        """Close a consumer's WebSocket from any thread; its route thread then unsubscribes it.

        The close frame is queued first; then the socket's reading side is shut, so that the
        inbound thread sees the connection end now, without waiting for the consumer's answer.
        """
        try:
            member.closer.close(code, reason)
        except Exception:  # noqa: BLE001 - already closed by the peer
            pass
        member.conn.stop_reading()


def _described(member):
    """What a consumer's lifecycle events say about it."""
    return {"topic": member.topic, "consumerId": member.consumer_id, "group": member.group,
            "transport": member.conn.framing.name, "remoteAddr": member.conn.remote_addr}
