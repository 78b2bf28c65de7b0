"""Names a person cannot tell apart are refused: a topic, consumerId or group that is blank or
begins or ends with a space would show as an empty or look-alike row in the console."""

import pytest

from helpers import Collector, connect_and_close_code, wait_for

EDGE_SPACES = [" ", "   ", " orders", "orders ", "\u3000"]     # U+3000: not printable, already refused


@pytest.fixture
def broker(make_broker):
    """Names are checked before any engine is asked: one engine is enough."""
    return make_broker("memory")


@pytest.mark.parametrize("topic", EDGE_SPACES)
def test_a_topic_with_spaces_at_either_end_is_refused_on_publish(broker, topic):
    for encoding in ("data", "json"):
        reply = broker.http.post(broker.url + "/ProducerSend",
                                 **{encoding: {"topic": topic, "messageData": "x"}})
        assert reply.status_code == 400 and reply.json()["code"] == -1, (encoding, reply.text)
        assert "topic" in reply.json()["msg"], reply.text
    batch = broker.http.post(broker.url + "/ProducerSendBatch", json={"topic": topic,
                                                                      "messages": ["a", "b"]})
    assert batch.status_code == 400 and "topic" in batch.json()["msg"]
    assert broker.broker.engine.heads() == {}


def test_the_refusal_says_what_to_change(broker):
    blank = broker.http.post(broker.url + "/ProducerSend", data={"topic": "  ", "messageData": "x"})
    assert "blank" in blank.json()["msg"]
    edge = broker.http.post(broker.url + "/ProducerSend", data={"topic": "orders ", "messageData": "x"})
    assert "'orders '" in edge.json()["msg"] and "space" in edge.json()["msg"]


@pytest.mark.parametrize("path, fragment", [
    ("/ConsumersConn/%20/c", "topic is blank"),
    ("/ConsumersConn/%20t/c", "topic ' t'"),
    ("/ConsumersConn/t/%20%20", "consumerId is blank"),
    ("/ConsumersConn/t/c%20", "consumerId 'c '"),
    ("/ConsumersConn/t/c?group=%20", "group is blank"),
    ("/ConsumersConn/t/c?group=%20g", "group ' g'"),
])
def test_a_consumer_with_spaces_at_either_end_of_a_name_is_closed_with_1008(broker, path, fragment):
    code, reason = connect_and_close_code(broker.ws_url, path)
    assert code == 1008 and fragment in reason, (path, code, reason)
    assert broker.broker.members() == []


def test_spaces_inside_a_name_are_fine(broker):
    consumer = Collector(broker.ws_url, "my%20orders", "worker%201")
    wait_for(lambda: broker.broker.members(), what="the consumer")
    assert broker.publish("my orders", "hello")["code"] == 0
    (message,) = consumer.wait_count(1)
    assert message["Topic"] == "my orders"
    (row,) = broker.get("/Console/GetConsumers")["data"]
    assert row["consumerId"] == "worker 1"


def test_the_console_refuses_such_a_name_in_its_filters(broker):
    reply = broker.http.get(broker.url + "/Console/GetMessageList", params={"topic": " "})
    assert reply.status_code == 400 and "blank" in reply.json()["msg"]
