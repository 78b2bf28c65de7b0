"""Hostile and broken consumers: each gets a clear error or close, and everyone else is served."""

import gc
import logging
import os
import threading
import tracemalloc

from wsproto.events import Message, Ping

from dpmq.metrics import ACKED

from helpers import Collector, RawConsumer, connect_and_close_code, wait_for


def _joined(running, count=1):
    wait_for(lambda: len(running.broker.members()) >= count, what=f"{count} consumers")


def test_binary_and_empty_acks_get_error_frames_and_the_consumer_stays(broker):
    consumer = Collector(broker.ws_url, "t", "odd", "?ack=1")
    _joined(broker)
    consumer.ws.send(b"\x00\x01binary")
    consumer.send("")
    wait_for(lambda: len(consumer.errors) == 2, what="two error frames")
    (code,) = broker.publish_many("t", ["fine"])
    assert consumer.wait_count(1)[0]["MessageCode"] == code


def test_json_nested_too_deep_gets_a_clear_400_or_error_frame_everywhere(make_broker):
    """Deeper than Python's JSON parser recurses: an ack, a publish, a batch, a console call."""
    running = make_broker("memory")
    deep = "[" * 30000 + "]" * 30000
    consumer = Collector(running.ws_url, "t", "deep", "?ack=1")
    _joined(running)
    consumer.send(deep)
    wait_for(lambda: consumer.errors, what="an error frame")
    (code,) = running.publish_many("t", ["fine"])
    assert consumer.wait_count(1)[0]["MessageCode"] == code
    json_body = {"data": deep.encode(), "headers": {"Content-Type": "application/json"}}
    for path in ("/ProducerSend", "/ProducerSendBatch", "/Console/Requeue"):
        reply = running.http.post(running.url + path, **json_body)
        assert reply.status_code == 400 and reply.json()["code"] == -1, (path, reply.text)


def test_a_fragmented_ack_is_understood(make_broker):
    running = make_broker("memory", mq={"ackTimeout": 60})
    raw = RawConsumer(running.port, "/ConsumersConn/t/frag?ack=1")
    _joined(running)
    (code,) = running.publish_many("t", ["x"])
    raw.read_slowly(1, ping_every=60)
    raw.sock.sendall(raw.ws.send(Message(data=code[:20], message_finished=False)))
    raw.sock.sendall(raw.ws.send(Message(data=code[20:], message_finished=True)))
    wait_for(lambda: running.broker.topic_counts()["t"][ACKED] == 1, what="the ack to be taken")
    (state,) = running.broker.members()
    assert state.flights == {} and state.acked == 1, "the message is done"
    raw.close()


def test_an_oversized_frame_from_a_consumer_closes_it_with_1009(broker):
    victim = Collector(broker.ws_url, "t", "big")
    bystander = Collector(broker.ws_url, "t", "calm")
    _joined(broker, 2)
    victim.ws.send("x" * 100_000)
    wait_for(lambda: victim.closed, what="the oversized sender to be closed")
    assert victim.closed[0] == 1009
    broker.publish_many("t", ["still served"])
    assert bystander.wait_count(1)[0]["MessageData"] == "still served"


def test_a_ping_flood_from_a_consumer_that_never_reads_is_cut_off(make_broker):
    running = make_broker("memory", mq={"consumerBufferBytes": 16384})
    raw = RawConsumer(running.port, "/ConsumersConn/t/flood", recv_buffer=4096)
    bystander = Collector(running.ws_url, "t", "calm")
    _joined(running, 2)
    ping = raw.ws.send(Ping(b"p" * 120))
    raw.sock.settimeout(5)
    try:
        for _ in range(200_000):
            raw.sock.sendall(ping)
    except OSError:
        pass            # the broker dropped us
    wait_for(lambda: len(running.broker.members()) == 1, timeout=20, what="the flooder to be dropped")
    raw.close()
    running.publish_many("t", ["after the flood"])
    assert bystander.wait_count(1)[0]["MessageData"] == "after the flood"


