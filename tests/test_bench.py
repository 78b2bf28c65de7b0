"""dpmq bench, scaled down: its load generators count truly (nothing lost, duplicated, reordered)."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from dpmq.bench.run import LocalBroker, run_scenario, settle

from helpers import require_redis

QUIET = dict(progress=lambda text: None)


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


def test_bench_command_spreads_consumers_over_the_topics_asked_for(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "dpmq.cli", "bench", "--scenario", "topics", "--engine",
               "memory", "--topics", "7", "--consumers", "14", "--messages", "140", "--json",
               str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (topics,) = json.loads(out.read_text())["results"]
    assert (topics["topics"], topics["consumers"], topics["accepted"]) == (7, 14, 140)
    assert (topics["delivered"], topics["lost"], topics["duplicated"]) == (280, 0, 0)


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


# The scenarios at scale, scaled down, against one `dpmq serve` of the bench's own (memory engine).

@pytest.fixture(scope="module")
def local():
    broker = LocalBroker("memory", 300)
    yield broker
    broker.stop()


def _accounted(result):
    assert (result["lost"], result["duplicated"], result["outOfOrder"]) == (0, 0, 0), result
    assert result["deliveredPerSecond"] > 0


def test_fanout_wide_measures_throughput_then_latency_on_the_same_connections(local):
    result = run_scenario("fanout-wide", local.url, pid=local.pid, consumers=200, messages=20,
                          rate=20, rate_seconds=1, per_process=100, **QUIET)
    _accounted(result)
    # 20 messages as fast as they go, then 20 at 20/s, each to 200 consumers in 2 processes
    assert result["delivered"] == 20 * 200 and result["rateDelivered"] == 20 * 200
    assert result["accepted"] == 20 and result["rateAccepted"] == 20
    assert 0 < result["latencyP50Ms"] <= result["latencyP99Ms"] <= result["latencyMaxMs"]
    assert result["brokerCpuUsPerMessage"] > 0 and 0 < result["rateConsumersCpuShare"] <= 1
    assert 0 < result["rateConsumersBusiestProcessCore"] <= 1.5


def test_topics_wide_and_large_account_for_every_message(local):
    topics = run_scenario("topics-wide", local.url, topics=20, consumers=100, messages=400,
                          per_process=60, **QUIET)
    _accounted(topics)
    assert topics["delivered"] == 400 * 5 and topics["topics"] == 20
    large = run_scenario("large", local.url, consumers=3, messages=20, **QUIET)
    _accounted(large)
    assert large["size"] == 65536 and large["delivered"] == 60
    assert large["deliveredMBPerSecond"] == pytest.approx(
        large["deliveredPerSecond"] * 65536 / 1e6, rel=0.01)


def test_slow_mix_reads_slowly_while_publishing_then_drains(local):
    result = run_scenario("slow-mix", local.url, consumers=10, slow=3, messages=100, rate=100,
                          **QUIET)
    _accounted(result)
    assert result["delivered"] == 100 * 10
    # the slow consumers (10 frames/s each) had read a fraction when publishing ended
    assert result["slowReceivedWhilePublishing"] < result["slowExpectedWhilePublishing"] == 300
    for key in ("latencyP50Ms", "latencyP99Ms", "baselineP99Ms", "p99Ratio"):
        assert result[key] > 0, key


def test_soak_samples_the_broker_at_half_the_measured_capacity(local):
    result = run_scenario("soak", local.url, pid=local.pid, consumers=5, capacity_messages=300,
                          soak_minutes=0.05, sample_seconds=1, **QUIET)
    _accounted(result)
    assert result["capacityPerSecond"] > 0
    assert result["rate"] == pytest.approx(result["capacityPerSecond"] / 2, abs=0.1)
    assert len(result["samples"]) == 3
    for sample in result["samples"]:
        assert sample["rssKb"] > 0 and sample["threads"] > 0 and sample["fds"] > 0
    assert result["rssRatio"] > 0 and result["flat"] in (True, False)
    assert result["flatTolerance"] > 0


def test_workers_compares_one_redis_worker_with_two():
    require_redis()
    result = run_scenario("workers", None, consumers=6, messages=200, workers=2, **QUIET)
    assert (result["lost"], result["duplicated"], result["outOfOrder"]) == (0, 0, 0), result
    for count in ("1", "2"):
        fanout = result["runs"][count]["fanout"]
        assert fanout["delivered"] == 200 * 6 and fanout["brokerCpuUsPerMessage"] > 0
        assert 0 < fanout["loadCpuShare"] <= 1 and 0 < fanout["brokerCpuShare"] <= 1
        # the whole machine's busy share holds the broker's and the load's (and Redis's)
        assert fanout["machineBusyShare"] <= 1
        assert fanout["machineBusyShare"] >= fanout["brokerCpuShare"] + fanout["loadCpuShare"] - 0.1
        assert result["runs"][count]["publish"]["accepted"] == 200
    assert result["publishRatio"] > 0 and result["fanoutRatio"] > 0
    assert result["deliveredPerSecond"] == result["deliveredPerSecondW2"]


def test_bench_command_runs_a_short_soak_at_a_given_rate(tmp_path):
    out = tmp_path / "soak.json"
    command = [sys.executable, "-m", "dpmq.cli", "bench", "--scenario", "soak", "--engine",
               "memory", "--rate", "40", "--soak-minutes", "0.05", "--sample-seconds", "1",
               "--consumers", "3", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (soak,) = json.loads(out.read_text())["results"]
    assert soak["rate"] == 40 and soak["consumers"] == 3 and soak["capacityPerSecond"] is None
    assert soak["accepted"] == 120 and soak["delivered"] == 360 and len(soak["samples"]) == 3


def test_offer_cost_measures_a_shard_writing_to_caught_up_consumers():
    """bench/offer_cost.py drives a delivery shard directly: it must keep up with it."""
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "offer_cost.py")
    result = subprocess.run([sys.executable, script, "--consumers", "20", "--messages", "3"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "20 consumers, 3 messages: a bare send" in result.stdout


def test_compare_reports_a_server_that_died_and_goes_on(capsys):
    """bench/compare.py: a server whose process exits mid-session fails its runs, said and kept
    in the figures, and the session goes on with the next run."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    try:
        import compare
        import peers
    finally:
        sys.path.pop(0)
    server = peers.DPMQ("memory", 10)
    try:
        os.kill(server.pid, 9)
        args = argparse.Namespace(idle=10, idle_seconds=1, producers=None, messages=50, topics=None,
                                  consumers=2)
        result = compare._one("dpmq-memory", server, "fanout", args)
    finally:
        server.stop()
    assert result == {"error": f"its process (pid {server.pid}) has exited"}
    compare._table({"dpmq-memory": {"fanout": [result]}})
    assert f"dpmq-memory, fanout failed: its process (pid {server.pid}) has exited" in (
        capsys.readouterr().out)


_BURNER = """
import threading, time
def burn():
    while time.thread_time() < 0.05:
        pass
worker = threading.Thread(target=burn)
worker.start()
worker.join()
print("burnt", flush=True)
time.sleep(30)
"""


def test_cpu_seconds_counts_ended_threads_finer_than_clock_ticks():
    from dpmq.bench import probes
    child = subprocess.Popen([sys.executable, "-c", _BURNER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "burnt\n"
        spent, ticks = probes.cpu_seconds(child.pid), probes.tick_seconds(child.pid)
        # the thread that burnt 50 ms has ended, and still counts; ticks are whole 10 ms
        assert spent >= 0.05 and abs(spent - ticks) < 0.02
        assert spent != round(spent, 2)
    finally:
        child.kill()
        child.wait()
    with pytest.raises(OSError):
        probes.cpu_seconds(child.pid)
