"""The publish rate limit: a token bucket per producer (its token with auth on, else its address).

Each producer may publish ``mq.publishRate`` messages a second on average, in bursts of up to
``mq.publishBurst``; a batch takes one unit per message. Over the limit, the request is refused
with 429 and ``Retry-After`` before anything is stored. The buckets live in one process: with
several processes on Redis, each enforces the limit for the requests it serves.
"""

import threading
import time

from .errors import TooLarge, TooManyRequests

MAX_BUCKETS = 100_000       # producers remembered; full (idle) buckets are forgotten first


class RateLimiter:
    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets = {}          # key -> [tokens, last refill (monotonic)]
        self._lock = threading.Lock()

    def take(self, key, count, now=None):
        """Spend ``count`` units of ``key``'s bucket, or raise TooManyRequests saying when to retry."""
        if not self.rate:
            return
        if count > self.burst:
            raise TooLarge(f"a batch of {count} messages is larger than a whole burst"
                           f" (mq.publishBurst={self.burst}); send smaller batches")
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._forget_full(now)
                bucket = self._buckets[key] = [float(self.burst), now]
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if count > tokens:
                bucket[0] = tokens
                wait = (count - tokens) / self.rate
                raise TooManyRequests(
                    f"publish rate limit: {self.rate:g} messages a second, bursts of {self.burst}"
                    f" (mq.publishRate, mq.publishBurst); retry in {wait:.2f} s",
                    retry_after=max(1, int(wait + 0.999)))
            bucket[0] = tokens - count

    def _forget_full(self, now):
        full = [key for key, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for key in full or list(self._buckets)[:len(self._buckets) // 2]:
            del self._buckets[key]
