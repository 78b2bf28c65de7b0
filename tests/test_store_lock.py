"""One broker per SQLite store: a second process or broker on the same file is refused at start."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from dpmq.errors import ConfigError
from dpmq.storage.sqlite.store_lock import StoreLock

from conftest import RunningBroker, settings_for
from helpers import Collector, ServedBroker, wait_for


def _serve_beside(store, folder):
    """Run ``dpmq serve`` with its own config and port on ``store``; returns (broker, exit code,
    stderr) once it exits (it must: the test fails on a timeout if it serves)."""
    folder.mkdir()
    second = ServedBroker(folder, storage={"path": store})
    env = dict(os.environ, DPMQ_CONFIG=str(second.config))
    done = subprocess.run([sys.executable, "-m", "dpmq.cli", "serve"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=30)
    return second, done.returncode, done.stderr


def test_a_second_dpmq_serve_on_the_same_store_exits_2_naming_the_file_and_the_holder(served,
                                                                                         tmp_path):
    first = served()
    consumer = Collector(first.ws_url, "t", "c")
    wait_for(lambda: requests.get(first.url + "/Console/GetConsumers").json()["data"],
             what="the consumer on the first broker")
    store = str(tmp_path / "dpmq.db")
    second, code, stderr = _serve_beside(store, tmp_path / "second")
    assert code == 2, stderr
    assert store in stderr and "already in use" in stderr
    holder = open(store + ".lock").read().split()[0]            # pid=<the first's worker>
    assert holder.startswith("pid=") and holder[4:] in stderr
    assert "storage.path" in stderr and "storage.engine redis" in stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(second.url + "/Console/Ping", timeout=1)
    # the first is untouched
    assert requests.post(first.url + "/ProducerSend", data={"topic": "t", "messageData": "still"},
                         timeout=5).json()["code"] == 0
    consumer.wait_count(1)
    consumer.close()


def test_the_store_is_free_again_once_its_broker_is_gone(served, tmp_path):
    first = served()
    first.kill(signal.SIGKILL)          # the OS lets the lock go with the process
    again = ServedBroker(tmp_path).start()
    try:
        assert requests.get(again.url + "/Console/Ping", timeout=5).status_code == 200
    finally:
        again.stop()


def test_two_brokers_in_one_process_on_one_file_the_second_is_refused(make_broker, tmp_path):
    first = make_broker("sqlite")
    with pytest.raises(ConfigError) as refused:
        RunningBroker(settings_for("sqlite", tmp_path))
    message = str(refused.value)
    assert str(tmp_path / "dpmq.db") in message and f"this process ({os.getpid()})" in message
    assert first.publish("t", "x")["code"] == 0
    first.stop()
    again = RunningBroker(settings_for("sqlite", tmp_path))        # closed: free again
    try:
        assert again.broker.engine.head("t") == 1
    finally:
        again.stop()


def test_a_symlink_to_the_store_meets_the_same_lock(make_broker, tmp_path):
    first = make_broker("sqlite")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "dpmq.db").symlink_to(tmp_path / "dpmq.db")
    with pytest.raises(ConfigError):
        RunningBroker(settings_for("sqlite", other))
    assert first.publish("t", "x")["code"] == 0


def test_a_gunicorn_sibling_waits_for_the_worker_it_replaces(tmp_path):
    """A graceful restart starts the new worker (same parent) before the old one has closed the
    store: it waits instead of refusing, and opens the store once the old one lets go."""
    store = str(tmp_path / "dpmq.db")
    old = StoreLock(store)
    old.acquire()
    with open(old.path, "w") as handle:        # as if a sibling worker of ours held it
        handle.write(f"pid=999999 parent={os.getppid()} since=2024-01-01T00:00:00\n")
    new = StoreLock(store)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="in use by process 999999"):
        new.acquire(sibling_wait=0.3)
    assert time.monotonic() - started >= 0.3
    threading.Timer(0.3, old.release).start()     # the old worker lets go while the new waits
    try:
        new.acquire(sibling_wait=5)
        assert open(new.path).read().startswith(f"pid={os.getpid()} ")
    finally:
        new.release()


def test_a_stranger_is_refused_at_once(tmp_path):
    store = str(tmp_path / "dpmq.db")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, %r)\n"
         "from dpmq.storage.sqlite.store_lock import StoreLock\n"
         "lock = StoreLock(%r); lock.acquire(); print('held', flush=True); time.sleep(30)"
         % (os.getcwd(), store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ConfigError) as refused:
            StoreLock(store).acquire(sibling_wait=60)
        assert time.monotonic() - started < 30, "it waited for a stranger as for a sibling"
        assert f"process {holder.pid} " in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
