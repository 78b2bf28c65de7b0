"""Webhooks: a real HTTP receiver that checks the signature and fails for a while; every event
arrives, in order, and a broker killed while the receiver fails loses none."""

import hashlib
import hmac
import http.server
import json
import logging
import socket
import threading
import time

import pytest
import requests

from dpmq.broker import webhooks

from helpers import Collector, wait_for

SECRET = "a-webhook-secret-of-some-length"
EVENTS = "_dpmq.events"


class Receiver:
    """An HTTP server on a free port that answers 500 to the first ``fail`` POSTs (or while
    ``failing``), 200 after; ``accepted`` holds the events it answered 200, in order."""

    def __init__(self, fail=0):
        self.fail = fail
        self.failing = False
        self.redirect = None        # a Location to answer 302 with, while set
        self.requests = 0
        self.gets = 0
        self.accepted = []          # (event id, event)
        self.bad_signatures = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                receiver.requests += 1
                if not hmac.compare_digest(self.headers.get("X-DPMQ-Signature", ""), expected):
                    receiver.bad_signatures += 1
                    status = 401
                elif receiver.redirect:
                    status = 302
                elif receiver.failing or receiver.requests <= receiver.fail:
                    status = 500
                else:
                    status = 200
                    receiver.accepted.append((self.headers["X-DPMQ-Event-Id"], json.loads(body)))
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", receiver.redirect)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):       # what a followed redirect would send: the event lost
                receiver.gets += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def types(self):
        return [event["type"] for _, event in self.accepted]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs):
        made.append(Receiver(**kwargs))
        return made[-1]
    yield make
    for one in made:
        one.close()


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(webhooks, "BACKOFF", (0.05, 0.2))


def come_and_go(running, count):
    """``count`` consumers connect and leave, one after another: 2 * count events."""
    for i in range(count):
        consumer = Collector(running.ws_url, "t", f"c{i}")
        wait_for(lambda: any(m.topic == "t" for m in running.broker.members()), what="a consumer")
        consumer.close()
        wait_for(lambda: not any(m.topic == "t" for m in running.broker.members()),
                 what="it to leave")


def stored_events(running):
    return [json.loads(r.data) for r in running.broker.engine.read(EVENTS, 0, 1000)]


def test_every_event_arrives_signed_in_order_after_the_receiver_failed_a_while(
        make_broker, receiver, fast, caplog):
    caplog.set_level(logging.INFO)
    hook = receiver(fail=3)
    origin = hook.url.rsplit("/", 1)[0]
    url = hook.url + "/T0SECRET/B0SECRET?token=s3cr3t"     # a Slack-like URL: it is a secret
    running = make_broker("sqlite", events={"webhooks": [{"url": url, "secret": SECRET}]})
    come_and_go(running, 3)
    wait_for(lambda: len(stored_events(running)) == 6, what="six events stored")
    wait_for(lambda: len(hook.accepted) == 6, what=f"six events accepted: {hook.types()}")
    assert [event for _, event in hook.accepted] == stored_events(running), "in order, once each"
    assert hook.types() == ["consumer.connected", "consumer.left"] * 3
    assert hook.requests == 9 and hook.bad_signatures == 0
    (report,) = running.get("/Console/GetWebhooks")["data"]
    assert report["url"] == origin and len(report["id"]) == 16
    assert report["backlog"] == 0 and report["delivered"] == 6
    assert report["lastError"] == "HTTP 500" and report["failures"] == 0
    (shown,) = running.get("/Console/GetConfig")["data"]["events"]["webhooks"]
    assert shown["url"] == origin + "/***" and shown["secret"] == "***"
    retries = [r.getMessage() for r in caplog.records if "not accepted" in r.getMessage()]
    assert len(retries) == 3 and all(f"{origin} (id {report['id']})" in m for m in retries)
    assert "SECRET" not in caplog.text and "s3cr3t" not in caplog.text


