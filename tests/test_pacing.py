"""Peak shaving: the bounded buffer, the paced pump, and 503 when the buffer is full."""

import threading
import time

from helpers import Collector, wait_for


def test_paced_pump_pushes_one_message_every_push_messages_speed_seconds(make_broker, engine_name):
    running = make_broker(engine_name, mq={"pushMessagesSpeed": 0.2})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    started = time.monotonic()
    for i in range(10):
        assert running.publish("t", str(i))["code"] == 0
    accepted = time.monotonic() - started
    consumer.wait_count(10, timeout=15)
    elapsed = time.monotonic() - started
    assert accepted < 1.5, "publishing must not wait for the pace while the buffer has room"
    assert elapsed >= 1.7, f"10 messages at 0.2 s apart arrived in {elapsed:.2f}s"
    assert consumer.datas == [str(i) for i in range(10)]
    gaps = [b - a for a, b in zip(consumer.arrivals, consumer.arrivals[1:])]
    assert min(gaps) > 0.1, gaps


def test_full_buffer_answers_503_after_publish_timeout_and_keeps_what_it_accepted(make_broker,
                                                                                  engine_name):
    running = make_broker(engine_name, mq={"messageChanBuffer": 5, "pushMessagesSpeed": 0.5,
                                           "publishTimeout": 0.2})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    replies = []
    for i in range(12):
        reply = running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": str(i)})
        replies.append((str(i), reply))
    accepted = [data for data, reply in replies if reply.json()["code"] == 0]
    refused = [reply for data, reply in replies if reply.json()["code"] != 0]
    assert refused, "a full buffer must refuse"
    for reply in refused:
        assert reply.status_code == 503 and reply.json()["code"] == -1
        assert "buffer is full" in reply.json()["msg"]
        assert reply.headers["Retry-After"].isdigit()
    assert 5 <= len(accepted) <= 8
    consumer.wait_count(len(accepted), timeout=15)
    time.sleep(0.6)
    assert consumer.datas == accepted


def test_waiting_publisher_gets_in_when_the_pump_makes_room(make_broker, engine_name):
    running = make_broker(engine_name, mq={"messageChanBuffer": 2, "pushMessagesSpeed": 0.3,
                                           "publishTimeout": 5})
    results = []

    def publish(i):
        results.append(running.publish("t", str(i))["code"])

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == [0] * 5


def test_after_an_idle_spell_two_pushes_are_never_closer_than_the_pace(make_broker):
    """An idle pump once gave the first message after a pause its own slot and the one behind it
    a free pass: with 0.5 s, four messages published together arrived 0.01 s, 0.5 s, 0.5 s apart."""
    pace = 0.4
    running = make_broker("memory", mq={"pushMessagesSpeed": pace})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    for spell in range(2):
        time.sleep(3 * pace)                # idle for longer than the pace
        for i in range(4):
            assert running.publish("t", f"{spell}-{i}")["code"] == 0
        consumer.wait_count(4 * (spell + 1), timeout=10)
    gaps = [b - a for a, b in zip(consumer.arrivals, consumer.arrivals[1:])]
    # Delivery adds a few milliseconds of jitter to each push; two pushes that went out together
    # arrive a few milliseconds apart, far below this.
    assert min(gaps) > 0.75 * pace, [round(gap, 3) for gap in gaps]
    assert consumer.datas == [f"{s}-{i}" for s in range(2) for i in range(4)]
