"""Gathering messages that arrive in quick succession (mq.writeCoalesce) loses, reorders and holds
back nothing, through a real broker. When a window opens and when the shard wakes to close it are
tested with a fake clock in test_delivery_logic.py (a window under a high rate, none at a low
rate or for a short burst, the wake-up at its end): how fast messages arrive here is the
machine's, and belongs in ``dpmq bench``."""

import threading

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


def test_the_last_message_of_a_burst_is_written_though_nothing_follows_it(make_broker):
    """Nothing else happens after the burst: the messages of the last window must still be
    written (that the shard wakes for the window's end, not its idle tick, is in
    test_delivery_logic.py)."""
    running = make_broker("memory", mq={"writeCoalesce": 0.08})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    with requests.Session() as http:       # enough, fast enough, to open a window on the way
        for i in range(60):
            http.post(running.url + "/ProducerSend", data={"topic": "t", "messageData": str(i)})
    consumer.wait_count(60)
    assert consumer.datas == [str(i) for i in range(60)]
