"""The RabbitMQ peer's pure pieces: STOMP framing, the message body and its URL. None needs
RabbitMQ (a fresh CI machine has it without the Web-STOMP plugin) nor pika."""

import os
import re
import sys

import pytest

from dpmq.bench import kit, rabbitmq
from dpmq.bench.rabbitmq import StompReader, stomp_frame, stomp_headers

MESSAGE = (b"MESSAGE\nsubscription:0\ndestination:/exchange/t\nmessage-id:T_0@@session-a@@1\n"
           b"redelivered:false\npersistent:true\ncontent-length:11\n\n" b'{"a":"\x00b"}x' b"\x00\n")


def test_a_client_frame_escapes_its_headers_and_gives_its_body_a_length():
    assert stomp_frame("SUBSCRIBE", {"id": 0, "destination": "/exchange/a:b\nc"}) == (
        b"SUBSCRIBE\nid:0\ndestination:/exchange/a\\cb\\nc\n\n\x00")
    assert stomp_frame("SEND", {"destination": "/queue/q"}, b"hi\x00") == (
        b"SEND\ndestination:/queue/q\ncontent-length:3\n\nhi\x00\x00")


def test_connect_is_not_escaped():
    frame = stomp_frame("CONNECT", {"accept-version": "1.2", "login": "a:b"})
    assert frame == b"CONNECT\naccept-version:1.2\nlogin:a:b\n\n\x00"


def test_a_body_with_a_content_length_may_hold_nul_and_frames_end_with_an_eol():
    frames = StompReader().feed(MESSAGE)
    assert [(command, body) for command, _, body in frames] == [(b"MESSAGE", b'{"a":"\x00b"}x')]
    assert stomp_headers(frames[0][1])["persistent"] == "true"


@pytest.mark.parametrize("step", [1, 2, 7, 50])
def test_frames_split_anywhere_come_out_whole_and_once(step):
    stream = (b"\n" + MESSAGE + b"RECEIPT\nreceipt-id:r\n\n\x00" + b"\n\n"
              + b"ERROR\r\nmessage:no\\cway\r\n\r\nbody\x00" + MESSAGE)
    reader, frames = StompReader(), []
    for start in range(0, len(stream), step):
        frames += reader.feed(stream[start:start + step])
    assert [command for command, _, _ in frames] == [b"MESSAGE", b"RECEIPT", b"ERROR", b"MESSAGE"]
    assert frames[2][2] == b"body"
    assert stomp_headers(frames[2][1]) == {"message": "no:way"}
    assert reader.rest == b""          # the EOL after the last frame is read as a heart-beat


def test_heart_beats_alone_make_no_frame():
    reader = StompReader()
    assert reader.feed(b"\n") == [] and reader.feed(b"\r\n\n") == []
    assert reader.feed(b"RECEIPT\nreceipt-id:r\n\n\x00")[0][0] == b"RECEIPT"


def test_a_body_longer_than_its_content_length_is_an_error():
    with pytest.raises(ValueError):
        StompReader().feed(b"MESSAGE\ncontent-length:1\n\nab\x00")


def test_the_first_of_repeated_headers_wins():
    assert stomp_headers(b"a:1\na:2\nb:x\\\\y") == {"a": "1", "b": "x\\y"}


def test_the_body_is_shaped_as_dpmq_pushes_and_the_tracker_reads_it():
    body = rabbitmq.message(1, 42, 100, "orders")
    assert re.search(rb'^\{"MessageCode":0,"MessageData":"1:42:\d+:x+","Topic":"orders",'
                     rb'"CreateTime":"[-0-9 :]{19}","Status":0\}$', body)
    tracker = kit.Tracker(2, 50, keep_latency=True)
    tracker.frame(body, int(re.search(rb":42:(\d+):", body)[1]) + 3_000_000)
    assert (tracker.received, tracker.unique(), tracker.latencies) == (1, 1, [3.0])
    assert len(rabbitmq.message(0, 0, 65536, "t")) > 65536


