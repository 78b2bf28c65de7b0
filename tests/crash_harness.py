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

from helpers import ServedBroker, wait_for  # noqa: E402


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


def run(folder, kills=3, producers=2, seed=None, log=print):
    rng = random.Random(seed)
    broker = ServedBroker(pathlib.Path(folder), mq={"ackTimeout": 2, "sendRetryCount": 100}).start()
    stop_consumers, stop_producers = threading.Event(), threading.Event()
    recorders = {"broadcast": Recorder(), "g1": Recorder(), "g2": Recorder()}
    threads = [threading.Thread(target=_consume, args=(broker.url, "broadcast", None,
                                                       recorders["broadcast"], stop_consumers)),
               threading.Thread(target=_consume, args=(broker.url, "g1", "workers", recorders["g1"],
                                                       stop_consumers)),
               threading.Thread(target=_consume, args=(broker.url, "g2", "workers", recorders["g2"],
                                                       stop_consumers))]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(requests.get(broker.url + "/Console/GetConsumers").json()["data"]) == 3,
             timeout=20, what="three consumers")
    accepted, refused, unknown = [], [], []
    names = [f"p{i}" for i in range(producers)]
    feeders = [threading.Thread(target=_produce, args=(broker.url, name, stop_producers, accepted,
                                                       refused, unknown)) for name in names]
    for thread in feeders:
        thread.start()
    try:
        for kill in range(kills):
            time.sleep(rng.uniform(0.3, 1.5))
            broker.kill()
            log(f"kill {kill + 1}/{kills}: {len(accepted)} accepted so far")
            time.sleep(rng.uniform(0.0, 0.3))
            broker.start()
        time.sleep(0.5)
        stop_producers.set()
        for thread in feeders:
            thread.join(30)
        wanted = set(accepted)

        def complete():
            group = set(recorders["g1"].datas) | set(recorders["g2"].datas)
            return wanted <= set(recorders["broadcast"].datas) and wanted <= group
        try:
            wait_for(complete, timeout=60, what="every accepted message at every subscription")
        except AssertionError:
            pass
    finally:
        stop_producers.set()
        stop_consumers.set()
        for thread in threads:
            thread.join(10)
        broker.stop()
    broadcast = recorders["broadcast"].datas
    group = recorders["g1"].datas + recorders["g2"].datas
    return {
        "kills": kills, "accepted": len(accepted), "refused": len(refused), "unknown": len(unknown),
        "lostBroadcast": len(set(accepted) - set(broadcast)),
        "lostGroup": len(set(accepted) - set(group)),
        "refusedDelivered": len(set(refused) & (set(broadcast) | set(group))),
        "duplicatesBroadcast": len(broadcast) - len(set(broadcast)),
        "duplicatesGroup": len(group) - len(set(group)),
        # A group's members may see redeliveries out of order; a lone consumer sees none but
        # repeats after a crash, so its first sightings must follow each producer's order.
        "outOfOrder": sum(not _in_order(broadcast, name) for name in names),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(folder, args.kills, args.producers, args.seed,
                     log=lambda text: print(text, file=sys.stderr))
    print(json.dumps(result, indent=2))
    bad = result["lostBroadcast"] or result["lostGroup"] or result["refusedDelivered"] or \
        result["outOfOrder"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
