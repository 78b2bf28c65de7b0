"""Validation: a nested mapping becomes a frozen :class:`~dpmq.config.schema.Settings`, or one
:class:`ConfigError` that lists every problem found.

Every problem is collected (unknown sections and keys with the nearest known name, bad values, the
rules that tie keys together) and reported at once, so that fixing a file takes one round, not one
per key. A value that came from the environment is reported under the variable's name.
"""

import dataclasses
import difflib

from ..errors import ConfigError
from .schema import (
    ENGINES,
    LEVELS,
    ROLES,
    SCHEMA,
    SECTION_CLASSES,
    SYNCHRONOUS,
    Settings,
    Token,
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
def _coerce(section, key, value, name):
    default, kind, low, high = SCHEMA[section][key]
    if kind is bool:
        return _coerce_bool(name, value)
    if kind is list:
        return _coerce_list(name, value)
    if kind == "tokens":
        return _coerce_tokens(name, value)
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
