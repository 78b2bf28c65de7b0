"""``dpmq bench``: how fast a DPMQ broker moves messages, measured from outside it.

Scenarios (``--scenario``; ``all``, the default, runs the first six):

- ``fanout``: 1 topic, 50 consumers, 10,000 messages of ~100 bytes;
- ``topics``: 100 topics, one consumer each, 10,000 messages spread over them;
- ``publish``: publishing only, no consumers;
- ``batch``: publishing 100 messages per request;
- ``latency``: 200 messages/s for 10 s to 50 consumers, end-to-end percentiles;
- ``idle``: many idle consumers: the broker's RSS per connection and CPU while idle, over
  ``--idle-seconds`` (30, longer than the default ``server.pingInterval``, so that every
  connection's keep-alive Ping and Pong fall inside the window).

At scale, asked for by name (:mod:`.scale`, :mod:`.soak`):

- ``fanout-wide``: 1 topic, 5,000 consumers: delivered frames/s, then latency at 20 messages/s;
- ``topics-wide``: 1,000 topics, 5 consumers each;
- ``large``: 64 KB messages, delivered MB/s;
- ``slow-mix``: the latency scenario with 10 of its 50 consumers reading at a tenth of the rate,
  against a baseline of 50 normal ones;
- ``workers``: the redis engine under 1 worker process, then 2 (brokers of its own);
- ``soak``: half the fan-out capacity for 30 minutes, the broker sampled every minute.

Against ``--url`` (any running broker; for RSS and CPU also give ``--pid``), or, by default, a
broker it starts itself with ``dpmq serve`` on a temporary store (``--engine``). Results print as
a table and, with ``--json FILE``, as JSON. Lost, duplicated and out-of-order counts must be 0.
With a broker it starts, the cost of one disk flush under its store comes first (``diskFlush``):
the baseline the durable engine's rates depend on.
"""

import json
import os
import sys
import time

from . import load, probes, scale, soak
from .local import LocalBroker, disk_flush
from .probes import settle

__all__ = ["SCENARIOS", "DEFAULT", "LocalBroker", "disk_flush", "run_scenario", "settle", "main"]

SCENARIOS = {
    "fanout": dict(topics=1, consumers=50, messages=10_000, producers=2),
    "topics": dict(topics=100, consumers=100, messages=10_000, producers=2),
    "publish": dict(topics=1, consumers=0, messages=10_000, producers=2),
    "batch": dict(topics=1, consumers=0, messages=50_000, producers=2, batch=100),
    "latency": dict(topics=1, consumers=50, messages=2_000, producers=1, rate=200, latency=True),
    "idle": dict(consumers=2_000),
    **scale.SCENARIOS,
    **soak.SCENARIOS,
}
#: What ``--scenario all`` runs: the scenarios at scale are asked for by name.
DEFAULT = ("fanout", "topics", "publish", "batch", "latency", "idle")
#: Scenarios that start brokers of their own (the redis engine, 1 worker, then several).
STARTS_ITS_OWN = {"workers"}
#: How long the idle scenario measures CPU: past one default ping interval (25 s).
IDLE_SECONDS = 30
#: Scenarios run by a function of their own rather than as one phase of load.
_RUNNERS = {"fanout-wide": scale.fanout_wide, "slow-mix": scale.slow_mix,
            "workers": scale.workers, "soak": soak.soak}


def run_scenario(name, url, token=None, pid=None, size=None, progress=print,
                 idle_seconds=IDLE_SECONDS, protocol="dpmq", **overrides):
    """Run one scenario against ``url``; returns a dict of results. ``overrides`` replace the
    scenario's own settings (consumers, messages, producers, topics, rate...)."""
    spec = dict(SCENARIOS[name], **overrides)
    if size is not None:
        spec["size"] = size
    if name == "idle":
        return _idle(url, spec["consumers"], pid, progress, idle_seconds, protocol)
    if name in _RUNNERS:
        return _RUNNERS[name](url, spec, token=token, pid=pid, progress=progress,
                              protocol=protocol)
    result = load.measure(name, url, spec, token, pid, progress, protocol)
    if name == "large":
        result["size"] = spec["size"]
        result["deliveredMBPerSecond"] = round(result["deliveredPerSecond"] * spec["size"] / 1e6,
                                               2)
    return result


