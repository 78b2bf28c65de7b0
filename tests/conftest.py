"""Fixtures: real brokers on free ports, real HTTP and WebSocket clients, real SQLite files.

``make_broker`` runs a broker in this process under a threaded WSGI server (several may run at
once); ``served`` (see helpers) starts ``dpmq serve`` under gunicorn in a subprocess, for the tests
that kill or signal the process.
"""

import os
import threading

import pytest
import requests
from werkzeug.serving import make_server

from dpmq import config
from dpmq.app import create_app

from helpers import ServedBroker, drop_prefix, redis_prefix, require_redis

ENGINES = ["sqlite", "memory", "redis"]
CHROMIUM = "/usr/bin/chromium"


class RunningBroker:
    """A broker serving on 127.0.0.1:<free port> in this process."""

    def __init__(self, settings):
        self.settings = settings
        self.app = create_app(settings)
        self.broker = self.app.extensions["dpmq"]
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def publish(self, topic, data, **extra):
        """Publish one message; returns the parsed reply."""
        return self.http.post(self.url + "/ProducerSend",
                              data={"topic": topic, "messageData": data, **extra}).json()

    def publish_many(self, topic, datas, **extra):
        """Publish straight through the broker object, a buffer's worth per commit; returns the
        MessageCodes."""
        items = [{"topic": topic, "messageData": d, **extra} for d in datas]
        step = self.broker.slots.capacity
        return [code for start in range(0, len(items), step)
                for code in self.broker.publish(items[start:start + step])]

    def get(self, path, **params):
        return self.http.get(self.url + path, params=params).json()

    def stop(self):
        self.broker.stop(timeout=5)
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


def settings_for(engine, tmp_path, **sections):
    data = {"storage": {"engine": engine, "path": str(tmp_path / "dpmq.db"), "synchronous": "NORMAL",
                        "prefix": redis_prefix()},
            "server": {"pingInterval": 0}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config.build(data)


@pytest.fixture(params=ENGINES)
def engine_name(request):
    if request.param == "redis":
        require_redis()
    return request.param


@pytest.fixture
def make_broker(tmp_path):
    """``make_broker(engine, mq={...}, server={...})`` -> RunningBroker, stopped after the test."""
    started = []

    def make(engine="sqlite", path=None, **sections):
        folder = path or tmp_path
        running = RunningBroker(settings_for(engine, folder, **sections))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()
        if running.settings.storage.engine == "redis":
            drop_prefix(running.settings.storage.prefix)


@pytest.fixture
def served(tmp_path):
    """``served(**sections)`` -> ServedBroker: ``dpmq serve`` under gunicorn, stopped after."""
    started = []

    def serve(**sections):
        running = ServedBroker(tmp_path, **sections)
        started.append(running)
        return running.start()

    yield serve
    for running in started:
        running.stop()


@pytest.fixture
def broker(make_broker, engine_name):
    """A running broker on each engine, default settings."""
    return make_broker(engine_name)


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright. CI installs it (.ci/run) and must not skip."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run should have installed Debian's chromium")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture
def keep():
    """``keep(consumer)`` -> consumer, closed after the test whatever its outcome."""
    kept = []

    def register(consumer):
        kept.append(consumer)
        return consumer
    yield register
    for consumer in kept:
        consumer.close()
