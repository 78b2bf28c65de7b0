"""WebSocket frames (RFC 6455, section 5.2): the ones DPMQ writes, and where the ones it reads end.

:data:`WEBSOCKET` is the WebSocket *framing*, what a consumer's
:class:`~dpmq.transport.connection.Connection` is given to put messages, replies and keep-alives
on its stream; delivery hands it payloads and never sees a frame. Every other transport offers
the same four things (``message``, ``reply``, ``keepalive``, ``closes``).

Two places need to know where frames end and nothing more: the framing, to see whether a write
carries a Close, and the inbound thread, to know whether what a consumer has sent so far ends
between two frames (see :class:`FrameEnds`).
"""

import json
import struct


def text_frame(data):
    """One unmasked, unfragmented text frame holding ``data`` (a server's frames are unmasked)."""
    length = len(data)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + data


class WebSocketFraming:
    """Messages and replies as text frames, a Ping to keep the connection alive. Stateless: one
    instance serves every connection that asked the same (:data:`WEBSOCKET`, or
    :data:`WEBSOCKET_NOTICES` for a consumer that connected with ``?notices=1``: the original
    format carries only messages)."""

    name = "websocket"
    #: A server's Ping: unmasked, no payload.
    keepalive = b"\x89\x00"

    message = staticmethod(text_frame)

    def __init__(self, notices=False):
        self.notices = notices

    @staticmethod
    def reply(obj):
        """An answer that is not a message (an error), as a JSON text frame."""
        return text_frame(json.dumps(obj).encode())

    def notice(self, obj):
        """A gap notice as a JSON text frame, for a consumer that asked for notices."""
        return self.reply(obj) if self.notices else None

    @staticmethod
    def closes(data):
        """Whether ``data``, written to the stream, carries a Close: nothing may follow it. The
        handshake's answer (HTTP) is written the same way and closes nothing."""
        if data.startswith(b"HTTP/"):
            return False
        pos = 0
        while (extent := frame_extent(data, pos)) is not None:
            if data[pos] & 0x0F == 0x8:
                return True
            pos += extent[0] + extent[1]
        return False


WEBSOCKET = WebSocketFraming()
WEBSOCKET_NOTICES = WebSocketFraming(notices=True)


def frame_extent(data, pos):
    """``(header length, payload length)`` of the frame that starts at ``data[pos]``, or None
    while its header is not complete."""
    size = len(data)
    if size - pos < 2:
        return None
    second = data[pos + 1]
    length, header = second & 0x7F, 2
    if length == 126:
        header = 4
    elif length == 127:
        header = 10
    if second & 0x80:               # masked: every client frame is
        header += 4
    if size - pos < header:
        return None
    if length == 126:
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
    elif length == 127:
        length = int.from_bytes(data[pos + 2:pos + 10], "big")
    return header, length


class FrameEnds:
    """Follows a consumer's frames across the chunks its socket gives, to tell whether the next
    byte starts a frame. Only then is a chunk that is exactly one Pong certainly one, and the
    inbound thread can take it without the full parser."""

    __slots__ = ("left", "head")

    def __init__(self):
        self.left = 0       # bytes of the current frame still to come
        self.head = b""     # the start of a frame whose header is not complete yet

    @property
    def at_start(self):
        return not self.left and not self.head

    def feed(self, data):
        pos = self.left
        if pos >= len(data):
            self.left = pos - len(data)
            return
        if self.head:                   # then nothing was left of a frame before it
            data, pos = self.head + data, 0
        self.left, self.head = 0, b""
        while pos < len(data):
            extent = frame_extent(data, pos)
            if extent is None:
                self.head = bytes(data[pos:])
                return
            pos += extent[0] + extent[1]
        self.left = pos - len(data)