def test_one_url_names_every_endpoint():
    ends = rabbitmq.endpoints("ws://user:p%40ss@10.0.0.2:15675/stomp?amqp=5673&management=15673")
    assert ends == rabbitmq.Endpoints("10.0.0.2", 15675, "/stomp", "user", "p@ss",
                                      "amqp://user:p%40ss@10.0.0.2:5673/%2F",
                                      "http://10.0.0.2:15673/api", "classic", 0)
    defaults = rabbitmq.endpoints("ws://127.0.0.1:15674/ws")
    assert (defaults.login, defaults.amqp) == ("guest", "amqp://guest:guest@127.0.0.1:5672/%2F")


def test_the_url_names_the_consumers_queue_type():
    assert rabbitmq.endpoints("ws://127.0.0.1:15674/ws?queue=quorum").queue_type == "quorum"
    with pytest.raises(ValueError, match=r"\?queue= takes one of classic, quorum, not 'lazy'"):
        rabbitmq.endpoints("ws://127.0.0.1:15674/ws?queue=lazy")


def test_the_url_names_how_many_unacknowledged_messages_a_consumer_may_hold():
    assert rabbitmq.endpoints("ws://127.0.0.1:15674/ws?queue=quorum&prefetch=500").prefetch == 500
    with pytest.raises(ValueError, match=r"\?prefetch= takes a count of messages .* not '-1'"):
        rabbitmq.endpoints("ws://127.0.0.1:15674/ws?prefetch=-1")


def test_a_consumer_with_a_prefetch_acks_up_to_the_latest_message_each_time_half_have_come():
    written = []
    writer = type("Writer", (), {"write": lambda self, data: written.append(data)})()
    acks = rabbitmq._Acks(4)
    for number in range(1, 6):
        acks.frame(f"subscription:0\nack:T_0@@session@@{number}".encode(), writer)
    stomp = rabbitmq.StompReader()
    mask = [data[2:6] for data in written]          # short masked frames: 2-byte head, then mask
    frames = [stomp.feed(bytes(b ^ key[i % 4] for i, b in enumerate(data[6:])))[0]
              for data, key in zip(written, mask)]
    assert [(command, rabbitmq.stomp_headers(head)) for command, head, _ in frames] == [
        (b"ACK", {"id": "T_0@@session@@2"}), (b"ACK", {"id": "T_0@@session@@4"})]


def test_the_sockets_free_are_what_the_node_says_it_has_left(monkeypatch):
    monkeypatch.setattr(rabbitmq, "_management",
                        lambda ends, path: [{"sockets_total": 832, "sockets_used": 12}])
    assert rabbitmq.sockets_free("ws://127.0.0.1:15674/ws") == 820
    monkeypatch.setattr(rabbitmq, "_management", lambda ends, path: [{"name": "rabbit@x"}])
    assert rabbitmq.sockets_free("ws://127.0.0.1:15674/ws") is None


def test_compare_measures_the_same_rabbitmq_with_classic_and_with_quorum_queues():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    try:
        import peers
    finally:
        sys.path.pop(0)
    url = "ws://u:p@10.0.0.2:15675/ws?amqp=5673"
    assert peers.rabbitmq_url(url, "rabbitmq") == url
    quorum = rabbitmq.endpoints(peers.rabbitmq_url(url, "rabbitmq-quorum"))
    assert (quorum.queue_type, quorum.amqp) == ("quorum", "amqp://u:p@10.0.0.2:5673/%2F")
    assert (quorum.prefetch, rabbitmq.endpoints(url).prefetch) == (peers.QUORUM_PREFETCH, 0)
    chosen = rabbitmq.endpoints(peers.rabbitmq_url(url + "&prefetch=10", "rabbitmq-quorum"))
    assert chosen.prefetch == 10
