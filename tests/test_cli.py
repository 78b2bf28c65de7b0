"""The dpmq command line, run as a user would: subprocesses against a real broker."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

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
    assert "buffer 0/100" in result.stdout and "awaiting paced push 0" in result.stdout


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


def test_subscribe_to_an_unreachable_broker_exits_3_instead_of_retrying_for_ever():
    """A consumer retries for ever; ``dpmq subscribe`` gives up when its first connection fails
    for cli.SUBSCRIBE_FIRST_CONNECT_TIMEOUT seconds. Still retrying, it would outlive the
    subprocess's timeout (a bound against hanging, far above that one)."""
    url = f"http://127.0.0.1:{free_port()}"
    result = dpmq("subscribe", "t", url=url, timeout=60)
    assert result.returncode == 3, result.stderr
    assert f"cannot reach the broker at {url}" in result.stderr


def test_a_refused_subscriber_says_refused_once(make_broker):
    running = make_broker("memory")
    result = dpmq("subscribe", "bad|topic", "--id", "c", url=running.url)
    assert result.returncode == 1
    assert result.stderr.count("refused") == 1 and "'|'" in result.stderr, result.stderr


def test_subscribe_into_a_closed_pipe_ends_quietly_as_unix_tools_do(make_broker):
    running = make_broker("memory")
    reader, writer = os.pipe()
    subscriber = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "subscribe", "t", "--id", "piped"],
                                  env=dict(os.environ, DPMQ_URL=running.url), stdout=writer,
                                  stderr=subprocess.PIPE, text=True)
    os.close(writer)
    try:
        wait_for(lambda: running.broker.members(), what="the subscriber")
        running.publish("t", "first")
        with os.fdopen(reader) as pipe:     # `| head -n 1`: read one line, then go away
            assert json.loads(pipe.readline())["MessageData"] == "first"
        running.publish("t", "second")
        _, err = subscriber.communicate(timeout=10)
    finally:
        subscriber.kill()
    assert subscriber.returncode == -signal.SIGPIPE and err == "", (subscriber.returncode, err)


def serve_expecting_a_refusal(folder, *args, **variables):
    """``dpmq serve`` that should exit at once; if it serves instead, its whole process group
    (gunicorn's master and worker) is killed after 15 s."""
    proc = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "serve", *args], cwd=folder,
                            env=dict(os.environ, DPMQ_STORAGE_ENGINE="memory", **variables),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_serve_on_a_port_in_use_says_so_at_once_and_by_whom(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = serve_expecting_a_refusal(tmp_path, "--port", str(port))
    assert result.returncode == 2, result.stderr
    # gunicorn, had it tried, would log each of its five one-second retries and exit 1.
    assert "Connection in use" not in result.stderr, "gunicorn's five seconds of retries were not skipped"
    assert f"port {port} on 127.0.0.1 is already in use by process {os.getpid()} (" in result.stderr
    assert "--port" in result.stderr and "DPMQ " not in result.stderr, "no banner before the refusal"


def test_serve_refuses_a_misspelt_variable(tmp_path):
    result = serve_expecting_a_refusal(tmp_path, "--port", str(free_port()),
                                       DPMQ_MQ_PUSHMESSAGESPEED="0.5")
    assert result.returncode == 2
    assert "did you mean DPMQ_MQ_PUSHMESSAGESSPEED?" in result.stderr


def test_check_config_checks_the_environment_as_serve_would(tmp_path):
    good = tmp_path / "application.yaml"
    good.write_text("mq:\n  pushMessagesSpeed: 0.5\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DPMQ_")}

    def check(*args, **variables):
        return subprocess.run([sys.executable, "-m", "dpmq.cli", "check-config", *args],
                              cwd=tmp_path, env=dict(env, **variables), capture_output=True,
                              text=True, timeout=30)

    result = check(DPMQ_MQ_PUSHMESSAGESSPEED="abc")
    assert result.returncode == 2
    assert "mq.pushMessagesSpeed (from DPMQ_MQ_PUSHMESSAGESSPEED) must be a number" in result.stderr
    result = check(str(good), DPMQ_MQ_PUSHMESSAGESPEED="0.25")
    assert result.returncode == 2 and "did you mean DPMQ_MQ_PUSHMESSAGESSPEED?" in result.stderr
    result = check(DPMQ_MQ_PUSHMESSAGESSPEED="0.25")         # ./application.yaml, as serve reads
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mq"]["pushMessagesSpeed"] == 0.25
    assert "application.yaml with DPMQ_MQ_PUSHMESSAGESSPEED: valid" in result.stderr


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mq:\n  pushMessageSpeed: 1\n  messageChanBuffer: lots\n")
    result = dpmq("check-config", str(bad))
    assert result.returncode == 2
    assert "unknown key mq.pushMessageSpeed: did you mean mq.pushMessagesSpeed?" in result.stderr
    assert "mq.messageChanBuffer must be a whole number, got 'lots'" in result.stderr


