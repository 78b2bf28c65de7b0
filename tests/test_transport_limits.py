"""The consumer transports of a real ``dpmq serve`` at their limits: pulls whose clients went
away, numbers a client should not be able to send, broken handshakes and oversized acks.

Each test shows a problem found by probing a served broker; they assert outcomes (what a
consumer receives, the status it is answered with), never speeds."""

import json
import socket
import struct

import requests

from helpers import EventStreamCollector, wait_for


def _pull_request(fields):
    body = json.dumps(fields).encode()
    return (b"POST /ConsumerPull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def _abandoned_pull(port, fields):
    """Send a whole pull that its client will give up on (see :func:`_vanish`), as a client
    whose own timeout is shorter than ``wait`` does."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(_pull_request(fields))
    return sock


def _vanish(sock, reset=False):
    """Go away without reading the reply (``reset``: with a TCP reset instead of a FIN)."""
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _pull_members(broker):
    consumers = requests.get(broker.url + "/Console/GetConsumers", timeout=5).json()["data"]
    return [c for c in consumers if c["transport"] == "pull"]


def test_an_autoack_pull_whose_client_went_away_does_not_take_the_next_message(served):
    """A long poll's thread waits in Outbox.take without watching its socket: a pull whose client
    has gone still takes the next message, answers it into a closed socket and, with autoAck,
    moves the cursor past it. The consumer's next pull never sees that message."""
    broker = served()
    fields = {"topic": "t", "consumerId": "cron", "autoAck": True}
    assert requests.post(broker.url + "/ConsumerPull", json=fields, timeout=5).status_code == 200
    gone = _abandoned_pull(broker.port, {**fields, "wait": 30})
    wait_for(lambda: _pull_members(broker), what="the pull session")
    _vanish(gone)
    code = requests.post(broker.url + "/ProducerSend", data={"topic": "t", "messageData": "m"},
                         timeout=5).json()["msg"]
    got = []
    for _ in range(3):
        reply = requests.post(broker.url + "/ConsumerPull", json={**fields, "wait": 1}, timeout=10)
        got += [m["MessageCode"] for m in reply.json()["data"]]
        if got:
            break
    assert got == [code], "the message went to a pull whose client had already gone"


def test_pulls_whose_clients_reset_give_their_consumer_slots_back(served):
    """Each waiting pull holds a consumer slot and a thread for its whole ``wait`` even after its
    client reset the connection: a client can open pulls and drop them at no cost to itself
    until every consumer (pull, SSE, WebSocket) is refused with 503 for maxPullWait seconds."""
    broker = served(server={"maxConsumers": 4, "httpThreads": 1})
    socks = [_abandoned_pull(broker.port, {"topic": "t", "consumerId": f"p{n}", "wait": 60})
             for n in range(4)]
    wait_for(lambda: len(_pull_members(broker)) == 4, what="4 waiting pulls")
    for sock in socks:
        _vanish(sock, reset=True)

    def admitted():
        stream = EventStreamCollector(broker.port, "/ConsumersConn/t/browser")
        stream.close()
        return stream.status == 200
    wait_for(admitted, timeout=5, interval=0.2,
             what="an event-stream consumer to be admitted once the dropped pulls are gone")


def test_numbers_too_large_for_a_float_or_an_int_are_a_400_not_a_500(served):
    """views/pull.py's _number catches TypeError and ValueError, not the OverflowError of
    int(inf) (JSON ``Infinity``, ``1e400``) or float(10**400)."""
    broker = served()
    bodies = [b'"max": Infinity', b'"max": -Infinity', b'"max": 1e400', b'"wait": 1' + b"0" * 400]
    answers = {}
    for field in bodies:
        reply = requests.post(broker.url + "/ConsumerPull",
                              data=b'{"topic": "t", "consumerId": "c", ' + field + b"}",
                              headers={"Content-Type": "application/json"}, timeout=5)
        answers[field[:20].decode()] = reply.status_code
    assert answers == {key: 400 for key in answers}


def test_a_websocket_handshake_without_its_key_is_a_400_not_a_500(served):
    """An Upgrade: websocket request without Sec-WebSocket-Key/Version (here with Accept:
    text/event-stream too) reaches simple-websocket's Server, whose wsproto RemoteProtocolError
    nobody catches: a 500 and a logged traceback for a client's mistake."""
    broker = served()
    statuses = []
    for accept in (b"Accept: text/event-stream\r\n", b""):
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
            sock.sendall(b"GET /ConsumersConn/t/c HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n" + accept + b"\r\n")
            statuses.append(int(sock.recv(100).split(b" ", 2)[1]))
    assert statuses == [400, 400]
    assert "Traceback" not in broker.log.read_text()


def test_an_ack_of_a_hundred_thousand_codes_is_refused(served):
    """POST /ConsumerAck takes any number of codes (up to mq.maxBodyBytes: ~380,000), and the
    delivery shard settles them one by one, each looked for in every member of the subscription
    (shards._settle), on the thread that delivers every subscription of that shard. Probed: one
    300,000-code ack on a 500-member group held delivery to another topic's consumer for 4 s
    (0.004 s otherwise). A list longer than a pull may take (mq.maxPullMessages) is refused."""
    broker = served()
    fields = {"topic": "t", "consumerId": "c"}
    assert requests.post(broker.url + "/ConsumerPull", json=fields, timeout=5).status_code == 200
    codes = ["%040x" % n for n in range(100_000)]
    reply = requests.post(broker.url + "/ConsumerAck", json={**fields, "messageCode": codes},
                          timeout=30)
    assert reply.status_code in (400, 413), (reply.status_code, reply.text[:200])
