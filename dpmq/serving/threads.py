"""What a thread does with a whole request: gunicorn and the application, or a direct publish.

The worker's event loop (:mod:`dpmq.serving.worker`) hands over only whole requests, so a thread
never waits for a slow client to finish sending, beyond the linger below. An HTTP request is served
on one of ``server.httpThreads`` pool threads; after the reply the thread waits a few milliseconds
for the connection's next request (a busy producer's arrives by then), reading it whole while its
bytes keep coming (a large body takes several reads), and serves it at once, unless other requests
wait for a thread; otherwise the connection goes back to the loop. A WebSocket handshake or an
event-stream consumer gets a thread of its own until it has joined (the route then gives it back,
see :class:`Detached`, and the broker's inbound thread watches the consumer), and so does a long
poll (``POST /ConsumerPull``) while it waits: a thousand waiting consumers never take the threads
producers need. After a long poll's reply its connection goes back to the loop like any other.

Everything goes through gunicorn's public pieces, as its own workers use them: ``RequestParser``
over the request's bytes, ``wsgi.create`` for the environ and the response, the ``pre_request`` and
``post_request`` hooks, the access log and ``max_requests``. One kind of request is answered
without them: see :meth:`RequestThreads._direct_answer`.
"""

import select
import threading
import time
from datetime import datetime
from email.utils import formatdate

from gunicorn import http
from gunicorn.http import wsgi
from werkzeug.http import HTTP_STATUS_CODES

from ..views.fastpath import mimetype_of
from .framing import FramingError

#: How long a pool thread waits for the next request of a keep-alive connection to come whole.
LINGER = 0.005
#: The most read from a socket at once.
READ = 65536

_GONE = object()


def _text(value):
    """A kept header field's value as str (latin-1, as HTTP has it), None when it was not given."""
    return None if value is None else value.decode("latin-1")


