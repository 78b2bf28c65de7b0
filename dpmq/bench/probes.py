"""What a process uses, read from ``/proc``: memory, CPU, thread switches, threads, descriptors.

Every reader takes one pid; :func:`broker_use` and :func:`cpu_of` take one or several (a broker
with several workers is the sum of its worker processes).
"""

import os
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    """The process's CPU time so far, every thread's, ended ones too.

    Read from the process's CPU clock, to the nanosecond: ``/proc/<pid>/stat`` counts clock ticks
    (10 ms), coarser than all a short phase spends. The clock's id is the kernel's encoding of
    ``clock_getcpuclockid`` (``~pid << 3 | CPUCLOCK_SCHED``), which Python does not wrap."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:         # gone, or a kernel without process clocks: the ticks then
        return tick_seconds(pid)


def tick_seconds(pid):
    """The process's CPU time as ``/proc/<pid>/stat`` counts it, in whole clock ticks."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid):
    """Context switches of every thread the process has now (voluntary and not)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as handle:
                total += sum(int(line.split()[1]) for line in handle if "ctxt_switches" in line)
        except OSError:     # a thread that ended meanwhile
            continue
    return total


def _each(pids):
    return [pids] if isinstance(pids, int) else list(pids)


def cpu_of(pids):
    """CPU seconds of one process or the sum of several."""
    return sum(cpu_seconds(pid) for pid in _each(pids))


def broker_use(pids):
    """The broker's CPU seconds and thread switches so far (summed over its workers); None
    without a pid."""
    if not pids:
        return None
    each = _each(pids)
    return (sum(cpu_seconds(pid) for pid in each), sum(switches(pid) for pid in each))


def per_message(before, after, accepted):
    """The broker's own cost per accepted message, apart from what the producers and consumers
    sharing the machine take: what a change to the broker saves or spends."""
    if not before or not accepted:
        return {}
    return {"brokerCpuUsPerMessage": round((after[0] - before[0]) * 1e6 / accepted, 1),
            "brokerSwitchesPerMessage": round((after[1] - before[1]) / accepted, 2)}


def machine_share(cpu, seconds):
    """CPU seconds as a share of the whole machine over ``seconds`` (1.0: every core busy)."""
    return round(cpu / (seconds * (os.cpu_count() or 1)), 3) if seconds else None


def machine_jiffies():
    """The whole machine's CPU time so far, busy and in all, from ``/proc/stat`` (clock ticks,
    every core): idle and waiting for the disk are not busy."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_share(before, after):
    """The share of the machine that was busy between two :func:`machine_jiffies` readings: what
    every process took, the broker's, the load generators', and any service beside them (Redis)."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total else None


def settle(pid, most, busy=0.05):
    """Wait until ``pid`` used less than ``busy`` of a core over the last second, at most ``most``
    seconds; returns how long that took. Consumers count themselves connected on the handshake,
    while the broker still registers them for a while (seconds for 10,000 on a slow machine):
    measured from then, the idle figure was that work, not the steady state."""
    start = time.monotonic()
    samples = [(start, cpu_seconds(pid))]
    while time.monotonic() - start < most:
        time.sleep(0.25)
        now = (time.monotonic(), cpu_seconds(pid))
        samples.append(now)
        while now[0] - samples[0][0] > 1.0:
            samples.pop(0)
        first = samples[0]
        if now[0] - start >= 1.0 and now[1] - first[1] < busy * (now[0] - first[0]):
            break
    return round(time.monotonic() - start, 1)
