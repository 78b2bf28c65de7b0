"""The delivery logic driven by hand: a fake clock, one shard turn at a time, no sleeps.

A :class:`~dpmq.delivery.shards.Shard` runs here on the test's thread with a clock the test moves
(``Shard(clock=...)``) and a stand-in broker holding what the shard uses of one (a real memory
engine, settings, the shared buffer budget, the heads and what was handed out). Its consumers are
real connections over socket pairs; a turn of the loop is ``run_once()``, which would wait for a
post, a writable socket or the next timer: here the wait is recorded and returns at once, so a
test can see when the shard would wake up (the ack deadline, the end of a gathering window) and
time moves only when the test says so.
"""

import collections
import json
import queue
import socket
import time

import pytest

from dpmq import config
from dpmq.delivery.cursors import CursorLedger
from dpmq.delivery.shard_waits import ShardWaits
from dpmq.delivery.shards import PARKED_RECHECK, Shard
from dpmq.delivery.subscription import Member, Subscription
from dpmq.errors import StoreError
from dpmq.gathering import GATHER, RECENT, Gathering
from dpmq.message import NewMessage, Record, Run, format_time, new_codes, payload
from dpmq.metrics import ACKED, DEAD_LETTERED, DELIVERED, GAPS, REDELIVERED
from dpmq.storage.memory import MemoryEngine
from dpmq.transport.budget import Budget
from dpmq.transport.connection import Connection
from dpmq.transport.frames import WEBSOCKET, WEBSOCKET_NOTICES

START = 1000.0


class FakeClock:
    def __init__(self, now=START):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class RecordedWaits(ShardWaits):
    """The shard's waits, except that a wait returns at once (with what is writable now) and
    its timeout is kept: ``timeouts[-1]`` is how long the last turn would have slept."""

    def __init__(self):
        super().__init__()
        self.timeouts = []

    def sleep(self, timeout):
        self.timeouts.append(timeout)
        return super().sleep(0)


class StubBroker:
    """What a shard uses of a broker. ``publish`` stores messages and hands them to the shard
    the way the broker does after a commit."""

    def __init__(self, **mq):
        self.settings = config.build({"mq": mq})
        self.engine = MemoryEngine()
        self.engine.open(self._committed)
        self.consumer_buffers = Budget(self.settings.mq.consumerBuffersTotalBytes)
        self.heads = {}
        self.pumped = {}
        self.shard = None

    def _committed(self, records):
        for record in records:
            self.heads[record.topic] = record.offset
            self.pumped[record.topic] = record.offset
        if self.shard is not None and records[0].topic in self.shard.topics:
            self.shard.post("msgs", [(record, payload(record)) for record in records])

    def publish(self, datas, topic="t", key=None):
        codes = new_codes(len(datas))
        self.engine.append([NewMessage(code, topic, data, 0.0, key)
                            for code, data in zip(codes, datas)])
        return codes


