"""Peak shaving: the bounded buffer, the pacing queue and its pump, and 503 when the buffer is full.

Pacing is timing by nature, and these tests run on shared, slow machines: they assert what the pace
guarantees (never faster than the pace, a message held back for a long pace is still waiting),
never how fast the machine goes. The exact spacing of pushes is checked on the pump alone, with a
fake clock.
"""

import threading
import time

from dpmq.broker.pacing import Pacer

from helpers import Collector, wait_for

#: A pace no test outlives: a message behind another is certainly still waiting.
FOREVER = 600


class FakeClock:
    """The pump's clock and wait: waiting moves the clock, at once."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def wait(self, seconds):
        self.now += seconds


def _ping(running, *fields):
    data = running.get("/Console/Ping")["data"]
    return tuple(data[field] for field in fields)


def _pacer(pace):
    clock, pushes = FakeClock(), []
    pacer = Pacer(pace, lambda batch: pushes.extend((clock.now, r) for r in batch), lambda n: None,
                  clock=clock, wait=clock.wait)
    pacer.start()
    return pacer, clock, pushes


def test_the_pump_pushes_one_message_per_pace_and_an_idle_spell_banks_no_time():
    """An idle pump once gave the first message after a pause its own slot and the one behind it
    a free pass: with 0.5 s, four messages published together arrived 0.01 s, 0.5 s, 0.5 s apart."""
    pacer, clock, pushes = _pacer(0.5)
    try:
        for spell in range(2):
            for i in range(4):
                pacer.put(f"{spell}-{i}")
            wait_for(lambda n=4 * (spell + 1): len(pushes) == n, what="the spell's pushes")
            clock.now += 3.0                # idle for longer than the pace (the pump is waiting)
    finally:
        pacer.stop(5)
    assert [record for _, record in pushes] == [f"{s}-{i}" for s in range(2) for i in range(4)]
    times = [at for at, _ in pushes]
    assert times[0] == 1000.0, "the first message after an idle spell goes at once"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[:3] == gaps[4:] == [0.5] * 3, gaps
    assert gaps[3] == 3.0, "after the spell the first goes at once, the rest a pace apart"


def test_stopping_the_pump_hands_out_what_waits_without_the_pace():
    released, pushes = [], []
    pacer = Pacer(FOREVER, pushes.extend, released.append)
    pacer.start()
    for i in range(3):
        pacer.put(i)
    wait_for(lambda: pushes == [0] and pacer.waiting() == 2, what="the first push")
    pacer.stop(10)
    assert pushes == [0, 1, 2] and sum(released) == 3 and pacer.waiting() == 0


def test_paced_pump_pushes_one_message_every_push_messages_speed_seconds(make_broker, engine_name):
    pace = 0.2
    running = make_broker(engine_name, mq={"pushMessagesSpeed": pace})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    started = time.monotonic()
    for i in range(10):
        assert running.publish("t", str(i))["code"] == 0
    consumer.wait_count(10, timeout=30)
    # The last push went out at least nine paces after the first, which followed the first publish
    # (less a millisecond for the rounding of the pump's sums).
    assert consumer.arrivals[-1] - started >= 9 * pace - 0.001
    assert consumer.datas == [str(i) for i in range(10)]


def test_messages_await_their_paced_push_and_publishing_does_not_wait_for_the_pace(make_broker):
    running = make_broker("memory", mq={"pushMessagesSpeed": FOREVER})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    for i in range(5):
        assert running.publish("t", str(i))["code"] == 0     # answered long before one pace
    consumer.wait_count(1)
    assert consumer.datas == ["0"], "the first goes at once; the others wait their turn"
    wait_for(lambda: _ping(running, "awaitingPacedPush", "bufferUsed") == (4, 4),
             what="four messages awaiting their push, each holding room in the buffer")
    metrics = running.http.get(running.url + "/metrics").text
    assert "\ndpmq_messages_awaiting_paced_push 4.0\n" in metrics
    assert "\ndpmq_buffer_used 4.0\n" in metrics


def test_full_buffer_answers_503_after_publish_timeout_and_keeps_what_it_accepted(make_broker,
                                                                                  engine_name):
    running = make_broker(engine_name, mq={"messageChanBuffer": 5, "pushMessagesSpeed": FOREVER,
                                           "publishTimeout": 0.2})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    replies = []
    for i in range(8):
        reply = running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": str(i)})
        replies.append((str(i), reply))
    accepted = [data for data, reply in replies if reply.json()["code"] == 0]
    refused = [reply for data, reply in replies if reply.json()["code"] != 0]
    # Five fit in the buffer, and a sixth if the first (pushed at once) made room in time; the
    # pace lets no other out.
    assert accepted in (["0", "1", "2", "3", "4"], ["0", "1", "2", "3", "4", "5"]), accepted
    assert refused, "a full buffer must refuse"
    for reply in refused:
        assert reply.status_code == 503 and reply.json()["code"] == -1
        assert "buffer is full" in reply.json()["msg"]
        assert reply.headers["Retry-After"].isdigit()
    stored = running.get("/Console/GetMessageList", topic="t", limit=100)["data"]
    assert [m["MessageData"] for m in reversed(stored)] == accepted
    consumer.wait_count(1)
    wait_for(lambda: _ping(running, "awaitingPacedPush") == (len(accepted) - 1,),
             what="all but the first accepted awaiting their push")


def test_waiting_publisher_gets_in_when_the_pump_makes_room(make_broker, engine_name):
    running = make_broker(engine_name, mq={"messageChanBuffer": 2, "pushMessagesSpeed": 0.3,
                                           "publishTimeout": 30})
    results = []

    def publish(i):
        results.append(running.publish("t", str(i))["code"])

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [0] * 5
