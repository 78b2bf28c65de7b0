"""Run the same `dpmq bench` scenarios against DPMQ and its peers in one session, print ratios.

Peers: Flask-SocketIO 5 in threading mode under gunicorn gthread (bench/socketio_peer.py; needs
`pip install flask-socketio` in the Python given by --peer-python) and a minimal Node `ws` server
(bench/ws_ceiling.js; needs `npm install` in bench/). DPMQ runs on a temporary store per engine.

    python bench/compare.py --peer-python /path/to/venv-with-flask-socketio/bin/python
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

from dpmq.bench import LocalBroker, run_scenario

HERE = pathlib.Path(__file__).resolve().parent
SCENARIOS = ("fanout", "topics", "publish", "latency", "idle")


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
    def __init__(self, command, cwd, worker_is_child):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([part.replace("PORT", str(self.port)) for part in command],
                                     cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait(self.url)
        self.pid = (_children(self.proc.pid) or [self.proc.pid])[0] if worker_is_child \
            else self.proc.pid

    def stop(self):
        os.killpg(self.proc.pid, 9)
        self.proc.wait(10)


def measure(target, url, pid, protocol, idle, producers=None):
    results = {}
    for name in SCENARIOS:
        overrides = {"consumers": idle} if name == "idle" else {}
        if producers and name != "idle":
            overrides["producers"] = producers
        print(f"{target}: {name}", file=sys.stderr, flush=True)
        try:
            results[name] = run_scenario(name, url, pid=pid, protocol=protocol,
                                         progress=lambda text: None, **overrides)
        except RuntimeError as exc:         # a peer that cannot do a scenario
            results[name] = {"error": str(exc)}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=sys.executable)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--json", default="bench-compare.json")
    parser.add_argument("--producers", type=int,
                        help="producer processes per scenario instead of its default (2; latency 1)")
    args = parser.parse_args()
    everything = {}

    def save():
        with open(args.json, "w") as handle:
            json.dump(everything, handle, indent=2)

    for engine in ("sqlite", "memory"):
        broker = LocalBroker(engine, args.idle)
        try:
            everything[f"dpmq-{engine}"] = measure(f"dpmq-{engine}", broker.url, broker.pid, "dpmq",
                                                   args.idle, args.producers)
        finally:
            broker.stop()
        save()
    peers = {
        "flask-socketio": ([args.peer_python, "-m", "gunicorn", "-k", "gthread", "--threads",
                            str(args.idle + 200), "-w", "1", "-b", "127.0.0.1:PORT",
                            "socketio_peer:app"], True, "socketio"),
        "node-ws": (["node", "ws_ceiling.js", "PORT"], False, "dpmq"),
    }
    for name, (command, worker_is_child, protocol) in peers.items():
        peer = Peer(command, HERE, worker_is_child)
        try:
            everything[name] = measure(name, peer.url, peer.pid, protocol, args.idle, args.producers)
        finally:
            peer.stop()
        save()
    rows = [("fanout delivered/s", "fanout", "deliveredPerSecond"),
            ("fanout publish/s", "fanout", "publishPerSecond"),
            ("fanout broker CPU µs/msg", "fanout", "brokerCpuUsPerMessage"),
            ("topics publish/s", "topics", "publishPerSecond"),
            ("publish only/s", "publish", "publishPerSecond"),
            ("latency p99 ms", "latency", "latencyP99Ms"),
            ("idle KB/connection", "idle", "rssPerConnectionKb"),
            ("idle CPU %", "idle", "idleCpuPercent")]
    targets = list(everything)
    print("| measure | " + " | ".join(targets) + " | dpmq-sqlite ÷ flask-socketio | "
          "dpmq-sqlite ÷ node-ws |")
    print("|---" * (len(targets) + 3) + "|")
    for label, scenario, key in rows:
        values = [everything[t][scenario].get(key, "failed") for t in targets]
        base = everything["dpmq-sqlite"][scenario].get(key)
        ratios = []
        for peer in ("flask-socketio", "node-ws"):
            other = everything[peer][scenario].get(key)
            ratios.append(f"{base / other:.2f}" if base and other else "-")
        print(f"| {label} | " + " | ".join(str(v) for v in values) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
