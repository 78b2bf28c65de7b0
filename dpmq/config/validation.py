"""Validation: a nested mapping becomes a frozen :class:`~dpmq.config.schema.Settings`, or one
:class:`ConfigError` that lists every problem found.

Every problem is collected (unknown sections and keys with the nearest known name, bad values, the
rules that tie keys together) and reported at once, so that fixing a file takes one round, not one
per key. A value that came from the environment is reported under the variable's name.
"""

import dataclasses
import difflib
import fnmatch
import json
import urllib.parse

from ..errors import ConfigError
from .schema import (
    ENGINES,
    EVENT_TYPES,
    JWT_ALGORITHMS,
    JWT_MIN_SECRET,
    JWT_SCHEMA,
    LEVELS,
    ROLES,
    SCHEMA,
    SECTION_CLASSES,
    SYNCHRONOUS,
    JWTSettings,
    Settings,
    Token,
    Webhook,
    parse_token_list,
)


def build(data, source="(given)"):
    """Validate a nested mapping into :class:`Settings`; unknown keys and bad values raise ConfigError."""
    return validate(data, source, {}, [])


def validate(data, source, origins, problems, where=None):
    """Settings from ``data``, or one ConfigError listing ``problems`` and every problem found here.

    ``origins`` maps (section, key) to the environment variable a value came from, so that a bad
    value names the variable to fix rather than a key the file may not even have. ``where`` says
    what was read, for the report.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{source}: the configuration must be a mapping of sections, got"
                        f" {type(data).__name__}")
        data = {}
    problems.extend(_unknown_section(name) for name in data if name not in SCHEMA)
    sections = {}
    for section in SCHEMA:
        built = _validate_section(section, data.get(section) or {}, origins, problems)
        if built is not None:
            sections[section] = built
    problems.extend(_check_together(sections, data))
    if problems:
        raise ConfigError(report(problems, where or f"the configuration {source}"))
    return Settings(source=source, **sections)


def _validate_section(section, given, origins, problems):
    """One section's settings object, or None (its problems added) when a key of it is bad."""
    keys = SCHEMA[section]
    if not isinstance(given, dict):
        problems.append(f"{section} must be a mapping of keys, got {given!r}")
        return None
    problems.extend(_unknown_key(section, key) for key in given if key not in keys)
    values = {}
    for key, spec in keys.items():
        name = f"{section}.{key}"
        if (section, key) in origins:
            name += f" (from {origins[section, key]})"
        try:
            values[key] = _coerce(section, key, given.get(key, spec[0]), name)
            _check_choice(section, key, values[key], name)
        except ConfigError as exc:
            problems.append(str(exc))
    return SECTION_CLASSES[section](**values) if len(values) == len(keys) else None