class RequestThreads:
    """The thread side of :class:`~dpmq.serving.worker.DPMQWorker` (a gunicorn ``Worker``):
    ``self.cfg``, ``self.wsgi``, ``self.log``, ``self.alive`` and ``self.nr`` are gunicorn's; the
    worker sets the limits and queues before it starts the threads."""

    def _pool_thread(self):
        poller = select.poll()      # poll, not select: descriptors may be numbered past 1023
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, request, frame = job
            try:
                self._serve_connection(conn, request, frame, poller)
            finally:
                with self._lock:
                    self._serving -= 1
                self._held_changed()

    def _serve_connection(self, conn, request, frame, poller):
        """Serve ``request``, then the connection's next ones while they come at once."""
        conn.sock.settimeout(self.request_timeout)     # a reply the client never reads: bounded
        while True:
            direct = self._direct and self._direct_answer(frame)
            served = self._publish(conn, request, frame, *direct) if direct else \
                self._serve(conn, request)
            if not served or not self.alive:
                conn.close()
                return
            try:
                taken = conn.take_request(self.max_body) if conn.buf else None
                if taken is None and not conn.buf and self._jobs.empty():
                    taken = self._linger(conn, poller)
            except FramingError as exc:
                self._refuse(conn, exc)
                return
            if taken is _GONE:
                conn.close()
                return
            if taken is None:
                break
            request, frame = taken
            if frame.own_thread:
                self._start_own_thread(conn, request, frame)
                return
        self._hand_back(conn)

    def _linger(self, conn, poller):
        """Keep a busy producer's next request on this thread, a large body included, so that it
        does not go back to the loop between its reads; but only for LINGER, and not once another
        request waits for a thread, so that a slow client never keeps one. Returns the request
        once whole; None leaves the connection to the loop (with what was read, if anything);
        _GONE means the client closed it between requests."""
        fd = conn.sock.fileno()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + LINGER
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    return None
                try:
                    data = conn.sock.recv(READ)
                except OSError:
                    data = b""
                if not data:        # mid-request, the loop reads the end again and answers 400
                    return None if conn.buf else _GONE
                conn.buf += data
                taken = conn.take_request(self.max_body)
                if taken is not None or not self._jobs.empty():
                    return taken
        finally:
            poller.unregister(fd)

    def _refuse(self, conn, exc):
        self.log.info("Invalid request from ip=%s: %s", conn.ip, exc)
        conn.refuse(exc.status, str(exc))

    # -- a direct publish ----------------------------------------------------------------------
    def _direct_answer(self, frame):
        """(what answers it, its media type) if the request is a plain publish, else None.

        A publish is the request a busy producer makes thousands of times a second, and building
        gunicorn's request, environ and response for it cost as much CPU as the rest of the
        publish. So a plain one (HTTP/1.1 keep-alive, ``POST /ProducerSend`` or
        ``/ProducerSendBatch``, a Content-Length body of a type the publish fast path reads, no
        Origin, Expect or Transfer-Encoding, no such header given twice) is answered from the
        framing already read, by the same :class:`~dpmq.views.fastpath.PublishFastPath` the WSGI
        application uses; anything else goes through gunicorn. Where an access log or a request
        hook is configured, every request goes through gunicorn, so that they see every one."""
        fields = frame.fields
        if frame.repeated or frame.chunked or b"origin" in fields or b"expect" in fields \
                or b"close" in fields.get(b"connection", b"").lower():
            return None
        method, _, rest = frame.line.partition(b" ")
        target, _, version = rest.rpartition(b" ")
        if method != b"POST" or version != b"HTTP/1.1":
            return None
        mimetype = mimetype_of(fields.get(b"content-type", b"").decode("latin-1"))
        answer = self._fastpath.route(target.decode("latin-1"), "POST", mimetype,
                                      fields.get(b"content-length", b"").decode("latin-1"), None)
        return (answer, mimetype) if answer else None

    def _publish(self, conn, request, frame, answer, mimetype):
        """Answer a plain publish (see :meth:`_direct_answer`); True if the connection stays."""
        status, body, extra = self._fastpath.respond(
            answer, mimetype, frame.fields.get(b"authorization", b"").decode("latin-1"),
            lambda: request[frame.head_end:], conn.ip, _text(frame.fields.get(b"traceparent")))
        self._count_request()
        keep = self.alive
        head = [b"HTTP/1.1 %d %s\r\nDate: %s\r\nConnection: %s\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n" % (status, HTTP_STATUS_CODES[status].upper().encode(),
                                                 self._date(), b"keep-alive" if keep else b"close",
                                                 len(body))]
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in extra]
        try:
            conn.sock.sendall(b"".join(head) + b"\r\n" + body)
        except OSError:
            return False
        return keep

    def _date(self):
        """The Date header's value, formatted once a second."""
        second = int(time.time())
        if self._dated[0] != second:
            self._dated = (second, formatdate(second, usegmt=True).encode())
        return self._dated[1]

    def _count_request(self):
        """gunicorn's ``max_requests``: the worker stops (and is replaced) after that many."""
        with self._lock:
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False

    # -- consumers -----------------------------------------------------------------------------
    def _start_own_thread(self, conn, request, frame):
        """Serve a consumer's request (``frame.own_thread``) on a thread of its own, within
        ``max_handshakes`` such threads."""
        with self._lock:
            full = self._consumers >= self.max_handshakes
            if not full:
                self._consumers += 1
        if full:
            conn.refuse(503, "too many consumers: the limit is server.maxConsumers; try again later")
            return
        if frame.stream:
            # What a WebSocket consumer sent right behind its handshake is the start of its
            # stream; an event stream's client has nothing to say.
            trailing = bytes(conn.buf) if frame.upgrade else b""
            conn.buf.clear()
            target, args, name = self._serve_consumer, (conn, request, trailing), "dpmq-consumer"
        else:
            target, args, name = self._serve_long_poll, (conn, request), "dpmq-pull"
        threading.Thread(target=target, args=args, name=name, daemon=True).start()

    def _serve_consumer(self, conn, request, trailing):
        """A WebSocket or an event stream, to its end; then the connection is closed. A route
        may end before its consumer does: it calls ``environ["dpmq.detach"]()`` and calls what
        that returns once the consumer has ended (see :class:`Detached`)."""
        detached = Detached(self, conn)
        try:
            conn.sock.settimeout(None)
            extra = {"dpmq.detach": detached.take}
            if trailing:
                extra["dpmq.trailing"] = trailing
            self._serve(conn, request, extra)
        finally:
            if not detached.taken:
                detached.end()

    def consumer_ended(self, conn):
        """A consumer's connection is over: closed, and counted out of ``max_handshakes``."""
        conn.close()
        with self._lock:
            self._consumers -= 1
        self._held_changed()

    def _serve_long_poll(self, conn, request):
        """A long poll: an ordinary request that may wait for its reply. Its connection then
        goes back to the loop, kept alive for the next request."""
        try:
            conn.sock.settimeout(self.request_timeout)     # for the reply, not for the wait
            served = self._serve(conn, request)
        finally:
            with self._lock:
                self._consumers -= 1
            self._held_changed()
        if served and self.alive:
            self._hand_back(conn)
        else:
            conn.close()

    # -- through gunicorn ----------------------------------------------------------------------
    def _serve(self, conn, request, extra_environ=None):
        """One whole request through gunicorn's parser and the application; True if the
        connection may serve another."""
        req = None
        try:
            req = next(http.RequestParser(self.cfg, iter([request]), conn.addr))
            return self._handle_request(conn, req, extra_environ)
        except (StopIteration, http.errors.NoMoreData):
            return False
        except OSError:
            return False            # the client went away
        except Exception as exc:  # noqa: BLE001 - gunicorn answers it (400 or 500) and logs it
            self.handle_error(req, conn.sock, conn.addr, exc)
            return False

    def _handle_request(self, conn, req, extra_environ=None):
        """gunicorn's sync worker's ``handle_request``, with keep-alive."""
        environ, resp = {}, None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.addr, conn.server, self.cfg)
            environ.update(extra_environ or ())
            self._count_request()
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except StopIteration:
            return False            # a WebSocket route ended: flask-sock's way of saying so
        except OSError:
            raise
        except Exception:
            if resp is not None and resp.headers_sent:
                self.log.exception("Error handling request")
                return False
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:  # noqa: BLE001 - a hook's failure must not take the reply down
                self.log.exception("Exception in post_request hook")


class Detached:
    """A consumer's connection whose route may return before the consumer ends, giving its
    thread back: the connection is then closed, and counted out, when :meth:`end` is called."""

    __slots__ = ("worker", "conn", "taken", "_ended")

    def __init__(self, worker, conn):
        self.worker, self.conn = worker, conn
        self.taken = self._ended = False

    def take(self):
        """The route keeps the connection past its return; returns what to call at its end."""
        self.taken = True
        return self.end

    def end(self):
        if not self._ended:
            self._ended = True
            self.worker.consumer_ended(self.conn)
