"""The scenarios at scale: thousands of consumers on one topic or spread over many, large
messages, slow consumers among normal ones, and one worker process against several.

``topics-wide`` and ``large`` are one phase of load (:func:`load.measure`) with settings of their
own; the others are functions here. Each takes the scenario's settings (``spec``) and returns a
dict of results with, wherever there are consumers, ``deliveredPerSecond``, ``lost``,
``duplicated`` and ``outOfOrder``.
"""

import time

from . import load
from .local import LocalBroker

SCENARIOS = {
    # throughput with producers as fast as they go, then latency at `rate` for `rate_seconds`,
    # on the same connections; 1,000 consumers per load process
    "fanout-wide": dict(topics=1, consumers=5000, messages=200, producers=2, rate=20,
                        rate_seconds=10, per_process=1000),
    "topics-wide": dict(topics=1000, consumers=5000, messages=10_000, producers=2,
                        per_process=1000),
    "large": dict(topics=1, consumers=20, messages=2000, producers=2, size=65536),
    # `slow` of the consumers read at a tenth of `rate` while it lasts, then drain at full speed
    "slow-mix": dict(topics=1, consumers=50, slow=10, messages=2000, producers=1, rate=200,
                     latency=True),
    # the redis engine under 1 worker process, then under `workers`
    "workers": dict(workers=2, consumers=50, messages=10_000, producers=2),
}


def _rekey(prefix, figures):
    """``{"deliveredPerSecond": x}`` -> ``{"rateDeliveredPerSecond": x}`` for prefix "rate"."""
    return {prefix + key[0].upper() + key[1:]: value for key, value in figures.items()}


def fanout_wide(url, spec, token=None, pid=None, progress=print, protocol="dpmq"):
    """One topic, thousands of consumers, two phases on the same connections: ``producers`` as
    fast as they go (``deliveredPerSecond``), then one more producer at ``rate`` messages a second
    for ``rate_seconds`` (end-to-end latency; its other figures are prefixed ``rate``)."""
    ctx = load.context()
    topics = [f"fanout-wide-{time.time_ns()}"]
    producers = spec["producers"]
    per_producer = spec["messages"] // producers
    paced = max(1, round(spec["rate"] * spec["rate_seconds"]))
    paths, chosen = load.paths_for(topics, spec["consumers"])
    progress(f"  fanout-wide: connecting {len(paths)} consumers")
    started = time.perf_counter()
    group = load.Consumers(ctx, url, paths, producers + 1, max(per_producer, paced),
                           per_process=spec["per_process"], protocol=protocol)
    connect_seconds = time.perf_counter() - started
    try:
        expected = sum(load.expected_per_consumer(chosen, topics, producers, per_producer))
        fast = load.phase(ctx, url, topics, [group], expected, producers, per_producer, progress,
                          "fanout-wide", size=spec.get("size", 100), token=token, pid=pid)
        group.latencies()               # every connection keeps its latencies from now on
        expected += sum(load.expected_per_consumer(chosen, topics, 1, paced))
        at_rate = load.phase(ctx, url, topics, [group], expected, 1, paced, progress,
                             f"fanout-wide at {spec['rate']}/s", size=spec.get("size", 100),
                             rate=spec["rate"], token=token, first=producers, pid=pid)
        latencies = group.latencies()
        reports = group.finish()[0]
    finally:
        group.kill()
    result = {"scenario": "fanout-wide", "consumers": len(paths), "topics": 1,
              "producers": producers, "messages": per_producer * producers,
              "connectSeconds": round(connect_seconds, 1), "rate": spec["rate"],
              "rateMessages": paced}
    result.update(fast)
    result.update(_rekey("rate", at_rate))
    result.update(load.accounting(reports, expected))
    result.update(load.latency_figures(latencies))
    return result


