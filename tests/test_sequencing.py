"""The sequencer of a store several processes share: its records and theirs in offset order."""

from collections import namedtuple

from dpmq.broker.sequencing import Sequencer

R = namedtuple("R", "topic offset")


def _offsets(records):
    return [(r.topic, r.offset) for r in records]


def test_a_record_waits_for_the_ones_below_it_from_the_other_process():
    seq = Sequencer({"t": 6}.get, hold=1.0)
    assert _offsets(seq.order([R("t", 7)], 0.0)) == [("t", 7)]
    assert seq.order([R("t", 9), R("t", 10)], 0.1) == []        # ours, 8 is theirs
    assert seq.holding
    assert _offsets(seq.order([R("t", 8)], 0.2)) == [("t", 8), ("t", 9), ("t", 10)]
    assert not seq.holding
    assert _offsets(seq.order([R("t", 11)], 0.3)) == [("t", 11)]


def test_what_waited_its_time_goes_out_in_order_and_a_late_one_as_it_comes():
    seq = Sequencer({"t": 1}.get, hold=0.05)
    assert seq.order([R("t", 4), R("t", 3)], 0.0) == []
    assert seq.due(0.04) == []
    assert _offsets(seq.due(0.05)) == [("t", 3), ("t", 4)]
    assert _offsets(seq.order([R("t", 2)], 0.06)) == [("t", 2)]     # the subscriptions read it
    assert _offsets(seq.order([R("t", 5)], 0.07)) == [("t", 5)]


def test_topics_wait_apart_and_a_new_topic_starts_at_its_first_offset():
    seq = Sequencer(lambda topic: {"a": 10}.get(topic, 0), hold=1.0)
    out = seq.order([R("a", 12), R("b", 2), R("b", 1)], 0.0)
    assert _offsets(out) == [("b", 1), ("b", 2)]     # the other process wrote 1 of the new topic
    assert _offsets(seq.order([R("b", 3), R("a", 11)], 0.1)) == [("b", 3), ("a", 11), ("a", 12)]


def test_an_order_call_hands_out_what_is_due_on_other_topics():
    seq = Sequencer({"a": 0, "b": 0}.get, hold=0.05)
    assert seq.order([R("a", 2)], 0.0) == []
    assert _offsets(seq.order([R("b", 1)], 0.1)) == [("a", 2), ("b", 1)]
