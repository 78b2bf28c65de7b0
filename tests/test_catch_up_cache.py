"""The catch-up cache: consumers catching up from the store share what they read and its frames
(mq.catchUpCacheBytes)."""

import gc
import socket
import time
import tracemalloc

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dpmq import config
from dpmq.delivery.catch_up_cache import CatchUpCache, cost
from dpmq.delivery.subscription import Member, Subscription
from dpmq.message import Record, new_codes, payload
from dpmq.metrics import TopicCounts
from dpmq.storage.memory import MemoryEngine
from dpmq.transport.connection import Connection
from dpmq.transport.events import EVENTS
from dpmq.transport.frames import WEBSOCKET, frame_extent
from dpmq.transport.pull import PULL

from helpers import RawConsumer, wait_for


def _record(offset, data="x", code=None):
    return Record(offset, code or f"{offset:040x}", "t", data, 1_700_000_000.0)


def test_a_frame_read_from_the_store_is_built_once_per_framing():
    cache = CatchUpCache(1 << 20)
    record = _record(1, "hello")
    first = cache.frame(record, WEBSOCKET)
    assert first == WEBSOCKET.message(payload(record))
    assert cache.frame(_record(1, "hello"), WEBSOCKET) is first
    assert cache.frame(record, EVENTS) == EVENTS.message(payload(record))
    assert (cache.built, cache.reused) == (2, 1)


def test_a_kept_live_payload_is_framed_as_it_is_without_encoding_it_again():
    cache = CatchUpCache(1 << 20)
    record = _record(7, "live")
    kept = b'{"encoded at commit":true}'     # not what payload(record) would make
    cache.keep([(record, kept)])
    assert cache.size == cost(record, kept)
    assert cache.frame(record, WEBSOCKET) == WEBSOCKET.message(kept)
    assert cache.size == cost(record, kept) + len(WEBSOCKET.message(kept))
    assert cache.built == 1


def test_a_frame_that_is_its_payload_is_counted_once():
    cache = CatchUpCache(1 << 20)
    record = _record(3, "pulled")
    assert cache.frame(record, PULL) == payload(record)
    assert cache.size == cost(record, payload(record))
    cache.frame(record, WEBSOCKET)
    assert cache.size == cost(record, payload(record)) + len(WEBSOCKET.message(payload(record)))


def test_another_message_at_a_kept_offset_takes_its_place():
    cache = CatchUpCache(1 << 20)
    cache.frame(_record(1, "old", code="a" * 40), WEBSOCKET)
    newer = _record(1, "new", code="b" * 40)
    assert cache.frame(newer, WEBSOCKET) == WEBSOCKET.message(payload(newer))
    assert len(cache) == 1 and cache.after("t", 0, 10, 10) == [newer]
    latest = _record(1, "latest", code="c" * 40)
    cache.keep([(latest, payload(latest))])
    assert cache.after("t", 0, 10, 10) == [latest]


def _kept_cost(data):
    record = _record(1, data)
    return cost(record, payload(record)) + len(WEBSOCKET.message(payload(record)))


def test_the_oldest_go_first_past_the_limit():
    cache = CatchUpCache(3 * _kept_cost("y" * 1000))
    for offset in range(1, 11):
        cache.frame(_record(offset, "y" * 1000), WEBSOCKET)
        assert cache.size <= cache.limit
    assert len(cache) == 3
    cache.frame(_record(10, "y" * 1000), WEBSOCKET)
    assert cache.reused == 1                        # the newest is still kept
    cache.frame(_record(1, "y" * 1000), WEBSOCKET)
    assert cache.built == 11                        # the oldest was not


def test_a_batch_larger_than_the_cache_keeps_only_its_newest():
    records = [_record(offset, "y" * 1000) for offset in range(1, 101)]
    one = cost(records[0], payload(records[0]))
    cache = CatchUpCache(3 * one)
    cache.keep([(record, payload(record)) for record in records])
    assert cache.size == 3 * one
    assert cache.after("t", 97, 10, 100) == records[97:]


