"""Store faults: a full store refuses with 503 and keeps what it accepted; it recovers on its own."""

import os
import subprocess
import sys

import pytest

from dpmq.errors import StoreError
from dpmq.views.health import StoreWrites

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


def _ready(running):
    reply = running.http.get(running.url + "/readyz")
    return reply.status_code, reply.json()["msg"]


def test_readyz_fails_while_publishes_fail_for_lack_of_room_and_passes_once_one_succeeds(
        make_broker):
    """SQLite can still rewrite the probe's row when it has no page to add: the probe alone said
    ready while every publish got 503."""
    running = make_broker("sqlite", mq={"publishTimeout": 0.5})
    assert _ready(running) == (200, "ok")
    pages = running.broker.engine._writer.execute("pragma page_count").fetchone()[0]
    _limit_pages(running, pages)
    for n in range(200):
        reply = running.http.post(running.url + "/ProducerSend",
                                  data={"topic": "t", "messageData": "y" * 4000 + str(n)})
        if reply.status_code == 503:
            break
    assert reply.status_code == 503
    for _ in range(5):          # not once but every time: the probe's own write still fits
        status, reason = _ready(running)
        assert status == 503, reason
        assert "last publish could not be stored" in reason and "disk" in reason, reason

    _limit_pages(running, 1_000_000_000)          # space again
    assert _ready(running)[0] == 503, "no write has succeeded yet"
    assert running.publish("t", "after")["code"] == 0
    assert _ready(running) == (200, "ok")


def test_a_failed_write_stops_counting_after_a_while_so_an_idle_broker_is_tried_again():
    """Taken out of a load balancer, a broker gets no publish that could succeed; after
    ``hold`` seconds readyz lets the next one try."""
    clock = [1000.0]
    writes = StoreWrites(hold=10.0, clock=lambda: clock[0])
    assert writes.problem() is None
    writes.failed(StoreError("the disk is full"))
    clock[0] += 9.9
    assert "the disk is full" in writes.problem() and "10 s ago" in writes.problem()
    writes.failed(StoreError("still full"))      # every failure holds it again
    clock[0] += 9.9
    assert "still full" in writes.problem()
    clock[0] += 0.2
    assert writes.problem() is None
    writes.failed(StoreError("full again"))
    writes.succeeded()
    assert writes.problem() is None


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


def test_readyz_fails_while_the_disk_has_no_room_for_a_message(make_broker, small_disk):
    running = make_broker("sqlite", path=small_disk, mq={"maxMessageBytes": 100_000})
    assert _ready(running) == (200, "ok")
    filler = small_disk / "filler"
    with open(filler, "wb") as handle:          # less room than one message of the largest size
        handle.write(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
                               - 50_000))
    status, reason = _ready(running)
    assert status == 503 and "bytes free" in reason and "mq.maxMessageBytes" in reason, reason
    assert str(small_disk) in reason
    filler.unlink()
    assert _ready(running) == (200, "ok")


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


@pytest.fixture
def failing_disk(tmp_path):
    """An ext4 file system of the test's own on a loop device, mounted ``errors=remount-ro``: the
    kernel's own error path can then turn it read-only under open files, as a failing disk does
    (needs root and loop devices, as CI has). Yields (folder, trigger) where ``trigger()`` does it."""
    image, folder = tmp_path / "disk.img", tmp_path / "disk"
    folder.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(24 << 20)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if device.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot set up a loop device for the disk-fault tests: {device.stderr}")
        pytest.skip(f"no loop device here: {device.stderr}")
    device = device.stdout.strip()
    subprocess.run(["mkfs.ext4", "-q", device], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "errors=remount-ro", device, str(folder)], check=True)
    trigger_file = f"/sys/fs/ext4/{os.path.basename(device)}/trigger_fs_error"

    def trigger():
        with open(trigger_file, "w") as handle:
            handle.write("DPMQ test: the disk fails")

    try:
        yield folder, device, trigger
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def _read_only(folder):
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return True
    return False


def test_a_disk_turning_read_only_under_a_running_broker_refuses_and_keeps_everything(
        make_broker, failing_disk):
    folder, device, trigger = failing_disk
    # FULL, the default (the suite runs NORMAL for speed): a commit is on the disk before code 0.
    # With NORMAL the commits since the last checkpoint may still be in the page cache when the
    # file system stops writing, and are lost with it, as the README says.
    running = make_broker("sqlite", path=folder, mq={"publishTimeout": 0.5},
                          storage={"synchronous": "FULL"})
    consumer = Collector(running.ws_url, "t", "c")
    wait_for(lambda: running.broker.members(), what="the consumer")
    accepted = [running.publish("t", f"before {n}")["msg"] for n in range(30)]
    consumer.wait_count(30)

    trigger()
    wait_for(lambda: _read_only(folder), what="the file system to turn read-only")
    refused = running.http.post(running.url + "/ProducerSend",
                                data={"topic": "t", "messageData": "during"})
    assert refused.status_code == 503 and refused.json()["code"] == -1, refused.text
    assert "SQLite store" in refused.json()["msg"] and refused.headers["Retry-After"]
    assert running.http.get(running.url + "/readyz").status_code == 503
    assert running.http.get(running.url + "/healthz").status_code == 200
    assert running.broker.members() and consumer.closed is None, "consumers stay connected"
    assert consumer.codes == accepted

    running.stop()                              # the operator stops DPMQ and repairs the disk
    subprocess.run(["umount", str(folder)], check=True)
    subprocess.run(["e2fsck", "-fy", device], capture_output=True)
    subprocess.run(["mount", device, str(folder)], check=True)
    again = make_broker("sqlite", path=folder)
    assert [r.code for r in again.broker.engine.read("t", 0, 100)] == accepted
    assert again.broker.engine._query("pragma integrity_check")[0][0] == "ok"
    assert again.publish("t", "after")["code"] == 0
