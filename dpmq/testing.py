"""A broker for your application's tests: the pytest fixture ``dpmq_broker`` and
:func:`running_broker`, the same without pytest.

Installed with DPMQ as a pytest plugin (entry point ``pytest11``), so a test only names the fixture::

    def test_an_order_is_published(dpmq_broker):
        requests.post(dpmq_broker.url + "/ProducerSend", data={"topic": "orders", "messageData": "42"})
        (message,) = dpmq_broker.wait_for("orders", 1)
        assert message["MessageData"] == "42"

Each test gets its own broker in this process, on a free port of 127.0.0.1, on the memory engine.
Ask for another engine or other settings with the ``dpmq`` mark, whose arguments are those of
:func:`running_broker`::

    @pytest.mark.dpmq(engine="sqlite", mq={"maxMessageBytes": 1024})
    def test_something(dpmq_broker): ...

pytest loads this module in every run, DPMQ's own included: it imports nothing of the broker until a
test asks for one.
"""

import contextlib
import json
import tempfile
import threading
import time

try:
    import pytest
except ImportError:         # running_broker works without pytest
    pytest = None

#: How many records one read of a topic asks the engine for.
_PAGE = 1000


class TestBroker:
    """A broker serving on ``127.0.0.1:<free port>`` in this process (see :func:`running_broker`).

    ``url`` is where producers publish (``url + "/ProducerSend"``), ``ws_url`` where WebSocket
    consumers connect (``ws_url + "/ConsumersConn/<topic>/<consumerId>"``); ``app`` and ``broker``
    are the Flask app and its broker object. Its methods may be called from any thread."""

    __test__ = False        # not a test class, whatever its name

    def __init__(self, app, server):
        self.app = app
        self.broker = app.extensions["dpmq"]
        self.settings = self.broker.settings
        self.server = server
        self.port = server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"

    def messages(self, topic):
        """What ``topic`` holds now, oldest first, each as the JSON object a consumer is pushed
        (``MessageCode``, ``MessageData``, ``Topic``, ``CreateTime``, ``Status`` = 0, and the extra
        fields such as ``TraceParent``). Delayed messages are there once they are due."""
        from .message import payload
        engine, found, after = self.broker.engine, [], 0
        while True:
            records = engine.read(topic, after, _PAGE)
            found += [json.loads(payload(record)) for record in records]
            if len(records) < _PAGE:
                return found
            after = records[-1].offset

    def wait_for(self, topic, n, timeout=5):
        """Wait until ``topic`` holds at least ``n`` messages and return what it holds (see
        :meth:`messages`); raise AssertionError saying what it holds after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(topic)
            if len(found) >= n:
                return found
            if time.monotonic() >= deadline:
                datas = [message["MessageData"] for message in found]
                raise AssertionError(f"topic {topic!r} holds {len(found)} message(s) after"
                                     f" {timeout}s, not {n}: {datas!r}")
            time.sleep(0.01)

    def __repr__(self):
        return f"<TestBroker {self.url} engine={self.settings.storage.engine}>"


@contextlib.contextmanager
def running_broker(engine="memory", **sections):
    """A :class:`TestBroker` serving while the ``with`` block runs, stopped after it.

    ``engine`` is ``memory`` (the default), ``sqlite`` (a file in a temporary folder, deleted
    after) or ``redis`` (give ``storage={"redisUrl": …, "prefix": …}``). ``sections`` are
    configuration sections as in ``application.yaml``, e.g. ``mq={"pushMessagesSpeed": 0}`` or
    ``auth={"enabled": True, "tokens": […]}``; an unknown key raises ConfigError naming it.
    """
    from werkzeug.serving import make_server

    from . import config
    from .app import create_app

    with tempfile.TemporaryDirectory(prefix="dpmq-test-") as folder:
        data = {section: dict(values) for section, values in sections.items()}
        data.setdefault("storage", {})
        data["storage"].setdefault("engine", engine)
        data["storage"].setdefault("path", f"{folder}/dpmq.db")
        app = create_app(config.build(data, source="dpmq.testing"))
        try:
            server = make_server("127.0.0.1", 0, app, threaded=True)
        except BaseException:
            app.extensions["dpmq"].stop(timeout=5)
            raise
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True,
                                  name=f"dpmq-test-server-{server.server_port}")
        thread.start()
        try:
            yield TestBroker(app, server)
        finally:
            app.extensions["dpmq"].stop(timeout=5)
            server.shutdown()
            server.server_close()
            thread.join(5)


# -- the pytest plugin ----------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "dpmq(engine='memory', **sections): settings of the test's dpmq_broker"
                   " (see dpmq.testing.running_broker)")


def dpmq_broker(request):
    """A DPMQ broker in this process for this test (see :class:`TestBroker`): memory engine unless
    the test's ``@pytest.mark.dpmq(engine=…, mq={…})`` asks otherwise."""
    mark = request.node.get_closest_marker("dpmq")
    if mark is not None and mark.args:
        raise TypeError("pytest.mark.dpmq takes keywords only: engine='sqlite', mq={...}")
    with running_broker(**(mark.kwargs if mark else {})) as broker:
        yield broker


if pytest is not None:
    dpmq_broker = pytest.fixture(dpmq_broker)
