"""JWTs beside the static tokens: an app's own short-lived tokens, verified with PyJWT.

``auth.jwt`` names the algorithms DPMQ accepts and their keys: a ``secret`` for HS256, a PEM
``publicKey`` file or a ``jwks`` file (a JSON Web Key Set, its key chosen by the token's ``kid``)
for RS256 and ES256. A token's header names its algorithm, and that algorithm alone is verified
with the key configured for it, so that a public key can never be taken for an HMAC secret.

A token must have ``exp`` and ``sub``, and ``aud``/``iss`` when ``audience``/``issuer`` are set;
its ``exp`` may be at most ``maxLifetime`` seconds away (from now, and from its ``iat``).
``dpmq: {role, topics, consumers}`` means what a static token's role, topic and consumerId patterns
mean; ``topics`` and ``consumers``, when present, must be lists of strings, and an empty list grants
nothing (left out, ``topics`` means every topic). Every refusal says which of these failed, and
never repeats the token.

:class:`Verifier` is thread-safe: its keys are read once, and its small cache of verified tokens
(a producer sends the same token thousands of times a second) is guarded by a lock.
"""

import collections
import json
import threading
import time
from typing import NamedTuple

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import ConfigError, Forbidden, Unauthorized

ALGORITHMS = ("HS256", "RS256", "ES256")
ROLES = ("producer", "consumer", "admin")
_CACHE_SIZE = 1024
#: What leaving a pattern claim out of ``dpmq`` means.
_WITHOUT = {"topics": "every topic", "consumers": "only the subscriptions its sub made"}


class Grant(NamedTuple):
    """What a verified JWT allows: its role, topic patterns (None: the claim was left out, every
    topic; empty: none) and consumer patterns, and the identity id (``jwt:<sub>``) and the moment
    it stops being accepted (``exp`` + leeway)."""

    id: str
    role: str
    topics: tuple
    consumers: tuple
    expires: float


# -- keys ------------------------------------------------------------------------------------
def _read(path, name):
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path!r} ({exc.strerror or exc}); give the path of"
                          " a readable file") from None


def load_public_key(path, name="auth.jwt.publicKey"):
    """The public key in the PEM file at ``path``; ConfigError if it cannot be read or is not one."""
    data = _read(path, name)
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {path!r} is not a PEM public key (BEGIN PUBLIC KEY): {exc}")\
            from None


