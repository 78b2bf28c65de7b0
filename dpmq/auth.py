"""Tokens and roles: who may publish, consume, and operate the broker.

Off by default. When on, every request names a token (``Authorization: Bearer <token>``, or
``?token=`` on the consumer WebSocket); a token has a role, ``producer``, ``consumer`` or ``admin``
(admin may do everything), and producer and consumer tokens may be limited to topic patterns. An
unknown or missing token is refused with 401 (WebSocket 4401), a known one without the role or topic
with 403 (4403). Tokens are compared in constant time, every one of them, so timing tells nothing.
"""

import fnmatch
import hmac
import logging

from .errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)


class Auth:
    def __init__(self, auth_settings):
        self.enabled = auth_settings.enabled
        self._tokens = [(t.token.encode(), t) for t in auth_settings.tokens]

    def identify(self, presented):
        """The token entry matching ``presented``, or None."""
        if not presented:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        found = None
        for secret, entry in self._tokens:
            if hmac.compare_digest(candidate, secret) and found is None:
                found = entry
        return found

    def require(self, presented, role, topic=None):
        """Raise Unauthorized or Forbidden unless ``presented`` may act as ``role`` on ``topic``."""
        if not self.enabled:
            return
        entry = self.identify(presented)
        if entry is None:
            raise Unauthorized("a valid token is required: send Authorization: Bearer <token>"
                               if presented is None else "this token is not valid")
        if entry.role == "admin":
            return
        if entry.role != role:
            raise Forbidden(f"a {entry.role} token cannot do this; it needs the {role} role")
        if topic is not None and entry.topics and \
                not any(fnmatch.fnmatchcase(topic, pattern) for pattern in entry.topics):
            raise Forbidden(f"this token may not use topic {topic!r}")


def bearer(request, allow_query=False):
    """The token a request presents: the Authorization header, or ``?token=`` if allowed."""
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None and allow_query:
        return request.args.get("token")
    return token


def bearer_token(header):
    """The token of an ``Authorization: Bearer <token>`` header's value, or None."""
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None
