"""dpmq.testing: the pytest plugin users' apps test with (run for real by pytester, in a pytest of
its own that finds the plugin through its entry point), and running_broker without pytest."""

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import requests

from dpmq.client import WebSocketClient
from dpmq.testing import running_broker

pytest_plugins = ["pytester"]

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(pytester, source):
    """Run ``source`` as a test file in a pytest of its own (a subprocess, as a user's run would
    be: the plugin comes from DPMQ's installed entry point, not from this process)."""
    pytester.makepyfile(test_app=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")


def test_the_fixture_serves_a_broker_and_reads_its_topics(pytester):
    result = run(pytester, r'''
import json, re, pytest, requests
from dpmq.client import WebSocketClient

def test_memory_by_default(dpmq_broker):
    assert dpmq_broker.settings.storage.engine == "memory"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", dpmq_broker.url)
    assert dpmq_broker.ws_url == dpmq_broker.url.replace("http", "ws")
    assert dpmq_broker.messages("orders") == []
    ws = WebSocketClient.connect(dpmq_broker.ws_url + "/ConsumersConn/orders/c1")
    for data in ("a", "b", "c"):
        reply = requests.post(dpmq_broker.url + "/ProducerSend",
                              data={"topic": "orders", "messageData": data}).json()
        assert reply["code"] == 0
    found = dpmq_broker.wait_for("orders", 3)
    assert [m["MessageData"] for m in found] == ["a", "b", "c"]
    assert list(found[0]) == ["MessageCode", "MessageData", "Topic", "CreateTime", "Status"]
    assert found[0]["MessageCode"] == reply["msg"] or found[2]["MessageCode"] == reply["msg"]
    assert json.loads(ws.receive(timeout=5)) == found[0]
    ws.close()
    assert dpmq_broker.messages("other") == []

def test_each_test_has_a_broker_of_its_own(dpmq_broker):
    assert dpmq_broker.messages("orders") == []

@pytest.mark.dpmq(engine="sqlite", mq={"maxMessageBytes": 8})
def test_the_mark_chooses_settings(dpmq_broker, tmp_path):
    assert dpmq_broker.settings.storage.engine == "sqlite"
    assert dpmq_broker.settings.mq.maxMessageBytes == 8
    big = requests.post(dpmq_broker.url + "/ProducerSend", data={"topic": "t", "messageData": "x" * 9})
    assert big.status_code == 413
    requests.post(dpmq_broker.url + "/ProducerSend", data={"topic": "t", "messageData": "small"})
    assert [m["MessageData"] for m in dpmq_broker.messages("t")] == ["small"]

def test_wait_for_fails_naming_what_the_topic_holds(dpmq_broker):
    requests.post(dpmq_broker.url + "/ProducerSend", data={"topic": "orders", "messageData": "only"})
    with pytest.raises(AssertionError, match=r"'orders' holds 1 message\(s\) after 0.2s, not 2: \['only'\]"):
        dpmq_broker.wait_for("orders", 2, timeout=0.2)
''')
    result.assert_outcomes(passed=4)


def test_a_bad_mark_fails_the_test_with_the_key_named(pytester):
    result = run(pytester, '''
import pytest

@pytest.mark.dpmq(mq={"noSuchKey": 1})
def test_it(dpmq_broker):
    pass
''')
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*noSuchKey*"])


def readme_example():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Test your app against DPMQ\n")[1].split("\n## ")[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_passes(pytester):
    code = readme_example()
    assert "dpmq_broker.wait_for" in code
    assert len(code.split("def test_")[1].strip().splitlines()) <= 10, "ten lines, as promised"
    run(pytester, code).assert_outcomes(passed=1)


def test_the_readme_example_fails_when_nothing_is_published(pytester):
    broken = readme_example().replace('data={"topic": "orders"', 'data={"topic": "elsewhere"')
    result = run(pytester, broken)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: topic 'orders' holds 0 message(s) after 5s*"])


def test_running_broker_without_pytest(tmp_path):
    with running_broker(engine="sqlite", mq={"pushMessagesSpeed": 0}) as broker:
        path = pathlib.Path(broker.settings.storage.path)
        assert path.exists() and tmp_path not in path.parents
        ws = WebSocketClient.connect(broker.ws_url + "/ConsumersConn/jobs/w1")
        codes = [requests.post(broker.url + "/ProducerSendBatch",
                               json={"topic": "jobs", "messages": ["1", "2"]}).json()["data"]]
        held = broker.wait_for("jobs", 2)
        assert [m["MessageCode"] for m in held] == codes[0]
        assert ws.receive(timeout=5)
        ws.close()
        port = broker.port
    assert not path.parent.exists(), "the temporary folder goes with the broker"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_importing_the_plugin_imports_no_broker():
    """pytest imports the plugin in every run of every project where DPMQ is installed."""
    code = ("import sys, dpmq.testing; loaded = [m for m in ('dpmq.app', 'flask', 'werkzeug',"
            " 'dpmq.broker') if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