def load_jwks(path, name="auth.jwt.jwks"):
    """The keys of the JWKS file at ``path`` by ``kid`` (a lone key without one under None)."""
    data = _read(path, name)
    try:
        keys = json.loads(data)["keys"]
        if not isinstance(keys, list) or not keys:
            raise ValueError("its 'keys' list is empty")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{name}: {path!r} is not a JSON Web Key Set ({{\"keys\": [...]}}):"
                          f" {exc}") from None
    found = {}
    for index, entry in enumerate(keys):
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{name}: key {index} of {path!r} cannot be used: {exc}") from None
        if key.key_id is None and len(keys) > 1:
            raise ConfigError(f"{name}: key {index} of {path!r} has no kid; with several keys each"
                              " needs one, for tokens to name it")
        found[key.key_id] = key.key
    return found


# -- verification ----------------------------------------------------------------------------
class Verifier:
    """Verifies JWTs under one ``auth.jwt`` configuration (see the module's docstring)."""

    def __init__(self, settings, now=time.time):
        self.settings = settings
        self.now = now
        self._secret = settings.secret.encode() if settings.secret else None
        self._public_key = load_public_key(settings.publicKey) if settings.publicKey else None
        self._jwks = load_jwks(settings.jwks) if settings.jwks else {}
        self._cache = collections.OrderedDict()     # token -> Grant
        self._lock = threading.Lock()

    def verify(self, token):
        """The :class:`Grant` of a valid ``token``; Unauthorized (or Forbidden for a valid token
        without a usable ``dpmq`` claim) naming why not."""
        with self._lock:
            grant = self._cache.get(token)
            if grant is not None:
                self._cache.move_to_end(token)
        if grant is not None and grant.expires > self.now():
            return grant
        grant = self._verify(token)
        with self._lock:
            self._cache[token] = grant
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return grant

    def _verify(self, token):
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("the JWT cannot be decoded: it is not a valid JWT") from None
        algorithm, settings = header.get("alg"), self.settings
        if algorithm not in settings.algorithms:
            raise Unauthorized(f"the JWT's algorithm {algorithm!r} is not accepted; auth.jwt"
                               f" accepts {', '.join(settings.algorithms)}")
        key = self._key(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=settings.audience or None,
                issuer=settings.issuer or None, leeway=settings.leeway,
                options={"require": ["exp", "sub"], "verify_aud": bool(settings.audience)})
        except jwt.PyJWTError as exc:
            raise Unauthorized(_cause(exc, settings)) from None
        except (TypeError, ValueError):     # a key of another type than the algorithm's
            raise Unauthorized(f"the JWT's algorithm {algorithm} does not fit the configured key"
                               " (bad signature)") from None
        self._check_lifetime(claims)
        return self._grant(claims)

    def _check_lifetime(self, claims):
        """Refuse a token whose ``exp`` is further than ``maxLifetime`` from now or from its
        ``iat``: a leaked token must not stay good for years."""
        longest = self.settings.maxLifetime
        if not longest:
            return
        exp, iat = float(claims["exp"]), claims.get("iat")
        lifetime = exp - self.now()
        if lifetime > longest + self.settings.leeway:
            span = f"its exp is {lifetime:.0f}s away"
        elif isinstance(iat, (int, float)) and not isinstance(iat, bool) and exp - iat > longest:
            span = f"{exp - iat:.0f}s from its iat to its exp"
        else:
            return
        raise Unauthorized(f"the JWT lives too long: {span}, more than auth.jwt.maxLifetime"
                           f" ({longest:g}s) allows; mint tokens that expire sooner")

    def _key(self, algorithm, kid):
        if algorithm == "HS256":
            return self._secret
        if self._jwks:
            key = self._jwks.get(kid)
            if key is None and kid is None and len(self._jwks) == 1:
                key = next(iter(self._jwks.values()))
            if key is None:
                raise Unauthorized(f"the JWT's key id (kid) {kid!r} is not in auth.jwt.jwks;"
                                   " sign with a key the JWKS has")
            return key
        return self._public_key

    def _grant(self, claims):
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("the JWT's sub claim must be a non-empty string: it names who"
                               " connects")
        dpmq = claims.get("dpmq")
        role = dpmq.get("role") if isinstance(dpmq, dict) else None
        if role not in ROLES:
            raise Forbidden("the JWT has no role: its dpmq claim must hold role producer, consumer"
                            " or admin" if role is None else
                            f"the JWT's dpmq.role {role!r} is not producer, consumer or admin")
        topics, consumers = _patterns(dpmq, "topics"), _patterns(dpmq, "consumers")
        return Grant("jwt:" + sub, role, topics, tuple(consumers or ()),
                     float(claims["exp"]) + self.settings.leeway)


def _patterns(dpmq, field):
    """The glob patterns of claim ``dpmq.<field>`` as a tuple (empty: none), or None when it is
    left out; anything but a list of strings is refused, lest ``""`` or ``null`` grant all."""
    if field not in dpmq:
        return None
    value = dpmq[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Forbidden(f"the JWT's dpmq.{field} claim must be a list of strings (glob patterns),"
                        f" not {json.dumps(value)[:40]}; leave it out for"
                        f" {_WITHOUT[field]}, or give [] for none")
    return tuple(value)


def _cause(exc, settings):
    """What a PyJWT error means, said to the one who sent the token."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the JWT has expired (exp is past); get a fresh token"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the JWT's signature is not valid (bad signature): it was altered or signed with" \
               " another key"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        if exc.claim == "aud":
            return f"wrong audience: the JWT has no aud; it must be {settings.audience!r}"
        if exc.claim == "iss":
            return f"wrong issuer: the JWT has no iss; it must be {settings.issuer!r}"
        if exc.claim == "exp":
            return "the JWT has no exp claim: DPMQ accepts only tokens that expire"
        return f"the JWT has no {exc.claim} claim, which DPMQ requires"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"wrong audience: the JWT's aud is not {settings.audience!r}"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"wrong issuer: the JWT's iss is not {settings.issuer!r}"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the JWT is not valid yet (nbf or iat is in the future)"
    if isinstance(exc, jwt.InvalidKeyError):
        return "the JWT's algorithm does not fit the configured key (bad signature)"
    if isinstance(exc, jwt.DecodeError):
        return "the JWT cannot be decoded (bad signature or a malformed token)"
    return f"the JWT is not valid: {exc}"
