"""The one exception tree of DPMQ.

Every error a user can see carries a message that says what to do about it, and the HTTP status the
producer API answers with.
"""


class DPMQError(Exception):
    """Base of every DPMQ error."""

    status = 500

    def headers(self):
        """HTTP headers the reply to this error carries."""
        return []


class ConfigError(DPMQError):
    """Raised when a configuration value is missing, of the wrong type or out of range; names the key."""


class BadRequest(DPMQError):
    """Raised when a producer or consumer sends input DPMQ cannot accept (missing field, bad topic)."""

    status = 400


class TooLarge(DPMQError):
    """Raised when a message or request body is over the configured limit."""

    status = 413


class RetryLater(DPMQError):
    """A refusal the producer may retry after ``retry_after`` seconds (the Retry-After header)."""

    def __init__(self, message, retry_after=1):
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self):
        return [("Retry-After", str(self.retry_after))]


class Unavailable(RetryLater):
    """Raised when the broker cannot accept a message now: buffer full, store down, shutting down.

    The producer may retry after ``retry_after`` seconds; nothing was stored.
    """

    status = 503


class StoreError(Unavailable):
    """Raised when the storage engine cannot read or write (disk full, read-only, database gone)."""


class TooManyRequests(RetryLater):
    """Raised when a producer publishes faster than ``mq.publishRate``; retry after ``retry_after``."""

    status = 429


class Refused(DPMQError):
    """Raised when a consumer connection is refused; ``close_code`` is the WebSocket close code,
    ``status`` the HTTP status of the same refusal to a consumer over HTTP (event stream, pull)."""

    close_code = 1008

    def __init__(self, message, close_code=None):
        super().__init__(message)
        if close_code is not None:
            self.close_code = close_code

    @property
    def status(self):
        return {CLOSE_DUPLICATE: 409, CLOSE_TRY_AGAIN: 503, CLOSE_GOING_AWAY: 503}.get(
            self.close_code, 400)

    def headers(self):
        return [("Retry-After", "1")] if self.status == 503 else []


#: WebSocket close codes DPMQ uses, by meaning.
CLOSE_BAD_INPUT = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
CLOSE_DUPLICATE = 4409


class Unauthorized(DPMQError):
    """Raised when a request carries no token, or one DPMQ does not know (auth on)."""

    status = 401
    close_code = 4401


class Forbidden(DPMQError):
    """Raised when a known token lacks the role, or the topic, the request needs."""

    status = 403
    close_code = 4403
