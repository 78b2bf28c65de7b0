"""``dpmq bench``: how fast a DPMQ broker moves messages, measured from outside it.

Scenarios (``--scenario``, default all):

- ``fanout``: 1 topic, 50 consumers, 10,000 messages of ~100 bytes;
- ``topics``: 100 topics, one consumer each, 10,000 messages spread over them;
- ``publish``: publishing only, no consumers;
- ``batch``: publishing 100 messages per request;
- ``latency``: 200 messages/s for 10 s to 50 consumers, end-to-end percentiles;
- ``idle``: many idle consumers: the broker's RSS per connection and CPU while idle, over
  ``--idle-seconds`` (30, longer than the default ``server.pingInterval``, so that every
  connection's keep-alive Ping and Pong fall inside the window).

Against ``--url`` (any running broker; for RSS and CPU also give ``--pid``), or, by default, a
broker it starts itself with ``dpmq serve`` on a temporary store (``--engine``). Results print as
a table and, with ``--json FILE``, as JSON. Lost, duplicated and out-of-order counts must be 0.
With a broker it starts, the cost of one disk flush under its store comes first (``diskFlush``):
the baseline the durable engine's rates depend on.
"""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from . import kit

SCENARIOS = {
    "fanout": dict(topics=1, consumers=50, messages=10_000, producers=2),
    "topics": dict(topics=100, consumers=100, messages=10_000, producers=2),
    "publish": dict(topics=1, consumers=0, messages=10_000, producers=2),
    "batch": dict(topics=1, consumers=0, messages=50_000, producers=2, batch=100),
    "latency": dict(topics=1, consumers=50, messages=2_000, producers=1, rate=200),
    "idle": dict(consumers=2_000),
}
#: How long the idle scenario measures CPU: past one default ping interval (25 s).
IDLE_SECONDS = 30
#: How many flushes :func:`disk_flush` times.
FLUSHES = 200


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalBroker:
    """``dpmq serve`` on a free port and a temporary store, for the length of the run."""

    def __init__(self, engine, consumers):
        self.folder = tempfile.mkdtemp(prefix="dpmq-bench-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = f"dpmq-bench-{os.getpid()}-{self.port}"     # redis: keys of its own
        self.engine = engine
        env = dict(os.environ, DPMQ_SERVER_PORT=str(self.port), DPMQ_STORAGE_ENGINE=engine,
                   DPMQ_STORAGE_PATH=os.path.join(self.folder, "bench.db"),
                   DPMQ_STORAGE_PREFIX=self.prefix,
                   DPMQ_SERVER_MAXCONSUMERS=str(max(2000, consumers + 100)),
                   DPMQ_MQ_MESSAGECHANBUFFER="10000", DPMQ_LOG_LEVEL="WARNING",
                   DPMQ_CONFIG=os.path.join(self.folder, "none.yaml"))
        open(env["DPMQ_CONFIG"], "w").close()
        self.proc = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the benchmark broker did not start")
        self.pid = self._worker_pid()

    def _worker_pid(self):
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as handle:
                children = handle.read().split()
            return int(children[0]) if children else self.proc.pid
        except OSError:
            return self.proc.pid

    def stop(self):
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
        if self.engine == "redis":
            self._delete_keys()

    def _delete_keys(self):
        """Leave nothing of the run behind in the shared Redis."""
        import redis

        from .. import config
        settings = config.load(os.path.join(self.folder, "none.yaml"))    # as the broker had it
        client = redis.Redis.from_url(settings.storage.redisUrl)
        try:
            keys = list(client.scan_iter(match=f"{{{self.prefix}}}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
        finally:
            client.close()


def disk_flush(folder, count=FLUSHES):
    """What one durable write costs the disk under ``folder``: ``fdatasync`` of a 4 KB page
    rewritten in place, as a commit of the sqlite engine ends, in ms (median and p90).

    Every publish of a producer that waits for its reply waits for one such flush, so the
    durable engine's rates, and their ratios to servers that keep nothing, move with this
    figure from machine to machine: report it beside them."""
    handle, path = tempfile.mkstemp(dir=folder, prefix="dpmq-flush-")
    times = []
    try:
        os.write(handle, bytes(16 * 4096))
        os.fsync(handle)                # the file's blocks exist: what follows rewrites them
        page = b"x" * 4096
        for i in range(count):
            os.pwrite(handle, page, (i % 16) * 4096)
            start = time.perf_counter()
            os.fdatasync(handle)
            times.append(time.perf_counter() - start)
    finally:
        os.close(handle)
        os.unlink(path)
    times.sort()
    return {"medianMs": round(times[count // 2] * 1e3, 3),
            "p90Ms": round(times[count * 9 // 10] * 1e3, 3)}


def _rss_kb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _switches(pid):
    """Context switches of every thread the broker has now (voluntary and not)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as handle:
                total += sum(int(line.split()[1]) for line in handle if "ctxt_switches" in line)
        except OSError:     # a thread that ended meanwhile
            continue
    return total


def _broker_use(pid):
    """The broker's CPU seconds and thread switches so far; None without its pid."""
    return (_cpu_seconds(pid), _switches(pid)) if pid else None


def _per_message(before, after, accepted):
    """The broker's own cost per accepted message, apart from what the producers and consumers
    sharing the machine take: what a change to the broker saves or spends."""
    if not before or not accepted:
        return {}
    return {"brokerCpuUsPerMessage": round((after[0] - before[0]) * 1e6 / accepted, 1),
            "brokerSwitchesPerMessage": round((after[1] - before[1]) / accepted, 2)}


def _load_cost(published, consumers_cpu, accepted, received):
    """What the load generators themselves cost: on a small machine they share its cores with
    the broker, so a heavier client would be measured as a slower broker."""
    cost = {}
    if accepted:
        cost["producersCpuUsPerMessage"] = round(
            sum(p["cpu"] for p in published) * 1e6 / accepted, 1)
    if received:
        cost["consumersCpuUsPerFrame"] = round(consumers_cpu * 1e6 / received, 2)
    return cost


def _finish(consumers):
    """Stop the consumer processes: what each connection saw, and the processes' CPU seconds."""
    reports, cpu = [], 0.0
    for process, pipe in consumers:
        pipe.send("finish")
        report = pipe.recv()[1]
        reports.extend(report["trackers"])
        cpu += report["cpu"]
        process.join(10)
    return reports, cpu


def _percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


def _start_consumers(ctx, url, paths, producers, per_producer, keep_latency, per_process=2000,
                     protocol="dpmq"):
    groups = [paths[i:i + per_process] for i in range(0, len(paths), per_process)] if paths else []
    workers = []
    for group in groups:
        parent, child = ctx.Pipe()
        process = ctx.Process(target=kit.consumer_process,
                              args=(url, group, producers, per_producer, keep_latency, child,
                                    protocol))
        process.start()
        workers.append((process, parent))
    for _, pipe in workers:
        kind, value = pipe.recv()
        if kind == "error":
            raise RuntimeError(f"a consumer could not connect: {value}")
    return workers


def run_scenario(name, url, token=None, pid=None, size=100, progress=print,
                 idle_seconds=IDLE_SECONDS, protocol="dpmq", **overrides):
    """Run one scenario against ``url``; returns a dict of results."""
    spec = dict(SCENARIOS[name], **overrides)
    if name == "idle":
        return _idle(url, spec["consumers"], pid, progress, idle_seconds, protocol)
    ctx = multiprocessing.get_context("spawn")
    run = f"{name}-{os.getpid()}-{int(time.time())}"
    topics = [f"{run}-t{i}" for i in range(spec["topics"])]
    producers, messages = spec["producers"], spec["messages"]
    per_producer = messages // producers
    paths = [f"/ConsumersConn/{topics[i % len(topics)]}/c{i}" for i in range(spec["consumers"])]
    consumers = _start_consumers(ctx, url, paths, producers, per_producer, name == "latency",
                                 protocol=protocol)
    feeders = []
    for index in range(producers):
        parent, child = ctx.Pipe()
        process = ctx.Process(target=kit.producer_process, args=(
            url, index, topics, per_producer, size, spec.get("batch", 1),
            (spec.get("rate") or 0) / producers, token, child))
        process.start()
        feeders.append((process, parent))
    for _, pipe in feeders:
        pipe.recv()
    before = _broker_use(pid)
    started = time.perf_counter()
    for _, pipe in feeders:
        pipe.send("go")
    # Messages go round-robin over the topics; each consumer reads one topic.
    expected = per_producer * producers * spec["consumers"] // len(topics)
    published = [pipe.recv()[1] for _, pipe in feeders]
    publish_seconds = time.perf_counter() - started
    accepted = sum(p["accepted"] for p in published)
    received, last_change, last_count = 0, time.monotonic(), -1
    while consumers:
        for _, pipe in consumers:
            pipe.send("report")
        received = sum(pipe.recv()[1] for _, pipe in consumers)
        if received != last_count:
            last_count, last_change = received, time.monotonic()
            progress(f"  {name}: {received}/{expected} delivered")
        if received >= expected or time.monotonic() - last_change > 10:
            break
        time.sleep(0.2)
    delivered_seconds = time.perf_counter() - started
    after = _broker_use(pid)
    reports, consumers_cpu = _finish(consumers)
    for process, _ in feeders:
        process.join(10)
    unique = sum(r["unique"] for r in reports)
    latencies = [ms for r in reports for ms in (r["latencies"] or [])]
    result = {
        "scenario": name, "messages": per_producer * producers, "consumers": spec["consumers"],
        "topics": len(topics), "producers": producers, "accepted": accepted,
        "refused": sum(p["refused"] for p in published),
        "publishPerSecond": round(accepted / publish_seconds, 1),
        "delivered": received,
        "deliveredPerSecond": round(received / delivered_seconds, 1) if consumers else None,
        "lost": max(0, expected - unique) if consumers else 0,
        "duplicated": sum(r["duplicated"] for r in reports),
        "outOfOrder": sum(r["outOfOrder"] for r in reports),
    }
    result.update(_per_message(before, after, accepted))
    result.update(_load_cost(published, consumers_cpu, accepted, received))
    if latencies:
        result.update({f"latencyP{p}Ms": _percentile(latencies, p / 100) for p in (50, 90, 99)})
        result["latencyMaxMs"] = round(max(latencies), 2)
    return result


def settle(pid, most, busy=0.05):
    """Wait until ``pid`` used less than ``busy`` of a core over the last second, at most ``most``
    seconds; returns how long that took. Consumers count themselves connected on the handshake,
    while the broker still registers them for a while (seconds for 10,000 on a slow machine):
    measured from then, the idle figure was that work, not the steady state."""
    start = time.monotonic()
    samples = [(start, _cpu_seconds(pid))]
    while time.monotonic() - start < most:
        time.sleep(0.25)
        now = (time.monotonic(), _cpu_seconds(pid))
        samples.append(now)
        while now[0] - samples[0][0] > 1.0:
            samples.pop(0)
        first = samples[0]
        if now[0] - start >= 1.0 and now[1] - first[1] < busy * (now[0] - first[0]):
            break
    return round(time.monotonic() - start, 1)


def _idle(url, count, pid, progress, seconds, protocol):
    ctx = multiprocessing.get_context("spawn")
    before = _rss_kb(pid) if pid else None
    paths = [f"/ConsumersConn/idle-{os.getpid()}/c{i}" for i in range(count)]
    progress(f"  idle: connecting {count} consumers")
    consumers = _start_consumers(ctx, url, paths, 1, 1, False, per_process=max(1, count // 2 + 1),
                                 protocol=protocol)
    result = {"scenario": "idle", "consumers": count}
    if pid:
        progress("  idle: waiting for the broker to finish taking them in")
        result["settleSeconds"] = settle(pid, max(2.0, seconds))
        after = _rss_kb(pid)
        cpu_before = _cpu_seconds(pid)
        progress(f"  idle: measuring for {seconds:g} s")
        time.sleep(seconds)
        result.update({"rssBeforeKb": before, "rssAfterKb": after,
                       "rssPerConnectionKb": round((after - before) / count, 1),
                       "idleCpuPercent": round((_cpu_seconds(pid) - cpu_before) / seconds * 100, 2)})
    _finish(consumers)
    return result


def _table(results):
    columns = ["scenario", "consumers", "accepted", "publishPerSecond", "deliveredPerSecond", "lost",
               "duplicated", "outOfOrder", "latencyP50Ms", "latencyP99Ms", "brokerCpuUsPerMessage",
               "rssPerConnectionKb", "idleCpuPercent"]
    shown = [c for c in columns if any(r.get(c) is not None for r in results)]
    rows = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in shown] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(args):
    names = list(SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"dpmq bench: unknown scenario {unknown[0]}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    local = flush = None
    url, pid = args.url, args.pid
    if url is None:
        local = LocalBroker(args.engine, args.idle if "idle" in names else 0)
        url, pid = local.url, local.pid
        print(f"dpmq bench: broker on {url} (engine {args.engine}, pid {pid})", file=sys.stderr)
        flush = disk_flush(local.folder)
        print(f"dpmq bench: a disk flush under its store takes {flush['medianMs']} ms"
              f" ({flush['p90Ms']} at p90)", file=sys.stderr)
    results = []
    try:
        for name in names:
            overrides = {"consumers": args.idle} if name == "idle" else {}
            if args.messages and name != "idle":
                overrides["messages"] = args.messages
            if args.producers and name != "idle":
                overrides["producers"] = args.producers
            results.append(run_scenario(name, url, token=args.token, pid=pid,
                                        progress=lambda text: print(text, file=sys.stderr),
                                        idle_seconds=args.idle_seconds, protocol=args.protocol,
                                        **overrides))
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
