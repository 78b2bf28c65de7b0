"""Run the same `dpmq bench` scenarios against DPMQ and its peers in one session, print ratios.

Peers (bench/peers.py): Flask-SocketIO 5 in threading mode under gunicorn gthread
(bench/socketio_peer.py; needs `pip install flask-socketio` in the Python given by
--peer-python); a minimal Node `ws` server (bench/ws_ceiling.js; needs `npm install` in bench/),
twice: in memory, and durable the way DPMQ's sqlite engine is (every publish flushed to disk
before its reply and its frames), on the disk under DPMQ's store; and RabbitMQ, already running
(never started, stopped or reconfigured from here): a durable queue per consumer on a fanout
exchange per topic, classic (rabbitmq) or quorum (rabbitmq-quorum), AMQP producers with
publisher confirms (needs `pip install pika`), Web-STOMP consumers (dpmq/bench/rabbitmq.py; needs
the rabbitmq_web_stomp and rabbitmq_management plugins). DPMQ runs on a temporary store per
engine.

    python bench/compare.py --peer-python /path/to/venv-with-flask-socketio/bin/python
    python bench/compare.py --servers dpmq-sqlite,rabbitmq --scenario fanout,latency

The servers run side by side and take turns, scenario by scenario; with ``--rounds N`` each
scenario is measured N times and medians are reported, with each round's ratio, so that the
minutes when a shared machine is slow fall on every server alike.
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

import peers

from dpmq.bench.run import SCENARIOS, disk_flush, run_scenario

HERE = pathlib.Path(__file__).resolve().parent
#: Scenarios only DPMQ can run: DPMQ's batch endpoint, brokers it starts itself, hours of load.
ONLY_FOR_DPMQ = ("batch", "workers", "soak")
#: What runs unless ``--scenario`` says otherwise (the scenarios at scale are asked for by name).
COMPARED = ("fanout", "topics", "publish", "latency", "idle")
SERVERS = ("dpmq-sqlite", "dpmq-memory") + peers.STARTED + peers.EXTERNAL
#: Figures measured but not comparable, each with the reason printed under the table.
NOT_COMPARABLE = {
    (rabbitmq, "publish"): "RabbitMQ drops a message no queue is bound to (nothing written), "
                           "while DPMQ stores every message for the consumers to come"
    for rabbitmq in peers.EXTERNAL
}

ROWS = [("fanout delivered/s", "fanout", "deliveredPerSecond"),
        ("fanout publish/s", "fanout", "publishPerSecond"),
        ("fanout broker CPU µs/msg", "fanout", "brokerCpuUsPerMessage"),
        ("topics publish/s", "topics", "publishPerSecond"),
        ("publish only/s", "publish", "publishPerSecond"),
        ("batch messages/s", "batch", "publishPerSecond"),
        ("latency p50 ms", "latency", "latencyP50Ms"),
        ("latency p99 ms", "latency", "latencyP99Ms"),
        ("fanout-wide delivered/s", "fanout-wide", "deliveredPerSecond"),
        ("fanout-wide p99 ms at a fixed rate", "fanout-wide", "latencyP99Ms"),
        ("topics-wide delivered/s", "topics-wide", "deliveredPerSecond"),
        ("large delivered MB/s", "large", "deliveredMBPerSecond"),
        ("slow-mix p99 ms, normal consumers", "slow-mix", "latencyP99Ms"),
        ("slow-mix p99 ÷ without slow ones", "slow-mix", "p99Ratio"),
        ("idle KB/connection", "idle", "rssPerConnectionKb"),
        ("idle CPU %", "idle", "idleCpuPercent")]


def _one(name, server, scenario, args):
    overrides = {"consumers": args.idle} if scenario == "idle" else {}
    if args.producers and scenario != "idle":
        overrides["producers"] = args.producers
    if args.messages and scenario != "idle":
        overrides["messages"] = args.messages
    if args.consumers and scenario != "idle":
        overrides["consumers"] = args.consumers
    if args.topics and "topics" in SCENARIOS[scenario]:
        overrides["topics"] = args.topics
    print(f"{name}: {scenario}", file=sys.stderr, flush=True)
    consumers = overrides.get("consumers", SCENARIOS[scenario].get("consumers", 0))
    gone = server.gone()
    if gone:
        return _failed(name, scenario, gone)
    try:
        server.prepare(scenario, consumers)
    except RuntimeError as exc:
        return _failed(name, scenario, str(exc))
    try:
        return run_scenario(scenario, server.url, pid=server.pid, protocol=server.protocol,
                            progress=lambda text: None, idle_seconds=args.idle_seconds,
                            **overrides)
    except (RuntimeError, OSError) as exc:   # a peer that cannot do a scenario, or died in it
        return _failed(name, scenario, server.gone() or str(exc))
    finally:
        server.cleanup(scenario)


def _failed(name, scenario, why):
    """A run that could not be measured: said on the terminal, kept in the JSON, and the
    session goes on with the next."""
    print(f"{name}: {scenario}: {why}", file=sys.stderr)
    return {"error": why}


def _most_consumers(args, scenarios):
    """The most consumers any chosen scenario connects: a DPMQ broker must admit them all."""
    counts = [args.idle] + [args.consumers or SCENARIOS[name].get("consumers", 0)
                            for name in scenarios if name != "idle"]
    return max(counts)


def _servers(args, names, scenarios):
    """Every server asked for at once, each idle while another is measured."""
    servers = {}
    most = _most_consumers(args, scenarios)
    try:
        for engine in ("sqlite", "memory"):
            if f"dpmq-{engine}" in names:
                servers[f"dpmq-{engine}"] = peers.DPMQ(engine, most)
        beside = servers["dpmq-sqlite"].folder if "dpmq-sqlite" in servers else None
        for name in peers.STARTED:
            if name in names:
                servers[name] = peers.start(name, args, HERE, beside)
        for name in peers.EXTERNAL:
            if name in names:
                servers[name] = peers.RabbitMQ(peers.rabbitmq_url(args.rabbitmq_url, name))
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _chosen_servers(args):
    """The servers of ``--servers``; by default all, RabbitMQ only if it answers."""
    if args.servers:
        names = args.servers.split(",")
        unknown = [name for name in names if name not in SERVERS]
        if unknown:
            sys.exit(f"compare: unknown server {unknown[0]}; known: {', '.join(SERVERS)}")
    else:
        names = list(SERVERS)
    asked = [name for name in peers.EXTERNAL if name in names]
    why = peers.RabbitMQ.reachable(args.rabbitmq_url) if asked else None
    if why and args.servers:
        sys.exit(f"compare: RabbitMQ cannot be measured: {why}")
    if why:
        print(f"compare: leaving RabbitMQ out: {why}", file=sys.stderr)
        names = [name for name in names if name not in asked]
    return names


def _chosen_scenarios(args):
    names = args.scenario.split(",")
    unknown = [name for name in names if name not in SCENARIOS or name in ("workers", "soak")]
    if unknown:
        sys.exit(f"compare: cannot compare scenario {unknown[0]}; known: "
                 f"{', '.join(n for n in SCENARIOS if n not in ('workers', 'soak'))} "
                 "(workers and soak: dpmq bench --scenario)")
    return [name for name in SCENARIOS if name in names]


def _runs(name, scenario):
    """Whether server ``name`` runs ``scenario``."""
    if scenario in ONLY_FOR_DPMQ:
        return name.startswith("dpmq-")
    return not (scenario == "idle" and name == "node-ws-durable")  # node-ws's idle connections


def _median(runs, key):
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def _ratio(everything, scenario, key, peer):
    """The median of each round's ratio: a round's runs are minutes apart, the rounds are not."""
    if (peer, scenario) in NOT_COMPARABLE:
        return "n/c"
    pairs = zip(everything["dpmq-sqlite"].get(scenario, []), everything[peer].get(scenario, []))
    ratios = [mine[key] / theirs[key] for mine, theirs in pairs if mine.get(key) and theirs.get(key)]
    if not ratios:
        return "-"
    each = f" ({', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.2f}{each}"


def _cell(everything, target, scenario, key):
    runs = everything[target].get(scenario)
    if not runs:
        return "-"
    value = _median(runs, key)
    if value is None:
        return "failed" if any("error" in run for run in runs) else "-"
    return f"{value}*" if (target, scenario) in NOT_COMPARABLE else str(value)


def _accounting(everything, target):
    """Lost / duplicated / out of order, over every run of ``target``."""
    runs = [run for scenario in everything[target].values() for run in scenario]
    return " / ".join(str(sum(run.get(key) or 0 for run in runs))
                      for key in ("lost", "duplicated", "outOfOrder"))


def _table(everything):
    targets = list(everything)
    others = ([t for t in targets if t in peers.STARTED + peers.EXTERNAL]
              if "dpmq-sqlite" in targets else [])
    print("| measure | " + " | ".join(targets) + " |"
          + "".join(f" dpmq-sqlite ÷ {peer} |" for peer in others))
    print("|---" * (len(targets) + len(others) + 1) + "|")
    run = {scenario for runs in everything.values() for scenario in runs}
    rows = ROWS + [(f"{s} delivered/s", s, "deliveredPerSecond") for s in sorted(run)
                   if s not in {scenario for _, scenario, _ in ROWS}]
    for label, scenario, key in rows:
        if scenario not in run:
            continue
        print(f"| {label} | " + " | ".join(_cell(everything, t, scenario, key) for t in targets)
              + " |" + "".join(f" {_ratio(everything, scenario, key, p)} |" for p in others))
    print("| lost / duplicated / out of order | "
          + " | ".join(_accounting(everything, t) for t in targets) + " |" + " |" * len(others))
    notes = [f"{peer}, {scenario}: {why}" for (peer, scenario), why in NOT_COMPARABLE.items()
             if everything.get(peer, {}).get(scenario)]
    for note in notes:
        print(f"\n\\* not comparable ({note}).")
    for target in targets:
        for scenario, runs in everything[target].items():
            for error in sorted({run["error"] for run in runs if "error" in run}):
                print(f"\n{target}, {scenario} failed: {error}")


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=sys.executable)
    parser.add_argument("--servers", help=f"a comma-separated list of: {', '.join(SERVERS)} "
                                          "(default: all; RabbitMQ if it answers)")
    parser.add_argument("--rabbitmq-url", default=peers.RABBITMQ_URL,
                        help="RabbitMQ's Web-STOMP URL; AMQP is on the same host, port 5672 "
                             "unless ?amqp=PORT, the management API on 15672 unless "
                             "?management=PORT")
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=30,
                        help="how long the idle scenario measures CPU (past one ping interval)")
    parser.add_argument("--json", default="bench-compare.json")
    parser.add_argument("--producers", type=int,
                        help="producer processes per scenario instead of its default (2; latency 1)")
    parser.add_argument("--messages", type=int, help="messages per scenario instead of its default")
    parser.add_argument("--consumers", type=int,
                        help="consumers per scenario instead of its default (e.g. fanout-wide at"
                             " 2000)")
    parser.add_argument("--topics", type=int,
                        help="topics per scenario instead of its default (e.g. topics-wide at 100"
                             " with --consumers 500, as many consumers as Flask-SocketIO holds)")
    parser.add_argument("--scenario", default=",".join(COMPARED),
                        help=f"a comma-separated list of: {', '.join(SCENARIOS)} but workers and "
                             f"soak (default: {', '.join(COMPARED)}); batch runs on DPMQ only")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each scenario this many times, every server in turn each time, "
                             "and report medians (idle runs once, in the last round)")
    return parser.parse_args()


def main():
    args = _arguments()
    names, scenarios = _chosen_servers(args), _chosen_scenarios(args)
    servers = _servers(args, names, scenarios)
    everything = {name: {} for name in servers}
    where = ("dpmq-sqlite's store" if "dpmq-sqlite" in servers
             else f"the temporary folder {tempfile.gettempdir()}")
    flush = disk_flush(servers["dpmq-sqlite"].folder if "dpmq-sqlite" in servers
                       else tempfile.gettempdir())
    try:
        for round_ in range(args.rounds):
            for scenario in scenarios:
                if scenario == "idle" and round_ < args.rounds - 1:
                    continue
                for name, server in servers.items():
                    if _runs(name, scenario):
                        everything[name].setdefault(scenario, []).append(
                            _one(name, server, scenario, args))
            with open(args.json, "w") as handle:
                json.dump(dict(everything, diskFlush=flush), handle, indent=2)
    finally:
        for server in servers.values():
            server.stop()
    _table(everything)
    print(f"\nA disk flush (fdatasync of 4 KB) under {where}: {flush['medianMs']} ms"
          f" at the median, {flush['p90Ms']} at p90: every publish of a waiting producer waits"
          " for one.")


if __name__ == "__main__":
    main()