def test_a_message_larger_than_the_limit_is_framed_and_not_kept():
    cache = CatchUpCache(100)
    record = _record(1, "z" * 1000)
    assert cache.frame(record, WEBSOCKET) == WEBSOCKET.message(payload(record))
    cache.keep([(record, payload(record))])
    assert (len(cache), cache.size) == (0, 0)


def test_a_frame_that_does_not_fit_beside_its_message_is_built_and_not_kept():
    record = _record(1, "z" * 1000)
    cache = CatchUpCache(cost(record, payload(record)) + 10)
    cache.keep([(record, payload(record))])
    assert cache.frame(record, WEBSOCKET) == WEBSOCKET.message(payload(record))
    assert cache.frame(record, WEBSOCKET) == WEBSOCKET.message(payload(record))
    assert (len(cache), cache.size, cache.built, cache.reused) == (
        1, cost(record, payload(record)), 2, 0)


@pytest.mark.parametrize("text", ["x", "é", "雪", "x" * 999 + "🙂"])
@pytest.mark.parametrize("length", [10, 1000, 65536])
def test_what_is_counted_is_what_the_messages_kept_take(text, length):
    """The bound is on memory: small messages are mostly the objects that hold them, and one
    wide character makes every character of a text as wide."""
    data = (text * length)[:length - 1] + text[-1]
    cache = CatchUpCache(1 << 40)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        records = [Record(offset, code, "topic", data[:-1] + data[-1], 1_700_000_000.0)
                   for offset, code in enumerate(new_codes(200), 1)]
        cache.keep([(record, payload(record)) for record in records])
        for record in records:
            cache.frame(record, WEBSOCKET)
        del records
        gc.collect()
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 * cache.size <= taken <= 1.05 * cache.size, (taken, cache.size)


def test_with_no_room_nothing_is_kept():
    cache = CatchUpCache(0)
    record = _record(1)
    cache.keep([(record, payload(record))])
    cache.frame(record, WEBSOCKET)
    cache.frame(record, WEBSOCKET)
    assert (len(cache), cache.size, cache.built, cache.reused) == (0, 0, 2, 0)


def test_what_is_kept_is_given_in_order_up_to_the_first_offset_missing():
    cache = CatchUpCache(1 << 20)
    records = [_record(offset) for offset in (1, 2, 3, 5)]
    cache.keep([(record, payload(record)) for record in records])
    assert cache.after("t", 0, 10, 10) == records[:3]
    assert cache.after("t", 1, 1, 10) == records[1:2]
    assert cache.after("t", 0, 10, 2) == records[:2]           # none past upto
    assert cache.after("t", 3, 10, 10) == []                   # 4 is not kept
    assert cache.after("other", 0, 10, 10) == []


def test_what_retention_may_have_purged_is_left_to_the_store():
    records = [_record(offset) for offset in range(1, 11)]
    by_count = CatchUpCache(1 << 20, retention_messages=3)
    by_count.keep([(record, payload(record)) for record in records])
    assert by_count.after("t", 6, 10, 10) == []             # 7 is not among the newest 3
    assert by_count.after("t", 7, 10, 10) == records[7:]
    by_time = CatchUpCache(1 << 20, retention_seconds=60)
    now = time.time()
    aged = [record._replace(created=now - 90 if record.offset <= 4 else now) for record in records]
    by_time.keep([(record, payload(record)) for record in aged])
    assert by_time.after("t", 0, 10, 10) == []
    assert by_time.after("t", 4, 10, 10) == aged[4:]


def _frames(sock):
    """The payloads of the WebSocket frames waiting on ``sock``."""
    data, payloads, pos = sock.recv(1 << 20), [], 0
    while (extent := frame_extent(data, pos)) is not None:
        header, length = extent
        payloads.append(data[pos + header:pos + header + length])
        pos += header + length
    return payloads


