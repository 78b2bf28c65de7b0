"""One HTTP connection as the worker holds it: its socket and the bytes read but not yet served."""

import json
import re
import socket

from werkzeug.http import HTTP_STATUS_CODES

from .framing import RequestFrame

_EXPECT_LINE = re.compile(rb"(?im)^expect:[^\r\n]*\r\n")


class HttpConnection:
    """Owned by the event loop while it waits for a request, by one thread while that thread
    serves it; handed between them through queues, never used by two at once."""

    __slots__ = ("sock", "addr", "server", "buf", "frame", "deadline", "continued")

    def __init__(self, sock, addr, server):
        self.sock = sock
        self.addr = addr
        self.server = server        # the listener's address, for SERVER_NAME and SERVER_PORT
        self.buf = bytearray()      # read, not yet served
        self.frame = None           # the framing of the request at the start of buf, while partial
        self.deadline = 0.0
        self.continued = False      # "100 Continue" sent for the request being read

    @property
    def ip(self):
        return self.addr[0] if isinstance(self.addr, tuple) else self.addr

    def take_request(self, max_body):
        """(the whole request at the start of ``buf``, taken out of it, and its RequestFrame), or
        None while it is incomplete; raises FramingError for a request refused as it stands.

        A client that sent ``Expect: 100-continue`` waits for "100 Continue" before its body, so
        that is sent as soon as the header block is in; the request handed on no longer asks for
        it, or gunicorn would send a second one after the body."""
        if self.frame is None:
            self.frame = RequestFrame(max_body)
        frame = self.frame
        end = frame.end(self.buf)
        if end is None:
            if frame.head_end is not None and not self.continued and b"expect" in frame.fields:
                self.continued = True
                self.send_quietly(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        request = bytes(self.buf[:end])
        del self.buf[:end]
        if b"expect" in frame.fields:
            request = _EXPECT_LINE.sub(b"", request[:frame.head_end]) + request[frame.head_end:]
        self.frame, self.continued = None, False
        return request, frame

    def send_quietly(self, data):
        """Write what the socket takes now; a client that is gone is not an error here."""
        try:
            self.sock.send(data)
        except OSError:
            pass

    def refuse(self, status, reason):
        """Answer a request that will not be served, in DPMQ's error shape, then close."""
        body = b'{"code":-1,"msg":%s}\n' % json.dumps(reason).encode()
        self.send_quietly(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d"
                          b"\r\nConnection: close\r\n\r\n%s"
                          % (status, HTTP_STATUS_CODES[status].encode(), len(body), body))
        self.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
