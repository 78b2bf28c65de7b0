"""Several DPMQ processes (``dpmq serve`` under gunicorn) sharing one Redis are one broker.

Every process here is a real server in a subprocess; they share the Redis on 127.0.0.1:6379
through a key prefix of the test's own.
"""

import collections
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis
import requests

from helpers import (
    Collector,
    ServedBroker,
    connect_and_close_code,
    drop_prefix,
    free_port,
    redis_prefix,
    require_redis,
    wait_for,
)


@pytest.fixture
def cluster(tmp_path):
    """``cluster(n, **sections)`` -> n started processes sharing one prefix; killed after the test."""
    require_redis()
    started = []

    prefixes = []

    def make(count, **sections):
        storage = dict(engine="redis", prefix=redis_prefix(), nodeTimeout=2)
        prefixes.append(storage["prefix"])
        storage.update(sections.pop("storage", {}))
        nodes = []
        for _ in range(count):
            folder = tmp_path / f"node{len(started)}"
            folder.mkdir()
            node = ServedBroker(folder, storage=storage, **sections)
            started.append(node)
            nodes.append(node)
        for node in nodes:
            node.start()
        return nodes

    yield make
    for node in started:
        node.stop()
    for prefix in prefixes:
        drop_prefix(prefix)


def publish(node, topic, data, **extra):
    reply = requests.post(node.url + "/ProducerSend", data={"topic": topic, "messageData": data,
                                                            **extra}, timeout=10)
    return reply.status_code, reply.json()


def joined(node, count):
    """Wait until ``count`` consumers are connected to ``node`` itself (the console lists those
    of every process: each names the process that holds it)."""
    process = requests.get(node.url + "/Console/Ping").json()["data"]["process"]

    def held():
        consumers = requests.get(node.url + "/Console/GetConsumers").json()["data"]
        return [entry for entry in consumers if entry["process"] == process]

    try:
        wait_for(lambda: len(held()) == count, what=f"{count} consumers on port {node.port}")
    except AssertionError as exc:
        listed = requests.get(node.url + "/Console/GetConsumers").json()["data"]
        raise AssertionError(f"{exc}; the console lists {listed}; the log ends:\n"
                             f"{node.log.read_text()[-3000:]}") from None


