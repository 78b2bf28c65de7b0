"""The load of a scenario, driven from the parent process: consumer and producer processes (see
:mod:`.kit`), the wait for delivery, and the accounting of what every consumer saw.

A scenario may run several phases on the same connections: each phase's producers take
indices of their own (``first``), so that every consumer's tracker counts loss, duplicates and
order over all of them.
"""

import multiprocessing
import time

from . import kit, probes


def context():
    return multiprocessing.get_context("spawn")


def _receive(process, pipe):
    """The next message from a load process, or an error if it died first (rather than waiting
    for ever)."""
    while not pipe.poll(1):
        if not process.is_alive():
            raise RuntimeError(f"a load process ended (exit code {process.exitcode}) before its"
                               " report")
    return pipe.recv()


class Consumers:
    """Consumer processes holding ``paths``, ``per_process`` connections each; the parent's side
    of :func:`kit.consumer_process`. ``producers`` and ``per_producer`` size each connection's
    tracker: every producer index of every phase, and the most messages one of them sends."""

    def __init__(self, ctx, url, paths, producers, per_producer, keep_latency=False,
                 per_process=1000, protocol="dpmq", read_rate=None):
        self.workers = []
        for start in range(0, len(paths), per_process):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=kit.consumer_process,
                                  args=(url, paths[start:start + per_process], producers,
                                        per_producer, keep_latency, child, protocol),
                                  kwargs={"read_rate": read_rate} if read_rate else {})
            process.start()
            self.workers.append((process, parent))
        for process, pipe in self.workers:
            kind, value = _receive(process, pipe)
            if kind == "error":
                self.kill()
                raise RuntimeError(f"a consumer could not connect: {value}")

    @property
    def pids(self):
        return [process.pid for process, _ in self.workers]

    def cpu(self):
        """CPU seconds the consumer processes have used so far (from /proc)."""
        return probes.cpu_of(self.pids) if self.workers else 0.0

    def _ask(self, command):
        for _, pipe in self.workers:
            pipe.send(command)
        return [_receive(process, pipe)[1] for process, pipe in self.workers]

    def received(self):
        return sum(self._ask("report"))

    def latencies(self):
        """The latencies (ms) kept since the last call; every connection keeps them from now on."""
        return [ms for part in self._ask("latencies") for ms in part]

    def drain(self):
        """Slow readers read at full speed from now on."""
        for _, pipe in self.workers:
            pipe.send("drain")

    def finish(self):
        """Stop the processes: what each connection saw, and the processes' CPU seconds."""
        reports, cpu = [], 0.0
        for report in self._ask("finish"):
            reports.extend(report["trackers"])
            cpu += report["cpu"]
        for process, _ in self.workers:
            process.join(10)
        self.workers = []
        return reports, cpu

    def kill(self):
        for process, _ in self.workers:
            process.kill()
            process.join(5)
        self.workers = []


class Producers:
    """``count`` producer processes, indices ``first`` onwards, each publishing ``per_producer``
    messages of ``size`` bytes round-robin over ``topics``, at ``rate`` a second in all if given.
    They connect at once and publish on :meth:`go`."""

    def __init__(self, ctx, url, topics, count, per_producer, size=100, batch=1, rate=None,
                 token=None, first=0):
        self.workers = []
        for index in range(first, first + count):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=kit.producer_process, args=(
                url, index, topics, per_producer, size, batch, (rate or 0) / count, token, child))
            process.start()
            self.workers.append((process, parent))
        for process, pipe in self.workers:
            _receive(process, pipe)

    def go(self):
        self.started = time.perf_counter()
        for _, pipe in self.workers:
            pipe.send("go")

    def done(self, timeout=0):
        """Whether every producer has finished (waits up to ``timeout`` seconds for each)."""
        return all(pipe.poll(timeout) for _, pipe in self.workers)

    def wait(self):
        """Each producer's report ({accepted, refused, seconds, cpu}) once all have finished,
        and the seconds since :meth:`go`."""
        published = [_receive(process, pipe)[1] for process, pipe in self.workers]
        seconds = time.perf_counter() - self.started
        for process, _ in self.workers:
            process.join(10)
        return published, seconds

    def kill(self):
        for process, _ in self.workers:
            if process.is_alive():
                process.kill()
            process.join(5)


def expected_per_consumer(paths_topics, topics, producers, per_producer):
    """Messages each consumer should get: each producer sends ``per_producer`` round-robin over
    ``topics``, and a consumer reads the topic named beside it."""
    per_topic = {topic: producers * (per_producer // len(topics)
                                     + (i < per_producer % len(topics)))
                 for i, topic in enumerate(topics)}
    return [per_topic[topic] for topic in paths_topics]


def wait_delivered(groups, expected, progress, label, stall=10.0):
    """Poll the consumer groups until they have ``expected`` frames in all, or none came for
    ``stall`` seconds; returns the frames received."""
    received, last_change, last_count = 0, time.monotonic(), -1
    while groups:
        received = sum(group.received() for group in groups)
        if received != last_count:
            last_count, last_change = received, time.monotonic()
            progress(f"  {label}: {received}/{expected} delivered")
        if received >= expected or time.monotonic() - last_change > stall:
            break
        time.sleep(0.2)
    return received


def accounting(reports, expected):
    """Lost, duplicated and out-of-order frames over every connection's report."""
    unique = sum(r["unique"] for r in reports)
    return {"lost": max(0, expected - unique),
            "duplicated": sum(r["duplicated"] for r in reports),
            "outOfOrder": sum(r["outOfOrder"] for r in reports)}


