"""The broker ``dpmq bench`` starts when it is given no ``--url``, and the disk under its store."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

#: How many flushes :func:`disk_flush` times.
FLUSHES = 200


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalBroker:
    """``dpmq serve`` on a free port and a temporary store, for the length of the run.

    ``workers`` gunicorn workers (more than one only with the redis engine); ``pid`` is the first
    worker's, :meth:`pids` every worker's now. ``env`` adds ``DPMQ_*`` settings."""

    def __init__(self, engine, consumers, workers=1, env=None):
        self.folder = tempfile.mkdtemp(prefix="dpmq-bench-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = f"dpmq-bench-{os.getpid()}-{self.port}"     # redis: keys of its own
        self.engine, self.workers = engine, workers
        env = dict(os.environ, DPMQ_SERVER_PORT=str(self.port), DPMQ_STORAGE_ENGINE=engine,
                   DPMQ_STORAGE_PATH=os.path.join(self.folder, "bench.db"),
                   DPMQ_STORAGE_PREFIX=self.prefix, DPMQ_SERVER_WORKERS=str(workers),
                   DPMQ_SERVER_MAXCONSUMERS=str(max(2000, consumers + 100)),
                   DPMQ_MQ_MESSAGECHANBUFFER="10000", DPMQ_LOG_LEVEL="WARNING",
                   DPMQ_CONFIG=os.path.join(self.folder, "none.yaml"), **(env or {}))
        open(env["DPMQ_CONFIG"], "w").close()
        self.proc = subprocess.Popen([sys.executable, "-m", "dpmq.cli", "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                if len(self._children()) >= workers:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("the benchmark broker did not start")
        self.pid = self.pids()[0]

    def _children(self):
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as handle:
                return [int(child) for child in handle.read().split()]
        except OSError:
            return []

    def pids(self):
        """Every worker process now (the serve process itself if it has none)."""
        return self._children() or [self.proc.pid]

    def stop(self):
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
        if self.engine == "redis":
            self._delete_keys()

    def _delete_keys(self):
        """Leave nothing of the run behind in the shared Redis."""
        import redis

        from .. import config
        settings = config.load(os.path.join(self.folder, "none.yaml"))    # as the broker had it
        client = redis.Redis.from_url(settings.storage.redisUrl)
        try:
            keys = list(client.scan_iter(match=f"{{{self.prefix}}}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start:start + 1000])
        finally:
            client.close()


def disk_flush(folder, count=FLUSHES):
    """What one durable write costs the disk under ``folder``: ``fdatasync`` of a 4 KB page
    rewritten in place, as a commit of the sqlite engine ends, in ms (median and p90).

    Every publish of a producer that waits for its reply waits for one such flush, so the
    durable engine's rates, and their ratios to servers that keep nothing, move with this
    figure from machine to machine: report it beside them."""
    handle, path = tempfile.mkstemp(dir=folder, prefix="dpmq-flush-")
    times = []
    try:
        os.write(handle, bytes(16 * 4096))
        os.fsync(handle)                # the file's blocks exist: what follows rewrites them
        page = b"x" * 4096
        for i in range(count):
            os.pwrite(handle, page, (i % 16) * 4096)
            start = time.perf_counter()
            os.fdatasync(handle)
            times.append(time.perf_counter() - start)
    finally:
        os.close(handle)
        os.unlink(path)
    times.sort()
    return {"medianMs": round(times[count // 2] * 1e3, 3),
            "p90Ms": round(times[count * 9 // 10] * 1e3, 3)}
