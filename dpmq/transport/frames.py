"""WebSocket frame headers (RFC 6455, section 5.2), read without parsing what the frames carry.

Two places need to know where frames end and nothing more: a consumer's
:class:`~dpmq.transport.connection.Connection`, to see whether a write carries a Close, and the inbound
thread, to know whether what a consumer has sent so far ends between two frames (see
:class:`FrameEnds`).
"""


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
