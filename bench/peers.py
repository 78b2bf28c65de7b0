"""The servers `bench/compare.py` measures DPMQ against, and how each is started and named.

Each server offers ``url``, ``pid`` (the process whose RSS and CPU are read), ``protocol`` (what
the load generator's consumers speak to it), ``prepare(scenario)`` and ``cleanup(scenario)``
(around each of its runs) and ``stop()``.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from dpmq.bench import rabbitmq
from dpmq.bench.run import LocalBroker

#: Started here, in their own process groups.
STARTED = ("flask-socketio", "node-ws", "node-ws-durable")
#: Already running, measured as they are: never started, stopped or reconfigured from here. The
#: same RabbitMQ twice: consumers' queues declared classic (its default), and quorum.
EXTERNAL = ("rabbitmq", "rabbitmq-quorum")
RABBITMQ_URL = "ws://guest:guest@127.0.0.1:15674/ws"
#: How many unacknowledged messages a consumer of a quorum queue may hold. A quorum queue's
#: consumers acknowledge (cumulatively, every half of this): with ``ack: auto`` its Web-STOMP
#: consumers stopped receiving partway through most fan-outs, with the rest of the messages
#: ready in their queues.
QUORUM_PREFETCH = 1000


def rabbitmq_url(url, name):
    """The URL of the peer ``name`` (one of :data:`EXTERNAL`) on the RabbitMQ at ``url``."""
    if name == "rabbitmq":
        return url
    parts = urllib.parse.urlsplit(url)
    query = {"prefetch": QUORUM_PREFETCH, **dict(urllib.parse.parse_qsl(parts.query)),
             "queue": "quorum"}
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url):
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


class Server:
    """What every measured server offers beside ``url`` and ``pid``."""

    protocol = "dpmq"
    pid = None

    def gone(self):
        """Why the server cannot be measured any more (its process exited), or None."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as handle:
                state = handle.read().rpartition(")")[2].split()[0]
        except OSError:
            state = "X"
        return f"its process (pid {self.pid}) has exited" if state in "XZ" else None

    def prepare(self, scenario, consumers):
        """Before each run of ``scenario`` with ``consumers`` connections; raises RuntimeError if
        the server cannot take them."""

    def cleanup(self, scenario):
        """After each run of ``scenario``, whether it succeeded or not."""

    def stop(self):
        """At the end of the session."""


class DPMQ(Server):
    """``dpmq serve`` on a temporary store (:class:`dpmq.bench.run.LocalBroker`)."""

    def __init__(self, engine, idle):
        self.broker = LocalBroker(engine, idle)
        self.url, self.pid, self.folder = self.broker.url, self.broker.pid, self.broker.folder

    def stop(self):
        self.broker.stop()


class Peer(Server):
    """A peer server in its own process group; ``FOLDER`` in its command is a temporary folder
    in ``beside`` (so on the disk of DPMQ's store), removed when it stops."""

    def __init__(self, command, cwd, worker_is_child, beside, protocol=None):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.protocol = protocol or self.protocol
        self.folder = (tempfile.mkdtemp(prefix="dpmq-peer-", dir=beside)
                       if "FOLDER" in command else None)
        command = [self.folder if part == "FOLDER" else part.replace("PORT", str(self.port))
                   for part in command]
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(self.url)
        self.pid = (_children(self.proc.pid) or [self.proc.pid])[0] if worker_is_child \
            else self.proc.pid

    def stop(self):
        os.killpg(self.proc.pid, 9)
        self.proc.wait(10)
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def start(name, args, here, beside):
    """Start the peer ``name`` (one of :data:`STARTED`)."""
    if name == "flask-socketio":
        return Peer([args.peer_python, "-m", "gunicorn", "-k", "gthread", "--threads",
                     str(args.idle + 200), "-w", "1", "-b", "127.0.0.1:PORT", "socketio_peer:app"],
                    here, True, beside, protocol="socketio")
    if name == "node-ws":
        return Peer(["node", "ws_ceiling.js", "PORT"], here, False, beside)
    return Peer(["node", "ws_ceiling.js", "PORT", "FOLDER"], here, False, beside)


class RabbitMQ(Server):
    """The RabbitMQ already running at ``url`` (its Web-STOMP URL: :mod:`dpmq.bench.rabbitmq`):
    durable fanout exchanges and a durable queue per consumer, AMQP producers with publisher
    confirms, Web-STOMP consumers. Its pid is the Erlang VM's (``beam.smp``), whose RSS and CPU
    include every plugin it runs, the management plugin among them."""

    protocol = "stomp"

    def __init__(self, url):
        self.url = url
        found = subprocess.run(["pgrep", "-f", "beam.smp.* rabbit"], capture_output=True,
                               text=True).stdout.split()
        self.pid = int(found[0]) if found else None

    @staticmethod
    def reachable(url):
        """Why the peer cannot be measured (a sentence), or None if it can."""
        try:
            import pika  # noqa: F401
        except ImportError:
            return "pika is not installed (pip install pika)"
        ends = rabbitmq.endpoints(url)
        for port, plugin in ((urllib.parse.urlsplit(ends.amqp).port, "AMQP"),
                             (ends.port, "rabbitmq_web_stomp"),
                             (urllib.parse.urlsplit(ends.management).port, "rabbitmq_management")):
            try:
                socket.create_connection((ends.host, port), timeout=2).close()
            except OSError:
                return f"nothing answers on {ends.host}:{port} ({plugin})"
        return None

    #: Sockets left to RabbitMQ beyond the consumers: producers, set-up, management, clients.
    SPARE_SOCKETS = 50

    def prepare(self, scenario, consumers):
        """Refuse more consumers than RabbitMQ has sockets for (past its limit the node stops:
        :func:`dpmq.bench.rabbitmq.sockets_free`); note what already exists of ``scenario``'s
        names (``<scenario>-...``, as dpmq.bench.run names its topics), so that :meth:`cleanup`
        deletes only this run's."""
        self.existing = ((), ())
        free = rabbitmq.sockets_free(self.url)
        if free is not None and consumers + self.SPARE_SOCKETS > free:
            raise RuntimeError(f"{consumers} consumers need more sockets than RabbitMQ has free "
                               f"({free}): raise its file-descriptor limit (ulimit -n, or "
                               "LimitNOFILE in its systemd unit) and restart it")
        self.existing = rabbitmq.names(self.url, f"{scenario}-")

    def cleanup(self, scenario):
        """Delete the queues and exchanges the run of ``scenario`` made: durable queues would keep
        their messages for ever."""
        rabbitmq.cleanup(self.url, f"{scenario}-", self.existing)
