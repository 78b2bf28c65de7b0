"""Frame boundaries in a consumer's byte stream (dpmq.transport.frames): wherever the stream is cut into
chunks, FrameEnds says after each chunk whether the next byte starts a frame."""

import random

from wsproto.frame_protocol import FrameProtocol

from dpmq.transport.frames import FrameEnds, frame_extent

SIZES = [0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000]


def text(size):
    """A masked text frame as a browser sends it, built by wsproto's own encoder."""
    return bytes(FrameProtocol(client=True, extensions=[]).send_data("x" * size))


def pong():
    return bytes(FrameProtocol(client=True, extensions=[]).pong())


def stream_of(rng, count):
    frames = []
    for _ in range(count):
        frames.append(pong() if rng.random() < 0.3 else text(rng.choice(SIZES)))
    return frames


def test_the_extent_of_every_size_of_frame_and_none_while_the_header_is_short():
    for size in SIZES:
        data = text(size)
        header = 2 + 4 + (0 if size < 126 else 2 if size < 65536 else 8)   # + the mask
        assert frame_extent(data, 0) == (header, size)
        for cut in range(header):
            assert frame_extent(data[:cut], 0) is None
    answer = pong()
    assert answer[:2] == b"\x8a\x80" and len(answer) == 6
    assert frame_extent(b"..." + answer, 3) == (6, 0)


def test_after_any_chunk_the_tracker_knows_whether_a_frame_starts_next():
    rng = random.Random(7)
    for _ in range(200):
        frames = stream_of(rng, rng.randint(1, 6))
        stream = b"".join(frames)
        starts, pos = {0}, 0
        for frame in frames:
            pos += len(frame)
            starts.add(pos)
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 12))))
        ends, previous = FrameEnds(), 0
        for cut in cuts + [len(stream)]:
            ends.feed(stream[previous:cut])
            assert ends.at_start == (cut in starts), (cut, sorted(starts))
            previous = cut


def test_a_header_cut_anywhere_and_a_stream_fed_a_byte_at_a_time():
    frames = [text(70000), pong(), text(200)]
    stream = b"".join(frames)
    boundaries = {len(frames[0]), len(frames[0]) + 6, len(stream)}
    ends = FrameEnds()
    for pos in range(len(stream)):
        ends.feed(stream[pos:pos + 1])
        assert ends.at_start == (pos + 1 in boundaries)
