"""The redis engine's questions between processes: each process of the broker answers for what it
holds.

A console request reaches one process; its consumers and counters are its own. To answer for the
whole broker, that process asks the others on the ``events`` channel (``{"kind": "report", "ask":
<id>, "question": …}``; no question asks for the report) and waits at most the given time for their
answers in the list ``P:answers:<id>``. An ack over HTTP that reaches a process where its consumer
is not asks the others the same way. Each process answers on a thread of its own
(``dpmq-redis-report``), so that a report that waits for the delivery shards never holds up the
listener, which hands on what other processes commit. Nothing is written while no one asks.
"""

import json
import logging
import time
import uuid

from ...errors import StoreError
from .feed import text

log = logging.getLogger(__name__)

ANSWER_TTL_MS = 10_000       # an answer that came too late is dropped by Redis after this


class ProcessReports:
    """Mixed into :class:`~dpmq.storage.redis.engine.RedisEngine`; needs ``self._asks``, a
    ``queue.SimpleQueue``, and ``self._reporter = None`` from its ``__init__``."""

    def serve_reports(self, report):
        self._reporter = report

    def gather_reports(self, timeout, question=None):
        seconds, micros = self._call(self.client.time)
        now_ms = seconds * 1000 + micros // 1000
        live = self._call(self.client.zrangebyscore, self._key("nodes"), now_ms, "+inf")
        others = [node for node in map(text, live) if node != self.node]
        if not others:
            return {}, []
        ask = uuid.uuid4().hex
        answers = self._key("answers", ask)
        self._call(self.client.publish, self._key("events"),
                   json.dumps({"node": self.node, "kind": "report", "ask": ask,
                               "question": question}))
        reports, deadline = {}, time.monotonic() + timeout
        while len(reports) < len(others):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # BLPOP's own timeout stays under the socket's, or redis-py gives up first.
            got = self._call(self.client.blpop, [answers], timeout=min(left, self.timeout / 2))
            if got:
                node, report = json.loads(got[1])
                reports[node] = report
        return reports, [node for node in others if node not in reports]

    def _asked(self, event):
        """Called by the listener for a ``report`` event of another process."""
        self._asks.put((event["ask"], event.get("question")))

    def _report_loop(self):
        while True:
            asked = self._asks.get()
            if asked is None:
                return
            ask, question = asked
            if self._reporter is None:
                continue
            try:
                body = json.dumps([self.node, self._reporter(question)], separators=(",", ":"))
                pipe = self.client.pipeline()
                pipe.rpush(self._key("answers", ask), body)
                pipe.pexpire(self._key("answers", ask), ANSWER_TTL_MS)
                self._call(pipe.execute)
            except StoreError as exc:
                log.warning("could not answer another DPMQ process's console request: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must never die silently
                log.exception("could not report to another DPMQ process's console request")