def slow_mix(url, spec, token=None, pid=None, progress=print, protocol="dpmq"):
    """The latency scenario twice: with ``consumers`` normal consumers (the baseline), then with
    ``slow`` of them reading at a tenth of ``rate`` while messages are published and draining at
    full speed afterwards. Reports the normal consumers' percentiles in the mix, the baseline's,
    and ``p99Ratio`` (mix ÷ baseline); the accounting covers every consumer of both runs.

    The slow readers' sockets have a small receive buffer, so that what they have not read waits
    in the broker (its per-consumer buffer, or the store once that is full), not in the kernel."""
    baseline = load.measure("slow-mix-baseline", url, dict(spec, latency=True), token, pid,
                            progress, protocol)
    ctx = load.context()
    topics = [f"slow-mix-{time.time_ns()}"]
    producers, slow = spec["producers"], spec["slow"]
    per_producer = spec["messages"] // producers
    paths, chosen = load.paths_for(topics, spec["consumers"])
    expected = sum(load.expected_per_consumer(chosen, topics, producers, per_producer))
    normal = slow_group = None
    seen = {}
    try:
        normal = load.Consumers(ctx, url, paths[slow:], producers, per_producer, True,
                                protocol=protocol)
        slow_group = load.Consumers(ctx, url, paths[:slow], producers, per_producer, False,
                                    protocol=protocol, read_rate=spec["rate"] / 10)

        def drain():
            seen["slowReceivedWhilePublishing"] = slow_group.received()
            slow_group.drain()

        figures = load.phase(ctx, url, topics, [normal, slow_group], expected, producers,
                             per_producer, progress, "slow-mix", size=spec.get("size", 100),
                             rate=spec["rate"], token=token, pid=pid, published_hook=drain)
        normal_reports = normal.finish()[0]
        slow_reports = slow_group.finish()[0]
    finally:
        for group in (normal, slow_group):
            if group:
                group.kill()
    result = {"scenario": "slow-mix", "consumers": len(paths), "slow": slow, "topics": 1,
              "producers": producers, "messages": per_producer * producers,
              "slowReadRate": spec["rate"] / 10, **seen,
              "slowExpectedWhilePublishing": slow * figures["accepted"]}
    result.update(figures)
    mix = load.accounting(normal_reports + slow_reports, expected)
    result.update({key: mix[key] + baseline[key] for key in mix})
    result.update(load.latency_figures([ms for r in normal_reports for ms in r["latencies"]]))
    result.update({"baselineP50Ms": baseline.get("latencyP50Ms"),
                   "baselineP99Ms": baseline.get("latencyP99Ms"),
                   "baselineMaxMs": baseline.get("latencyMaxMs"),
                   "baselineDeliveredPerSecond": baseline.get("deliveredPerSecond")})
    if result.get("latencyP99Ms") and result["baselineP99Ms"]:
        result["p99Ratio"] = round(result["latencyP99Ms"] / result["baselineP99Ms"], 2)
    return result


def workers(url, spec, token=None, pid=None, progress=print, protocol="dpmq"):
    """Publish and fan-out on brokers of its own (redis engine, ``url`` unused): one worker
    process, then ``workers``. Broker CPU is the sum of its workers; ``loadCpuShare`` is the
    producer and consumer processes' CPU ÷ (elapsed × cores), ``machineBusyShare`` everything's
    (Redis's too): near 1, no arrangement of processes on this machine does more."""
    if protocol != "dpmq":
        raise RuntimeError("the workers scenario measures DPMQ brokers it starts itself")
    counts = (1, spec["workers"])
    result = {"scenario": "workers", "engine": "redis", "workers": spec["workers"],
              "consumers": spec["consumers"], "producers": spec["producers"],
              "messages": spec["messages"], "lost": 0, "duplicated": 0, "outOfOrder": 0,
              "runs": {}}
    for count in counts:
        broker = LocalBroker("redis", spec["consumers"], workers=count)
        try:
            pids = broker.pids()
            progress(f"  workers: {count} worker(s), pids {pids}")
            common = dict(topics=1, messages=spec["messages"], producers=spec["producers"])
            publish = load.measure("workers-publish", broker.url, dict(common, consumers=0),
                                   token, pids, progress)
            fanout = load.measure("workers-fanout", broker.url,
                                  dict(common, consumers=spec["consumers"]), token, pids, progress)
        finally:
            broker.stop()
        result["runs"][str(count)] = {"publish": publish, "fanout": fanout}
        for key in ("lost", "duplicated", "outOfOrder"):
            result[key] += fanout[key]
        suffix = f"W{count}"
        result.update({f"publishPerSecond{suffix}": publish["publishPerSecond"],
                       f"deliveredPerSecond{suffix}": fanout["deliveredPerSecond"],
                       f"publishLoadCpuShare{suffix}": publish.get("loadCpuShare"),
                       f"fanoutLoadCpuShare{suffix}": fanout.get("loadCpuShare"),
                       f"publishBrokerCpuShare{suffix}": publish.get("brokerCpuShare"),
                       f"fanoutBrokerCpuShare{suffix}": fanout.get("brokerCpuShare"),
                       f"publishMachineBusyShare{suffix}": publish.get("machineBusyShare"),
                       f"fanoutMachineBusyShare{suffix}": fanout.get("machineBusyShare")})
    one, many = (result["runs"][str(count)] for count in counts)
    result.update({"publishPerSecond": many["publish"]["publishPerSecond"],
                   "deliveredPerSecond": many["fanout"]["deliveredPerSecond"],
                   "publishRatio": round(many["publish"]["publishPerSecond"]
                                         / one["publish"]["publishPerSecond"], 2),
                   "fanoutRatio": round(many["fanout"]["deliveredPerSecond"]
                                        / one["fanout"]["deliveredPerSecond"], 2)})
    return result
