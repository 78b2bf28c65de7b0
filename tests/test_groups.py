"""Consumer groups: each message to exactly one member, load shared, ordering keys kept."""

import collections
import socket

import pytest

from helpers import FENCE, Collector, all_read, connect_and_close_code, fence, wait_for


def _members(running, count):
    wait_for(lambda: len(running.broker.members()) >= count, what=f"{count} consumers")


def test_three_members_share_300_messages_each_exactly_once(broker):
    members = [Collector(broker.ws_url, "jobs", f"w{i}", "?group=workers") for i in range(3)]
    _members(broker, 3)
    codes = broker.publish_many("jobs", [str(i) for i in range(300)])
    wait_for(lambda: sum(len(m.messages) for m in members) >= 300, what="300 messages in all")
    assert all_read(broker, "jobs", members) == 300, "a message was written twice"
    received = [code for m in members for code in m.codes]
    assert sorted(received) == sorted(codes) and len(received) == 300
    assert all(m.messages for m in members), "every member should get a share"
    for member in members:     # each member's share is in publish order
        assert member.codes == sorted(member.codes, key=codes.index)


def test_groups_and_broadcast_consumers_each_get_the_whole_stream(broker):
    group_a = [Collector(broker.ws_url, "t", f"a{i}", "?group=a") for i in range(2)]
    group_b = [Collector(broker.ws_url, "t", "b0", "?group=b")]
    lone = Collector(broker.ws_url, "t", "lone")
    _members(broker, 4)
    codes = broker.publish_many("t", [str(i) for i in range(100)])
    lone.wait_count(100)
    group_b[0].wait_count(100)
    wait_for(lambda: sum(len(m.messages) for m in group_a) >= 100, what="group a")
    assert lone.codes == codes and group_b[0].codes == codes
    assert sorted(c for m in group_a for c in m.codes) == sorted(codes)


def test_with_ack_a_member_killed_mid_stream_loses_nothing(broker):
    steady = Collector(broker.ws_url, "t", "steady", "?group=g&ack=1", auto_ack=True)
    doomed = Collector(broker.ws_url, "t", "doomed", "?group=g&ack=1")   # receives, never acks
    _members(broker, 2)
    codes = broker.publish_many("t", [str(i) for i in range(300)])
    wait_for(lambda: len(doomed.messages) >= 20, what="the doomed member to hold messages")
    doomed.ws.sock.shutdown(socket.SHUT_RDWR)      # vanish without acking anything
    wait_for(lambda: set(codes) <= set(steady.codes), timeout=20, what="every message at steady")
    stats = broker.get("/Console/Ping")["data"]
    assert stats["deadLettered"] == 0


def test_a_busy_member_gets_less(make_broker, engine_name):
    running = make_broker(engine_name, mq={"maxInFlight": 5})
    idle = Collector(running.ws_url, "t", "fast", "?group=g&ack=1", auto_ack=True)
    slow = Collector(running.ws_url, "t", "slow", "?group=g&ack=1")      # never acks
    _members(running, 2)
    running.publish_many("t", [str(i) for i in range(200)])
    wait_for(lambda: len(idle.messages) + len(slow.messages) >= 200, what="every message")
    assert len(slow.messages) == 5, "a member holding maxInFlight unacked messages gets no more"
    assert len(idle.messages) == 195


def test_ordering_keys_stay_with_one_member_in_order(broker):
    members = [Collector(broker.ws_url, "t", f"m{i}", "?group=g") for i in range(3)]
    _members(broker, 3)
    items = [{"topic": "t", "messageData": f"{k}:{i}", "key": f"k{k}"}
             for i in range(40) for k in range(6)]
    for start in range(0, len(items), 80):
        broker.broker.publish(items[start:start + 80])
    wait_for(lambda: sum(len(m.messages) for m in members) >= 240, what="240 messages")
    owners = collections.defaultdict(set)
    for index, member in enumerate(members):
        per_key = collections.defaultdict(list)
        for data in member.datas:
            key, seq = data.split(":")
            owners[key].add(index)
            per_key[key].append(int(seq))
        for seqs in per_key.values():
            assert seqs == sorted(seqs)
    assert all(len(who) == 1 for who in owners.values()), owners
    assert len({next(iter(who)) for who in owners.values()}) > 1, "keys should spread over members"


