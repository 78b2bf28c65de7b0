"""The new transports across a real crash: ``dpmq serve`` (sqlite) is killed with SIGKILL while a
producer publishes, a plain-HTTP pull consumer pulls and acks, and ``curl -N`` reads the event
stream (reconnecting with Last-Event-ID); then it is restarted and everything goes on. Every
message that got code 0 must reach both subscriptions, first arrivals in publish order, none with
a ttl after its ttl.

Just before the kill both consumers fall behind (the puller has read a batch it has not acked yet,
curl is gone), and the broker stays down longer than the ttl: what was published with a ttl in
that window must never arrive, what was published without one must."""

import shutil
import subprocess
import threading
import time

import pytest
import requests

from helpers import wait_for

TOPIC = "crash"
COUNT = 300
TTL = 2.0               # every fifth message; some of those expire while the broker is down
SLACK = 0.3             # a message handed out just before its expiry is still on its way


class Producer(threading.Thread):
    """Publishes m0..m{COUNT-1} one at a time, retrying one that got no answer. ``sent`` holds
    (code, data, expires at the latest or None) of each code-0 reply, in order."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.sent = []
        self.failures = 0

    def run(self):
        http = requests.Session()
        for n in range(COUNT):
            fields = {"topic": TOPIC, "messageData": f"m{n}"}
            if n % 5 == 0:
                fields["ttl"] = TTL
            while True:
                try:
                    reply = http.post(self.url + "/ProducerSend", data=fields, timeout=3).json()
                except (requests.RequestException, ValueError):
                    self.failures += 1
                    http = requests.Session()
                    time.sleep(0.1)
                    continue
                if reply.get("code") == 0:
                    expires = time.time() + TTL if "ttl" in fields else None
                    self.sent.append((reply["msg"], fields["messageData"], expires))
                    break
                self.failures += 1
                time.sleep(0.1)
            time.sleep(0.01)


class Puller(threading.Thread):
    """POST /ConsumerPull in a loop, acking what each pull brought (after reading it)."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.arrivals = []          # (code, time.time(), Status)
        self.gaps = []
        self.stop = threading.Event()
        self.hold = threading.Event()       # set: read one more batch, do not ack it, wait
        self.holding = threading.Event()

    def run(self):
        http = requests.Session()
        who = {"topic": TOPIC, "consumerId": "puller"}
        while not self.stop.is_set():
            try:
                body = http.post(self.url + "/ConsumerPull", json={**who, "max": 20, "wait": 1},
                                 timeout=5).json()
                now = time.time()
                if "gap" in body:
                    self.gaps.append(body["gap"])
                codes = [m["MessageCode"] for m in body.get("data", [])]
                self.arrivals += [(m["MessageCode"], now, m["Status"]) for m in body["data"]]
                if self.hold.is_set() and codes:
                    self.holding.set()          # read, not acked: the crash comes first
                    while self.hold.is_set() and not self.stop.is_set():
                        self.stop.wait(0.05)
                    self.holding.clear()
                    continue
                if codes:
                    http.post(self.url + "/ConsumerAck", json={**who, "messageCode": codes},
                              timeout=5)
            except (requests.RequestException, ValueError, KeyError):
                http = requests.Session()
                self.stop.wait(0.1)


class CurlReader(threading.Thread):
    """``curl -N`` on the event stream; started again with Last-Event-ID whenever it ends."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url + f"/ConsumersConn/{TOPIC}/curl"
        self.arrivals = []          # (code, time.time())
        self.gaps = []
        self.connections = 0
        self.stop = threading.Event()
        self.away = threading.Event()       # set: curl is not started again until cleared
        self.proc = None

    def run(self):
        while not self.stop.is_set():
            if self.away.is_set():
                self.stop.wait(0.05)
                continue
            command = ["curl", "-sN", "-H", "Accept: text/event-stream"]
            if self.arrivals:
                command += ["-H", f"Last-Event-ID: {self.arrivals[-1][0]}"]
            self.proc = subprocess.Popen(command + [self.url], stdout=subprocess.PIPE)
            self.connections += 1
            kind = None
            for line in self.proc.stdout:
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    self.arrivals.append((line[4:], time.time()))
                elif line.startswith("data: ") and kind == "gap":
                    self.gaps.append(line[6:])
                elif not line:
                    kind = None
            self.proc.wait()
            self.stop.wait(0.2)

    def leave(self):
        self.away.set()
        self._kill()

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def finish(self):
        self.stop.set()
        self._kill()
        self.join(10)


def consumers(url):
    try:
        return requests.get(url + "/Console/GetConsumers", timeout=2).json()["data"]
    except (requests.RequestException, ValueError):
        return []


def first_arrivals(codes):
    seen, firsts = set(), []
    for code in codes:
        if code not in seen:
            seen.add(code)
            firsts.append(code)
    return firsts


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_pull_and_event_stream_consumers_lose_nothing_across_a_kill_9(served):
    broker = served(mq={"ackTimeout": 1.0})
    puller, reader = Puller(broker.url), CurlReader(broker.url)
    puller.start()
    reader.start()
    wait_for(lambda: {c["transport"] for c in consumers(broker.url)} == {"pull", "sse"},
             timeout=15, what="the pull and the event-stream consumers")
    producer = Producer(broker.url)
    producer.start()
    try:
        wait_for(lambda: len(producer.sent) >= COUNT // 3, timeout=60, what="a third published")
        wait_for(lambda: puller.arrivals and reader.arrivals, what="both consumers reading")
        puller.hold.set()
        reader.leave()
        wait_for(puller.holding.is_set, what="the puller to hold a batch it has not acked")
        behind = len(producer.sent)
        wait_for(lambda: len(producer.sent) >= behind + 40, timeout=30,
                 what="40 more published while the consumers are behind")
        broker.kill()
        time.sleep(TTL + 0.5)
        broker.start()
        puller.hold.clear()
        reader.away.clear()
        producer.join(120)
        assert not producer.is_alive(), "the producer finished"
        must = [code for code, _, expires in producer.sent if expires is None]

        def all_arrived():
            return all(set(must) <= {a[0] for a in arrivals}
                       for arrivals in (puller.arrivals, reader.arrivals))
        wait_for(all_arrived, timeout=60, what="every code-0 message without ttl at both")
    finally:
        puller.stop.set()
        reader.finish()
        puller.join(10)
    published = [code for code, _, _ in producer.sent]
    expiry = {code: expires for code, _, expires in producer.sent}
    order = {code: n for n, code in enumerate(published)}
    for name, arrivals in (("pull", puller.arrivals), ("sse", reader.arrivals)):
        firsts = [code for code in first_arrivals(a[0] for a in arrivals) if code in order]
        assert firsts == sorted(firsts, key=order.get), f"{name}: first arrivals out of order"
        late = [(code, at - expiry[code]) for code, at, *_ in arrivals
                if expiry.get(code) and at > expiry[code] + SLACK]
        assert not late, f"{name}: {len(late)} arrivals after their ttl: {late[:5]}"
    assert reader.connections >= 2, "curl reconnected after the restart"
    assert producer.failures, "the producer saw the broker down"
    for name, arrivals in (("pull", puller.arrivals), ("sse", reader.arrivals)):
        got = {a[0] for a in arrivals}
        assert any(expires and code not in got for code, _, expires in producer.sent), \
            f"{name}: some ttl message committed before the crash expired while it was down"
    assert not puller.gaps and not reader.gaps, (puller.gaps, reader.gaps)
