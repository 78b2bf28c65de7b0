"""dpmq.client against real brokers: publish, consume, ack, errors, a broker restart."""

import threading

import pytest
import requests

from dpmq.client import ClientError, ConnectionFailed, Consumer, Producer

from helpers import ServedBroker, free_port, wait_for


def _joined(running, count=1):
    wait_for(lambda: len(running.broker.members()) >= count, what=f"{count} consumers")


def test_producer_and_consumer_in_five_lines(broker):
    consumer = Consumer(broker.url, "orders", "reader")
    producer = Producer(broker.url)
    first = consumer.receive(timeout=0.5)       # connects; nothing there yet
    assert first is None
    code = producer.send("orders", "hello")
    message = consumer.receive(timeout=5)
    assert (message.code, message.data, message.topic, message.status) == (code, "hello", "orders", 0)
    codes = producer.send_batch("orders", ["a", {"messageData": "b", "key": "k"}])
    assert [consumer.receive(timeout=5).code for _ in codes] == codes
    consumer.close()
    producer.close()


def test_producer_raises_the_brokers_reason(broker):
    with Producer(broker.url) as producer:
        with pytest.raises(ClientError) as caught:
            producer.send("bad|topic", "x")
        assert caught.value.status == 400 and "'|'" in str(caught.value)


def test_producer_reports_an_unreachable_broker():
    with Producer(f"http://127.0.0.1:{free_port()}", retries=1) as producer:
        with pytest.raises(ConnectionFailed):
            producer.send("t", "x")


def test_producer_is_idempotent_across_its_own_retries(broker):
    with Producer(broker.url) as producer:
        first = producer.send("t", "pay", idempotency_key="once")
        assert producer.send("t", "pay", idempotency_key="once") == first


def test_consumer_acks_after_the_loop_body_and_run_style(broker):
    producer = Producer(broker.url)
    consumer = Consumer(broker.url, "jobs", "w", group="workers", ack=True)
    consumer.receive(timeout=0.3)
    _joined(broker)
    codes = [producer.send("jobs", str(i)) for i in range(5)]
    seen = []
    runner = threading.Thread(target=consumer.run, args=(lambda message: seen.append(message.code),))
    runner.start()
    wait_for(lambda: len(seen) == 5, what="five messages handled")

    def settled():
        (entry,) = broker.get("/Console/GetConsumers")["data"]
        return entry["inFlight"] == 0 and entry["pending"] == 0
    wait_for(settled, what="the acks")
    consumer.close()
    runner.join(5)
    assert seen == codes
    again = Consumer(broker.url, "jobs", "w2", group="workers", ack=True)
    assert again.receive(timeout=1.0) is None, "everything was acked: nothing comes back"
    again.close()


def test_a_refused_consumer_raises_instead_of_retrying(broker):
    holder = Consumer(broker.url, "t", "taken")
    holder.receive(timeout=0.3)
    _joined(broker)
    duplicate = Consumer(broker.url, "t", "taken")
    with pytest.raises(ClientError) as caught:
        duplicate.receive(timeout=5)
    assert caught.value.status == 4409
    holder.close()


def test_consumer_survives_a_broker_restart_without_losing_anything(tmp_path):
    broker = ServedBroker(tmp_path).start()
    received, stop = [], threading.Event()
    consumer = Consumer(broker.url, "t", "steady", max_backoff=0.5)

    def consume():
        while not stop.is_set():
            message = consumer.receive(timeout=0.5)
            if message is not None:
                received.append(message.data)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        producer = Producer(broker.url, retries=0)
        wait_for(lambda: consumers_connected(broker), what="the consumer to connect")
        sent = [f"before-{i}" for i in range(20)]
        for data in sent:
            producer.send("t", data)
        broker.kill()
        broker.start()
        producer = Producer(broker.url)
        wait_for(lambda: consumers_connected(broker), timeout=20, what="the consumer to reconnect")
        for i in range(20):
            producer.send("t", f"after-{i}")
            sent.append(f"after-{i}")
        wait_for(lambda: set(sent) <= set(received), timeout=20, what="every message")
        assert [d for d in dict.fromkeys(received)] == sent
    finally:
        stop.set()
        consumer.close()
        thread.join(5)
        broker.stop()


def consumers_connected(served):
    try:
        return requests.get(served.url + "/Console/GetConsumers", timeout=1).json()["data"]
    except requests.RequestException:
        return False