class Peer:
    """The consumer's end of a socket pair: the frames the shard wrote, parsed."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.setblocking(False)
        self._data = b""
        self.received = []          # every object received, in order

    def read(self):
        """What arrived since the last read (a socket pair delivers a write at once)."""
        try:
            while chunk := self.sock.recv(1 << 20):
                self._data += chunk
        except BlockingIOError:
            pass
        new = []
        while len(self._data) >= 2:
            length, header = self._data[1] & 0x7F, 2
            if length == 126:
                length, header = int.from_bytes(self._data[2:4], "big"), 4
            elif length == 127:
                length, header = int.from_bytes(self._data[2:10], "big"), 10
            if len(self._data) < header + length:
                break
            assert self._data[0] == 0x81, self._data[:2]       # unmasked text frames only
            new.append(json.loads(self._data[header:header + length]))
            self._data = self._data[header + length:]
        self.received += new
        return new


class Delivery:
    """A shard, its stand-in broker and fake clock, and the consumers the test connects."""

    def __init__(self, **mq):
        self.clock = FakeClock()
        self.broker = StubBroker(**mq)
        self.shard = Shard(0, self.broker, clock=self.clock)
        self.shard._waits.close()       # a Shard takes no waits of its own: replaced here
        self.shard._waits = self.waits = RecordedWaits()
        self.broker.shard = self.shard
        self._sockets = []

    def connect(self, consumer_id, group=None, ack=False):
        member = self.member(consumer_id, group, ack)
        self.shard.post("join", member)
        self.turn()
        assert member.joined.is_set() and member.error is None
        return member

    def member(self, consumer_id, group=None, ack=False):
        """A consumer's member, connected over a socket pair, not yet posted to the shard."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self._sockets += [ours, theirs]
        limit = self.broker.settings.mq.consumerBufferBytes
        member = Member(Connection(ours, limit, WEBSOCKET), None, "t", consumer_id, group=group,
                        ack=ack)
        member.conn.on_progress = lambda conn: self.shard.post("watch", member)
        member.peer = Peer(theirs)
        return member

    def turn(self):
        """One turn of the shard's loop, at the fake clock's time."""
        self.shard.run_once()

    def leave(self, member):
        self.shard.post("leave", member)
        self.turn()
        assert member.removed.is_set()

    def reply(self, member, kind, code):
        self.shard.post("reply", (member, kind, code))
        self.turn()

    def counts(self):
        return self.shard.counts.of("t")

    def close(self):
        self.waits.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def delivery():
    made = []

    def make(**mq):
        made.append(Delivery(**mq))
        return made[-1]

    yield make
    for each in made:
        each.close()


def codes_and_status(objects):
    return [(o["MessageCode"], o["Status"]) for o in objects]


# -- ack timeouts, retries, dead letters ---------------------------------------------------------
def test_an_unacked_message_is_redelivered_with_status_1_at_its_deadline_and_not_before(delivery):
    d = delivery(ackTimeout=30, sendRetryCount=3)
    consumer = d.connect("c", ack=True)
    (code,) = d.broker.publish(["m"])
    d.turn()
    assert codes_and_status(consumer.peer.read()) == [(code, 0)]

    d.clock.advance(29.9)
    d.turn()
    assert consumer.peer.read() == [], "redelivered before its ack deadline"
    d.turn()
    assert d.waits.timeouts[-1] == pytest.approx(0.1), "the shard wakes up for the deadline"

    d.clock.advance(0.1)
    d.turn()
    assert codes_and_status(consumer.peer.read()) == [(code, 1)]
    assert d.counts()[REDELIVERED] == 1


def test_an_acked_message_is_done_and_never_redelivered(delivery):
    d = delivery(ackTimeout=5)
    consumer = d.connect("c", ack=True)
    first, second = d.broker.publish(["a", "b"])
    d.turn()
    assert codes_and_status(consumer.peer.read()) == [(first, 0), (second, 0)]
    d.reply(consumer, "ack", first)
    d.reply(consumer, "ack", second)
    assert d.counts()[ACKED] == 2
    d.clock.advance(3600)
    d.turn()
    assert consumer.peer.read() == []
    assert consumer.subscription.position() == 2, "both done: the cursor is past them"


def test_retries_up_to_send_retry_count_then_a_dead_letter_that_stays_dead(delivery):
    d = delivery(ackTimeout=1, sendRetryCount=2)
    consumer = d.connect("lazy", ack=True)
    (code,) = d.broker.publish(["never acked"])
    d.turn()
    for _ in range(5):
        d.clock.advance(1)
        d.turn()
    assert codes_and_status(consumer.peer.read()) == [(code, 0), (code, 1), (code, 2)]
    (dead,) = d.broker.engine.dead_letters("t")
    assert dead["code"] == code and dead["sub"] == "c:lazy" and dead["attempts"] == 3
    assert "sendRetryCount is 2" in dead["reason"]
    assert d.counts()[DEAD_LETTERED] == 1
    assert consumer.subscription.position() == 1, "a dead letter no longer holds the cursor back"

    requeued = d.broker.engine.requeue("t", "c:lazy", code)
    d.shard.post("requeue", (("t", "c:lazy"), requeued[("t", "c:lazy")]))
    d.turn()
    assert codes_and_status(consumer.peer.read()) == [(code, 0)], "requeued: attempts from zero"
    d.reply(consumer, "ack", code)
    d.clock.advance(60)
    d.turn()
    assert consumer.peer.read() == []
    assert d.broker.engine.redeliveries("t", "c:lazy") == []


