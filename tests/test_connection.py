"""The outgoing side of a consumer socket (dpmq.transport.connection.Connection) over a real socket pair:
a run of frames queued at once is written, counted and bounded exactly like frames queued one
by one; and the budget that bounds every consumer's buffer together (dpmq.transport.budget.Budget)."""

import socket

import pytest

from dpmq.delivery.consumer_connection import QUEUED, WRITTEN
from dpmq.message import Record, Run, payload
from dpmq.transport.budget import Budget
from dpmq.transport.connection import Connection
from dpmq.transport.frames import WEBSOCKET

PING = WEBSOCKET.keepalive


def frame(record):
    return WEBSOCKET.message(payload(record))


def records(count, first=1, size=10):
    return [Record(offset, f"code{offset}", "t", "x" * size, 0.0) for offset in range(first, first + count)]


def run_of(recs):
    return Run([(record, payload(record)) for record in recs])


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def small_buffered(sock):
    """A connection on ``sock`` with a small send buffer, and the budget it counts in."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    budget = Budget(1 << 30)
    conn = Connection(sock, 1 << 30, WEBSOCKET)
    conn.attach(budget)
    return conn, budget


def receive(sock, size):
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data


def test_a_run_is_written_as_the_frames_one_after_another_and_every_record_counted(pair):
    ours, theirs = pair
    conn = Connection(ours, 1 << 20, WEBSOCKET)
    recs = records(5)
    run = run_of(recs)
    data, ends, taken = run.joined(WEBSOCKET)
    assert conn.offer_all(data, ends, taken) == WRITTEN
    assert conn.flush()
    assert receive(theirs, len(data)) == b"".join(frame(record) for record in recs)
    assert conn.delivered == 5
    assert conn.unwritten() == []


def test_a_run_after_single_frames_keeps_the_order_and_the_stream_positions(pair):
    ours, theirs = pair
    conn = Connection(ours, 1 << 20, WEBSOCKET)
    first, rest = records(2), records(3, first=3)
    for record in first:
        assert conn.offer(frame(record), record)
    assert conn.offer_all(*run_of(rest).joined(WEBSOCKET))
    assert conn.unwritten() == first + rest
    assert conn.flush()
    assert conn.take_written() == first + rest


def test_a_run_is_taken_whole_or_not_at_all_with_the_limit_that_single_offers_have(pair):
    ours, _ = pair
    recs = records(4, size=50)
    size = len(frame(recs[0]))
    run = run_of(recs)
    # One by one, a frame is taken while the buffer holds less than the limit: with a limit
    # just over three frames all four go in; just under three frames, only three.
    for limit, taken_one_by_one in ((3 * size + 1, 4), (3 * size, 3)):
        single = Connection(ours, limit, WEBSOCKET)
        assert sum(single.offer(frame(r), r) for r in recs) == taken_one_by_one
        whole = Connection(ours, limit, WEBSOCKET)
        taken = whole.offer_all(*run.joined(WEBSOCKET))
        assert bool(taken) == (taken_one_by_one == 4)
        # taken, it went straight to the empty socket (or waits for it): all four, or none
        assert whole.delivered + len(whole.unwritten()) == (4 if taken else 0)


def test_a_run_offered_to_an_empty_connection_is_written_at_once(pair):
    ours, theirs = pair
    budget = Budget(1 << 20)
    conn = Connection(ours, 1 << 20, WEBSOCKET)
    conn.attach(budget)
    recs = records(3)
    data, ends, taken = run_of(recs).joined(WEBSOCKET)
    assert conn.offer_all(data, ends, taken) == WRITTEN
    assert conn.pending_bytes == 0 and conn.unwritten() == [] and budget.used == 0
    # the caller knows they were written: take_written does not report them again
    assert conn.take_written() == [] and conn.delivered == 3
    assert receive(theirs, len(data)) == data


def test_what_the_socket_does_not_take_of_a_run_is_queued_and_counted_in_the_budget(pair):
    ours, theirs = pair
    conn, budget = small_buffered(ours)
    recs = records(200, size=1000)
    data, ends, taken = run_of(recs).joined(WEBSOCKET)
    assert conn.offer_all(data, ends, taken) == QUEUED
    assert 0 < conn.pending_bytes < len(data) and budget.used == conn.pending_bytes
    received = b""
    while not conn.flush() or len(received) < len(data):
        received += theirs.recv(1 << 16)
    assert received == data and budget.used == 0


def test_a_run_the_budget_would_not_admit_is_refused_before_anything_is_written(pair):
    ours, theirs = pair
    budget = Budget(1000)
    conn = Connection(ours, 1 << 20, WEBSOCKET)
    conn.attach(budget)
    budget.add(900)                         # what other consumers' buffers hold
    data, ends, taken = run_of(records(3, size=100)).joined(WEBSOCKET)
    assert not conn.offer_all(data, ends, taken)
    assert conn.delivered == 0 and budget.used == 900
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(1)


def test_a_closing_connection_takes_no_run(pair):
    ours, _ = pair
    conn = Connection(ours, 1 << 20, WEBSOCKET)
    conn.write_control(b"\x88\x02\x03\xe8")        # a Close frame
    assert not conn.offer_all(*run_of(records(2)).joined(WEBSOCKET))
    assert conn.unwritten() == []


def test_a_run_written_in_part_reports_only_the_frames_written_whole(pair):
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = Connection(ours, 1 << 22, WEBSOCKET)
    recs = records(400, size=1000)
    run = run_of(recs)
    assert conn.offer_all(*run.joined(WEBSOCKET))
    assert not conn.flush()                         # the peer reads nothing yet
    written = conn.take_written()
    assert written == recs[:len(written)] and len(written) < 400
    received = b""
    while not conn.flush() or len(received) < len(run.joined(WEBSOCKET)[0]):
        received += theirs.recv(1 << 16)
        written += conn.take_written()
    written += conn.take_written()
    assert written == recs
    assert received == run.joined(WEBSOCKET)[0]


def test_a_run_knows_whether_its_offsets_follow_one_another():
    assert run_of(records(3, first=7)).contiguous
    recs = records(4)
    assert not run_of([recs[0], recs[2]]).contiguous
    assert not run_of([recs[0], recs[2], recs[1]]).contiguous
    assert not run_of([recs[0], recs[1], recs[1], recs[3]]).contiguous   # a repeat hides a gap


def test_a_ping_with_nothing_waiting_goes_straight_to_the_socket(pair):
    ours, theirs = pair
    conn = Connection(ours, 1 << 20, WEBSOCKET)
    conn.ping()
    assert conn.pending_bytes == 0
    assert receive(theirs, 2) == PING


def test_a_ping_behind_a_frame_the_socket_did_not_take_waits_for_it_whole(pair):
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = Connection(ours, 1 << 22, WEBSOCKET)
    told = []
    conn.on_progress = told.append                  # as a delivery shard does
    first, second = records(2, size=200_000)
    assert conn.offer(frame(first), first)
    assert not conn.flush()                         # the peer reads nothing yet
    received = theirs.recv(1 << 16)                 # now the socket has room, the buffer not
    conn.ping()
    assert told == [conn], "the shard is told to watch for room"
    assert conn.offer(frame(second), second)
    expected = frame(first) + PING + frame(second)
    while len(received) < len(expected):
        conn.flush()
        received += theirs.recv(1 << 16)
    assert received == expected


def test_a_ping_on_a_closed_connection_says_so(pair):
    ours, _ = pair
    conn = Connection(ours, 1 << 20, WEBSOCKET)
    conn.detach()
    with pytest.raises(BrokenPipeError):
        conn.ping()


def test_frames_queued_one_by_one_are_written_in_parts_whole_and_in_order(pair):
    ours, theirs = pair
    conn, budget = small_buffered(ours)
    recs = records(1500, size=700)          # more frames than one sendmsg takes
    for record in recs:
        assert conn.offer(frame(record), record)
    expected = b"".join(frame(record) for record in recs)
    assert budget.used == len(expected)
    received, written = b"", []
    while not conn.flush() or len(received) < len(expected):
        received += theirs.recv(1 << 16)
        written += conn.take_written()
    written += conn.take_written()
    assert received == expected and written == recs
    assert budget.used == 0 and conn.pending_bytes == 0


def test_the_budget_goes_half_to_whoever_comes_then_to_those_under_their_share():
    budget = Budget(100_000)
    stuck, reader = [0, 0, 0], 0
    budget.connections = 4
    while True:                             # three consumers that never read take turns
        took = [budget.take(held, 1000) for held in stuck]
        stuck = [held + 1000 * ok for held, ok in zip(stuck, took)]
        if not any(took):
            break
    assert budget.used == sum(stuck) <= 100_000
    assert all(held > 100_000 // 8 for held in stuck), "each got its part of the first half"
    for _ in range(12):                     # a reader holds at most a little, and gets room
        assert budget.take(reader, 1000)
        reader += 1000
    assert reader == 12_000 and budget.used <= 100_000
    assert not budget.take(reader, 1000), "past its share of the second half: refused"
    budget.give_back(reader)
    assert budget.take(0, 1000)


def test_nothing_goes_past_the_budget_but_a_frame_larger_than_all_of_it_when_nothing_waits():
    budget = Budget(10_000)
    budget.connections = 1
    assert budget.take(0, 9_000)
    assert not budget.take(0, 2_000), "an empty connection too: not past the whole"
    budget.give_back(9_000)
    assert not budget.take(0, 50_000, single=False), "several frames: not past it, ever"
    assert budget.take(0, 50_000)
    assert not budget.take(0, 1)


def test_a_closed_connection_lets_go_of_its_frames_at_once_and_its_records_when_released(pair):
    ours, _ = pair
    conn, budget = small_buffered(ours)
    recs = records(100, size=2000)
    for record in recs:
        assert conn.offer(frame(record), record)
    assert not conn.flush()                 # the peer reads nothing
    assert budget.used > 0 and budget.connections == 1
    conn.detach()
    assert conn.pending_bytes == 0 and budget.used == 0, "the frames are given back at once"
    assert conn.unwritten() == recs[-len(conn.unwritten()):], "the shard still sees what was not written"
    conn.release()
    assert conn.unwritten() == [] and budget.connections == 0