def publish_from_threads(nodes, topic, per_node, pause=0.0):
    """One producer thread per process, each publishing ``per_node`` numbered messages through
    it; returns the MessageCodes that got code 0, per thread, in the order they were sent."""
    accepted = [[] for _ in nodes]

    def produce(i, node):
        for n in range(per_node):
            status, body = publish(node, topic, f"{i}-{n}")
            assert (status, body["code"]) == (200, 0), body
            accepted[i].append(body["msg"])
            time.sleep(pause)

    threads = [threading.Thread(target=produce, args=(i, node)) for i, node in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return accepted


def test_consumers_on_every_process_get_every_message_in_one_order(cluster):
    nodes = cluster(3)
    consumers = [Collector(node.ws_url, "news", f"reader-{i}-{j}")
                 for i, node in enumerate(nodes) for j in range(2)]
    for node in nodes:
        joined(node, 2)
    accepted = publish_from_threads(nodes, "news", 100)
    everything = {code for codes in accepted for code in codes}
    assert len(everything) == 300
    for consumer in consumers:
        consumer.wait_count(300, timeout=30)
    first = consumers[0].codes
    assert set(first) == everything and len(first) == 300
    for consumer in consumers[1:]:
        assert consumer.codes == first, "every consumer sees the one log order"
    for codes in accepted:      # each producer's messages keep the order it sent them in
        assert [c for c in first if c in set(codes)] == codes
    offsets = [m["MessageData"] for m in consumers[0].messages]
    assert len(set(offsets)) == 300
    for consumer in consumers:
        consumer.close()


def test_a_group_spread_over_two_processes_gets_each_message_once(cluster):
    a, b = cluster(2)
    members = [Collector(node.ws_url, "jobs", f"w-{i}-{j}", "?group=workers")
               for i, node in enumerate((a, b)) for j in range(2)]
    joined(a, 2)
    joined(b, 2)
    accepted = publish_from_threads([a, b], "jobs", 200, pause=0.001)
    everything = {code for codes in accepted for code in codes}
    wait_for(lambda: sum(len(m.messages) for m in members) >= 400, timeout=30,
             what="400 messages between the members")
    assert _all_read(a, members) == 400, "a message was written twice"
    received = [code for member in members for code in member.codes]
    assert len(received) == 400 and set(received) == everything
    on_a = len(members[0].messages) + len(members[1].messages)
    assert 0 < on_a < 400, f"both processes hand out the group's messages ({on_a} of 400 on one)"
    for member in members:
        member.close()


def _all_read(node, consumers):
    """Wait until ``consumers`` together have read every frame the processes wrote to them (the
    console of any process counts them all); returns that count. Without acks nothing is
    written again later: an extra (duplicate) message has arrived by then."""
    ids = {consumer.url.rsplit("/", 1)[1].split("?")[0] for consumer in consumers}

    def caught_up():
        entries = requests.get(node.url + "/Console/GetConsumers", timeout=10).json()["data"]
        written = sum(e["delivered"] for e in entries if e["consumerId"] in ids)
        return written if written == sum(len(c.messages) for c in consumers) else None
    return wait_for(caught_up, what="every message written to be read")


def test_a_consumer_id_is_connected_to_one_process_at_a_time(cluster):
    a, b = cluster(2)
    holder = Collector(a.ws_url, "t", "only-one")
    joined(a, 1)
    code, reason = connect_and_close_code(b.ws_url, "/ConsumersConn/t/only-one")
    assert code == 4409 and "another DPMQ process" in reason
    holder.close()
    joined(a, 0)        # the holder left
    again = Collector(b.ws_url, "t", "only-one")
    joined(b, 1)
    assert publish(a, "t", "hello")[1]["code"] == 0
    assert again.wait_count(1)[0]["MessageData"] == "hello"
    again.close()


def test_an_unacked_group_message_moves_to_a_member_on_another_process(cluster):
    a, b = cluster(2, mq={"ackTimeout": 60, "maxInFlight": 5})
    holder = Collector(a.ws_url, "jobs", "slow", "?group=g&ack=1")
    joined(a, 1)
    codes = [publish(a, "jobs", f"job-{n}")[1]["msg"] for n in range(5)]
    holder.wait_count(5)
    helper = Collector(b.ws_url, "jobs", "fast", "?group=g&ack=1", auto_ack=True)
    joined(b, 1)
    # The holder is full (maxInFlight): one more message can only go to the helper, and it
    # comes after any of the holder's that the group would wrongly hand out again.
    fence = publish(a, "jobs", "fence")[1]["msg"]
    helper.wait_count(1, timeout=10)
    assert helper.codes == [fence], "in flight on the other process: not handed out twice"
    holder.close()                  # a member that leaves without acking: its messages fail once
    helper.wait_count(6, timeout=10)
    assert sorted(helper.codes[1:]) == sorted(codes)
    assert {m["Status"] for m in helper.messages[1:]} == {1}
    helper.close()


def test_sigkill_of_one_process_loses_nothing_that_got_code_0(cluster):
    a, b = cluster(2, mq={"ackTimeout": 60})
    lone_a = Collector(a.ws_url, "orders", "audit-a")
    lone_b = Collector(b.ws_url, "orders", "audit-b")
    group_b = Collector(b.ws_url, "orders", "worker-b", "?group=billing&ack=1")
    joined(a, 1)
    joined(b, 2)
    accepted, stop = [], threading.Event()

    def produce(node, name):
        n = 0
        while not stop.is_set():
            try:
                status, body = publish(node, "orders", f"{name}-{n}")
            except requests.RequestException:
                return              # the process is gone: its producer stops
            if body["code"] == 0:
                accepted.append(body["msg"])
            n += 1

    producers = [threading.Thread(target=produce, args=(node, name)) for node, name in
                 ((a, "via-a"), (b, "via-b"))]
    for thread in producers:
        thread.start()
    wait_for(lambda: len(accepted) >= 200, timeout=20, what="200 accepted messages")
    b.kill(signal.SIGKILL)          # mid-stream: its consumers and its unacked group messages
    wait_for(lambda: len(accepted) >= 400, timeout=20, what="400 accepted messages")
    stop.set()
    for thread in producers:
        thread.join(10)
    # The consumers of the dead process reconnect to the live one (their ids are free once its
    # heartbeat expires) and resume from their cursors; the group takes back what it held.
    lone_b2 = wait_for(lambda: _connect_when_free(a, "orders", "audit-b"), timeout=15,
                       what="audit-b to connect to the live process")
    group_a = Collector(a.ws_url, "orders", "worker-a", "?group=billing&ack=1", auto_ack=True)
    everything = set(accepted)
    wait_for(lambda: everything <= set(lone_a.codes), timeout=30, what="audit-a to get everything")
    wait_for(lambda: everything <= set(lone_b.codes) | set(lone_b2.codes), timeout=30,
             what="audit-b to get everything, across the crash")
    wait_for(lambda: everything <= set(group_b.codes) | set(group_a.codes), timeout=30,
             what="the group to get everything, across the crash")
    assert lone_a.codes == sorted(set(lone_a.codes), key=lone_a.codes.index), "no duplicates on A"
    for consumer in (lone_a, lone_b2, group_a):
        consumer.close()


def test_group_messages_held_by_a_killed_process_go_to_the_others(cluster):
    a, b = cluster(2, mq={"ackTimeout": 600})
    doomed = Collector(b.ws_url, "jobs", "doomed", "?group=g&ack=1")
    joined(b, 1)
    codes = [publish(a, "jobs", f"job-{n}")[1]["msg"] for n in range(10)]
    doomed.wait_count(10)
    survivor = Collector(a.ws_url, "jobs", "survivor", "?group=g&ack=1", auto_ack=True)
    joined(a, 1)
    b.kill(signal.SIGKILL)          # its ack timers die with it; its heartbeat stops
    survivor.wait_count(10, timeout=15)
    assert sorted(survivor.codes) == sorted(codes)
    assert {m["Status"] for m in survivor.messages} == {1}, "one failed attempt each"
    survivor.close()


def _connect_when_free(node, topic, consumer_id):
    """A consumer on ``node``, or None if the id is still held elsewhere (closed with 4409)."""
    consumer = Collector(node.ws_url, topic, consumer_id)
    process = requests.get(node.url + "/Console/Ping", timeout=10).json()["data"]["process"]

    def decided():
        if consumer.closed:
            return True
        consumers = requests.get(node.url + "/Console/GetConsumers", timeout=10).json()["data"]
        return any(e["consumerId"] == consumer_id and e["process"] == process for e in consumers)
    wait_for(decided, what=f"{consumer_id} to be taken or refused")
    if consumer.closed:
        assert consumer.closed[0] == 4409, consumer.closed
        return None
    return consumer


def test_several_gunicorn_workers_serve_one_broker(cluster):
    (node,) = cluster(1, server={"workers": 3})
    wait_for(lambda: len(subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True,
                                        text=True).stdout.split()) == 3, what="three workers")
    consumers = [Collector(node.ws_url, "t", f"c{i}") for i in range(6)]
    wait_for(lambda: len(_console(node.url, "/Console/GetConsumers")["data"]) == 6,
             what="six consumers, over the three workers")
    codes = [publish(node, "t", str(n))[1]["msg"] for n in range(50)]
    for consumer in consumers:
        assert consumer.wait_count(50, timeout=20) and consumer.codes == codes
        consumer.close()


