"""The gathering window: under load a reader takes what comes in rounds, not one at a time.

When messages have lately come fast enough to fill a window with several (:data:`GATHER`), the
reader opens one: it does not wake for each message but takes them all when the window closes. A
window's cost (a wake-up, and what the reader then does with each of its consumers or topics) is
the same for 2 messages or 30, so under load the cost per message falls as the rate rises, which
leaves the cores to the producers. Below that rate, after a pause, and in a short burst after a
pause, each message is taken at once: latency at moderate rates does not change.

Two readers use it: a delivery shard, which writes what a window gathered to each socket with one
send (its window is ``mq.writeCoalesce``), and the redis engine's listener, which reads what other
processes appended with one read per topic (:mod:`dpmq.storage.redis.feed`).
"""

import math

#: How many messages a gathering window must expect at the recent rate before one opens.
GATHER = 4
#: Over how many windows' time the rate that opens one is measured.
RECENT = 5


class Gathering:
    """When a reader gathers instead of taking each message. Not thread-safe: its reader's."""

    __slots__ = ("window", "until", "_last", "_recent")

    def __init__(self, window):
        self.window = window    # seconds; 0 never gathers
        self.until = 0.0        # until then, what comes does not wake the reader
        self._last = 0.0        # when messages last came in
        self._recent = 0.0      # how many came lately, decaying

    def arrived(self, count, now):
        """``count`` messages came in at ``now``: open a window if the recent rate fills one.

        The rate is a count that decays over ``RECENT`` windows, not the gap since the last
        messages: a producer that paused (a busy machine stops any process for a few
        milliseconds) sends what it held back in a burst, and a window opened for that burst
        would add its length to messages that are already late."""
        horizon = RECENT * self.window
        if horizon <= 0:
            return
        elapsed, self._last = now - self._last, now
        self._recent = self._recent * math.exp(-elapsed / horizon) + count
        if self._recent >= GATHER * RECENT:
            self.until = now + self.window
