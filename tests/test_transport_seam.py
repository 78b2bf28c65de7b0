"""The seam between delivery and the consumer transports: delivery hands out payloads and a
connection's framing puts them on its stream. The Server-Sent Events framing goes through the
same subscription code as the WebSocket one, with real connections over socket
pairs, a real memory engine, and ``now`` given by the test (no clock, no sleep)."""

import collections
import socket

import pytest

from dpmq import config
from dpmq.delivery.consumer_connection import ConsumerConnection, Framing
from dpmq.delivery.subscription import Member, Subscription
from dpmq.message import Record, Run, payload
from dpmq.storage.memory import MemoryEngine
from dpmq.transport.connection import Connection
from dpmq.transport.events import EVENTS
from dpmq.transport.frames import WEBSOCKET
from dpmq.transport.pull import Outbox

LIMITS = config.build({}).mq


@pytest.fixture
def sockets():
    pairs = []

    def make():
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(5)
        pairs.append((ours, theirs))
        return ours, theirs

    yield make
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def records(count, first=1):
    return [Record(offset, f"{offset:040x}", "t", f"m{offset}", 0.0)
            for offset in range(first, first + count)]


def run_of(recs):
    return Run([(record, payload(record)) for record in recs])


def subscription(key, engine=None):
    return Subscription("t", key, 0, {}, [], engine or MemoryEngine(), LIMITS, lambda *a: None,
                        [], collections.Counter())


def member(sock, framing, consumer_id, group=None, ack=False):
    return Member(Connection(sock, 1 << 20, framing), None, "t", consumer_id, group=group,
                  ack=ack)


def received(conn, theirs, size):
    conn.flush()
    data = b""
    while len(data) < size:
        data += theirs.recv(size - len(data))
    return data


def test_one_run_reaches_a_websocket_and_an_event_stream_each_in_its_own_framing(sockets):
    recs = records(3)
    run = run_of(recs)
    ws_sock, ws_theirs = sockets()
    ev_sock, ev_theirs = sockets()
    ws_member, ev_member = member(ws_sock, WEBSOCKET, "a"), member(ev_sock, EVENTS, "b")
    for key, m in (("c:a", ws_member), ("c:b", ev_member)):
        sub = subscription(key)
        sub.join(m)
        sub.behind = False
        assert sub.offer_live(run, now=100.0), "written whole, straight to the socket"
        assert sub.next == 4

    want_ws = b"".join(WEBSOCKET.message(payload(r)) for r in recs)
    want_ev = b"".join(b"id: " + r.code.encode() + b"\ndata: " + payload(r) + b"\n\n" for r in recs)
    assert received(ws_member.conn, ws_theirs, len(want_ws)) == want_ws
    assert received(ev_member.conn, ev_theirs, len(want_ev)) == want_ev
    assert ws_member.conn.delivered == 3 == ev_member.conn.delivered
    # framed once per framing, shared by every connection of that framing
    assert run.frames(EVENTS) is run.frames(EVENTS)


def test_a_group_of_mixed_transports_shares_messages_and_a_nack_is_redelivered_in_the_other_framing(
        sockets):
    engine = MemoryEngine()
    sub = subscription("g:workers", engine)
    ws_sock, ws_theirs = sockets()
    ev_sock, ev_theirs = sockets()
    ws_member = member(ws_sock, WEBSOCKET, "a", group="workers", ack=True)
    ev_member = member(ev_sock, EVENTS, "b", group="workers", ack=True)
    sub.join(ws_member)
    sub.join(ev_member)
    sub.behind = False
    recs = records(2)
    sub.offer_live(run_of(recs), now=100.0)
    assert {len(ws_member.flights), len(ev_member.flights)} == {1}, "one each, least loaded first"

    first = WEBSOCKET.message(payload(recs[0]))
    assert received(ws_member.conn, ws_theirs, len(first)) == first
    second = EVENTS.message(payload(recs[1]))
    assert received(ev_member.conn, ev_theirs, len(second)) == second

    assert sub.ack(ev_member, recs[1].code)
    ws_member.conn.detach()     # the WebSocket consumer takes nothing more: it is the other's
    assert sub.nack(ws_member, recs[0].code, now=101.0)
    assert [f.record for f in ev_member.flights.values()] == [recs[0]]
    again = EVENTS.message(payload(recs[0], 1))     # Status 1: one failed attempt
    assert received(ev_member.conn, ev_theirs, len(again)) == again
    assert sub.ack(ev_member, recs[0].code)
    assert sub.position() == 2


def test_a_reply_and_a_keepalive_use_the_connection_framing(sockets):
    ours, theirs = sockets()
    conn = Connection(ours, 1 << 20, EVENTS)
    assert conn.reply({"error": "no such message"})
    conn.ping()
    want = b'event: error\ndata: {"error": "no such message"}\n\n' + b": keep-alive\n\n"
    assert received(conn, theirs, len(want)) == want
    assert conn.open, "an event stream's writes never close it"


def _members(protocol):
    return {name for name in vars(protocol) if not name.startswith("_")} | set(
        protocol.__annotations__)


@pytest.mark.parametrize("framing", [WEBSOCKET, EVENTS], ids=["websocket", "event-stream"])
def test_the_connection_and_each_framing_offer_everything_delivery_asks_of_them(sockets, framing):
    ours, _ = sockets()
    conn = Connection(ours, 1 << 20, framing)
    missing = sorted(name for name in _members(ConsumerConnection) if not hasattr(conn, name))
    assert not missing, f"Connection lacks what delivery uses: {missing}"
    missing = sorted(name for name in _members(Framing) if not hasattr(framing, name))
    assert not missing, f"{type(framing).__name__} lacks {missing}"


def test_the_pull_outbox_offers_everything_delivery_asks_of_a_connection():
    outbox = Outbox(1 << 20)
    missing = sorted(name for name in _members(ConsumerConnection) if not hasattr(outbox, name))
    assert not missing, f"Outbox lacks what delivery uses: {missing}"
    missing = sorted(name for name in _members(Framing) if not hasattr(outbox.framing, name))
    assert not missing, f"the pull framing lacks {missing}"


def test_delivery_uses_nothing_of_a_connection_beyond_the_seam():
    """Every ``conn.<name>`` in the delivery package is part of ConsumerConnection, so a new
    transport that implements the seam is all delivery needs."""
    import pathlib
    import re

    import dpmq.delivery
    used = set()
    for path in pathlib.Path(dpmq.delivery.__file__).parent.glob("*.py"):
        used |= set(re.findall(r"\bconn\.([a-z_]+)", path.read_text()))
    assert used, "the delivery package no longer names its connections conn: update this test"
    assert used <= _members(ConsumerConnection), sorted(used - _members(ConsumerConnection))