def report(problems, where):
    """One problem as its own line; several as a list under what was read."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in {where}:\n" + \
        "\n".join(f"  - {problem}" for problem in problems)


# -- values ----------------------------------------------------------------------------------
def _coerce(section, key, value, name, schema=SCHEMA):
    default, kind, low, high = schema[section][key]
    if kind == "jwt":
        return _coerce_jwt(name, value)
    if kind is bool:
        return _coerce_bool(name, value)
    if kind is list:
        return _coerce_list(name, value)
    if kind == "tokens":
        return _coerce_tokens(name, value)
    if kind == "webhooks":
        return _coerce_webhooks(name, value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        number = kind(value) if kind is float else int(str(value), 10) if isinstance(value, str) \
            else value
    except ValueError:
        raise ConfigError(f"{name} must be {'a whole number' if kind is int else 'a number'},"
                          f" got {value!r}") from None
    if kind is int and number != int(number):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    number = kind(number)
    if low is not None and number < low or high is not None and number > high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value!r}")
    return number


def _coerce_bool(name, value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _coerce_list(name, value):
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    return tuple(value)


def _coerce_tokens(name, value):
    if isinstance(value, str):
        value = parse_token_list(value, name)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of {{token, role, topics}} entries")
    tokens = []
    for index, entry in enumerate(value):
        if isinstance(entry, Token):
            entry = dataclasses.asdict(entry)
        where = f"{name}[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"token", "role", "topics", "consumers"}:
            raise ConfigError(f"{where} must be a mapping with token, role and optional topics and"
                              " consumers")
        token, role = entry.get("token"), entry.get("role")
        if not isinstance(token, str) or len(token) < 8:
            raise ConfigError(f"{where}.token must be a string of at least 8 characters")
        if role not in ROLES:
            raise ConfigError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        tokens.append(Token(token, role, _coerce_list(f"{where}.topics", entry.get("topics") or []),
                            _coerce_list(f"{where}.consumers", entry.get("consumers") or [])))
    return tuple(tokens)


def _coerce_jwt(name, value):
    """``auth.jwt``: None (no JWTs), or a mapping of :data:`JWT_SCHEMA`'s keys whose key files
    are read now, so that a missing or bad one stops start-up rather than every token."""
    if value is None:
        return None
    if isinstance(value, JWTSettings):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping with algorithms and secret, publicKey or jwks")
    unknown = [key for key in value if key not in JWT_SCHEMA]
    if unknown:
        near = nearest(str(unknown[0]), JWT_SCHEMA)
        raise ConfigError(f"unknown key {name}.{unknown[0]}" + (
            f": did you mean {name}.{near}?" if near else
            f"; the keys of {name} are {', '.join(JWT_SCHEMA)}"))
    jwt = JWTSettings(**{key: _coerce("jwt", key, value.get(key, spec[0]), f"{name}.{key}",
                                      {"jwt": JWT_SCHEMA})
                         for key, spec in JWT_SCHEMA.items()})
    algorithms = jwt.algorithms or (("HS256",) if jwt.secret else ()) + (
        ("RS256", "ES256") if jwt.publicKey or jwt.jwks else ())
    bad = [a for a in algorithms if a not in JWT_ALGORITHMS]
    if bad:
        raise ConfigError(f"{name}.algorithms: {bad[0]!r} is not one of {', '.join(JWT_ALGORITHMS)}")
    _check_jwt_keys(name, jwt, algorithms)
    return dataclasses.replace(jwt, algorithms=tuple(algorithms))


def _check_jwt_keys(name, jwt, algorithms):
    """Each algorithm of ``auth.jwt`` has its key, and the key files can be read."""
    if not (jwt.secret or jwt.publicKey or jwt.jwks):
        raise ConfigError(f"{name} has no key: give secret (HS256; or DPMQ_AUTH_JWT_SECRET),"
                          " publicKey (a PEM file) or jwks (a JWKS file) for RS256 and ES256")
    if "HS256" in algorithms and not jwt.secret:
        raise ConfigError(f"{name}.algorithms has HS256 but {name}.secret is not set; give the"
                          " secret (or DPMQ_AUTH_JWT_SECRET), or drop HS256")
    if jwt.secret and len(jwt.secret.encode()) < JWT_MIN_SECRET:
        raise ConfigError(f"{name}.secret must be at least {JWT_MIN_SECRET} bytes for HS256")
    asymmetric = [a for a in algorithms if a != "HS256"]
    if asymmetric and not (jwt.publicKey or jwt.jwks):
        raise ConfigError(f"{name}.algorithms has {asymmetric[0]} but neither {name}.publicKey"
                          f" nor {name}.jwks is set; give one, or drop {asymmetric[0]}")
    if jwt.publicKey and jwt.jwks:
        raise ConfigError(f"give {name}.publicKey or {name}.jwks, not both")
    from ..jwt_auth import load_jwks, load_public_key  # PyJWT, only when JWTs are configured
    if jwt.publicKey:
        load_public_key(jwt.publicKey, f"{name}.publicKey")
    if jwt.jwks:
        load_jwks(jwt.jwks, f"{name}.jwks")


def _coerce_webhooks(name, value):
    """``events.webhooks``: a list of ``{url, secret, types}`` (the environment's form: that list
    as JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise ConfigError(f"{name} must be a JSON list of {{url, secret, types}}") from None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of {{url, secret, types}} entries")
    hooks, urls = [], set()
    for index, entry in enumerate(value):
        if isinstance(entry, Webhook):
            entry = dataclasses.asdict(entry)
        where = f"{name}[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"url", "secret", "types"}:
            raise ConfigError(f"{where} must be a mapping with url, secret and optional types")
        url, secret = entry.get("url"), entry.get("secret")
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}.url must be an http:// or https:// URL, got {url!r}")
        if url in urls:
            raise ConfigError(f"{where}.url {url!r} is given twice: one webhook per URL (give"
                              " the first one every type it needs)")
        urls.add(url)
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError(f"{where}.secret must be a string of at least 16 characters (the"
                              " receiver checks X-DPMQ-Signature with it)")
        types = _coerce_list(f"{where}.types", entry.get("types") or [])
        for pattern in types:
            if not fnmatch.filter(EVENT_TYPES, pattern):
                raise ConfigError(f"{where}.types: {pattern!r} matches no event type; the types"
                                  f" are {', '.join(EVENT_TYPES)}")
        hooks.append(Webhook(url, secret, types))
    return tuple(hooks)


