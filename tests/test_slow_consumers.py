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
