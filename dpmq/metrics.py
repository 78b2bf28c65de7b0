"""Counters and metrics: what the console shows and ``GET /metrics`` exports.

Hot paths count with plain integers in tables that one writer at a time updates
(:class:`TopicCounts`: the engine's commit callback, which runs under the engine's commit lock or
on its committer thread, counts published messages; each delivery shard what it delivers, acks,
redelivers, fails and dead-letters), so counting costs no lock of its own. A scrape sums the
tables. Each broker has its own prometheus-client registry; nothing here is global, so one process
can run several brokers.

Per-topic labels are bounded: the ``mq.metricsTopics`` busiest topics get their own label, the rest
are summed under ``topic="_other"``.
"""

import bisect
import collections
import itertools
import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

EVENTS = ("published", "delivered", "acked", "redelivered", "failed", "dead_lettered", "expired",
          "gaps", "missed")
(PUBLISHED, DELIVERED, ACKED, REDELIVERED, FAILED, DEAD_LETTERED, EXPIRED, GAPS,
 MISSED) = range(len(EVENTS))
#: What each event's counter counts, for the metrics' HELP. "failed" is not failed pushes only:
#: its name stays (dashboards use it), its text says what it is.
HELP = {
    "published": "Messages accepted and stored (code 0) by this process",
    "delivered": "Message frames written whole to consumers, one per subscription, redeliveries"
                 " included",
    "acked": "Messages acked by consumers connected with ack=1",
    "redelivered": "Messages handed to a consumer again, after a failed attempt or a requeue",
    "failed": "Failed delivery attempts: ack timeouts, nacks, and messages in flight when their"
              " consumer disconnected; each is redelivered or, after mq.sendRetryCount retries,"
              " dead-lettered",
    "dead_lettered": "Messages given up on for a subscription and kept as dead letters",
    "expired": "Messages not delivered to a subscription (acked, with ack=1) within their ttl,"
               " and so never delivered to it; one per subscription",
    "gaps": "Times a resuming subscription was told that messages it never received are gone"
            " (purged by retention, lost by the store, or the subscription forgotten for idleness)",
    "missed": "Messages those gaps skipped, as far as they could be counted",
}
OTHER = "_other"
#: Seconds between two samples beyond which the sampler was dozing (it samples once a second).
QUIET_GAP = 1.5


class TopicCounts:
    """Per-topic event counts, written by one writer at a time and read by anyone."""

    def __init__(self):
        self._counts = {}

    def of(self, topic):
        """The list of counts of ``topic``, indexed by the event constants; the writer adds to it."""
        counts = self._counts.get(topic)
        if counts is None:
            counts = self._counts[topic] = [0] * len(EVENTS)
        return counts

    def snapshot(self):
        return {topic: list(counts) for topic, counts in list(self._counts.items())}


def merge(tables):
    """Sum several TopicCounts into ``{topic: [counts]}``."""
    total = collections.defaultdict(lambda: [0] * len(EVENTS))
    for table in tables:
        for topic, counts in table.snapshot().items():
            row = total[topic]
            for index, value in enumerate(counts):
                row[index] += value
    return dict(total)


