"""dpmq bench, scaled down: its load generators count truly (nothing lost, duplicated, reordered)."""

import json
import os
import subprocess
import sys

from dpmq.bench.run import run_scenario, settle


def test_fanout_and_latency_scenarios_account_for_every_message(make_broker):
    running = make_broker("memory", mq={"messageChanBuffer": 1000})
    result = run_scenario("fanout", running.url, progress=lambda text: None, consumers=5,
                          messages=400)
    assert result["delivered"] == 2000 and result["accepted"] == 400
    assert (result["lost"], result["duplicated"], result["outOfOrder"]) == (0, 0, 0)
    assert result["deliveredPerSecond"] > 0 and result["publishPerSecond"] > 0
    assert "brokerCpuUsPerMessage" not in result        # no --pid: nothing to measure it by
    latency = run_scenario("latency", running.url, progress=lambda text: None, consumers=3,
                           messages=100, rate=200)
    assert latency["lost"] == 0 and 0 < latency["latencyP50Ms"] <= latency["latencyMaxMs"]


def test_batch_topics_and_idle_scenarios(make_broker):
    running = make_broker("memory", mq={"messageChanBuffer": 1000})
    batch = run_scenario("batch", running.url, progress=lambda text: None, messages=1000)
    assert batch["accepted"] == 1000 and batch["refused"] == 0
    topics = run_scenario("topics", running.url, progress=lambda text: None, topics=10,
                          consumers=10, messages=200)
    assert topics["delivered"] == 200 and topics["lost"] == 0
    idle = run_scenario("idle", running.url, pid=os.getpid(), progress=lambda text: None,
                        consumers=50, idle_seconds=0.5)
    assert idle["consumers"] == 50 and idle["rssPerConnectionKb"] is not None


def test_bench_command_starts_its_own_broker_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "dpmq.cli", "bench", "--scenario", "publish", "--engine",
               "memory", "--messages", "500", "--producers", "4", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "publishPerSecond" in result.stdout
    written = json.loads(out.read_text())
    (publish,) = written["results"]
    assert publish["accepted"] == 500 and publish["refused"] == 0
    assert publish["producers"] == 4
    # the broker it started is measured: accepting 500 messages costs it CPU and thread switches
    assert publish["brokerCpuUsPerMessage"] > 0 and publish["brokerSwitchesPerMessage"] > 0
    # and the disk under its store, the baseline of any durable engine's rates
    flush = written["diskFlush"]
    assert 0 < flush["medianMs"] <= flush["p90Ms"]
    assert f"a disk flush under its store takes {flush['medianMs']} ms" in result.stderr


MOST = 20     # settle gives up after this long: returning sooner means it saw the process idle


def _process(code):
    """A Python process running ``code``, then waiting on its stdin until killed; returned once
    it has started (it says so), so that the interpreter's start-up is not counted."""
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\n"
                             "import sys\nsys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_idle_measures_once_the_broker_has_stopped_working():
    """The idle window starts when the process has been quiet for a second, not while it is
    still busy (here: a process that computes for 2 s, then waits)."""
    busy = subprocess.Popen([sys.executable, "-c", "import sys, time\nend = time.monotonic() + 2\n"
                             "while time.monotonic() < end: pass\nsys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        waited = settle(busy.pid, most=MOST)
    finally:
        busy.kill()
        busy.wait()
    assert 1.5 <= waited < MOST, "settled while the process was computing, or never"
    quiet = _process("pass")
    try:
        assert settle(quiet.pid, most=MOST) < MOST, "an idle process was never taken as idle"
    finally:
        quiet.kill()
        quiet.wait()