def test_a_nack_redelivers_at_once_and_a_nack_of_an_unknown_code_gets_an_error(delivery):
    d = delivery(ackTimeout=60)
    consumer = d.connect("n", ack=True)
    (code,) = d.broker.publish(["again"])
    d.turn()
    consumer.peer.read()
    d.reply(consumer, "nack", code)         # the clock does not move
    assert codes_and_status(consumer.peer.read()) == [(code, 1)]
    d.reply(consumer, "nack", "0" * 40)
    (error,) = consumer.peer.read()
    assert "no such message" in error["error"] and error["nack"] == "0" * 40


def test_in_flight_limit_holds_back_messages_until_an_ack(delivery):
    d = delivery(maxInFlight=3, ackTimeout=60)
    consumer = d.connect("slow", ack=True)
    codes = d.broker.publish([str(i) for i in range(10)])
    for _ in range(3):
        d.turn()
    assert [o["MessageCode"] for o in consumer.peer.read()] == codes[:3]
    d.reply(consumer, "ack", codes[0])
    d.turn()
    assert [o["MessageCode"] for o in consumer.peer.read()] == codes[3:4]


# -- groups --------------------------------------------------------------------------------------
def test_a_member_that_leaves_gives_its_unacked_messages_to_the_other_member(delivery):
    d = delivery(ackTimeout=60)
    a = d.connect("a", group="g", ack=True)
    b = d.connect("b", group="g", ack=True)
    codes = d.broker.publish(["1", "2", "3", "4"])
    d.turn()
    held_by_a = [o["MessageCode"] for o in a.peer.read()]
    held_by_b = [o["MessageCode"] for o in b.peer.read()]
    assert sorted(held_by_a + held_by_b) == sorted(codes) and held_by_a and held_by_b
    d.reply(b, "ack", held_by_b[0])

    d.leave(a)
    d.turn()
    again = b.peer.read()
    assert sorted(o["MessageCode"] for o in again) == sorted(held_by_a)
    assert {o["Status"] for o in again} == {1}, "each failed once with the member that left"


def test_an_ordering_key_sticks_to_one_member_even_while_it_is_full(delivery):
    d = delivery(maxInFlight=1, ackTimeout=60)
    a = d.connect("a", group="g", ack=True)
    b = d.connect("b", group="g", ack=True)
    first, second = d.broker.publish(["k1", "k2"], key="k")
    d.turn()
    got_a, got_b = a.peer.read(), b.peer.read()
    owner, other = (a, b) if got_a else (b, a)
    assert [o["MessageCode"] for o in got_a + got_b] == [first]
    d.clock.advance(1)
    d.turn()
    assert other.peer.read() == [], "the key's next message waits for its member, not the idle one"
    d.reply(owner, "ack", first)
    assert [o["MessageCode"] for o in owner.peer.read()] == [second]


def test_ordering_keys_spread_over_the_members_and_each_stays_with_one(delivery):
    d = delivery(ackTimeout=60)
    members = [d.connect(f"m{i}", group="g") for i in range(3)]
    for round_ in range(5):
        for key in range(6):
            d.broker.publish([f"{key}:{round_}"], key=f"k{key}")
        d.turn()
    owners = collections.defaultdict(set)
    for index, member in enumerate(members):
        per_key = collections.defaultdict(list)
        for o in member.peer.read():
            key, seq = o["MessageData"].split(":")
            owners[key].add(index)
            per_key[key].append(int(seq))
        assert all(seqs == sorted(seqs) for seqs in per_key.values())
    assert len(owners) == 6 and all(len(who) == 1 for who in owners.values()), owners
    assert len({next(iter(who)) for who in owners.values()}) > 1, "keys spread over members"


def test_a_trickle_to_idle_members_goes_round_them(delivery):
    d = delivery()
    members = [d.connect(f"w{i}", group="g") for i in range(4)]
    for i in range(8):
        d.broker.publish([str(i)])
        d.turn()
    assert [len(m.peer.read()) for m in members] == [2, 2, 2, 2]


