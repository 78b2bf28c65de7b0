"""Run the same `dpmq bench` scenarios against DPMQ and its peers in one session, print ratios.

Peers: Flask-SocketIO 5 in threading mode under gunicorn gthread (bench/socketio_peer.py; needs
`pip install flask-socketio` in the Python given by --peer-python) and a minimal Node `ws` server
(bench/ws_ceiling.js; needs `npm install` in bench/), twice: in memory, and durable the way DPMQ's
sqlite engine is (every publish flushed to disk before its reply and its frames), on the disk
under DPMQ's store. DPMQ runs on a temporary store per engine.

    python bench/compare.py --peer-python /path/to/venv-with-flask-socketio/bin/python

The five servers run side by side and take turns, scenario by scenario; with ``--rounds N`` each
scenario is measured N times and medians are reported, with each round's ratio, so that the
minutes when a shared machine is slow fall on every server alike.
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from dpmq.bench.run import LocalBroker, disk_flush, run_scenario

HERE = pathlib.Path(__file__).resolve().parent
SCENARIOS = ("fanout", "topics", "publish", "latency", "idle")
#: The servers DPMQ's sqlite engine is compared with, each a column of ratios.
PEERS = ("flask-socketio", "node-ws", "node-ws-durable")


def _port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url):
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


class Peer:
    """A peer server in its own process group; ``FOLDER`` in its command is a temporary folder
    next to ``beside`` (so on the same disk), removed when it stops."""

    def __init__(self, command, cwd, worker_is_child, beside):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = (tempfile.mkdtemp(prefix="dpmq-peer-", dir=os.path.dirname(beside))
                       if "FOLDER" in command else None)
        command = [self.folder if part == "FOLDER" else part.replace("PORT", str(self.port))
                   for part in command]
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(self.url)
        self.pid = (_children(self.proc.pid) or [self.proc.pid])[0] if worker_is_child \
            else self.proc.pid

    def stop(self):
        os.killpg(self.proc.pid, 9)
        self.proc.wait(10)
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def _one(name, server, scenario, idle, producers, idle_seconds):
    overrides = {"consumers": idle} if scenario == "idle" else {}
    if producers and scenario != "idle":
        overrides["producers"] = producers
    print(f"{name}: {scenario}", file=sys.stderr, flush=True)
    protocol = "socketio" if name == "flask-socketio" else "dpmq"
    try:
        return run_scenario(scenario, server.url, pid=server.pid, protocol=protocol,
                            progress=lambda text: None, idle_seconds=idle_seconds, **overrides)
    except RuntimeError as exc:         # a peer that cannot do a scenario
        return {"error": str(exc)}


def _servers(args):
    """All five at once, each idle while another is measured."""
    servers = {}
    try:
        for engine in ("sqlite", "memory"):
            servers[f"dpmq-{engine}"] = LocalBroker(engine, args.idle)
        _start_peers(args, servers)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _start_peers(args, servers):
    peers = {
        "flask-socketio": ([args.peer_python, "-m", "gunicorn", "-k", "gthread", "--threads",
                            str(args.idle + 200), "-w", "1", "-b", "127.0.0.1:PORT",
                            "socketio_peer:app"], True),
        "node-ws": (["node", "ws_ceiling.js", "PORT"], False),
        "node-ws-durable": (["node", "ws_ceiling.js", "PORT", "FOLDER"], False),
    }
    for name, (command, worker_is_child) in peers.items():
        servers[name] = Peer(command, HERE, worker_is_child, servers["dpmq-sqlite"].folder)


def _median(runs, key):
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def _ratio(everything, scenario, key, peer):
    """The median of each round's ratio: a round's runs are minutes apart, the rounds are not."""
    pairs = zip(everything["dpmq-sqlite"][scenario], everything[peer].get(scenario, []))
    ratios = [mine[key] / theirs[key] for mine, theirs in pairs if mine.get(key) and theirs.get(key)]
    if not ratios:
        return "-"
    each = f" ({', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.2f}{each}"


ROWS = [("fanout delivered/s", "fanout", "deliveredPerSecond"),
        ("fanout publish/s", "fanout", "publishPerSecond"),
        ("fanout broker CPU µs/msg", "fanout", "brokerCpuUsPerMessage"),
        ("topics publish/s", "topics", "publishPerSecond"),
        ("publish only/s", "publish", "publishPerSecond"),
        ("latency p99 ms", "latency", "latencyP99Ms"),
        ("idle KB/connection", "idle", "rssPerConnectionKb"),
        ("idle CPU %", "idle", "idleCpuPercent")]


def _table(everything):
    targets = list(everything)
    print("| measure | " + " | ".join(targets) + " | "
          + " | ".join(f"dpmq-sqlite ÷ {peer}" for peer in PEERS) + " |")
    print("|---" * (len(targets) + len(PEERS) + 1) + "|")
    for label, scenario, key in ROWS:
        if scenario not in everything["dpmq-sqlite"]:
            continue
        values = [_median(everything[t].get(scenario, []), key) for t in targets]
        ratios = [_ratio(everything, scenario, key, peer) for peer in PEERS]
        print(f"| {label} | " + " | ".join("-" if scenario not in everything[t]
                                            else "failed" if v is None else str(v)
                                            for t, v in zip(targets, values))
              + " | " + " | ".join(ratios) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=sys.executable)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=30,
                        help="how long the idle scenario measures CPU (past one ping interval)")
    parser.add_argument("--json", default="bench-compare.json")
    parser.add_argument("--producers", type=int,
                        help="producer processes per scenario instead of its default (2; latency 1)")
    parser.add_argument("--scenario", default=",".join(SCENARIOS),
                        help=f"a comma-separated list of: {', '.join(SCENARIOS)}")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each scenario this many times, every server in turn each time, "
                             "and report medians (idle runs once, in the last round)")
    args = parser.parse_args()
    names = [name for name in SCENARIOS if name in args.scenario.split(",")]
    servers = _servers(args)
    everything = {name: {} for name in servers}
    flush = disk_flush(servers["dpmq-sqlite"].folder)
    try:
        for round_ in range(args.rounds):
            for scenario in names:
                if scenario == "idle" and round_ < args.rounds - 1:
                    continue
                for name, server in servers.items():
                    if scenario == "idle" and name == "node-ws-durable":
                        continue            # the same idle connections as node-ws
                    everything[name].setdefault(scenario, []).append(
                        _one(name, server, scenario, args.idle, args.producers,
                             args.idle_seconds))
            with open(args.json, "w") as handle:
                json.dump(dict(everything, diskFlush=flush), handle, indent=2)
    finally:
        for server in servers.values():
            server.stop()
    _table(everything)
    print(f"\nA disk flush (fdatasync of 4 KB) under dpmq-sqlite's store: {flush['medianMs']} ms"
          f" at the median, {flush['p90Ms']} at p90: every publish of a waiting producer waits"
          " for one.")


if __name__ == "__main__":
    main()
