"""Publishes on a warm keep-alive connection, answered from the bytes the socket gave.

A producer publishing one message after another keeps its connection on a pool thread (see
:mod:`dpmq.worker`). For each request gunicorn then builds a Request, an environ and a Response in
Python: two thirds of the interpreter's time per publish, more than DPMQ's own work. When a whole
request is already in hand and is a plain publish, it is answered here instead: llhttp (through
httptools, the parser uvicorn uses) reads it, the publish fast path answers it, one ``sendall``
writes the reply. "Plain" is narrow on purpose: HTTP/1.1, keep-alive, ``POST /ProducerSend`` or
``/ProducerSendBatch``, a Content-Length body of a type the fast path reads, no Origin, Expect or
Transfer-Encoding, no header that matters given twice, nothing pipelined behind it. Anything else
(or a parse error) goes to gunicorn untouched: its bytes are put back in front of gunicorn's reader,
so there is one place that decides what a malformed or unusual request gets.
"""

import time
from email.utils import formatdate

import httptools
from werkzeug.http import HTTP_STATUS_CODES

from .fastpath import mimetype_of

#: Headers read here; any other is ignored, as the fast path would.
_WANTED = frozenset((b"content-type", b"content-length", b"authorization", b"origin", b"expect",
                     b"transfer-encoding"))
#: Present at all, the request is not plain: gunicorn and Flask deal with it.
_NOT_PLAIN = (b"origin", b"expect", b"transfer-encoding")


class _Request:
    """What llhttp tells of one request (the parser calls these methods by name)."""

    __slots__ = ("parser", "url", "headers", "body", "begun", "complete", "repeated", "plain")

    def __init__(self):
        self.parser = httptools.HttpRequestParser(self)
        self.plain = False
        self.url = b""
        self.headers = {}
        self.body = b""
        self.begun = 0
        self.complete = False
        self.repeated = False

    def on_message_begin(self):
        self.begun += 1

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        name = name.lower()
        if name in _WANTED:
            self.repeated = self.repeated or name in self.headers
            self.headers[name] = value

    def on_headers_complete(self):
        parser = self.parser        # asked now: once the message is complete, llhttp has reset
        self.plain = (parser.get_method() == b"POST" and parser.get_http_version() == "1.1"
                      and parser.should_keep_alive() and not self.repeated
                      and not any(name in self.headers for name in _NOT_PLAIN))

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        self.complete = True


class WarmPublish:
    """Serves plain publishes for one app's fast path; :meth:`serve` is called per request."""

    def __init__(self, fastpath):
        self.fastpath = fastpath
        self._date = (0, b"")

    def serve(self, sock, data, address):
        """Answer the request held in ``data``: True if the connection stays open, False if it
        must close, None if the request is not a plain publish (the caller gives it to gunicorn)."""
        request = _Request()
        try:
            request.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None                     # malformed, or an upgrade: gunicorn's to answer
        finally:
            request.parser = None           # no cycle left for the garbage collector
        if not (request.plain and request.complete and request.begun == 1):
            return None
        headers = request.headers
        fast = self.fastpath
        mimetype = mimetype_of(headers.get(b"content-type", b"").decode("latin-1"))
        length = headers.get(b"content-length", b"").decode("latin-1")
        answer = fast.route(request.url.decode("latin-1"), "POST", mimetype, length, None)
        if answer is None:
            return None
        status, body, extra = fast.respond(
            answer, mimetype, headers.get(b"authorization", b"").decode("latin-1"),
            lambda: request.body, address)
        head = [b"HTTP/1.1 %d %s\r\nServer: gunicorn\r\nDate: %s\r\nConnection: keep-alive\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                % (status, HTTP_STATUS_CODES[status].upper().encode(), self._now(), len(body))]
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in extra]
        sock.sendall(b"".join(head) + b"\r\n" + body)
        return True

    def _now(self):
        """The Date header's value, formatted once a second."""
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, formatdate(second, usegmt=True).encode())
        return self._date[1]