_CHOICES = {
    ("storage", "engine"): (lambda v: v in ENGINES, f"one of {', '.join(ENGINES)}"),
    ("storage", "synchronous"): (lambda v: v.upper() in SYNCHRONOUS, f"one of {', '.join(SYNCHRONOUS)}"),
    ("storage", "prefix"): (lambda v: v and all(c.isalnum() or c in "-_.:" for c in v),
                            "letters, digits, '-', '_', '.' or ':'"),
    ("log", "level"): (lambda v: v.upper() in LEVELS, f"one of {', '.join(LEVELS)}"),
}


def _check_choice(section, key, value, name):
    if (section, key) in _CHOICES:
        allowed, wanted = _CHOICES[section, key]
        if not allowed(value):
            raise ConfigError(f"{name} must be {wanted}, got {value!r}")


def _check_together(sections, data):
    """The rules that tie keys together, for the sections whose keys are all valid (``data``:
    what was given, to tell a key set from one left at its default)."""
    problems = []
    mq = sections.get("mq")
    if mq is not None and mq.maxTtl > mq.retentionSeconds and "maxTtl" not in _given(data, "mq"):
        # Left at its default (a day) under a shorter retention, which configurations written
        # before ttl existed may have: capped by retention rather than refused at start-up.
        mq = sections["mq"] = dataclasses.replace(mq, maxTtl=mq.retentionSeconds)
    if mq is not None and mq.maxDelaySeconds >= mq.retentionSeconds:
        problems.append(f"mq.maxDelaySeconds ({mq.maxDelaySeconds}) must be less than"
                        f" mq.retentionSeconds ({mq.retentionSeconds}), or delayed messages would"
                        " expire before they are due")
    if mq is not None and mq.maxTtl > mq.retentionSeconds:
        problems.append(f"mq.maxTtl ({mq.maxTtl:g}) must be at most mq.retentionSeconds"
                        f" ({mq.retentionSeconds:g}): a message is kept only that long, so a"
                        " longer ttl would never be reached")
    storage, server = sections.get("storage"), sections.get("server")
    if storage and server and storage.engine in ("sqlite", "memory") and server.workers != 1:
        problems.append(f"server.workers must be 1 with storage.engine {storage.engine}: one process"
                        " owns the store. Use more consumer threads instead (server.maxConsumers), or"
                        " storage.engine redis to run several processes as one broker.")
    return problems


def _given(data, section):
    """The keys given for ``section`` (from the file or the environment)."""
    given = data.get(section) if isinstance(data, dict) else None
    return given if isinstance(given, dict) else {}


# -- names -----------------------------------------------------------------------------------
def nearest(word, candidates):
    """The candidate closest to ``word`` ignoring case, or None when none is close."""
    folded = {candidate.lower(): candidate for candidate in candidates}
    match = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.75)
    return folded[match[0]] if match else None


def _unknown_key(section, key):
    """The problem of a key the section does not have, with the nearest key of that section, or
    else of another one (``server.engine`` is ``storage.engine`` put in the wrong place)."""
    near = nearest(str(key), SCHEMA[section])
    if near is not None:
        return f"unknown key {section}.{key}: did you mean {section}.{near}?"
    elsewhere = {k: s for s, keys in reversed(SCHEMA.items()) for k in keys}
    near = nearest(str(key), elsewhere)
    if near is not None:
        return f"unknown key {section}.{key}: did you mean {elsewhere[near]}.{near}?"
    return f"unknown key {section}.{key}; the keys of {section} are {', '.join(SCHEMA[section])}"


def _unknown_section(name):
    near = nearest(str(name), SCHEMA)
    if near is not None:
        return f"unknown section {name!r}: did you mean {near}?"
    return f"unknown section {name!r}; the sections are {', '.join(SCHEMA)}"
