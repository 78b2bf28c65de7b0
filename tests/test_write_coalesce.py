"""Gathering messages that arrive in quick succession (mq.writeCoalesce) loses, reorders and holds
back nothing."""

import threading
import time

import pytest
import requests

from helpers import Collector, wait_for


@pytest.mark.parametrize("coalesce", [0.0, 0.08])
def test_rapid_single_publishes_reach_every_consumer_whole_and_in_log_order(make_broker, coalesce):
    running = make_broker("sqlite", mq={"writeCoalesce": coalesce, "messageChanBuffer": 1000})
    consumers = [Collector(running.ws_url, "t", f"c{i}") for i in range(3)]
    wait_for(lambda: len(running.broker.members()) == 3, what="three consumers")

    def produce(name):
        with requests.Session() as http:
            for i in range(60):
                reply = http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": f"{name}-{i}"})
                assert reply.json()["code"] == 0

    producers = [threading.Thread(target=produce, args=(f"p{n}",)) for n in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    for consumer in consumers:
        consumer.wait_count(240)
    first = consumers[0].codes
    assert len(set(first)) == 240
    assert all(consumer.codes == first for consumer in consumers[1:])
    for name in ("p0", "p1", "p2", "p3"):       # each producer's own order holds
        mine = [d for d in consumers[0].datas if d.startswith(name + "-")]
        assert mine == [f"{name}-{i}" for i in range(60)]


def test_the_last_message_of_a_burst_is_written_when_the_window_closes(make_broker):
    """Nothing else happens after the burst: the shard must still wake up and write it."""
    running = make_broker("memory", mq={"writeCoalesce": 0.08})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    with requests.Session() as http:       # enough, fast enough, to open a window on the way
        for i in range(60):
            http.post(running.url + "/ProducerSend", data={"topic": "t", "messageData": str(i)})
        sent = time.monotonic()
    consumer.wait_count(60)
    # The window is 0.08 s; the shard's idle tick is 1 s. Arriving well before that tick shows
    # the window's end woke the shard, not some later event.
    assert consumer.arrivals[-1] - sent < 0.8
    assert consumer.datas == [str(i) for i in range(60)]


def _delays(make_broker, count, gap):
    """Publish ``count`` messages ``gap`` seconds apart through a 100 ms window; each one's time
    from the moment its request left to the moment the consumer had it."""
    running = make_broker("memory", mq={"writeCoalesce": 0.1})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    sent = []
    with requests.Session() as http:
        for i in range(count):
            sent.append(time.monotonic())
            assert http.post(running.url + "/ProducerSend",
                             data={"topic": "t", "messageData": str(i)}).json()["code"] == 0
            time.sleep(gap)
    consumer.wait_count(count)
    assert consumer.datas == [str(i) for i in range(count)]
    return [arrived - at for arrived, at in zip(consumer.arrivals, sent)]


def test_messages_at_a_moderate_rate_are_written_at_once_not_held_for_the_window(make_broker):
    """A window only opens when the rate would fill it with several messages: one every 30 ms
    expects about three in a 100 ms window, so none may wait for one (they would arrive 50 ms
    late on average if they did)."""
    delays = sorted(_delays(make_broker, 15, 0.03))
    assert delays[len(delays) // 2] < 0.025, delays


def test_a_short_burst_is_written_at_once_not_held_for_a_window(make_broker):
    """A producer that paused sends what it held back in a burst; a few messages close together
    are not a rate that fills a 100 ms window, so none waits for one (held, the last ones would
    arrive up to 100 ms late). Held, every burst would be late; a stall of the machine or of
    this process (a collection of the test run's garbage) makes one burst late, so a burst on
    time out of three is what is asked."""
    bursts = []
    while len(bursts) < 3 and not any(max(delays) < 0.06 for delays in bursts):
        bursts.append(_delays(make_broker, 4, 0))
    assert any(max(delays) < 0.06 for delays in bursts), bursts
