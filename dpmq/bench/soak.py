"""The soak scenario: a steady load for a long time, and whether the broker stays the same.

Producers publish at ``rate`` messages a second (by default half the fan-out capacity, measured
first) to ``consumers`` consumers of one topic for ``soak_minutes``. Every ``sample_seconds`` the
broker's RSS, threads, open descriptors and CPU (with its pid) are read, and the p50 and p99 of
the latencies of that interval. The result says whether they stayed flat: the last sample ÷ the
first, within ``TOLERANCE`` for the resources and ``LATENCY_TOLERANCE`` for the p99.
"""

import collections
import time

from . import load, probes

SCENARIOS = {
    "soak": dict(topics=1, consumers=50, producers=1, rate=None, soak_minutes=30,
                 sample_seconds=60, capacity_messages=5000, per_process=1000),
}
#: How much RSS, threads and descriptors may grow from the first sample to the last and still
#: be flat (0.25: the last at most 1.25 × the first).
TOLERANCE = 0.25
#: The same for the interval's p99 latency: a shared machine's stalls move it more.
LATENCY_TOLERANCE = 1.0


def _capacity(url, spec, token, pid, progress, protocol):
    progress("  soak: measuring fan-out capacity")
    measured = load.measure("soak-capacity", url,
                            dict(topics=1, consumers=spec["consumers"],
                                 messages=spec["capacity_messages"], producers=2),
                            token, pid, progress, protocol)
    if measured["lost"] or measured["duplicated"] or measured["outOfOrder"]:
        raise RuntimeError(f"the capacity run did not account for every message: {measured}")
    return measured["publishPerSecond"]


def soak(url, spec, token=None, pid=None, progress=print, protocol="dpmq"):
    capacity = None if spec.get("rate") else _capacity(url, spec, token, pid, progress, protocol)
    rate = spec.get("rate") or capacity / 2
    seconds = spec["soak_minutes"] * 60
    interval = min(spec["sample_seconds"], seconds)
    producers = spec["producers"]
    per_producer = max(1, round(rate * seconds / producers))
    ctx = load.context()
    topics = [f"soak-{time.time_ns()}"]
    paths, chosen = load.paths_for(topics, spec["consumers"])
    expected = sum(load.expected_per_consumer(chosen, topics, producers, per_producer))
    group = load.Consumers(ctx, url, paths, producers, per_producer, True, spec["per_process"],
                           protocol)
    histogram, feeders = collections.Counter(), None
    try:
        feeders = load.Producers(ctx, url, topics, producers, per_producer, rate=rate, token=token)
        progress(f"  soak: {rate:.0f} messages/s to {len(paths)} consumers for {seconds:g} s")
        feeders.go()
        samples = _samples(feeders, group, pid, interval, round(seconds / interval), histogram,
                           progress)
        published, _ = feeders.wait()
        received = load.wait_delivered([group], expected, progress, "soak")
        elapsed = time.perf_counter() - feeders.started
        _count(group.latencies(), histogram)
        reports = group.finish()[0]
    finally:
        group.kill()
        if feeders:
            feeders.kill()
    result = {"scenario": "soak", "consumers": len(paths), "topics": 1, "producers": producers,
              "capacityPerSecond": capacity, "rate": round(rate, 1), "soakSeconds": seconds,
              "sampleSeconds": interval, "accepted": sum(p["accepted"] for p in published),
              "refused": sum(p["refused"] for p in published), "delivered": received,
              "deliveredPerSecond": round(received / elapsed, 1)}
    result.update(load.accounting(reports, expected))
    result["latencyP50Ms"] = _histogram_percentile(histogram, 0.5)
    result["latencyP99Ms"] = _histogram_percentile(histogram, 0.99)
    result.update(_flatness(samples))
    result["samples"] = samples
    return result


def _samples(feeders, group, pid, interval, count, histogram, progress):
    """``count`` samples, one every ``interval`` seconds from the producers' start."""
    samples, cpu, delivered = [], probes.cpu_seconds(pid) if pid else None, group.received()
    for k in range(1, count + 1):
        time.sleep(max(0.0, feeders.started + k * interval - time.perf_counter()))
        latencies = group.latencies()
        _count(latencies, histogram)
        now = group.received()
        sample = {"seconds": round(time.perf_counter() - feeders.started, 1),
                  "deliveredPerSecond": round((now - delivered) / interval, 1),
                  **{key: value for key, value in load.latency_figures(latencies).items()
                     if key in ("latencyP50Ms", "latencyP99Ms")}}
        delivered = now
        if pid:
            spent = probes.cpu_seconds(pid)
            sample.update({"rssKb": probes.rss_kb(pid), "threads": probes.threads(pid),
                           "fds": probes.open_fds(pid),
                           "brokerCpuPercent": round((spent - cpu) / interval * 100, 1)})
            cpu = spent
        samples.append(sample)
        progress(f"  soak: {sample}")
    return samples


def _count(latencies, histogram):
    """Add latencies (ms) to a histogram of 0.1 ms buckets: the whole run's percentiles without
    keeping every latency of half an hour."""
    histogram.update(int(ms * 10) for ms in latencies)


def _histogram_percentile(histogram, fraction):
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = min(total - 1, int(fraction * total)), 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen > rank:
            return round(bucket / 10, 1)
    return None


def _flatness(samples):
    """The last sample ÷ the first for each measure, and whether they stayed within tolerance."""
    if len(samples) < 2:
        return {"flat": None, "latencyFlat": None}
    first, last = samples[0], samples[-1]
    ratios = {key: round(last[key] / first[key], 3)
              for key in ("rssKb", "threads", "fds", "latencyP99Ms")
              if first.get(key) and last.get(key) is not None}
    resources = [ratios[key] for key in ("rssKb", "threads", "fds") if key in ratios]
    return {"rssRatio": ratios.get("rssKb"), "threadsRatio": ratios.get("threads"),
            "fdsRatio": ratios.get("fds"), "latencyP99Ratio": ratios.get("latencyP99Ms"),
            "flatTolerance": TOLERANCE, "latencyTolerance": LATENCY_TOLERANCE,
            "flat": all(r <= 1 + TOLERANCE for r in resources) if resources else None,
            "latencyFlat": (ratios["latencyP99Ms"] <= 1 + LATENCY_TOLERANCE
                            if "latencyP99Ms" in ratios else None)}