class PrivateRedis:
    """A redis-server of the test's own that keeps its data on disk, to stop and start again."""

    def __init__(self, folder):
        self.port = free_port()
        self.folder = folder
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        wait_for(lambda: _answers(client), timeout=10, what="the private redis-server")
        client.close()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def _answers(client):
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_redis_down_for_a_while_loses_nothing_accepted(cluster, tmp_path):
    store = PrivateRedis(tmp_path)
    store.start()
    try:
        node, other = cluster(2, storage={"redisUrl": f"redis://127.0.0.1:{store.port}/0",
                                          "redisTimeout": 1})
        consumer = Collector(node.ws_url, "t", "kept")
        leaver = Collector(node.ws_url, "t", "moves")
        joined(node, 2)
        before = [publish(node, "t", f"before-{n}")[1]["msg"] for n in range(30)]
        leaver.wait_count(30)
        store.kill()
        status, body = publish(node, "t", "during")
        assert (status, body["code"]) == (503, -1) and "Redis" in body["msg"], body
        ready = requests.get(node.url + "/readyz", timeout=5)
        assert ready.status_code == 503, ready.text
        leaver.close()                  # leaves while its consumerId cannot be released
        joined(node, 1)
        store.start()
        wait_for(lambda: requests.get(node.url + "/readyz", timeout=5).status_code == 200,
                 timeout=15, what="readyz to pass again")
        after = [publish(node, "t", f"after-{n}")[1]["msg"] for n in range(30)]
        consumer.wait_count(60, timeout=20)
        assert consumer.closed is None, "the consumer was kept through the outage"
        assert consumer.codes == before + after
        moved = wait_for(lambda: _connect_when_free(other, "t", "moves"), timeout=10,
                         what="the consumerId released after the outage")
        # Its cursor may not have been saved while Redis was away: a few of "before" may come
        # again (at least once), then every one of "after", in order.
        wait_for(lambda: set(after) <= set(moved.codes), timeout=10, what="the moved consumer")
        assert moved.codes[-30:] == after and set(moved.codes) <= set(before + after)
        consumer.close()
        moved.close()
    finally:
        store.kill()


