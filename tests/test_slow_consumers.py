"""Slow, stuck and pinging consumers: frames stay whole, and nobody waits for the slowest."""

import threading
import time

from wsproto.events import Ping

from helpers import Collector, RawConsumer, wait_for


def test_slow_pinging_consumer_receives_thousands_of_messages_intact(make_broker, engine_name):
    """6 MB, more than the kernel buffers hold, so writes are short and Pongs race the data."""
    running = make_broker(engine_name, mq={"messageChanBuffer": 5000,
                                           "consumerBufferBytes": 16 << 20})
    consumer = RawConsumer(running.port, "/ConsumersConn/t/slow")
    wait_for(lambda: running.broker.members(), what="the consumer")
    total, body = 3000, "x" * 2000
    for start in range(0, total, 1000):
        running.publish_many("t", [f"{i}:{body}" for i in range(start, start + 1000)])
    consumer.read_slowly(total, chunk=4096, pause=0.0002, ping_every=0)
    assert consumer.error is None, f"the stream broke after {len(consumer.messages)}: " \
        f"{consumer.error!r}"
    assert [m["MessageData"] for m in consumer.messages] == [f"{i}:{body}" for i in range(total)]
    pongs = consumer.pongs
    consumer.sock.sendall(consumer.ws.send(Ping(b"last")))
    wait_for(lambda: consumer._read(65536) is not None and consumer.pongs > pongs,
             what="the Pong of the last Ping")
    consumer.close()


def test_a_stuck_consumer_does_not_delay_the_others_and_catches_up_later(make_broker, engine_name):
    running = make_broker(engine_name, mq={"consumerBufferBytes": 16384,
                                           "messageChanBuffer": 1000})
    stuck = RawConsumer(running.port, "/ConsumersConn/t/stuck")
    fast = Collector(running.ws_url, "t", "fast")
    wait_for(lambda: len(running.broker.members()) == 2, what="two consumers")
    payload = "y" * 16000        # 10 MB in all: more than the kernel buffers of the stuck one
    codes = running.publish_many("t", [f"{i}:{payload}" for i in range(600)])
    fast.wait_count(600)
    assert fast.datas == [f"{i}:{payload}" for i in range(600)]
    stuck_state = next(s for s in running.broker.members() if s.consumer_id == "stuck")
    assert stuck_state.conn.delivered < 500, "the stuck consumer cannot have taken it all"
    assert stuck_state.conn.pending_bytes <= 16384 + 16100, "its buffer must stay bounded"
    stuck.read_slowly(600, chunk=65536, pause=0, ping_every=60)
    stuck.close()
    assert stuck.error is None
    assert [m["MessageCode"] for m in stuck.messages] == codes


def test_consumers_that_vanish_mid_stream_do_not_disturb_the_rest(make_broker, engine_name):
    running = make_broker(engine_name, mq={"messageChanBuffer": 2000})
    steady = Collector(running.ws_url, "t", "steady")
    wait_for(lambda: running.broker.members(), what="the steady consumer")
    stop = threading.Event()

    def churn():
        n = 0
        while not stop.is_set():
            try:
                raw = RawConsumer(running.port, f"/ConsumersConn/t/churn{n % 3}")
            except ConnectionError as exc:
                if "4409" not in str(exc):
                    raise
                time.sleep(0.05)    # the broker has not yet seen this id's last connection go
                continue
            time.sleep(0.01)
            raw.abort()
            n += 1

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for start in range(0, 1000, 100):
            running.publish_many("t", [str(i) for i in range(start, start + 100)])
        steady.wait_count(1000)
    finally:
        stop.set()
        churner.join(10)
    assert steady.datas == [str(i) for i in range(1000)]
    wait_for(lambda: len(running.broker.members()) == 1, what="the churned consumers to leave")


def _buffered_bytes(running):
    """What /metrics says waits in the consumers' outboxes, all of them together."""
    for line in running.http.get(running.url + "/metrics").text.splitlines():
        if line.startswith("dpmq_consumer_buffered_bytes "):
            return float(line.split()[1])
    raise AssertionError("/metrics has no dpmq_consumer_buffered_bytes")


def test_consumers_that_never_read_share_one_budget_and_catch_up_from_the_store(make_broker,
                                                                                engine_name):
    budget = 256 << 10
    running = make_broker(engine_name, mq={"consumerBuffersTotalBytes": budget,
                                           "consumerBufferBytes": 1 << 20,
                                           "messageChanBuffer": 1000})
    stalled = [RawConsumer(running.port, f"/ConsumersConn/t/stalled{i}") for i in range(4)]
    reader = Collector(running.ws_url, "t", "reader")
    wait_for(lambda: len(running.broker.members()) == 5, what="five consumers")
    payload, total = "z" * 2000, 3000     # 6 MB each: far more than the kernel holds for one
    codes, most = [], 0.0
    for start in range(0, total, 250):
        codes += running.publish_many("t", [f"{i}:{payload}" for i in range(start, start + 250)])
        most = max(most, _buffered_bytes(running))
    reader.wait_count(total)
    assert reader.codes == codes, "the consumer that reads gets everything, in order"
    # The stalled ones are refilled from the store as the budget has room (a parked subscription
    # is looked at again within a second): on a busy machine that may come after the reader is
    # done. Without the budget, the four would hold 1 MB each (mq.consumerBufferBytes).
    def refilled():
        buffered = _buffered_bytes(running)
        return buffered if buffered > budget // 4 else None
    held = wait_for(refilled, what="the stalled consumers' buffers to be refilled from the store")
    assert held <= budget and most <= budget, (held, most)
    for consumer in stalled[:2]:
        consumer.read_slowly(total, chunk=65536, pause=0, ping_every=60)
        assert consumer.error is None
        assert [m["MessageCode"] for m in consumer.messages] == codes
    for consumer in stalled[2:]:
        consumer.abort()            # leave with their outboxes full
    for consumer in stalled[:2]:
        consumer.close()
    wait_for(lambda: len(running.broker.members()) == 1, what="the four to leave")
    wait_for(lambda: _buffered_bytes(running) == 0, what="their outboxes to be given back")


class CountingSocket:
    """A consumer's own socket, counting the writes tried on it."""

    def __init__(self, sock):
        self.sock = sock
        self.sends = 0

    def send(self, *args):
        self.sends += 1
        return self.sock.send(*args)

    def sendmsg(self, *args):
        self.sends += 1
        return self.sock.sendmsg(*args)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_consumer_that_stopped_reading_is_not_written_to_for_each_new_message(make_broker):
    """Trying each stuck socket again for every message was most of what 500 stuck consumers
    cost the delivery threads, and so the producers."""
    running = make_broker("memory", mq={"messageChanBuffer": 1000})
    stuck = RawConsumer(running.port, "/ConsumersConn/t/stuck")
    reader = Collector(running.ws_url, "t", "reader")
    wait_for(lambda: len(running.broker.members()) == 2, what="two consumers")
    running.publish_many("t", ["y" * 16000] * 600)     # 10 MB: its socket takes a part only
    reader.wait_count(600)
    member = next(m for m in running.broker.members() if m.consumer_id == "stuck")
    assert member.conn.pending_bytes > 0, "the stuck consumer's socket should be full"
    counting = member.conn.raw = CountingSocket(member.conn.raw)
    for i in range(100):
        assert running.publish("t", str(i))["code"] == 0     # each wakes the delivery thread
    reader.wait_count(700)
    assert counting.sends < 10, f"{counting.sends} writes tried on a socket that takes nothing"
    stuck.close()
