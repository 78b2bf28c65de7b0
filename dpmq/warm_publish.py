"""Publishes on a warm keep-alive connection, answered from the bytes the socket gives.

A producer publishing one message after another keeps its connection on a pool thread (see
:mod:`dpmq.worker`). For each request gunicorn would build a Request, an environ and a Response in
Python: two thirds of the interpreter's time per publish, more than DPMQ's own work. Here llhttp
(through httptools, the parser uvicorn uses) reads the request instead; if its headers make it a
plain publish, the rest of its body is read, the publish fast path answers it and one ``sendall``
writes the reply. "Plain" is narrow on purpose: HTTP/1.1, keep-alive, ``POST /ProducerSend`` or
``/ProducerSendBatch``, a Content-Length body of a type the fast path reads and no larger than
``mq.maxBodyBytes``, no Origin, Expect or Transfer-Encoding, no header that matters given twice,
nothing pipelined behind it. Anything else (a parse error, a body that stalls) goes to gunicorn
untouched: the bytes read are put back in front of gunicorn's reader, so there is one place that
decides what a malformed or unusual request gets."""

import select
import time
from email.utils import formatdate

import httptools
from werkzeug.http import HTTP_STATUS_CODES

from .fastpath import mimetype_of

#: The most read from the socket at once.
READ = 65536
#: Headers read here; any other is ignored, as the fast path would.
_WANTED = frozenset((b"content-type", b"content-length", b"authorization", b"origin", b"expect",
                     b"transfer-encoding"))
#: Present at all, the request is not plain: gunicorn and Flask deal with it.
_NOT_PLAIN = (b"origin", b"expect", b"transfer-encoding")


class _Request:
    """What llhttp tells of one request (the parser calls these methods by name)."""

    __slots__ = ("parser", "warm", "url", "headers", "body", "begun", "complete", "fields", "odd",
                 "answer", "mimetype")

    def __init__(self, warm):
        self.parser = httptools.HttpRequestParser(self)
        self.warm = warm
        self.url = b""
        self.headers = {}
        self.body = []
        self.begun = 0
        self.complete = False
        self.fields = 0
        self.odd = False            # a header that matters given twice, too many, one too long
        self.answer = None          # what answers it, once the headers say it is a plain publish
        self.mimetype = None

    def on_message_begin(self):
        self.begun += 1

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.fields += 1
        if self.fields > self.warm.max_fields or len(name) + len(value) > self.warm.max_field_size:
            self.odd = True         # gunicorn refuses it: let it say so
        name = name.lower()
        if name in _WANTED:
            self.odd = self.odd or name in self.headers
            self.headers[name] = value

    def on_headers_complete(self):
        parser, headers = self.parser, self.headers     # asked now: llhttp resets at the end
        if not (parser.get_method() == b"POST" and parser.get_http_version() == "1.1"
                and parser.should_keep_alive() and not self.odd and self.begun == 1
                and not any(name in headers for name in _NOT_PLAIN)):
            return
        self.mimetype = mimetype_of(headers.get(b"content-type", b"").decode("latin-1"))
        length = headers.get(b"content-length", b"").decode("latin-1")
        self.answer = self.warm.fastpath.route(self.url.decode("latin-1"), "POST", self.mimetype,
                                               length, None)

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        self.complete = True


class WarmPublish:
    """Serves plain publishes for one app's fast path; :meth:`serve` is called per request."""

    def __init__(self, fastpath, body_wait=5.0, max_fields=100, max_field_size=8190):
        self.fastpath = fastpath
        self.body_wait = body_wait      # for the rest of a plain publish's body, then gunicorn's
        self.max_fields = max_fields    # gunicorn's limits: a request over them is refused there
        self.max_field_size = max_field_size
        self._date = (0, b"")

    def serve(self, sock, address):
        """Read the connection's next request and answer it if it is a plain publish. Returns
        (True or False: the connection stays open or must close, the bytes read), or (None, the
        bytes read) if it is not a plain publish: the caller gives those to gunicorn."""
        request, chunks = _Request(self), []
        try:
            while True:
                chunk = sock.recv(READ)
                if not chunk:
                    return False, b"".join(chunks)
                chunks.append(chunk)
                request.parser.feed_data(chunk)
                # Many clients write the headers and the body separately: wait for the body.
                if request.complete or request.answer is None or not self._more(sock):
                    break
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None, b"".join(chunks)   # malformed, or an upgrade: gunicorn's to answer
        finally:
            request.parser = None           # no cycle left for the garbage collector
        data = b"".join(chunks)
        if not (request.complete and request.answer and request.begun == 1):
            return None, data
        status, body, extra = self.fastpath.respond(
            request.answer, request.mimetype,
            request.headers.get(b"authorization", b"").decode("latin-1"), lambda: b"".join(request.body),
            address)
        head = [b"HTTP/1.1 %d %s\r\nServer: gunicorn\r\nDate: %s\r\nConnection: keep-alive\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                % (status, HTTP_STATUS_CODES[status].upper().encode(), self._now(), len(body))]
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in extra]
        sock.sendall(b"".join(head) + b"\r\n" + body)
        return True, data

    def _more(self, sock):
        readable, _, _ = select.select([sock], [], [], self.body_wait)
        return bool(readable)

    def _now(self):
        """The Date header's value, formatted once a second."""
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, formatdate(second, usegmt=True).encode())
        return self._date[1]
