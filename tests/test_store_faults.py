"""Store faults: a full store refuses with 503 and keeps what it accepted; it recovers on its own."""

import os
import subprocess
import sys

import pytest

from helpers import Collector, wait_for


def _limit_pages(running, pages):
    """Make the SQLite file unable to grow, as a full disk would (SQLITE_FULL on commit)."""
    running.broker.engine._writer.execute(f"pragma max_page_count = {pages}")


def test_a_full_store_answers_503_keeps_what_it_had_and_recovers(make_broker):
    running = make_broker("sqlite", mq={"publishTimeout": 0.5})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    kept = running.publish_many("t", ["before the disk filled"])
    consumer.wait_count(1)
    pages = running.broker.engine._writer.execute("pragma page_count").fetchone()[0]
    _limit_pages(running, pages)
    refused = None
    for n in range(200):
        reply = running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": "y" * 4000 + str(n)})
        if reply.status_code != 200:
            refused = reply
            break
    assert refused is not None, "a full store must refuse"
    assert refused.status_code == 503 and refused.json()["code"] == -1
    assert "disk space" in refused.json()["msg"] and refused.headers["Retry-After"]
    assert running.broker.engine.read("t", 0, 1)[0].code == kept[0]

    _limit_pages(running, 1_000_000_000)          # space again
    reply = running.publish("t", "after recovery")
    assert reply["code"] == 0
    wait_for(lambda: "after recovery" in consumer.datas, what="delivery after recovery")
    assert running.http.get(running.url + "/readyz").status_code == 200
    assert consumer.datas.count("before the disk filled") == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs of the test's own, to fill up or make read-only (needs root, as CI has)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-fault tests: {mounted.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _remount(folder, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


def test_a_really_full_disk_refuses_with_503_and_recovers_when_space_returns(make_broker, small_disk):
    running = make_broker("sqlite", path=small_disk, mq={"publishTimeout": 0.5})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    filler = small_disk / "filler"
    accepted, refused = [], None
    with open(filler, "wb") as handle:          # leave the store a few hundred KB
        handle.write(b"\0" * (1536 * 1024))
    for n in range(400):
        reply = running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": f"{n}:" + "y" * 4000})
        if reply.status_code != 200:
            refused = reply
            break
        accepted.append(reply.json()["msg"])
    assert refused is not None and refused.status_code == 503, "a full disk must refuse"
    assert refused.json()["code"] == -1 and "disk space" in refused.json()["msg"]
    filler.unlink()                             # space again
    wait_for(lambda: running.publish("t", "after")["code"] == 0, timeout=10, what="recovery")
    wait_for(lambda: "after" in consumer.datas, what="delivery after recovery")
    assert set(accepted) <= set(consumer.codes) and consumer.datas[-1] == "after"


def test_serve_on_a_read_only_disk_stops_at_start_with_a_clear_message(small_disk):
    _remount(small_disk, "ro")
    try:
        env = dict(os.environ, DPMQ_STORAGE_PATH=str(small_disk / "dpmq.db"),
                   DPMQ_CONFIG=os.devnull)
        done = subprocess.run([sys.executable, "-m", "dpmq.cli", "serve"], env=env,
                              capture_output=True, text=True, timeout=30)
    finally:
        _remount(small_disk, "rw")
    assert done.returncode == 2, done.stderr
    assert "storage.path" in done.stderr or "writable" in done.stderr, done.stderr
