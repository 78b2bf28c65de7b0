"""The dpmq command line, run as a user would: subprocesses against a real broker."""

import json
import os
import subprocess
import sys
import threading

import requests

from helpers import ServedBroker, free_port, wait_for


def dpmq(*args, stdin=None, url=None, timeout=30):
    env = dict(os.environ)
    if url:
        env["DPMQ_URL"] = url
    return subprocess.run([sys.executable, "-m", "dpmq.cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_publish_then_subscribe_shows_the_message(broker):
    subscriber = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "subscribe", "news", "--id",
                                   "cli", "--count", "2"], env=dict(os.environ, DPMQ_URL=broker.url),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: broker.broker.members(), what="the subscriber")
    published = dpmq("publish", "news", "hello from the CLI", url=broker.url)
    assert published.returncode == 0, published.stderr
    code = published.stdout.strip()
    assert len(code) == 40
    assert dpmq("publish", "news", "second", url=broker.url).returncode == 0
    out, err = subscriber.communicate(timeout=20)
    assert subscriber.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["MessageCode"] == code and lines[0]["MessageData"] == "hello from the CLI"
    assert lines[1]["MessageData"] == "second"


def test_publish_from_stdin_one_message_per_line(broker):
    result = dpmq("publish", "lines", "-", stdin="a\nb\nc\n", url=broker.url)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3
    replay = dpmq("subscribe", "lines", "--since", "beginning", "--count", "3", url=broker.url)
    assert [json.loads(line)["MessageData"] for line in replay.stdout.splitlines()] == ["a", "b", "c"]


def test_exit_codes_scripts_can_rely_on(broker, tmp_path):
    refused = dpmq("publish", "bad|topic", "x", url=broker.url)
    assert refused.returncode == 1 and "'|'" in refused.stderr
    unreachable = dpmq("publish", "t", "x", url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr
    assert dpmq("publish").returncode == 2


def test_check_config(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("mq:\n  pushMessagesSpeed: 0.5\n")
    result = dpmq("check-config", str(good))
    assert result.returncode == 0 and json.loads(result.stdout)["mq"]["pushMessagesSpeed"] == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("mq:\n  messageChanBuffer: lots\n")
    result = dpmq("check-config", str(bad))
    assert result.returncode == 2 and "mq.messageChanBuffer" in result.stderr
    assert dpmq("check-config", str(tmp_path / "missing.yaml")).returncode == 2


def test_stats_once_lists_consumers(broker):
    from helpers import Collector
    Collector(broker.ws_url, "t", "watched")
    wait_for(lambda: broker.broker.members(), what="the consumer")
    result = dpmq("stats", "--once", url=broker.url)
    assert result.returncode == 0, result.stderr
    assert "watched" in result.stdout and "engine" in result.stdout


def test_help_shows_examples():
    for args in ([], ["publish"], ["subscribe"], ["serve"], ["stats"], ["check-config"]):
        result = dpmq(*args, "--help")
        assert result.returncode == 0 and "examples:" in result.stdout, args


def test_subscribe_loses_nothing_when_the_broker_is_killed_and_restarted(tmp_path):
    served = ServedBroker(tmp_path).start()
    subscriber = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "subscribe", "t", "--id", "x"],
                                  env=dict(os.environ, DPMQ_URL=served.url), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(subscriber.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: requests.get(served.url + "/Console/GetConsumers").json()["data"],
                 what="the subscriber")
        for i in range(10):
            assert dpmq("publish", "t", f"m{i}", url=served.url).returncode == 0
        served.kill()
        served.start()
        for i in range(10, 20):
            assert dpmq("publish", "t", f"m{i}", url=served.url).returncode == 0
        wanted = {f"m{i}" for i in range(20)}
        wait_for(lambda: wanted <= {json.loads(line)["MessageData"] for line in list(lines)},
                 timeout=30, what="all 20 messages from dpmq subscribe")
    finally:
        subscriber.terminate()
        subscriber.wait(10)
        served.stop()
