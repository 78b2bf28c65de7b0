"""What a delivery thread spends per consumer on a live message, next to a bare send.

A wide fan-out at a moderate rate writes each message to each consumer's socket at once, so its
cost is one send per consumer plus whatever the delivery thread does around it. This measures
both in one process, on the same loopback TCP connections: a loop of bare non-blocking sends of
one frame, then a real :class:`~dpmq.delivery.shards.Shard` (memory engine) offering messages to
that many caught-up consumers. CPU per consumer per message, user and system (the kernel's
loopback work, the receiving side's included, is charged to the sender)::

    python bench/offer_cost.py --consumers 2000 --messages 20

The peers' ends read nothing meanwhile, so keep ``messages`` small enough for their buffers.
"""

import argparse
import resource
import socket
import time
import types

from dpmq import config
from dpmq.delivery.shards import Shard
from dpmq.delivery.subscription import Member
from dpmq.message import Record, payload
from dpmq.storage.memory import MemoryEngine
from dpmq.transport.budget import Budget
from dpmq.transport.connection import Connection
from dpmq.transport.frames import WEBSOCKET


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _connections(count):
    """``count`` loopback TCP connections: (the broker's non-blocking end, the peer's)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    pairs = []
    for _ in range(count):
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        ours.setblocking(False)
        peer.setblocking(False)
        pairs.append((ours, peer))
    listener.close()
    return pairs


def _drain(pairs):
    received = 0
    for _, peer in pairs:
        try:
            while data := peer.recv(1 << 20):
                received += len(data)
        except BlockingIOError:
            pass
    return received


def _record(offset):
    return Record(offset, f"{offset:040x}", "t", "x" * 100, 0.0)


def measure(consumers, messages):
    pairs = _connections(consumers)
    frame = WEBSOCKET.message(payload(_record(0)))
    started = _cpu()
    for _ in range(messages):
        for ours, _ in pairs:
            ours.send(frame, socket.MSG_DONTWAIT)
    bare = (_cpu() - started) / (messages * consumers)
    sent, deadline = messages * consumers * len(frame), time.monotonic() + 10
    received = _drain(pairs)
    while received < sent and time.monotonic() < deadline:     # still on its way
        received += _drain(pairs)

    settings = config.build({})
    broker = types.SimpleNamespace(engine=MemoryEngine(), settings=settings, heads={}, pumped={},
                                   consumer_buffers=Budget(settings.mq.consumerBuffersTotalBytes))
    shard = Shard(0, broker)
    members = [Member(Connection(ours, settings.mq.consumerBufferBytes, WEBSOCKET), None, "t",
                      f"c{n}") for n, (ours, _) in enumerate(pairs)]
    shard._join_all(members)                # on this thread: the shard's loop is not running
    shard._catch_up(time.monotonic())
    started = _cpu()
    for offset in range(1, messages + 1):
        record = _record(offset)
        shard._offer([(record, payload(record))], time.monotonic())
        shard._flush_dirty()
    offered = (_cpu() - started) / (messages * consumers)
    expected = consumers * sum(len(WEBSOCKET.message(payload(_record(n))))
                               for n in range(1, messages + 1))
    received, deadline = _drain(pairs), time.monotonic() + 10
    while received < expected and time.monotonic() < deadline:    # what a full socket left
        for member in members:
            member.conn.flush()
        received += _drain(pairs)
    assert received == expected, "every consumer gets every frame"
    for ours, peer in pairs:
        ours.close()
        peer.close()
    return {"consumers": consumers, "messages": messages, "bareSendUs": round(bare * 1e6, 2),
            "shardOfferUs": round(offered * 1e6, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20)
    args = parser.parse_args()
    result = measure(args.consumers, args.messages)
    print(f"{result['consumers']} consumers, {result['messages']} messages: a bare send"
          f" {result['bareSendUs']} µs, the shard's offer {result['shardOfferUs']} µs of CPU per"
          " consumer per message")


if __name__ == "__main__":
    main()
