"""DPMQ's gunicorn worker: requests are read whole before a thread is given to them.

gunicorn's gthread worker hands a connection to a pool thread as soon as it is readable, and the
thread then blocks until the request is complete: a client that sends half a request and waits
holds that thread for as long as it likes, and a few hundred such clients stop every producer,
consumer and health check. This worker (``worker_class``, a subclass of gunicorn's documented base
``Worker``) reads on one event-loop thread instead. Every connection not being served sits in one
selector (epoll where there is one: no limit on descriptor numbers) until a whole request is in
(:mod:`.framing` says where it ends); only then is it handed to a thread (:mod:`.threads`).

- A request must arrive whole within ``server.requestTimeout`` of its first byte (or of the
  connection's opening), or it is answered 408 and closed; an idle keep-alive connection is closed
  after gunicorn's ``keepalive`` seconds.
- At most ``server.maxConnections`` connections wait here; beyond that the one that has waited
  longest is closed to make room (idle ones first), so new clients always get in.
- With several workers, one that holds more connections than another leaves new ones to the
  others for a moment (:mod:`.spread`), so that a few busy connections do not all land on one.
- On a graceful stop, replies say ``Connection: close``, waiting connections are closed at once,
  and the worker returns as soon as the requests being served are answered.
"""

import collections
import os
import queue
import selectors
import socket
import threading
import time

from gunicorn.workers.base import Worker

from .connection import HttpConnection
from .framing import FramingError
from .spread import DEFER, Seat
from .threads import RequestThreads

#: How long the loop sleeps at most when no connection's time is up sooner: it then tells
#: gunicorn's arbiter that it is alive (which waits ``timeout``, 30 s as DPMQ sets it). An idle
#: broker wakes for nothing else.
HEARTBEAT = 5.0
#: The most read from a socket at once.
READ = 65536

_ACCEPT, _WAKE = object(), object()
_ENDED_EARLY = ("the request ended before it was whole (its body shorter than its Content-Length,"
                " or a chunk or the header block unfinished); send it whole")


def _hooked(cfg, name):
    """Whether the gunicorn hook ``name`` was configured (is not gunicorn's default)."""
    setting = cfg.settings[name]
    return setting.value is not setting.default


