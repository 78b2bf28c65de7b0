"""The redis engine's view of the other processes: what they append, and who is still alive.

A listener thread follows the ``commits`` channel (a "topic|head|added|node" notice after every
append) and hands what other processes appended to the broker's ``on_remote``, in offset order per
topic; it also polls the topic heads every few seconds, so a notice lost while Redis was away only
delays delivery. Under load it reads in rounds (:mod:`dpmq.gathering`, a window of
:data:`LISTEN_WINDOW`): each round takes every notice that came and reads each topic's new records
at once. Requeues of lone consumers' dead letters arrive on the ``events`` channel. A
heartbeat thread keeps this process alive in Redis; with it, the others know when to take over
the group messages and consumerIds a process held.
"""

import json
import logging
import time

import redis

from ...errors import StoreError
from ...gathering import Gathering
from ...message import Record

log = logging.getLogger(__name__)

HEADS_POLL = 2.0            # seconds between polls of the topic heads (missed notices)
# Notices taken at once when they wait: a listener that falls behind under load reads each
# topic's new records in one go, rather than a record per notice, and so catches up.
NOTICES_AT_ONCE = 1000
# Seconds a round of notices gathers for once they come fast enough to open one (when
# :data:`dpmq.gathering.GATHER` of them would come within it). Read one at a time, each notice
# costs the listener a wake-up and a read of one record, a good part of what the publish cost the
# process serving it; the window adds at most its length to when the other processes' consumers
# get a message, and only under load.
LISTEN_WINDOW = 0.005


def text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def record(topic, entry_id, fields):
    """The Record of a log entry (one without ``x`` never expires, one without ``p`` has no
    traceparent)."""
    key, expires, trace = fields.get(b"k"), fields.get(b"x"), fields.get(b"p")
    return Record(int(entry_id.split(b"-", 1)[0]), fields[b"c"].decode(), topic,
                  fields[b"d"].decode("utf-8"), float(fields[b"t"]),
                  key.decode("utf-8") if key is not None else None, 0.0,
                  float(expires) if expires is not None else 0.0,
                  trace.decode("ascii") if trace is not None else None)


def from_json(raw):
    """The Record of a dead letter's or requeued record's JSON (without ``expires`` or ``trace``:
    written by an earlier version, never expires, no traceparent)."""
    d = json.loads(raw)
    return Record(d["offset"], d["code"], d["topic"], d["data"], d["created"], d["key"], 0.0,
                  d.get("expires", 0.0), d.get("trace"))


class FeedFollower:
    """Mixed into :class:`~dpmq.storage.redis.engine.RedisEngine`."""

    def _listen_loop(self):
        while not self._closed.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._key("commits"), self._key("events"))
                self._follow(pubsub)
            except (redis.RedisError, StoreError) as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("lost Redis at %s (%s); retrying every second", self.where, exc)
                self._closed.wait(1.0)
            except Exception:  # noqa: BLE001 - the listener must never die silently
                log.exception("the Redis listener failed; starting again in 1 s")
                self._closed.wait(1.0)
            finally:
                try:
                    pubsub.close()
                except redis.RedisError:
                    pass

    def _follow(self, pubsub):
        """Hand on what other processes commit until Redis goes away or the engine closes."""
        next_poll = 0.0
        gathering = Gathering(LISTEN_WINDOW)
        while not self._closed.is_set():
            now = time.monotonic()
            if now >= next_poll:
                for topic, head in self.heads().items():
                    self._feed_through(topic, head, polled=True)
                next_poll = now + HEADS_POLL
                if self._down_since is not None:
                    log.warning("Redis at %s is back after %.1f s", self.where,
                                now - self._down_since)
                    self._down_since = None
            notice = pubsub.get_message(timeout=0.5)
            if notice is None:
                continue
            quiet = gathering.until - time.monotonic()
            if quiet > 0:
                self._closed.wait(quiet)    # the round's other notices come meanwhile
            heads = {}      # topic -> the newest head of the notices waiting: one read for all
            taken = 0
            while notice is not None:
                taken += 1
                body = text(notice["data"])
                if text(notice["channel"]).endswith(":commits"):
                    topic, head, added, node = body.split("|", 3)
                    head, added = int(head), int(added)
                    if (node == self.node and topic not in heads
                            and self._fed.get(topic, 0) == head - added):
                        self._fed[topic] = head     # only what this process wrote: nothing to read
                    else:
                        heads[topic] = max(head, heads.get(topic, 0))
                else:
                    self._event(json.loads(body))
                notice = pubsub.get_message() if taken < NOTICES_AT_ONCE else None
            gathering.arrived(taken, time.monotonic())
            for topic, head in heads.items():
                self._feed_through(topic, head)

    def _feed_through(self, topic, head, polled=False):
        """Hand on the records of ``topic`` up to ``head`` this listener has not seen, except
        those this process wrote (its committer handed those on already)."""
        fed = self._fed.get(topic, 0)
        if head < fed and polled:       # a notice may be older than a poll; a poll may not
            log.error("Redis at %s went back on topic %r (head %d, was %d): it lost data it had"
                      " acknowledged; give it appendonly yes and appendfsync always", self.where,
                      topic, head, fed)
            self._fed[topic] = head
            return
        while fed < head:
            entries = self._call(self.client.xrange, self._key("log", topic), f"{fed + 1}-0",
                                 f"{head}-0", count=1000)
            if not entries:
                break
            fed = int(entries[-1][0].split(b"-", 1)[0])
            others = [record(topic, entry_id, fields) for entry_id, fields in entries
                      if fields.get(b"n", b"").decode() != self.node]
            self._fed[topic] = fed
            if others:
                self._on_remote(others)
        self._fed[topic] = max(fed, head)

    def _event(self, event):
        if event.get("node") != self.node and event.get("kind") == "report":
            self._asked(event)
        elif event.get("node") != self.node and event.get("kind") == "requeue" and self._on_requeue:
            key = (event["topic"], event["sub"])
            self._on_requeue(key, [from_json(raw) for raw in event["records"]])

    def _beat_loop(self):
        """Tell the other processes this one is alive, on a thread of its own so that a listener
        waiting for room in the buffer never makes it look dead."""
        while not self._closed.wait(min(1.0, self.node_timeout / 4)):
            try:
                self._heartbeat()
            except StoreError:
                pass            # the listener reports the outage

    def _heartbeat(self):
        released = self._run("HEARTBEAT", self.node, int(self.node_timeout * 1000))
        if released:
            log.warning("took back %d unfinished group messages from DPMQ processes that stopped"
                        " answering", released)
