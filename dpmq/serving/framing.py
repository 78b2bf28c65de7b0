"""Where an HTTP/1.1 request ends in the bytes read so far, before any thread is given to it.

DPMQ's worker (:mod:`dpmq.serving.worker`) reads every request whole on its event loop and only
then hands it to a thread, so that a client sending slowly holds a socket and a few bytes, never a
thread.
For that it needs to know where a request ends: after its header block, plus a Content-Length body
or a chunked one. This module answers that and nothing more; gunicorn's parser still reads the
request proper. Framing that cannot be trusted (two different Content-Lengths, a chunk size that
is not hex, a chunk without its CRLF) is refused here with 400, so the application never reads a
body whose end is unknown.
"""

import re

#: The most bytes a header block may take (request line and fields together).
MAX_HEAD = 65536
#: The longest chunk-size line (size, extensions, CRLF).
MAX_CHUNK_LINE = 4096
#: Header fields kept (lowercased) for the worker's direct publishes; the rest only gunicorn reads.
KEPT = frozenset((b"content-type", b"content-length", b"authorization", b"origin", b"expect",
                  b"transfer-encoding", b"connection", b"traceparent"))
#: Request lines whose requests hold a thread for long without an Upgrade: an event-stream consumer
#: (``GET /ConsumersConn/…``; a plain GET there without ``Accept: text/event-stream`` is only
#: refused, on that thread too) and a long poll (``POST /ConsumerPull``).
_LONG_LIVED = (b"GET /ConsumersConn/", b"POST /ConsumerPull ", b"POST /ConsumerPull?")
_STREAM = b"GET /ConsumersConn/"
#: A header field DPMQ reads (the kept ones and Upgrade), any case: ``(name, value)``. Fields
#: without a colon, or with anything between the name and it, are gunicorn's to refuse.
_FIELD = re.compile(b"\r\n(" + b"|".join(sorted(KEPT | {b"upgrade"})) + b"):([^\r\n]*)",
                    re.IGNORECASE)


def _blank_line(data):
    """Where the header block ends (its blank line), or None while it has not arrived."""
    blank = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if data.find(b"\n\n", 0, MAX_HEAD if blank < 0 else blank) >= 0:
        raise FramingError(400, "the request's lines must end with CRLF (\\r\\n)")
    if blank < 0:
        if len(data) >= MAX_HEAD:
            raise FramingError(431, f"the request's header block is over {MAX_HEAD} bytes")
        return None
    return blank


class FramingError(Exception):
    """Raised when a request's framing is refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


class RequestFrame:
    """Follows one request through the bytes of its connection, read by read.

    :meth:`end` is called with everything read so far (the request starts at offset 0) each time
    more arrives; it returns the offset just past the request once it is whole, else None. What
    it learnt on earlier calls (the header block, the chunks already seen) is kept, so a body
    arriving in many small reads is not scanned again from the start.
    """

    __slots__ = ("max_body", "head_end", "length", "chunked", "upgrade", "line", "fields",
                 "repeated", "_pos", "_body")

    def __init__(self, max_body):
        self.max_body = max_body
        self.head_end = None    # offset of the body's first byte, once the header block is in
        self.length = 0         # Content-Length
        self.chunked = False
        self.upgrade = False    # a WebSocket handshake: served on a thread of its own
        self.line = b""         # the request line
        self.fields = {}        # the KEPT header fields, by lowercased name
        self.repeated = False   # one of them given twice
        self._pos = 0           # chunked: offset of the next chunk-size line
        self._body = 0          # chunked: body bytes seen so far

    @property
    def own_thread(self):
        """Whether the request is served on a thread of its own, not a pool thread: a WebSocket
        handshake, an event stream or a long poll, told apart by the request line (and
        Upgrade) alone. Each may wait for a long time, and the pool is for producers."""
        return self.upgrade or self.line.startswith(_LONG_LIVED)

    @property
    def stream(self):
        """Whether the connection is the consumer's to the end (a WebSocket or an event stream):
        closed after it, never kept alive for another request."""
        return self.upgrade or self.line.startswith(_STREAM)

    def end(self, data):
        if self.head_end is None:
            blank = _blank_line(data)
            if blank is None:
                return None
            self._read_head(bytes(data[:blank]))
            self.head_end = self._pos = blank + 4
        if self.chunked:
            return self._chunked_end(data)
        end = self.head_end + self.length
        return end if len(data) >= end else None

    def _read_head(self, head):
        lengths = []
        self.line = head.partition(b"\r\n")[0]
        fields = self.fields
        for name, value in _FIELD.findall(head):    # only the fields DPMQ looks at
            name, value = name.lower(), value.strip()
            if name in KEPT:
                self.repeated = self.repeated or name in fields
                fields[name] = value
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                self._take_transfer_encoding(value)
            elif name == b"upgrade":
                self.upgrade = self.upgrade or value.lower() == b"websocket"
        if lengths:
            self._take_length(lengths)

    def _take_transfer_encoding(self, value):
        if value.lower() != b"chunked" or self.chunked:
            raise FramingError(501, "DPMQ reads request bodies sent whole or with"
                                    " Transfer-Encoding: chunked alone, not"
                                    f" {value[:40].decode('latin-1')!r}")
        self.chunked = True

    def _take_length(self, lengths):
        if self.chunked:
            raise FramingError(400, "a request may not carry both Content-Length and"
                                    " Transfer-Encoding: chunked; send one")
        if len(lengths) > 1:
            raise FramingError(400, "the request has more than one Content-Length header")
        if not (lengths[0].isdigit() and len(lengths[0]) <= 18):
            raise FramingError(400, "Content-Length must be a whole number of bytes")
        self.length = int(lengths[0])
        if self.length > self.max_body:
            raise FramingError(413, f"the request body is larger than mq.maxBodyBytes"
                                    f" ({self.max_body} bytes)")

    def _chunked_end(self, data):
        pos = self._pos
        while True:
            line_end = data.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
            if line_end < 0:
                if len(data) - pos >= MAX_CHUNK_LINE:
                    raise FramingError(400, "a chunk-size line is too long")
                return None
            size_text = bytes(data[pos:line_end]).partition(b";")[0].strip()
            if not size_text or len(size_text) > 15 or \
                    size_text.strip(b"0123456789abcdefABCDEF"):
                raise FramingError(400, f"invalid chunk size {size_text[:20]!r}: chunk sizes are"
                                        " hexadecimal numbers")
            size = int(size_text, 16)
            if size == 0:
                return self._trailer_end(data, line_end + 2)
            self._body += size
            if self._body > self.max_body:
                raise FramingError(413, f"the request body is larger than mq.maxBodyBytes"
                                        f" ({self.max_body} bytes)")
            chunk_end = line_end + 2 + size
            if len(data) < chunk_end + 2:
                self._body -= size          # seen again, whole, on a later call
                return None
            if data[chunk_end:chunk_end + 2] != b"\r\n":
                raise FramingError(400, "a chunk is longer than its chunk size says")
            pos = self._pos = chunk_end + 2

    @staticmethod
    def _trailer_end(data, start):
        """The end of the trailer section that follows the last chunk: an empty line."""
        if data[start:start + 2] == b"\r\n":
            return start + 2
        blank = data.find(b"\r\n\r\n", start, start + MAX_HEAD)
        if blank < 0:
            if len(data) - start >= MAX_HEAD:
                raise FramingError(431, f"the request's trailers are over {MAX_HEAD} bytes")
            return None
        return blank + 4
