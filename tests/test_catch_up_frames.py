"""Consumers catching up from the store share the frames of what they read (mq.catchUpCacheBytes)."""

from prometheus_client.parser import text_string_to_metric_families

from dpmq.delivery.recent import RecentFrames
from dpmq.message import Record, payload
from dpmq.transport.events import EVENTS
from dpmq.transport.frames import WEBSOCKET
from dpmq.transport.pull import PULL

from helpers import RawConsumer, wait_for


def _record(offset, data="x", code=None):
    return Record(offset, code or f"{offset:040x}", "t", data, 1_700_000_000.0)


def test_a_frame_read_from_the_store_is_built_once_per_framing():
    recent = RecentFrames(1 << 20)
    record = _record(1, "hello")
    first = recent.frame(record, WEBSOCKET)
    assert first == WEBSOCKET.message(payload(record))
    assert recent.frame(_record(1, "hello"), WEBSOCKET) is first
    assert recent.frame(record, EVENTS) == EVENTS.message(payload(record))
    assert (recent.built, recent.reused) == (2, 1)


def test_a_kept_live_payload_is_framed_without_encoding_it_again():
    recent = RecentFrames(1 << 20)
    record = _record(7, "live")
    kept = payload(record)
    recent.keep([(record, kept)])
    assert recent.size == len(kept)
    assert recent.frame(record, WEBSOCKET) == WEBSOCKET.message(kept)
    assert recent.size == len(kept) + len(WEBSOCKET.message(kept))


def test_a_frame_that_is_its_payload_is_counted_once():
    recent = RecentFrames(1 << 20)
    record = _record(3, "pulled")
    assert recent.frame(record, PULL) == payload(record)
    assert recent.size == len(payload(record))
    recent.frame(record, WEBSOCKET)
    assert recent.size == len(payload(record)) + len(WEBSOCKET.message(payload(record)))


def test_another_message_at_a_kept_offset_gets_its_own_frame():
    recent = RecentFrames(1 << 20)
    recent.frame(_record(1, "old", code="a" * 40), WEBSOCKET)
    newer = _record(1, "new", code="b" * 40)
    assert recent.frame(newer, WEBSOCKET) == WEBSOCKET.message(payload(newer))
    assert len(recent) == 1


def test_the_oldest_go_first_past_the_limit():
    record_bytes = len(payload(_record(1, "y" * 1000))) + len(WEBSOCKET.message(payload(
        _record(1, "y" * 1000))))
    recent = RecentFrames(3 * record_bytes)
    for offset in range(1, 11):
        recent.frame(_record(offset, "y" * 1000), WEBSOCKET)
        assert recent.size <= recent.limit
    assert len(recent) == 3
    recent.frame(_record(10, "y" * 1000), WEBSOCKET)
    assert recent.reused == 1                       # the newest is still kept
    recent.frame(_record(1, "y" * 1000), WEBSOCKET)
    assert recent.built == 11                       # the oldest was not


def test_a_message_larger_than_the_limit_is_framed_and_not_kept():
    recent = RecentFrames(100)
    record = _record(1, "z" * 1000)
    assert recent.frame(record, WEBSOCKET) == WEBSOCKET.message(payload(record))
    assert (len(recent), recent.size) == (0, 0)


def test_with_no_room_nothing_is_kept():
    recent = RecentFrames(0)
    record = _record(1)
    recent.keep([(record, payload(record))])
    recent.frame(record, WEBSOCKET)
    recent.frame(record, WEBSOCKET)
    assert (len(recent), recent.size, recent.built, recent.reused) == (0, 0, 2, 0)


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
    # to read it; the three others reuse that frame.
    assert built > 0 and reused >= 2 * built, (built, reused)
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
