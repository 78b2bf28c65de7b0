"""Crash consistency: publish and consume while the broker is killed with SIGKILL, again and again.

Producers publish numbered messages; a broadcast consumer and a two-member ack group (both with
DPMQ's own reconnecting client) receive them; the broker (``dpmq serve`` on SQLite) is killed at
random moments and restarted. At the end every message that got ``code 0`` must have reached the
broadcast consumer and the group, none that was refused may have, and each producer's messages
must arrive in order (duplicates after a crash are allowed and counted).

    python tests/crash_harness.py --kills 50          # the long version; the suite runs a short one
"""

import argparse
import json
import pathlib
import random
import sys
import tempfile
import threading
import time

import requests

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from dpmq.client import ClientError, ConnectionFailed, Consumer, Producer  # noqa: E402

from helpers import ServedBroker, drop_prefix, redis_prefix, wait_for  # noqa: E402


class Recorder:
    """What one consumer saw, in arrival order."""

    def __init__(self):
        self.datas = []
        self.lock = threading.Lock()

    def add(self, message):
        with self.lock:
            self.datas.append(message.data)


def _produce(url, name, stop, accepted, refused, unknown):
    producer = Producer(url, retries=0, timeout=5)
    n = 0
    while not stop.is_set():
        data = f"{name}-{n}"
        n += 1
        try:
            producer.send("crash", data)
            accepted.append(data)
        except ClientError:
            refused.append(data)
        except ConnectionFailed:
            unknown.append(data)        # no reply: stored or not, either is allowed
            time.sleep(0.05)
    producer.close()


def _consume(url, consumer_id, group, recorder, stop):
    consumer = Consumer(url, "crash", consumer_id, group=group, ack=group is not None,
                        max_backoff=0.3)
    threading.Thread(target=lambda: (stop.wait(), consumer.close()), daemon=True).start()
    consumer.run(recorder.add)


def _in_order(datas, producer):
    seen = [int(d.split("-")[1]) for d in dict.fromkeys(datas) if d.startswith(producer + "-")]
    return seen == sorted(seen)


def _brokers(folder, engine):
    """One broker on SQLite, or two processes sharing a prefix of the Redis on 6379."""
    mq = {"ackTimeout": 2, "sendRetryCount": 100}
    if engine == "sqlite":
        return [ServedBroker(folder, mq=mq)]
    storage = {"engine": "redis", "prefix": redis_prefix(), "nodeTimeout": 2}
    nodes = []
    for name in ("a", "b"):
        (folder / name).mkdir()
        nodes.append(ServedBroker(folder / name, mq=mq, storage=storage))
    return nodes


def run(folder, kills=3, producers=2, seed=None, log=print, engine="sqlite"):
    rng = random.Random(seed)
    brokers = _brokers(pathlib.Path(folder), engine)
    for broker in brokers:
        broker.start()
    first, last = brokers[0], brokers[-1]
    stop_consumers, stop_producers = threading.Event(), threading.Event()
    consumers = {"broadcast": (first, None), "g1": (first, "workers"), "g2": (last, "workers")}
    if len(brokers) > 1:
        consumers["broadcast2"] = (last, None)
    recorders = {name: Recorder() for name in consumers}
    threads = [threading.Thread(target=_consume, args=(broker.url, name, group, recorders[name],
                                                       stop_consumers))
               for name, (broker, group) in consumers.items()]
    for thread in threads:
        thread.start()
    for broker in brokers:
        _wait_joined(broker, sum(1 for b, _ in consumers.values() if b is broker))
    accepted, refused, unknown = [], [], []
    names = [f"p{i}" for i in range(producers)]
    feeders = [threading.Thread(target=_produce, args=(brokers[i % len(brokers)].url, name,
                                                       stop_producers, accepted, refused, unknown))
               for i, name in enumerate(names)]
    for thread in feeders:
        thread.start()
    try:
        _kill_in_turn(brokers, kills, rng, lambda text: log(f"{text}: {len(accepted)} accepted so far"))
        after = len(accepted)       # some traffic through the last restart before the end
        wait_for(lambda: len(accepted) >= after + 20, timeout=30,
                 what="messages accepted after the last restart")
        stop_producers.set()
        for thread in feeders:
            thread.join(30)
        wanted = set(accepted)
        lone = [name for name in recorders if name.startswith("broadcast")]

        def complete():
            group = set(recorders["g1"].datas) | set(recorders["g2"].datas)
            return all(wanted <= set(recorders[name].datas) for name in lone) and wanted <= group
        try:
            wait_for(complete, timeout=60, what="every accepted message at every subscription")
        except AssertionError:
            pass
    finally:
        stop_producers.set()
        stop_consumers.set()
        for thread in threads:
            thread.join(10)
        for broker in brokers:
            broker.stop()
        if engine == "redis":
            drop_prefix(brokers[0].config_data["storage"]["prefix"])
    return _summary(recorders, names, accepted, refused, unknown,
                    {"engine": engine, "processes": len(brokers), "kills": kills})


def _kill_in_turn(brokers, kills, rng, log):
    """SIGKILL a random broker process at a random moment, ``kills`` times, restarting each."""
    for kill in range(kills):
        time.sleep(rng.uniform(0.3, 1.5))
        victim = rng.choice(brokers)
        victim.kill()
        log(f"kill {kill + 1}/{kills} (port {victim.port})")
        time.sleep(rng.uniform(0.0, 0.3))
        victim.start()


def _wait_joined(broker, count):
    """Wait until ``count`` consumers are connected to ``broker`` itself: on Redis the console
    lists those of every process, each naming the process that holds it."""
    process = requests.get(broker.url + "/Console/Ping").json()["data"]["process"]

    def held():
        consumers = requests.get(broker.url + "/Console/GetConsumers").json()["data"]
        return sum(entry["process"] == process for entry in consumers)

    wait_for(lambda: held() == count, timeout=20, what=f"{count} consumers on port {broker.port}")


def _summary(recorders, names, accepted, refused, unknown, run_info):
    lone = [recorders[name].datas for name in recorders if name.startswith("broadcast")]
    group = recorders["g1"].datas + recorders["g2"].datas
    delivered = set(group).union(*map(set, lone))
    return {
        **run_info, "accepted": len(accepted),
        "refused": len(refused), "unknown": len(unknown),
        "lostBroadcast": sum(len(set(accepted) - set(datas)) for datas in lone),
        "lostGroup": len(set(accepted) - set(group)),
        "refusedDelivered": len(set(refused) & delivered),
        "duplicatesBroadcast": sum(len(datas) - len(set(datas)) for datas in lone),
        "duplicatesGroup": len(group) - len(set(group)),
        # A group's members may see redeliveries out of order; a lone consumer sees none but
        # repeats after a crash, so its first sightings must follow each producer's order.
        "outOfOrder": sum(not _in_order(datas, name) for datas in lone for name in names),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--engine", choices=("sqlite", "redis"), default="sqlite",
                        help="redis: two processes sharing the Redis on 127.0.0.1:6379, killed in turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(folder, args.kills, args.producers, args.seed,
                     log=lambda text: print(text, file=sys.stderr), engine=args.engine)
    print(json.dumps(result, indent=2))
    bad = result["lostBroadcast"] or result["lostGroup"] or result["refusedDelivered"] or \
        result["outOfOrder"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
