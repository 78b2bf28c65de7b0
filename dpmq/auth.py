"""Tokens and roles: who may publish, consume, and operate the broker.

Off by default. When on, every request names a token (``Authorization: Bearer <token>``, or
``?token=`` on the consumer WebSocket); a token has a role, ``producer``, ``consumer`` or ``admin``
(admin may do everything), and producer and consumer tokens may be limited to topic patterns. An
unknown or missing token is refused with 401 (WebSocket 4401), a known one without the role or topic
with 403 (4403). Tokens are compared in constant time, every one of them, so timing tells nothing.

A token is also an identity: subscriptions belong to the identity that created them (SPEC section
3), so the store must name it across restarts. It is named by a hash of the token, never the token
itself: the store and its backups must not hold secrets. A JWT (``auth.jwt``, see
:mod:`dpmq.jwt_auth`, imported only when configured: PyJWT and cryptography take a tenth of a
second to import) is tried when a token is no static one and has a JWT's shape; its identity is
``jwt:<sub>``, the same for every token minted for that subject, and it carries the moment the
token stops being accepted, when the consumers that connected with it are closed (the broker's
:class:`~dpmq.token_expiry.Expiry`, reached as :attr:`Auth.expiry`).

The reserved topic of the broker's lifecycle events is refused here to every role but admin, so
that no path to it (a consumer's connection, a token frame, a pull, an ack) can skip the check.
"""

import fnmatch
import hashlib
import hmac
import logging
import re
from typing import NamedTuple

from .broker.events import EVENTS_TOPIC
from .errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)
#: header.payload.signature, each base64url; a JWS header always starts with '{"' ("eyJ")
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class Identity(NamedTuple):
    """Who is asking: ``id`` is stable and not secret (``token:<hash>``, ``jwt:<sub>``),
    ``consumers`` the glob patterns of the consumerIds and groups it may take over from their
    owners, ``expires`` when its token stops being accepted (a JWT's; None for a static token)."""

    id: str
    role: str
    consumers: tuple = ()
    expires: float = None

    def may_take(self, name):
        """Whether this identity may use consumerId or group ``name`` that another one owns."""
        return self.role == "admin" or any(fnmatch.fnmatchcase(name, p) for p in self.consumers)


def looks_like_jwt(token):
    """Whether ``token`` has a JWS's compact shape (three base64url parts)."""
    return bool(token) and _JWT_SHAPE.fullmatch(token) is not None


def token_id(token):
    """The stable, non-secret id of a static token: 128 bits of its SHA-256."""
    return "token:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class Auth:
    """The static tokens and the JWT verifier of one app, and ``expiry``, the timer that closes
    the consumers whose JWT expires (an :class:`~dpmq.token_expiry.Expiry` the broker owns and
    stops)."""

    def __init__(self, auth_settings, expiry):
        self.enabled = auth_settings.enabled
        self._tokens = [(t.token.encode("utf-8", "surrogateescape"), t,
                         Identity(token_id(t.token), t.role, tuple(t.consumers)))
                        for t in auth_settings.tokens]
        jwt_settings = getattr(auth_settings, "jwt", None)
        self.jwt = None
        if self.enabled and jwt_settings:
            from .jwt_auth import Verifier
            self.jwt = Verifier(jwt_settings)
        self.expiry = expiry

    def identify(self, presented):
        """The token entry matching ``presented``, or None."""
        found = self._find(presented)
        return found and found[0]

    def _find(self, presented):
        if not presented:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        found = None
        for secret, entry, identity in self._tokens:
            if hmac.compare_digest(candidate, secret) and found is None:
                found = (entry, identity)
        return found

    def _grant(self, presented):
        """``(identity, topics)`` of a static token or a valid JWT, ``topics`` the patterns of
        the topics it may use (None: every topic; empty: none); Unauthorized (Forbidden: a JWT
        without a role) otherwise."""
        found = self._find(presented)
        if found is not None:
            entry, identity = found
            return identity, entry.topics or None      # a static token lists none for all
        if presented is None:
            raise Unauthorized("a valid token is required: send Authorization: Bearer <token>")
        if not looks_like_jwt(presented):
            raise Unauthorized("this token is not valid")
        if self.jwt is None:
            raise Unauthorized("this token is not valid (a JWT, and auth.jwt is not configured)")
        grant = self.jwt.verify(presented)
        return Identity(grant.id, grant.role, grant.consumers, grant.expires), grant.topics

    def require(self, presented, role, topic=None):
        """Raise Unauthorized or Forbidden unless ``presented`` may act as ``role`` on ``topic``;
        returns its :class:`Identity`, or None when auth is off."""
        if not self.enabled:
            return None
        identity, topics = self._grant(presented)
        if identity.role == "admin":
            return identity
        if identity.role != role:
            raise Forbidden(f"a {identity.role} token cannot do this; it needs the {role} role")
        if topic == EVENTS_TOPIC:     # short enough for a WebSocket close reason (123 bytes)
            raise Forbidden(f"topic {EVENTS_TOPIC!r} is reserved for the broker's lifecycle events:"
                            " producers may not publish to it; use another topic"
                            if role == "producer" else f"topic {EVENTS_TOPIC!r} (the broker's"
                            " lifecycle events) is for admin tokens only")
        if topic is not None and topics is not None and \
                not any(fnmatch.fnmatchcase(topic, pattern) for pattern in topics):
            raise Forbidden(f"this token may not use topic {topic!r} (topic not allowed"
                            + ("" if topics else ": its topics list is empty") + ")")
        return identity


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