def test_subscribe_without_an_id_leaves_no_subscription_behind(make_broker):
    running = make_broker("sqlite")
    subscriber = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "subscribe", "t", "--count", "1"],
                                  env=dict(os.environ, DPMQ_URL=running.url), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: running.broker.members(), what="the subscriber")
        running.publish("t", "one")
        out, err = subscriber.communicate(timeout=10)
    finally:
        subscriber.kill()
    assert subscriber.returncode == 0, err
    assert json.loads(out)["MessageData"] == "one"

    def subscriptions():
        (topic,) = [t for t in running.get("/Console/GetTopics")["data"] if t["topic"] == "t"]
        return topic["subscriptions"]
    wait_for(lambda: subscriptions() == 0, what="the subscription to be forgotten")


def test_subscribe_over_server_sent_events(make_broker):
    running = make_broker("memory")
    subscriber = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "subscribe", "news", "--id",
                                   "reader", "--sse", "--count", "2"],
                                  env=dict(os.environ, DPMQ_URL=running.url), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: running.get("/Console/GetConsumers")["data"], what="the SSE subscriber")
        (entry,) = running.get("/Console/GetConsumers")["data"]
        assert entry.get("transport") == "sse"
        codes = running.publish_many("news", ["one", "two"])
        out, err = subscriber.communicate(timeout=20)
    finally:
        subscriber.kill()
    assert subscriber.returncode == 0, err
    assert [json.loads(line)["MessageCode"] for line in out.splitlines()] == codes


def test_subscribe_by_pulling_acks_what_it_printed(make_broker):
    from dpmq.client import PullConsumer
    running = make_broker("memory", mq={"ackTimeout": 0.3})
    assert PullConsumer(running.url, "jobs", "nightly").pull() == []    # starts the subscription
    running.publish_many("jobs", ["a", "b", "c"])
    result = dpmq("subscribe", "jobs", "--id", "nightly", "--pull", "--ack", "--count", "2",
                  url=running.url)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["MessageData"] for line in result.stdout.splitlines()] == ["a", "b"]
    time.sleep(0.5)                         # past mq.ackTimeout: what was acked does not come back
    rest = dpmq("subscribe", "jobs", "--id", "nightly", "--pull", "--ack", "--count", "1",
                url=running.url)
    assert rest.returncode == 0, rest.stderr
    assert [json.loads(line)["MessageData"] for line in rest.stdout.splitlines()] == ["c"]
    refused = dpmq("subscribe", "jobs", "--pull", url=running.url)
    assert refused.returncode == 2 and "--pull needs --id or --group" in refused.stderr


def test_publish_with_a_ttl(make_broker):
    running = make_broker("memory")
    assert dpmq("publish", "prices", "101.5", "--ttl", "30", url=running.url).returncode == 0
    assert dpmq("publish", "prices", "-", "--ttl", "30", stdin="1\n2\n", url=running.url) \
        .returncode == 0
    refused = dpmq("publish", "prices", "x", "--ttl", "1e12", url=running.url)
    assert refused.returncode == 1 and "ttl" in refused.stderr, refused.stderr