def test_a_subscription_catching_up_reads_the_store_only_past_what_is_kept():
    records = [_record(offset, f"m{offset}") for offset in range(1, 7)]
    reads = []

    def read(topic, after, limit, upto):        # the store, holding the six
        reads.append(after)
        return [record for record in records if after < record.offset <= upto][:limit]

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    limits = config.build({}).mq
    sub = Subscription("t", "c:x", 0, {}, [], MemoryEngine(), limits, None, [],
                       TopicCounts().of("t"))
    sub.catch_up_cache = CatchUpCache(1 << 20)
    sub.catch_up_cache.keep([(record, payload(record)) for record in records[:4]])
    member = Member(Connection(ours, 1 << 20, WEBSOCKET), None, "t", "x")
    sub.join(member)
    assert not sub.catch_up(read, 6, 100, now=0.0), "what is kept may end before the store"
    assert reads == []
    assert sub.catch_up(read, 6, 100, now=0.0)
    assert reads == [4]
    assert (sub.catch_up_cache.from_cache, sub.catch_up_cache.from_store) == (4, 2)
    assert member.conn.flush()
    assert _frames(theirs) == [payload(record) for record in records]
    ours.close()
    theirs.close()


def _scrape(running):
    text = running.http.get(running.url + "/metrics").text
    return {sample.name + "".join(sorted(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _stall_and_catch_up(running, consumers, total, size):
    """``consumers`` that read nothing while ``total`` messages of ``size`` bytes are published
    (far more than their buffers and the kernel's hold), then read them all, one after another.
    Returns the MessageCodes published and the largest cache seen meanwhile."""
    stalled = [RawConsumer(running.port, f"/ConsumersConn/t/stalled{i}") for i in range(consumers)]
    wait_for(lambda: len(running.broker.members()) == consumers, what="the consumers")
    codes = running.publish_many("t", [f"{i}:" + "q" * size for i in range(total)])
    most = 0
    for consumer in stalled:
        consumer.read_slowly(total, chunk=65536, pause=0, ping_every=60)
        consumer.close()
        assert consumer.error is None
        assert [m["MessageCode"] for m in consumer.messages] == codes
        assert all(m["Status"] == 0 for m in consumer.messages)
        most = max(most, _scrape(running)["dpmq_catch_up_cache_bytes"])
    wait_for(lambda: _scrape(running)["dpmq_catch_up_cache_bytes"] == 0,
             what="the cache to be emptied once nobody is behind")
    return codes, most


def test_consumers_behind_together_share_the_frames_they_read(make_broker, engine_name):
    running = make_broker(engine_name, mq={"consumerBufferBytes": 16384,
                                           "messageChanBuffer": 1000})
    _, most = _stall_and_catch_up(running, consumers=4, total=600, size=16000)
    metrics = _scrape(running)
    built, reused = metrics["dpmq_catch_up_frames_totalbuilt"], \
        metrics["dpmq_catch_up_frames_totalreused"]
    # Each message past what the buffers and the kernel took is framed for the first consumer
    # to read it; the three others reuse that frame, and take the message without a read.
    assert built > 0 and reused >= 2 * built, (built, reused)
    from_store, from_cache = metrics["dpmq_catch_up_messages_totalstore"], \
        metrics["dpmq_catch_up_messages_totalcache"]
    assert from_cache >= 2 * from_store, (from_store, from_cache)
    assert 0 < most <= running.settings.mq.catchUpCacheBytes


def test_the_cache_stays_within_its_limit_and_loses_nothing(make_broker):
    limit = 100_000             # three messages of 16 KB, payload and frame
    running = make_broker("memory", mq={"consumerBufferBytes": 16384, "messageChanBuffer": 1000,
                                        "catchUpCacheBytes": limit})
    _, most = _stall_and_catch_up(running, consumers=2, total=600, size=16000)
    assert most <= limit
    metrics = _scrape(running)
    assert metrics["dpmq_catch_up_frames_totalbuilt"] > metrics["dpmq_catch_up_frames_totalreused"]


def test_with_the_cache_off_each_consumer_frames_its_own(make_broker):
    running = make_broker("memory", mq={"consumerBufferBytes": 16384, "messageChanBuffer": 1000,
                                        "catchUpCacheBytes": 0})
    _, most = _stall_and_catch_up(running, consumers=2, total=600, size=16000)
    metrics = _scrape(running)
    assert most == 0 and metrics["dpmq_catch_up_frames_totalreused"] == 0
    assert metrics["dpmq_catch_up_frames_totalbuilt"] > 0
    assert metrics["dpmq_catch_up_messages_totalcache"] == 0
    assert metrics["dpmq_catch_up_messages_totalstore"] > 0