# -- gathering windows (mq.writeCoalesce) --------------------------------------------------------
IDLE = None     # a turn with nothing to do waits for a post, however long


def _publish_one_per_turn(d, count, gap):
    """``count`` messages ``gap`` seconds of fake time apart, each taken by one shard turn;
    returns how long each of those turns would have waited before taking its message: 0 when it
    is written at once, the rest of the window when a window is open."""
    waits = []
    for i in range(count):
        d.broker.publish([str(i)])
        d.turn()
        waits.append(d.waits.timeouts[-1])
        d.clock.advance(gap)
    return waits


def test_a_window_opens_under_a_high_rate_and_the_shard_wakes_when_it_closes(delivery):
    d = delivery(writeCoalesce=0.01)
    consumer = d.connect("c")
    waits = _publish_one_per_turn(d, 60, 0.001)         # 1000 a second: 10 per window
    opened = [i for i, wait in enumerate(waits) if wait > 0]
    assert opened, "no window opened at 1000 messages a second"
    assert opened[0] >= GATHER and opened == list(range(opened[0], 60)), waits
    assert all(waits[i] == pytest.approx(0.009) for i in opened), "the rest of the window"
    assert [o["MessageData"] for o in consumer.peer.read()] == [str(i) for i in range(60)]

    d.turn()        # after the last message: asleep until the window ends, not the idle tick
    assert 0 < d.waits.timeouts[-1] <= 0.01
    d.clock.advance(0.01)
    d.turn()
    assert d.waits.timeouts[-1] == IDLE, "closed: nothing left to gather"


def test_no_window_opens_at_a_low_rate(delivery):
    d = delivery(writeCoalesce=0.01)
    consumer = d.connect("c")
    waits = _publish_one_per_turn(d, 40, 0.03)          # 33 a second: one per three windows
    assert waits == [0] * 40, "each message is written at once"
    assert len(consumer.peer.read()) == 40
    d.turn()
    assert d.waits.timeouts[-1] == IDLE


def test_a_short_burst_after_a_pause_opens_no_window(delivery):
    d = delivery(writeCoalesce=0.01)
    consumer = d.connect("c")
    _publish_one_per_turn(d, 5, 0.5)
    d.clock.advance(2)
    for i in range(GATHER):                             # held back by a stalled producer
        d.broker.publish([f"burst-{i}"])
    d.turn()
    d.clock.advance(0.001)
    assert _publish_one_per_turn(d, 1, 0) == [0], "the burst opened a window"
    assert [o["MessageData"] for o in consumer.peer.read()][-GATHER - 1:] == \
        [f"burst-{i}" for i in range(GATHER)] + ["0"]


def test_without_write_coalesce_no_window_ever_opens(delivery):
    d = delivery(writeCoalesce=0)
    d.connect("c")
    assert _publish_one_per_turn(d, 40, 0.0001) == [0] * 40


# -- parked subscriptions --------------------------------------------------------------------------
def test_a_parked_subscription_is_looked_at_again_after_parked_recheck(delivery):
    """The shared budget (mq.consumerBuffersTotalBytes) is full: the consumer cannot take its
    messages and its subscription is parked. Room coming back tells no one: the shard looks at
    parked subscriptions again after PARKED_RECHECK, and not before."""
    d = delivery()
    consumer = d.connect("c")
    budget = d.broker.consumer_buffers
    budget.add(budget.total)                # other consumers' frames, not written yet
    codes = d.broker.publish(["a", "b", "c"])
    d.turn()
    d.turn()
    assert consumer.peer.read() == [], "parked: the budget refuses every frame"

    budget.give_back(budget.total)          # room again, without a word to the shard
    d.clock.advance(PARKED_RECHECK / 2)
    d.turn()
    assert consumer.peer.read() == [], "looked at again before PARKED_RECHECK"
    assert d.waits.timeouts[-1] == pytest.approx(PARKED_RECHECK / 2)
    d.clock.advance(PARKED_RECHECK / 2)
    d.turn()
    assert [o["MessageCode"] for o in consumer.peer.read()] == codes
    assert d.counts()[DELIVERED] == 3