def _idle(url, count, pid, progress, seconds, protocol):
    before = probes.rss_kb(pid) if pid else None
    paths = [f"/ConsumersConn/idle-{os.getpid()}/c{i}" for i in range(count)]
    progress(f"  idle: connecting {count} consumers")
    consumers = load.Consumers(load.context(), url, paths, 1, 1, False,
                               per_process=max(1, count // 2 + 1), protocol=protocol)
    result = {"scenario": "idle", "consumers": count}
    try:
        if pid:
            progress("  idle: waiting for the broker to finish taking them in")
            result["settleSeconds"] = settle(pid, max(2.0, seconds))
            after = probes.rss_kb(pid)
            cpu_before = probes.cpu_seconds(pid)
            progress(f"  idle: measuring for {seconds:g} s")
            time.sleep(seconds)
            result.update({"rssBeforeKb": before, "rssAfterKb": after,
                           "rssPerConnectionKb": round((after - before) / count, 1),
                           "idleCpuPercent": round((probes.cpu_seconds(pid) - cpu_before)
                                                   / seconds * 100, 2)})
        consumers.finish()
    finally:
        consumers.kill()
    return result


def _table(results):
    columns = ["scenario", "consumers", "accepted", "publishPerSecond", "deliveredPerSecond", "lost",
               "duplicated", "outOfOrder", "latencyP50Ms", "latencyP99Ms", "brokerCpuUsPerMessage",
               "rssPerConnectionKb", "idleCpuPercent", "deliveredMBPerSecond", "baselineP99Ms",
               "p99Ratio", "publishRatio", "fanoutRatio", "flat"]
    shown = [c for c in columns if any(r.get(c) is not None for r in results)]
    rows = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in shown] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _overrides(name, args):
    """What the command line changes in scenario ``name``."""
    if name == "idle":
        return {"consumers": args.idle}
    spec, overrides = SCENARIOS[name], {}
    options = {"messages": args.messages, "producers": args.producers,
               "topics": getattr(args, "topics", None),
               "rate": getattr(args, "rate", None), "soak_minutes": getattr(args, "soak_minutes", None),
               "sample_seconds": getattr(args, "sample_seconds", None),
               "workers": getattr(args, "workers", None)}
    if spec.get("consumers"):
        options["consumers"] = getattr(args, "consumers", None)
    for key, value in options.items():
        if value and (key in spec or key in ("messages", "producers")):
            overrides[key] = value
    return overrides


def _consumers_at_most(names, args):
    """The most consumers one scenario connects: the broker's server.maxConsumers must fit it."""
    return max((args.idle if name == "idle"
                else _overrides(name, args).get("consumers", SCENARIOS[name].get("consumers", 0))
                for name in names), default=0)


def main(args):
    names = list(DEFAULT) if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"dpmq bench: unknown scenario {unknown[0]}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    local = flush = None
    url, pid = args.url, args.pid
    if url is None and set(names) - STARTS_ITS_OWN:
        local = LocalBroker(args.engine, _consumers_at_most(names, args))
        url, pid = local.url, local.pid
        print(f"dpmq bench: broker on {url} (engine {args.engine}, pid {pid})", file=sys.stderr)
        flush = disk_flush(local.folder)
        print(f"dpmq bench: a disk flush under its store takes {flush['medianMs']} ms"
              f" ({flush['p90Ms']} at p90)", file=sys.stderr)
    results = []
    try:
        for name in names:
            results.append(run_scenario(name, url, token=args.token, pid=pid,
                                        progress=lambda text: print(text, file=sys.stderr),
                                        idle_seconds=args.idle_seconds, protocol=args.protocol,
                                        **_overrides(name, args)))
    finally:
        if local:
            local.stop()
    print(_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"url": args.url or f"local {args.engine}", "diskFlush": flush,
                       "results": results}, handle, indent=2)
    bad = [r for r in results if r.get("lost") or r.get("duplicated") or r.get("outOfOrder")]
    return 1 if bad else 0