def test_threads_return_to_their_baseline_after_consumers_come_and_go(make_broker):
    running = make_broker("memory")
    steady = Collector(running.ws_url, "t", "steady")
    _joined(running)
    running.publish_many("t", ["first"])        # every thread a delivery needs is up
    steady.wait_count(1)
    baseline = threading.active_count()
    for round_ in range(3):
        churn = [Collector(running.ws_url, "t", f"c{round_}-{i}") for i in range(10)]
        _joined(running, 11)
        running.publish_many("t", [f"r{round_}"])
        for consumer in churn:
            consumer.wait_count(1)
            consumer.close()
        wait_for(lambda: len(running.broker.members()) == 1, what="the churned consumers to leave")
    wait_for(lambda: threading.active_count() <= baseline + 1, timeout=10,
             what=f"threads back to {baseline} (now {threading.active_count()})")
    assert steady.wait_count(4)


def test_bad_ids_and_topics_never_reach_the_store(broker):
    for path in ("/ConsumersConn/%00/x", "/ConsumersConn/t/%7F", "/ConsumersConn/a%0Ab/x",
                 "/ConsumersConn/%FF/x", "/ConsumersConn/t/%C3"):
        code, _ = connect_and_close_code(broker.ws_url, path)
        assert code == 1008, path
    assert broker.broker.engine.topics() == {}


def _open_files():
    return len(os.listdir("/proc/self/fd"))


def _abuse(running, round_):
    """One round of broken consumers: resets mid-stream, oversized frames, bad acks, silence."""
    resets = [RawConsumer(running.port, f"/ConsumersConn/t/reset-{i}") for i in range(5)]
    loud = [Collector(running.ws_url, "t", f"loud-{i}") for i in range(3)]
    acks = Collector(running.ws_url, "t", "acks", "?ack=1")
    _joined(running, 10)
    running.publish_many("t", [f"{round_}-{n}".ljust(2000, ".") for n in range(50)])
    for raw in resets:
        raw.abort()
    for consumer in loud:
        consumer.ws.send("x" * 100_000)         # closed with 1009
    acks.ws.send(b"\x00\xff")                 # a binary ack: an error frame
    acks.ws.send("not a code")
    for consumer in loud + [acks]:
        consumer.close()
    wait_for(lambda: len(running.broker.members()) == 1, timeout=10,
             what=f"round {round_}'s consumers to be gone")


def _settled(running):
    """Wait until the shards are done with the consumers that left: only the steady consumer's
    subscription is left, with nothing to catch up, their ack timers have fired, and the cursors
    of the subscriptions touched were taken to be saved (a dropped subscription, and what it
    read, stays allocated until then)."""
    shards = running.broker.shards

    def done():
        return (sum(len(shard._subs) for shard in shards) == 1
                and not any(shard._timers or shard._active or shard._parked or shard.touched
                            for shard in shards))
    wait_for(done, what="the shards to be done with the consumers that left")


def test_sockets_threads_and_memory_return_to_baseline_after_abuse(make_broker):
    running = make_broker("sqlite", mq={"consumerBufferBytes": 65536, "ackTimeout": 0.2})
    steady = Collector(running.ws_url, "t", "steady")
    _joined(running)
    for round_ in range(2):                     # warm up: pools, caches, first allocations
        _abuse(running, round_)
    _settled(running)
    gc.collect()
    files, threads = _open_files(), set(threading.enumerate())
    logging.disable(logging.CRITICAL)          # pytest keeps every log record: not ours to count
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for round_ in range(2, 10):
            _abuse(running, round_)
        # every thread started since has ended: a consumer's route thread holds what it held
        wait_for(lambda: _open_files() <= files and set(threading.enumerate()) <= threads,
                 timeout=10, what=f"files back to {files} (now {_open_files()}) and no new"
                                  f" threads (now {set(threading.enumerate()) - threads})")
        assert steady.wait_count(10 * 50, timeout=20)
        steady.messages.clear()                 # what the test itself kept
        steady.arrivals.clear()
        _settled(running)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    assert grown < 1 << 19, f"{grown} bytes still allocated after eight rounds of abuse"


def test_a_half_open_consumer_is_dropped_by_the_ping_timeout(make_broker):
    running = make_broker("memory", server={"pingInterval": 0.3})
    silent = RawConsumer(running.port, "/ConsumersConn/t/gone")   # never reads, never pongs
    _joined(running)
    wait_for(lambda: not running.broker.members(),
             what="the silent consumer to be dropped after a missed pong")
    silent.close()