def test_an_ack_unparks_a_subscription_at_once(delivery):
    d = delivery(maxInFlight=1, ackTimeout=60)
    consumer = d.connect("c", ack=True)
    first, second = d.broker.publish(["a", "b"])
    d.turn()
    d.turn()
    assert [o["MessageCode"] for o in consumer.peer.read()] == [first]
    d.reply(consumer, "ack", first)         # no clock move: the ack is the event
    assert [o["MessageCode"] for o in consumer.peer.read()] == [second]


# -- the subscription alone, with ``now`` given ----------------------------------------------------
LIMITS = config.build({"mq": {"ackTimeout": 10, "sendRetryCount": 1}}).mq


def _records(count):
    return [Record(offset, f"{offset:040x}", "t", f"m{offset}", 0.0)
            for offset in range(1, count + 1)]


@pytest.fixture
def alone():
    """A subscription outside any shard, with one acking member on a socket pair."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    dead = []
    timers = []
    sub = Subscription("t", "c:x", 0, {}, [], MemoryEngine(), LIMITS,
                       lambda *args: dead.append(args[1:3]), timers, collections.Counter())
    member = Member(Connection(ours, 1 << 20, WEBSOCKET), None, "t", "x", ack=True)
    sub.join(member)
    sub.behind = False
    yield sub, member, dead, timers
    ours.close()
    theirs.close()


def _offer(sub, member, recs, now):
    sub.offer_live(Run([(r, payload(r)) for r in recs]), now)
    _written(sub, member)


def _written(sub, member):
    assert member.conn.flush()
    sub.written(member, member.conn.take_written())


def test_the_cursor_is_the_low_water_mark_of_what_is_done(alone):
    sub, member, dead, timers = alone
    recs = _records(3)
    _offer(sub, member, recs, now=100.0)
    assert sorted(deadline for deadline, *_ in timers) == [110.0] * 3
    assert sub.ack(member, recs[1].code)
    assert sub.position() == 0, "the first is not done: the cursor stays before it"
    assert sub.ack(member, recs[0].code)
    assert sub.position() == 2


def test_an_expired_flight_is_retried_then_dead_lettered(alone):
    sub, member, dead, timers = alone
    (rec,) = _records(1)
    _offer(sub, member, [rec], now=100.0)
    sub.expire(member.flights[rec.code], now=110.0)     # failed once: sendRetryCount is 1
    _written(sub, member)
    again = member.flights[rec.code]
    assert again.attempts == 1 and again.deadline == 120.0
    assert sub.position() == 0
    sub.expire(again, now=120.0)
    assert dead == [(rec, 2)] and not member.flights and not sub.has_work
    assert sub.position() == 1


def test_expiring_a_flight_that_was_acked_meanwhile_changes_nothing(alone):
    sub, member, dead, timers = alone
    (rec,) = _records(1)
    _offer(sub, member, [rec], now=0.0)
    flight = member.flights[rec.code]
    assert sub.ack(member, rec.code)
    sub.expire(flight, now=10.0)
    assert not sub.has_work and not member.flights and dead == []
    assert sub.position() == 1


def test_positions_can_be_asked_of_the_shard(delivery):
    d = delivery()
    d.connect("c")
    d.broker.publish(["a"])
    d.turn()
    reply = queue.SimpleQueue()
    d.shard.post("positions", (reply,))
    d.turn()
    assert reply.get_nowait() == {("t", "c:c"): 1}


# -- the gathering window and the cursor ledger alone --------------------------------------------
def test_a_window_opens_when_the_recent_count_reaches_gather_windows_worth():
    below, at = Gathering(0.01), Gathering(0.01)
    below.arrived(GATHER * RECENT - 1, START)
    at.arrived(GATHER * RECENT, START)
    assert below.until == 0.0 and at.until == START + 0.01
    below.arrived(1, START + 0.05)          # one horizon later the count has decayed by e
    assert below.until == 0.0


def test_the_ledger_hands_over_moved_cursors_once_and_quiet_ones_when_retention_asks():
    class Sub:
        def __init__(self, key, cursor):
            self.topic, self.key, self.cursor = "t", key, cursor

        def position(self):
            return self.cursor

    busy, quiet = Sub("c:busy", 5), Sub("c:quiet", 3)
    subs = {("t", "c:busy"): busy, ("t", "c:quiet"): quiet}
    ledger = CursorLedger()
    saved_at = time.time() - 100            # loaded; the ledger stamps what it hands over now
    ledger.loaded(("t", "c:busy"), 5, saved_at)
    ledger.loaded(("t", "c:quiet"), 3, saved_at)
    busy.cursor = 7
    ledger.moved.add(busy)
    assert ledger.touched
    assert ledger.take(subs, None) == {("t", "c:busy"): 7}
    assert not ledger.touched and ledger.take(subs, None) == {}, "taken once"
    assert ledger.take(subs, saved_at - 1) == {}, "saved since the stale time: not again"
    assert ledger.take(subs, saved_at) == {("t", "c:quiet"): 3}, "quiet, last saved then"
    ledger.moved.add(quiet)                 # touched without moving: nothing to write
    assert ledger.take(subs, None) == {}


# -- gaps ----------------------------------------------------------------------------------------
def test_a_cursor_past_the_stores_newest_message_is_a_loss_told_and_nothing_new_is_skipped(delivery):
    """A store that lost its newest messages (restored from an older copy, or a consumer's cursor
    kept where the messages were not) gives the next messages offsets the cursor has passed:
    the subscription goes back to the store's head and tells the consumer, instead of skipping
    them in silence."""
    d = delivery()
    d.broker.publish(["a", "b"])
    d.broker.engine.save_cursors({("t", "c:c"): 5})
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    d._sockets += [ours, theirs]
    member = Member(Connection(ours, 1 << 20, WEBSOCKET_NOTICES), None, "t", "c")
    member.conn.on_progress = lambda conn: d.shard.post("watch", member)
    d.shard.post("join", member)
    d.turn()
    peer = Peer(theirs)
    (code,) = d.broker.publish(["c"])
    d.turn()
    d.turn()
    assert peer.read() == [
        {"Notice": "gap", "Topic": "t", "Missed": None, "After": None, "Resume": code,
         "Reason": "lost"},
        {"MessageCode": code, "MessageData": "c", "Topic": "t", "CreateTime": format_time(0.0),
         "Status": 0}]
    assert d.counts()[GAPS] == 1


# -- joins and leaves ----------------------------------------------------------------------------
def test_joins_and_leaves_posted_together_save_their_cursors_in_one_write_each(delivery):
    d = delivery()
    engine, saves = d.broker.engine, []
    save = engine.save_cursors
    engine.save_cursors = lambda cursors: (saves.append(sorted(cursors)), save(cursors))[1]
    members = [d.member(f"c{n}") for n in range(5)]
    keys = [("t", f"c:c{n}") for n in range(5)]
    for member in members:
        d.shard.post("join", member)
    d.turn()
    assert all(m.joined.is_set() and m.error is None for m in members)
    assert saves == [keys], "one write for the five new subscriptions"
    d.broker.publish(["m"])
    d.turn()
    assert all(m.peer.read() for m in members)
    for member in members:
        d.shard.post("leave", member)
    d.turn()
    assert all(m.removed.is_set() for m in members)
    assert saves[1:] == [keys], "one write for the five that left"
    assert all(engine.cursor(*key) == d.broker.heads["t"] for key in keys)


def test_where_a_subscription_left_off_is_saved_with_the_next_cursors_if_its_write_fails(delivery):
    d = delivery()
    engine = d.broker.engine
    member = d.connect("c")
    d.broker.publish(["m"])
    d.turn()
    head = d.broker.heads["t"]
    save = engine.save_cursors

    def failing(cursors):
        raise StoreError("disk I/O error")

    engine.save_cursors = failing
    d.leave(member)                 # told it is out all the same
    engine.save_cursors = save
    assert d.shard.touched, "the housekeeping is to ask for it"
    reply = queue.SimpleQueue()
    d.shard.post("cursors", (reply, None))
    d.turn()
    assert reply.get_nowait() == {("t", "c:c"): head}