def load_cost(published, consumers_cpu, accepted, received):
    """What the load generators themselves cost: on a small machine they share its cores with
    the broker, so a heavier client would be measured as a slower broker."""
    cost = {}
    if accepted:
        cost["producersCpuUsPerMessage"] = round(
            sum(p["cpu"] for p in published) * 1e6 / accepted, 1)
    if received:
        cost["consumersCpuUsPerFrame"] = round(consumers_cpu * 1e6 / received, 2)
    return cost


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


def latency_figures(latencies, prefix="latency"):
    """p50, p90, p99 and max (ms) of ``latencies``, keyed ``latencyP50Ms``... by default."""
    if not latencies:
        return {}
    ordered = sorted(latencies)
    figures = {f"{prefix}P{p}Ms": percentile(ordered, p / 100) for p in (50, 90, 99)}
    figures[f"{prefix}MaxMs"] = round(ordered[-1], 2)
    return figures


def _cpu_each(groups):
    return {pid: probes.cpu_seconds(pid) for group in groups for pid in group.pids}


def phase(ctx, url, topics, groups, expected, producers, per_producer, progress, label, size=100,
          batch=1, rate=None, token=None, first=0, pid=None, published_hook=None):
    """Publish from ``producers`` processes (indices ``first`` onwards) and wait until the
    consumer ``groups`` have ``expected`` frames in all (counted from their start, so over
    every phase so far). ``published_hook`` runs once the producers are done.

    Returns the phase's figures: publish and delivery rates, what the broker (``pid``: one or
    several processes) spent per message, and the load generators' share of the machine."""
    already = sum(group.received() for group in groups)
    feeders = Producers(ctx, url, topics, producers, per_producer, size, batch, rate, token, first)
    before, consumers_before = probes.broker_use(pid), _cpu_each(groups)
    machine_before = probes.machine_jiffies()
    try:
        feeders.go()
        published, publish_seconds = feeders.wait()
    finally:
        feeders.kill()
    if published_hook:
        published_hook()
    received = wait_delivered(groups, expected, progress, label) - already if groups else 0
    seconds = time.perf_counter() - feeders.started
    after, consumers_after = probes.broker_use(pid), _cpu_each(groups)
    machine_busy = probes.busy_share(machine_before, probes.machine_jiffies())
    consumers_cpu = {p: consumers_after[p] - consumers_before[p] for p in consumers_after}
    accepted = sum(p["accepted"] for p in published)
    figures = {"accepted": accepted, "refused": sum(p["refused"] for p in published),
               "publishPerSecond": round(accepted / publish_seconds, 1),
               "delivered": received,
               "deliveredPerSecond": round(received / seconds, 1) if groups else None,
               "seconds": round(seconds, 2)}
    figures.update(probes.per_message(before, after, accepted))
    figures.update(load_cost(published, sum(consumers_cpu.values()), accepted, received))
    load = sum(p["cpu"] for p in published) + sum(consumers_cpu.values())
    figures["loadCpuShare"] = probes.machine_share(load, seconds)
    figures["machineBusyShare"] = machine_busy
    if consumers_cpu:
        figures["consumersCpuShare"] = probes.machine_share(sum(consumers_cpu.values()), seconds)
        figures["consumersBusiestProcessCore"] = round(max(consumers_cpu.values()) / seconds, 3)
    if before:
        figures["brokerCpuShare"] = probes.machine_share(after[0] - before[0], seconds)
    return figures


def paths_for(topics, consumers, offset=0):
    """Consumer ``offset + i`` reads topic ``i % len(topics)``: (paths, each one's topic)."""
    chosen = [topics[i % len(topics)] for i in range(consumers)]
    return ([f"/ConsumersConn/{topic}/c{offset + i}" for i, topic in enumerate(chosen)], chosen)


def measure(name, url, spec, token=None, pid=None, progress=print, protocol="dpmq"):
    """One phase on fresh connections: ``spec`` gives topics, consumers, messages, producers and
    optionally rate, size, batch, latency (keep latencies) and per_process."""
    ctx = context()
    run = f"{name}-{time.time_ns()}"
    topics = [f"{run}-t{i}" for i in range(spec["topics"])]
    producers = spec["producers"]
    per_producer = spec["messages"] // producers
    paths, chosen = paths_for(topics, spec["consumers"])
    expected = sum(expected_per_consumer(chosen, topics, producers, per_producer))
    groups = [Consumers(ctx, url, paths, producers, per_producer, spec.get("latency", False),
                        spec.get("per_process", 2000), protocol)] if paths else []
    try:
        figures = phase(ctx, url, topics, groups, expected, producers, per_producer, progress, name,
                        size=spec.get("size", 100), batch=spec.get("batch", 1),
                        rate=spec.get("rate"), token=token, pid=pid)
        reports = groups[0].finish()[0] if groups else []
    finally:
        for group in groups:
            group.kill()
    result = {"scenario": name, "messages": per_producer * producers, "consumers": len(paths),
              "topics": len(topics), "producers": producers}
    result.update(figures)
    result.update(accounting(reports, expected) if groups
                  else {"lost": 0, "duplicated": 0, "outOfOrder": 0})
    result.update(latency_figures([ms for r in reports for ms in (r["latencies"] or ())]))
    return result