def test_a_webhook_gets_only_its_types_and_a_dead_one_delays_no_other(make_broker, receiver, fast):
    left, dead = receiver(), receiver()
    dead.failing = True
    running = make_broker("sqlite", events={"webhooks": [
        {"url": left.url, "secret": SECRET, "types": ["consumer.l*"]},
        {"url": dead.url, "secret": SECRET}]})
    come_and_go(running, 2)
    wait_for(lambda: len(left.accepted) == 2, what="the two consumer.left events")
    assert left.types() == ["consumer.left"] * 2
    reports = running.get("/Console/GetWebhooks")["data"]
    wait_for(lambda: running.get("/Console/GetWebhooks")["data"][1]["backlog"] == 4,
             what=f"the dead webhook's backlog of 4: {reports}")
    wait_for(lambda: dead.requests >= 2, what="the dead one tried again")
    assert dead.accepted == []
    dead.failing = False
    wait_for(lambda: len(dead.accepted) == 4, what="the dead one's events once it is back")
    assert [event for _, event in dead.accepted] == stored_events(running)


def stored(running):
    """The events a served broker holds, newest first."""
    return requests.get(running.url + "/Console/GetMessageList",
                        params={"topic": EVENTS, "limit": 1000}, timeout=5).json()["data"]


def test_a_broker_killed_while_the_receiver_fails_loses_no_event(served, receiver):
    hook = receiver()
    hook.failing = True
    running = served(events={"webhooks": [{"url": hook.url, "secret": SECRET}]})
    for i in range(3):
        Collector(running.ws_url, "t", f"c{i}").close()
    wait_for(lambda: len(stored(running)) == 6, what="six events stored")
    wait_for(lambda: hook.requests >= 2, what="the receiver to be tried (and fail) twice")
    running.kill()
    running.start()
    before = stored(running)
    codes = {m["MessageCode"] for m in before}
    assert len(codes) == 6, before
    hook.failing = False
    wait_for(lambda: codes <= {code for code, _ in hook.accepted}, timeout=30,
             what=f"every stored event at the receiver; have {len(hook.accepted)} of {len(codes)}")
    assert hook.bad_signatures == 0
    ids = [code for code, _ in hook.accepted]
    order = [m["MessageCode"] for m in reversed(before)]      # GetMessageList is newest first
    assert [code for code in dict.fromkeys(ids) if code in codes] == order


def test_a_redirect_is_a_failure_not_a_lost_event(make_broker, receiver, fast):
    hook = receiver()
    hook.redirect = "https://elsewhere.example:8443/new/path?sig=s3cr3t"
    running = make_broker("sqlite", events={"webhooks": [{"url": hook.url, "secret": SECRET}]})
    come_and_go(running, 1)
    wait_for(lambda: hook.requests >= 2, what="the POST redirected twice")

    def report():
        (one,) = running.get("/Console/GetWebhooks")["data"]
        return one
    error = report()["lastError"]
    assert error.startswith("HTTP 302") and "redirected to elsewhere.example;" in error
    assert "s3cr3t" not in error and "/new/path" not in error
    assert hook.gets == 0 and hook.accepted == [] and report()["delivered"] == 0
    hook.redirect = None
    wait_for(lambda: len(hook.accepted) == 2, what="both events once it stops redirecting")
    assert hook.types() == ["consumer.connected", "consumer.left"] and hook.gets == 0


class Hanging:
    """A receiver that accepts connections and never answers."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:
                return

    def close(self):
        self.server.close()
        for conn in self.connections:
            conn.close()


def test_stop_ends_every_webhook_thread_promptly_while_receivers_hang(make_broker, keep):
    hang = keep(Hanging())
    running = make_broker("sqlite", events={"webhooks": [
        {"url": f"{hang.url}/hook{i}", "secret": SECRET} for i in range(5)]})
    come_and_go(running, 1)
    wait_for(lambda: len(hang.connections) == 5, what="the five webhooks POSTing, unanswered")
    started = time.monotonic()
    running.broker.stop(timeout=5)
    took = time.monotonic() - started
    alive = [t.name for t in threading.enumerate() if t.name.startswith("dpmq-webhook")]
    assert alive == [], f"webhook threads outlived stop: {alive}"
    assert took < 3, f"stop took {took:.1f} s"