def test_processes_with_different_prefixes_are_different_brokers(cluster):
    (a,) = cluster(1)
    (b,) = cluster(1)
    on_b = Collector(b.ws_url, "t", "x")
    joined(b, 1)
    publish(a, "t", "only for a")
    publish(b, "t", "for b")        # after the other in its log, were it one log with a's
    assert on_b.wait_count(1)[0]["MessageData"] == "for b"
    assert on_b.datas == ["for b"]
    on_b.close()


def _console(url, path):
    """A console call on a connection of its own, so that any worker of a server may answer."""
    with requests.Session() as session:
        reply = session.get(url + path, headers={"Connection": "close"}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _holder(url, consumer_id, gone=False):
    """The process that holds ``consumer_id``, as the console names it; with ``gone``, wait
    until none does."""
    def found():
        held = {entry["consumerId"]: entry["process"]
                for entry in _console(url, "/Console/GetConsumers")["data"]}
        return consumer_id not in held if gone else held.get(consumer_id)
    return wait_for(found, what=f"{consumer_id} {'gone from' if gone else 'in'} the console")


def _workers(url, count):
    """The processes of a server once ``count`` of them are up, as the console names them."""
    def up():
        seen = [vitals["process"] for vitals in _console(url, "/Console/GetOverview")["data"]["processes"]]
        return seen if len(seen) == count else None
    return wait_for(up, what=f"{count} workers")


def _spread_over(server, processes, count):
    """``count`` consumers of "news", held by every one of ``processes``. The workers spread
    connections between them, but the console's own calls move the counts; a last consumer that
    lands where the others are is closed and made again."""
    consumers, holders, attempt = [], [], 0
    while len(consumers) < count:
        assert attempt < 100, f"the connections never reached every worker: {holders}"
        consumer_id = f"reader-{attempt}"
        attempt += 1
        consumer = Collector(server.ws_url, "news", consumer_id)
        holder = _holder(server.url, consumer_id)
        if len(consumers) == count - 1 and set(holders + [holder]) != set(processes):
            consumer.close()
            _holder(server.url, consumer_id, gone=True)
            continue
        consumers.append(consumer)
        holders.append(holder)
    return consumers


def test_every_worker_answers_for_the_consumers_of_every_worker(tmp_path):
    """With ``--workers 2`` a console request reaches either worker, and each held some of the
    consumers: the answers counted 4 4 2 4 4 4 of 6. Every answer now covers both."""
    require_redis()
    prefix = redis_prefix()
    server = ServedBroker(tmp_path, server={"workers": 2},
                          storage={"engine": "redis", "prefix": prefix, "nodeTimeout": 2})
    try:
        server.start()
        processes = _workers(server.url, 2)
        consumers = _spread_over(server, processes, 6)
        wanted = sorted(consumer.url.rsplit("/", 1)[1] for consumer in consumers)
        for _ in range(10):
            reply = _console(server.url, "/Console/GetConsumers")
            assert reply["msg"] == "ok"
            assert sorted(entry["consumerId"] for entry in reply["data"]) == wanted
            assert {entry["process"] for entry in reply["data"]} == set(processes)
            (news,) = [topic for topic in _console(server.url, "/Console/GetTopics")["data"]
                       if topic["topic"] != "_dpmq.events"]     # consumers came: their events
            assert news["consumers"] == 6
            overview = _console(server.url, "/Console/GetOverview")["data"]
            assert overview["consumers"] == 6
            assert sorted(vitals["process"] for vitals in overview["processes"]) == sorted(processes)
        for consumer in consumers:
            consumer.close()
    finally:
        server.stop()
        drop_prefix(prefix)


def _server_side(client, port):
    """The /proc inode of the server's end of ``client``'s connection to ``port``."""
    mine = client.getsockname()[1]
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        if int(local[1], 16) == port and int(remote[1], 16) == mine:
            return fields[9]
    return None


def _holding(pids, inode):
    """Which of ``pids`` holds the socket ``inode``."""
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                pass
    return None


def test_two_keep_alive_connections_opened_together_go_to_two_workers(tmp_path):
    """Every worker waits on the one listening socket, and left to the kernel two producers that
    connect at once often both land on one worker, the other idle. A worker holding more
    connections than another now leaves new ones to it."""
    require_redis()
    prefix = redis_prefix()
    server = ServedBroker(tmp_path, server={"workers": 2}, storage={"engine": "redis", "prefix": prefix})
    try:
        server.start()
        _workers(server.url, 2)
        pids = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        rounds = []
        for _ in range(10):
            pair = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
            for client in pair:
                client.sendall(b"GET /Console/Ping HTTP/1.1\r\nHost: dpmq\r\n\r\n")
            for client in pair:
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
            inodes = [_server_side(client, server.port) for client in pair]
            rounds.append([_holding(pids, inode) for inode in inodes])
            for client in pair:
                client.close()
            wait_for(lambda inodes=inodes: not any(_holding(pids, inode) for inode in inodes),
                     what="the workers to let the pair go")
        assert all(None not in pair for pair in rounds), rounds
        # One round may be lost to a worker not scheduled within the spread.DEFER it is left (a
        # busy machine); left to the kernel, the pair shared one worker in most rounds.
        assert sum(len(set(pair)) == 2 for pair in rounds) >= 9, rounds
        # twenty at once are dealt out too, not taken in a run by whichever worker woke first
        crowd = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        for client in crowd:
            client.sendall(b"GET /Console/Ping HTTP/1.1\r\nHost: dpmq\r\n\r\n")
        for client in crowd:
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        held = collections.Counter(_holding(pids, _server_side(client, server.port))
                                   for client in crowd)
        assert set(held) == set(pids) and min(held.values()) >= 7, held
        for client in crowd:
            client.close()
    finally:
        server.stop()
        drop_prefix(prefix)


def test_a_process_that_does_not_answer_is_named(cluster):
    a, b = cluster(2, storage={"nodeTimeout": 10})
    here = Collector(a.ws_url, "t", "here")
    there = Collector(b.ws_url, "t", "there")
    joined(a, 1)
    joined(b, 1)
    silent = requests.get(b.url + "/Console/Ping").json()["data"]["process"]
    os.killpg(b.proc.pid, signal.SIGSTOP)       # alive to its heartbeat's end, answering nothing
    try:
        reply = _console(a.url, "/Console/GetConsumers")
        assert [entry["consumerId"] for entry in reply["data"]] == ["here"]
        assert reply["msg"].startswith("incomplete") and silent in reply["msg"], reply["msg"]
    finally:
        os.killpg(b.proc.pid, signal.SIGCONT)
    wait_for(lambda: _console(a.url, "/Console/GetConsumers")["msg"] == "ok", what="b to answer")
    assert len(_console(a.url, "/Console/GetConsumers")["data"]) == 2
    here.close()
    there.close()


def test_an_ack_over_http_reaching_another_process_settles_the_message(cluster):
    first, second = cluster(2, mq={"ackTimeout": 60})
    consumer = Collector(first.ws_url, "jobs", "worker", "?ack=1")
    joined(first, 1)
    status, body = publish(second, "jobs", "do it")
    consumer.wait_count(1)
    code = body["msg"]
    reply = requests.post(second.url + "/ConsumerAck",
                          json={"topic": "jobs", "consumerId": "worker", "messageCode": code},
                          timeout=10)
    assert reply.json() == {"code": 0, "msg": "ok", "data": {"settled": [code], "unknown": []}}
    again = requests.post(second.url + "/ConsumerAck",
                          json={"topic": "jobs", "consumerId": "worker", "messageCode": code},
                          timeout=10)
    assert again.status_code == 409 and again.json()["data"]["unknown"] == [code]
    nobody = requests.post(second.url + "/ConsumerAck",
                           json={"topic": "jobs", "consumerId": "nobody", "messageCode": code},
                           timeout=10)
    assert nobody.status_code == 409 and "connected" in nobody.json()["msg"]
    consumer.close()


def test_one_ack_over_http_settles_a_groups_messages_held_on_several_processes(cluster):
    # one message in flight per member: the second goes to the member on the other process
    first, second = cluster(2, mq={"ackTimeout": 60, "maxInFlight": 1})
    members = [Collector(first.ws_url, "jobs", "a", "?group=g&ack=1"),
               Collector(second.ws_url, "jobs", "b", "?group=g&ack=1")]
    joined(first, 1)
    joined(second, 1)
    for n in range(4):
        publish(first, "jobs", f"job{n}")
    wait_for(lambda: all(len(m.codes) == 1 for m in members), timeout=15,
             what="one job held by each member, one on each process")
    codes = [m.codes[0] for m in members]
    reply = requests.post(first.url + "/ConsumerAck",
                          json={"topic": "jobs", "group": "g", "messageCode": codes}, timeout=10)
    assert reply.json()["code"] == 0, reply.text
    assert sorted(reply.json()["data"]["settled"]) == sorted(codes)
    for member in members:
        member.close()