def test_a_group_resumes_from_its_shared_cursor(broker):
    first = Collector(broker.ws_url, "t", "x", "?group=g")
    _members(broker, 1)
    broker.publish_many("t", ["1", "2"])
    first.wait_count(2)
    first.close()
    wait_for(lambda: not broker.broker.members(), what="the member to leave")
    broker.publish_many("t", ["3", "4"])
    other = Collector(broker.ws_url, "t", "y", "?group=g")     # another member of the same group
    fence(broker, "t", other)
    assert other.datas == ["3", "4", FENCE]


def test_bad_group_names_are_refused(broker):
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/x?group=a%7Cb")
    assert code == 1008 and "group" in reason
    code, reason = connect_and_close_code(broker.ws_url, "/ConsumersConn/t/x?group=")
    assert code == 1008 and "group" in reason


def test_three_acking_members_one_killed_mid_stream_every_message_is_acked(broker):
    members = [Collector(broker.ws_url, "t", f"w{i}", "?group=g&ack=1", auto_ack=True)
               for i in range(3)]
    _members(broker, 3)
    codes = broker.publish_many("t", [str(i) for i in range(300)])
    wait_for(lambda: len(members[2].messages) >= 10, what="the doomed member to work")
    members[2].ws.sock.shutdown(socket.SHUT_RDWR)
    wait_for(lambda: set(codes) <= set(members[0].codes + members[1].codes + members[2].codes),
             timeout=20, what="every message received")

    def settled():
        consumers = broker.get("/Console/GetConsumers")["data"]
        return len(consumers) == 2 and all(c["pending"] == 0 and c["inFlight"] == 0
                                           for c in consumers)
    wait_for(settled, timeout=20, what="every message acked (nothing pending or in flight)")
    assert broker.get("/Console/GetDeadLetters", topic="t")["data"] == []


def test_a_key_stays_with_its_member_when_others_join_later(make_broker, engine_name):
    running = make_broker(engine_name, mq={"maxInFlight": 2, "ackTimeout": 60})
    first = Collector(running.ws_url, "t", "first", "?group=g&ack=1")
    _members(running, 1)
    codes = running.broker.publish([{"topic": "t", "messageData": str(i), "key": "k"}
                                    for i in range(6)])
    first.wait_count(2)
    later = Collector(running.ws_url, "t", "later", "?group=g&ack=1", auto_ack=True)
    _members(running, 2)
    for code in codes:          # each comes to the first member, as it acks the one before
        wait_for(lambda code=code: code in first.codes, what=f"{code} at the first member")
        first.send(code)
    assert first.codes == codes
    assert later.messages == [], "key k belongs to the first member while it is connected"


@pytest.mark.parametrize("ack", [False, True], ids=["no-ack", "ack"])
def test_a_trickle_of_single_messages_goes_round_the_idle_members(broker, ack):
    """Each message is delivered (and acked) before the next is published, so every member is
    idle when it comes: they must take turns, not all go to the first."""
    query = "?group=g&ack=1" if ack else "?group=g"
    members = [Collector(broker.ws_url, "t", f"w{i}", query, auto_ack=ack) for i in range(4)]
    _members(broker, 4)

    def settled(count):
        consumers = broker.get("/Console/GetConsumers")["data"]
        return (sum(len(m.messages) for m in members) == count
                and all(c["inFlight"] == 0 for c in consumers))

    for i in range(20):
        assert broker.publish("t", str(i))["code"] == 0
        wait_for(lambda i=i: settled(i + 1), what=f"message {i} delivered and done")
    assert [len(m.messages) for m in members] == [5, 5, 5, 5]
    assert sorted(int(d) for m in members for d in m.datas) == list(range(20))