class DPMQWorker(RequestThreads, Worker):
    """A gunicorn worker for DPMQ; ``dpmq serve`` and ``gunicorn.conf.py`` select it."""

    def run(self):
        server = self.wsgi.extensions["dpmq"].settings.server
        self.request_timeout = server.requestTimeout
        self.max_connections = server.maxConnections
        self.max_handshakes = server.maxConsumers + server.httpThreads
        self.max_body = self.wsgi.config["MAX_CONTENT_LENGTH"]
        self._fastpath = self.wsgi.extensions["dpmq_fastpath"]
        self._direct = not (self.cfg.accesslog or _hooked(self.cfg, "pre_request")
                            or _hooked(self.cfg, "post_request"))
        self._dated = (0, b"")
        self._selector = selectors.DefaultSelector()
        self._reading = collections.OrderedDict()   # connections sending a request, oldest first
        self._idle = collections.OrderedDict()      # keep-alive connections between requests
        self._returned = collections.deque()        # handed back by the threads
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._serving = 0                           # requests on the pool threads, or queued
        self._consumers = 0                         # consumer and long-poll threads
        seat = getattr(self, "dpmq_seat", None)     # given by spread.hooks before the fork
        self._seat = Seat(*seat) if seat else None
        self._deferred = None                       # when accepting again after leaving some
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._selector.register(self.PIPE[0], selectors.EVENT_READ, _WAKE)  # signals wake it
        self._servers = {}
        for listener in self.sockets:
            listener.setblocking(False)
            self._servers[listener.fileno()] = listener.getsockname()
            self._selector.register(listener, selectors.EVENT_READ, _ACCEPT)
        threads = [threading.Thread(target=self._pool_thread, name=f"dpmq-http-{n}", daemon=True)
                   for n in range(server.httpThreads)]
        for thread in threads:
            thread.start()
        try:
            self._loop()
        finally:
            self._stop(threads)

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self):
        heartbeat = min(HEARTBEAT, self.timeout / 2) if self.timeout > 0 else HEARTBEAT
        while self.alive:
            self.notify()
            for key, _ in self._selector.select(self._until_due(heartbeat)):
                if key.data is _ACCEPT:
                    self._accept(key.fileobj)
                elif key.data is _WAKE:
                    self._drain(key.fileobj)
                else:
                    self._read(key.data)
            while self._returned:
                self._watch(self._returned.popleft())
            now = time.monotonic()
            self._expire(now)
            if self._deferred is not None and now >= self._deferred:
                self._accept_again()
            else:
                self._held_changed()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.alive = False

    def _accept(self, listener, deferred=False):
        """Take the connections waiting on ``listener``, but leave each to the other workers
        while one holds fewer; ``deferred``: the first was left to them already, take it."""
        server = self._servers[listener.fileno()]
        for _ in range(128):
            if self._seat is not None:
                self._held_changed()
                if not deferred and self._seat.ahead():
                    self._defer()
                    return
            deferred = False
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:          # out of descriptors, most likely: make room
                self.log.warning("cannot accept a connection: %s", exc)
                self._evict()
                return
            sock.setblocking(False)
            if len(self._reading) + len(self._idle) >= self.max_connections:
                self._evict()
            conn = HttpConnection(sock, addr, server)
            conn.deadline = time.monotonic() + self.request_timeout
            self._reading[conn] = None
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _held(self):
        """The connections this worker holds: waiting here, served, and consumers'."""
        return len(self._reading) + len(self._idle) + self._serving + self._consumers

    def _held_changed(self):
        """Put the connections held on the board. The loop calls it as it takes them and the
        threads as they let them go, so the other workers see a change at once, not at this
        loop's next turn (seconds away when nothing else happens); under the lock, so that a
        thread's count never overwrites a newer one."""
        if self._seat is not None:
            with self._lock:
                self._seat.update(self._held())

    def _defer(self):
        """Stop watching the listeners for :data:`~.spread.DEFER`: the other workers, woken for
        the same connection, take it meanwhile."""
        if self._deferred is not None:
            return
        for listener in self.sockets:
            self._selector.unregister(listener)
        self._deferred = time.monotonic() + DEFER

    def _accept_again(self):
        """Watch the listeners again, and take a connection the other workers left, if any;
        the next ones are dealt out as usual."""
        self._deferred = None
        for listener in self.sockets:
            self._selector.register(listener, selectors.EVENT_READ, _ACCEPT)
        for listener in self.sockets:
            if self._deferred is not None:      # deferred again: the listeners are unwatched
                return
            self._accept(listener, deferred=True)

    def _read(self, conn):
        try:
            data = conn.sock.recv(READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._unwatch(conn)
            if conn.buf.strip():      # the conn stopped sending mid-request
                self._refuse(conn, FramingError(400, _ENDED_EARLY))
            else:
                conn.close()
            return
        if not conn.buf and conn in self._idle:
            del self._idle[conn]
            conn.deadline = time.monotonic() + self.request_timeout
            self._reading[conn] = None
        conn.buf += data
        try:
            taken = conn.take_request(self.max_body)
        except FramingError as exc:
            self._unwatch(conn)
            self._refuse(conn, exc)
            return
        if taken is None:
            return
        self._unwatch(conn)
        request, frame = taken
        if frame.own_thread:
            self._start_own_thread(conn, request, frame)
        else:
            with self._lock:
                self._serving += 1
            self._jobs.put((conn, request, frame))

    def _watch(self, conn):
        """Take a connection back from a thread: it waits here for its next request."""
        if not self.alive:
            conn.close()
            return
        conn.sock.setblocking(False)
        now = time.monotonic()
        if conn.buf:
            conn.deadline = now + self.request_timeout
            self._reading[conn] = None
        else:
            conn.deadline = now + self.cfg.keepalive
            self._idle[conn] = None
        if len(self._reading) + len(self._idle) > self.max_connections:
            self._evict()
        try:
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (ValueError, OSError):
            self._unwatch(conn)
            conn.close()

    def _unwatch(self, conn):
        self._reading.pop(conn, None)
        self._idle.pop(conn, None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _until_due(self, longest):
        """Seconds until the first waiting connection's time is up, or accepting resumes, at
        most ``longest``."""
        now, wait = time.monotonic(), longest
        if self._deferred is not None:
            wait = min(wait, self._deferred - now)
        for waiting in (self._reading, self._idle):
            if waiting:
                wait = min(wait, next(iter(waiting)).deadline - now)
        return max(0.0, wait)

    def _expire(self, now):
        """Close the connections whose time is up: those are at the front of each list, as every
        deadline in one list is its entry time plus the same timeout."""
        for waiting in (self._reading, self._idle):
            while waiting:
                conn = next(iter(waiting))
                if conn.deadline > now:
                    break
                self._unwatch(conn)
                if conn.buf.strip():
                    self._refuse(conn, FramingError(408, f"no whole request within"
                                                           f" server.requestTimeout"
                                                           f" ({self.request_timeout:g} s)"))
                else:
                    conn.close()

    def _evict(self):
        """Make room for one more connection: close the idle one, else the half-sent request,
        that has waited longest."""
        waiting = self._idle or self._reading
        if waiting:
            conn = next(iter(waiting))
            self._unwatch(conn)
            conn.close()

    def _drain(self, fileobj):
        try:
            while os.read(fileobj if isinstance(fileobj, int) else fileobj.fileno(), 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wake(self):
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _hand_back(self, conn):
        """A thread is done with ``conn`` for now: the loop watches it again."""
        self._returned.append(conn)
        self._wake()

    # -- stopping ------------------------------------------------------------------------------
    def _stop(self, threads):
        """Stop accepting, close what waits, answer what is being served, end the threads."""
        if self._seat is not None:
            self._seat.leave()
        for listener in self.sockets:
            try:
                self._selector.unregister(listener)
            except (KeyError, ValueError):
                pass
        for waiting in (self._reading, self._idle):
            for conn in list(waiting):
                self._unwatch(conn)
                conn.close()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._serving:
                    break
            self._drain(self._wake_r)
            time.sleep(0.01)
        while self._returned:
            self._returned.popleft().close()
        for _ in threads:
            self._jobs.put(None)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