class OneWriterHistogram:
    """A histogram observed by one thread at a time (whoever hands messages to the shards: the
    committing thread under the broker's hand-out lock, or the pump), once per message, so
    observing takes no lock of its own; prometheus-client's Histogram takes two per observation,
    a tenth of the cost of a batch publish. Exported at scrape time by :class:`_Collector`."""

    def __init__(self, name, text, buckets):
        self.name, self.text = name, text
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)      # the last one: above every bound
        self.sum = 0.0

    def observe(self, value, count=1):
        """``count`` observations of ``value`` (the messages of a batch share theirs)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.sum += value * count

    def family(self):
        cumulative = list(itertools.accumulate(self.counts))
        buckets = [(floatToGoString(bound), count) for bound, count in zip(self.bounds, cumulative)]
        buckets.append(("+Inf", cumulative[-1]))
        return HistogramMetricFamily(self.name, self.text, buckets=buckets, sum_value=self.sum)


class History:
    """Totals sampled about once a second over the last minutes, for the console's charts, and
    per-topic published counts every ten seconds over the last minute, for recent rates.

    The sampler (the housekeeping sweeper) dozes while nothing moves and a commit wakes it, so a
    gap between samples is a stretch where nothing was counted: :meth:`sample` closes it a second
    before the new totals, so that what woke the sampler counts in that second and not across the
    gap, and :meth:`rates` carries the quiet on to now. A count that moves without waking the
    sampler (a delayed message coming due) shows in the second it next samples."""

    def __init__(self, seconds=600):
        self.samples = collections.deque(maxlen=seconds)
        self.topic_samples = collections.deque(maxlen=7)

    def sample(self, counts, buffer_used, now=None):
        """``buffer_used``: the room of the buffer (``mq.messageChanBuffer``) taken now."""
        now = now or time.time()
        if self.samples and now - self.samples[-1][0] > QUIET_GAP:
            self.samples.append((now - 1.0,) + self.samples[-1][1:])
        totals = [sum(row[i] for row in counts.values()) for i in range(len(EVENTS))]
        self.samples.append((now, totals[PUBLISHED], totals[DELIVERED], buffer_used))
        if not self.topic_samples or now - self.topic_samples[-1][0] >= 10:
            self.topic_samples.append((now, {t: row[PUBLISHED] for t, row in counts.items()}))

    def topic_rates(self):
        """``{topic: messages published per second}`` over about the last minute."""
        if len(self.topic_samples) < 2:
            return {}
        (t0, then), (t1, now) = self.topic_samples[0], self.topic_samples[-1]
        return {topic: round((count - then.get(topic, 0)) / (t1 - t0), 2)
                for topic, count in now.items()}

    def rates(self, now=None):
        """``[{time, published, delivered, bufferUsed}]``: per-second rates between samples, and
        the buffer's fill when each was taken; while the sampler dozes, the last entry is a quiet
        one at ``now``."""
        now = now or time.time()
        samples = list(self.samples)
        if samples and now - samples[-1][0] > QUIET_GAP:
            samples.append((now,) + samples[-1][1:])
        out = []
        for (t0, p0, d0, _), (t1, p1, d1, b1) in zip(samples, samples[1:]):
            span = max(t1 - t0, 1e-6)
            out.append({"time": round(t1, 3), "published": round((p1 - p0) / span, 2),
                        "delivered": round((d1 - d0) / span, 2), "bufferUsed": b1})
        return out


class Metrics:
    """The Prometheus side of one broker."""

    def __init__(self, broker):
        self.broker = broker
        self.registry = CollectorRegistry(auto_describe=False)
        self.commit_seconds = Histogram(
            "dpmq_store_commit_seconds", "Time to commit a publish to the store",
            buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5), registry=self.registry)
        self.push_seconds = OneWriterHistogram(
            "dpmq_publish_to_push_seconds", "Time from publish (or from due time) to the push to consumers",
            buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.registry.register(_Collector(broker))

    def export(self):
        return generate_latest(self.registry)


class _Collector:
    """Reads the broker's counters at scrape time."""

    def __init__(self, broker):
        self.broker = broker

    def collect(self):
        broker = self.broker
        limit = broker.settings.mq.metricsTopics
        counts = broker.topic_counts()
        ranked = sorted(counts, key=lambda topic: -sum(counts[topic]))
        labelled = collections.defaultdict(lambda: [0] * len(EVENTS))
        for rank, topic in enumerate(ranked):
            row = labelled[topic if rank < limit else OTHER]
            for index, value in enumerate(counts[topic]):
                row[index] += value
        for index, event in enumerate(EVENTS):
            family = CounterMetricFamily(f"dpmq_messages_{event}", HELP[event], labels=["topic"])
            for topic, row in sorted(labelled.items()):
                family.add_metric([topic], row[index])
            yield family
        members = broker.members()

        def caches(figure):
            return sum(getattr(shard.catch_up_cache, figure) for shard in broker.shards)

        gauges = (
            ("dpmq_buffer_used", "Messages holding room in the buffer (mq.messageChanBuffer):"
             " accepted and not yet handed to the delivery shards, those being committed included;"
             " when it is full a publish waits mq.publishTimeout, then gets 503", broker.slots.used),
            ("dpmq_buffer_capacity", "Capacity of the buffer: mq.messageChanBuffer messages",
             broker.slots.capacity),
            ("dpmq_messages_awaiting_paced_push", "Committed messages waiting in the pacing queue"
             " for their paced push (mq.pushMessagesSpeed); always 0 unpaced, where each is handed"
             " out as it commits", broker.pacer.waiting()),
            ("dpmq_consumers_connected", "Connected consumers", len(members)),
            ("dpmq_messages_in_flight", "Messages handed to consumers and not done yet",
             sum(len(member.flights) for member in members)),
            ("dpmq_consumer_buffered_bytes", "Bytes waiting in the consumers' outgoing buffers,"
             " all together (at most mq.consumerBuffersTotalBytes, Pongs and Closes aside)",
             broker.consumer_buffers.used),
            ("dpmq_catch_up_cache_bytes", "Bytes of recent messages and their frames kept for"
             " consumers catching up from the store (at most mq.catchUpCacheBytes)",
             caches("size")),
        )
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        frames = CounterMetricFamily(
            "dpmq_catch_up_frames", "First attempts sent to consumers catching up from the store, by"
            " whether their frame was built for them or kept from another consumer's",
            labels=["frame"])
        frames.add_metric(["built"], caches("built"))
        frames.add_metric(["reused"], caches("reused"))
        yield frames
        reads = CounterMetricFamily(
            "dpmq_catch_up_messages", "Messages read for consumers catching up, by whether they"
            " came from the store or from the catch-up cache", labels=["source"])
        reads.add_metric(["store"], caches("from_store"))
        reads.add_metric(["cache"], caches("from_cache"))
        yield reads
        yield broker.metrics.push_seconds.family()
