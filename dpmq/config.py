"""Configuration: ``application.yaml``, then ``DPMQ_…`` environment variables, validated once.

The file keeps the original project's camelCase keys (``mq.messageChanBuffer``) so that an existing
``application.yaml`` works unchanged. Every key can be overridden from the environment as
``DPMQ_<SECTION>_<KEY>`` in any case (``DPMQ_MQ_PUSHMESSAGESSPEED=0.5``), and ``DPMQ_CONFIG`` names the
file. The result is a frozen :class:`Settings`; a bad value stops start-up with the key's name.

A ``DPMQ_…`` variable that is neither a key nor one of :data:`OTHER_VARIABLES` is an error too, with
the nearest known name: a misspelt override silently ignored is a setting the operator believes in
and does not have. Validation collects every problem (unknown keys, bad values, unknown variables)
and reports them in one :class:`ConfigError`, so that fixing a file takes one round, not one per key.
"""

import copy
import dataclasses
import difflib
import os

import yaml

from .errors import ConfigError

#: Every known key with its default, type and bounds: (default, type, minimum, maximum).
SCHEMA = {
    "server": {
        "host": ("127.0.0.1", str, None, None),
        "port": (8080, int, 1, 65535),
        "workers": (1, int, 1, 64),
        "maxConsumers": (2000, int, 1, 100000),
        "httpThreads": (32, int, 1, 1000),
        "pingInterval": (25.0, float, 0, 3600),
        "shutdownTimeout": (10.0, float, 0, 600),
        "requestTimeout": (10.0, float, 0.1, 3600),
        "maxConnections": (10000, int, 1, 1_000_000),
        "corsOrigins": ((), list, None, None),
    },
    "mq": {
        "messageChanBuffer": (100, int, 1, 10_000_000),
        "pushMessagesSpeed": (0.0, float, 0, 3600),
        "sendRetryCount": (3, int, 0, 1000),
        "publishTimeout": (5.0, float, 0, 600),
        "maxMessageBytes": (1_048_576, int, 1, 1 << 30),
        "maxBodyBytes": (16_777_216, int, 1, 1 << 31),
        "publishRate": (0.0, float, 0, 10_000_000),
        "publishBurst": (1000, int, 1, 10_000_000),
        "maxTopicLength": (128, int, 1, 4096),
        "maxConsumerIdLength": (128, int, 1, 4096),
        "consumerBufferBytes": (4_194_304, int, 1024, 1 << 31),
        "consumerBuffersTotalBytes": (268_435_456, int, 1024, 1 << 40),
        "catchUpBatch": (500, int, 1, 100_000),
        "fanoutWorkers": (2, int, 1, 64),
        "writeCoalesce": (0.01, float, 0, 0.1),
        "cursorFlushInterval": (0.5, float, 0.01, 60),
        "ackTimeout": (30.0, float, 0.01, 86400),
        "maxInFlight": (100, int, 1, 100_000),
        "maxDelaySeconds": (86400.0, float, 0, 31_536_000),
        "maxKeyLength": (256, int, 1, 4096),
        "retentionSeconds": (259200.0, float, 1, 315_360_000),
        "retentionMessages": (0, int, 0, 1 << 62),
        "sweepInterval": (30.0, float, 0.01, 86400),
        "sweepBatch": (10000, int, 1, 10_000_000),
        "metricsTopics": (100, int, 1, 100_000),
    },
    "storage": {
        "engine": ("sqlite", str, None, None),
        "path": ("dpmq.db", str, None, None),
        "synchronous": ("FULL", str, None, None),
        "redisUrl": ("redis://127.0.0.1:6379/0", str, None, None),
        "prefix": ("dpmq", str, None, None),
        "redisTimeout": (5.0, float, 0.1, 300),
        "nodeTimeout": (10.0, float, 1, 3600),
    },
    "log": {
        "level": ("INFO", str, None, None),
    },
    "auth": {
        "enabled": (False, bool, None, None),
        "tokens": ((), "tokens", None, None),
    },
}

ENGINES = ("sqlite", "memory", "redis")
ROLES = ("producer", "consumer", "admin")
SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: ``DPMQ_…`` environment variables DPMQ reads that are not configuration keys; any other
#: ``DPMQ_…`` name that is not ``DPMQ_<SECTION>_<KEY>`` of a key in SCHEMA stops start-up.
OTHER_VARIABLES = {
    "DPMQ_CONFIG": "the configuration file",
    "DPMQ_URL": "the broker the dpmq command talks to",
    "DPMQ_TOKEN": "the token the dpmq command sends",
}
#: Keys whose values GetConfig and the logs show as "***".
SECRET_KEYS = frozenset({"redisUrl", "tokens", "password"})


@dataclasses.dataclass(frozen=True)
class Token:
    """One auth token: its secret, its role, for a producer or consumer the topic patterns (globs)
    it may use (none means every topic), and the consumerId and group patterns it may take over from
    another identity (none means only the subscriptions it created)."""

    token: str
    role: str
    topics: tuple = ()
    consumers: tuple = ()


def _section_class(name, keys):
    fields = [(key, spec[1] if isinstance(spec[1], type) else tuple) for key, spec in keys.items()]
    return dataclasses.make_dataclass(name, fields, frozen=True)


ServerSettings = _section_class("ServerSettings", SCHEMA["server"])
MQSettings = _section_class("MQSettings", SCHEMA["mq"])
StorageSettings = _section_class("StorageSettings", SCHEMA["storage"])
LogSettings = _section_class("LogSettings", SCHEMA["log"])
AuthSettings = _section_class("AuthSettings", SCHEMA["auth"])
_SECTION_CLASSES = {"server": ServerSettings, "mq": MQSettings, "storage": StorageSettings,
                    "log": LogSettings, "auth": AuthSettings}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective, validated configuration of one broker. Immutable: share it freely."""

    server: ServerSettings
    mq: MQSettings
    storage: StorageSettings
    log: LogSettings
    auth: AuthSettings
    source: str = "(defaults)"

    def as_dict(self, redact=True):
        """The configuration as the nested camelCase mapping of ``application.yaml``."""
        out = {}
        for section in _SECTION_CLASSES:
            values = dataclasses.asdict(getattr(self, section))
            values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
            if redact:
                values = {k: ("***" if k in SECRET_KEYS and v and k != "tokens" else v)
                          for k, v in values.items()}
                if "tokens" in values:
                    values["tokens"] = [dict(t, token="***") for t in values["tokens"]]
            out[section] = values
        return out

    def replace(self, **sections):
        """A copy with some keys changed: ``settings.replace(mq={"pushMessagesSpeed": 0.2})``."""
        data = self.as_dict(redact=False)
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return build(data, source=self.source)


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


def parse_token_list(text, name="DPMQ_AUTH_TOKENS"):
    """``role:token[:pattern,pattern] …`` (space separated), the environment's form of auth.tokens."""
    entries = []
    for item in text.split():
        parts = item.split(":", 2)
        if len(parts) < 2:
            raise ConfigError(f"{name}: {item.split(':')[0]!r}… must be role:token[:patterns]")
        entry = {"role": parts[0], "token": parts[1]}
        if len(parts) == 3:
            entry["topics"] = [p for p in parts[2].split(",") if p]
        entries.append(entry)
    return entries


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


def build(data, source="(given)"):
    """Validate a nested mapping into :class:`Settings`; unknown keys and bad values raise ConfigError."""
    return _validate(data, source, {}, [])


def _validate(data, source, origins, problems, where=None):
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
    problems.extend(_check_together(sections))
    if problems:
        raise ConfigError(_report(problems, where or f"the configuration {source}"))
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
    return _SECTION_CLASSES[section](**values) if len(values) == len(keys) else None


def _report(problems, where):
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in {where}:\n" + \
        "\n".join(f"  - {problem}" for problem in problems)


def _nearest(word, candidates):
    """The candidate closest to ``word`` ignoring case, or None when none is close."""
    folded = {candidate.lower(): candidate for candidate in candidates}
    match = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.75)
    return folded[match[0]] if match else None


def _unknown_key(section, key):
    """The problem of a key the section does not have, with the nearest key of that section, or
    else of another one (``server.engine`` is ``storage.engine`` put in the wrong place)."""
    near = _nearest(str(key), SCHEMA[section])
    if near is not None:
        return f"unknown key {section}.{key}: did you mean {section}.{near}?"
    elsewhere = {k: s for s, keys in reversed(SCHEMA.items()) for k in keys}
    near = _nearest(str(key), elsewhere)
    if near is not None:
        return f"unknown key {section}.{key}: did you mean {elsewhere[near]}.{near}?"
    return f"unknown key {section}.{key}; the keys of {section} are {', '.join(SCHEMA[section])}"


def _unknown_section(name):
    near = _nearest(str(name), SCHEMA)
    if near is not None:
        return f"unknown section {name!r}: did you mean {near}?"
    return f"unknown section {name!r}; the sections are {', '.join(SCHEMA)}"


def _unknown_variable(name):
    known = [f"DPMQ_{s}_{k}".upper() for s, keys in SCHEMA.items() for k in keys] + list(OTHER_VARIABLES)
    near = _nearest(name, known)
    if near is not None:
        return f"unknown environment variable {name}: did you mean {near}? Rename or unset it."
    return (f"unknown environment variable {name}: DPMQ reads DPMQ_<SECTION>_<KEY> for a key of the"
            f" configuration (the README's table) and {', '.join(OTHER_VARIABLES)}; rename or unset it")


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


def _check_together(sections):
    """The rules that tie keys together, for the sections whose keys are all valid."""
    problems = []
    mq = sections.get("mq")
    if mq is not None and mq.maxDelaySeconds >= mq.retentionSeconds:
        problems.append(f"mq.maxDelaySeconds ({mq.maxDelaySeconds}) must be less than"
                        f" mq.retentionSeconds ({mq.retentionSeconds}), or delayed messages would"
                        " expire before they are due")
    storage, server = sections.get("storage"), sections.get("server")
    if storage and server and storage.engine in ("sqlite", "memory") and server.workers != 1:
        problems.append(f"server.workers must be 1 with storage.engine {storage.engine}: one process"
                        " owns the store. Use more consumer threads instead (server.maxConsumers), or"
                        " storage.engine redis to run several processes as one broker.")
    return problems


def environment_key(name):
    """The (section, key) that the environment variable ``name`` overrides, or None."""
    wanted = name.upper()
    for section, keys in SCHEMA.items():
        for key in keys:
            if f"DPMQ_{section}_{key}".upper() == wanted:
                return section, key
    return None


def apply_environment(data, environ, origins=None, problems=None):
    """Overlay ``DPMQ_<SECTION>_<KEY>`` variables on ``data``; values are read as YAML scalars.

    A ``DPMQ_…`` name that is neither a key nor in :data:`OTHER_VARIABLES` is added to ``problems``
    (a ConfigError when no list is given); ``origins`` records which variable set which key.
    """
    own_problems = problems is None
    problems = [] if own_problems else problems
    origins = {} if origins is None else origins
    data = copy.deepcopy(data) if data else {}
    for name in sorted(environ):
        raw = environ[name]
        if not name.upper().startswith("DPMQ_") or name.upper() in OTHER_VARIABLES:
            continue
        target = environment_key(name)
        if target is None:
            problems.append(_unknown_variable(name))
            continue
        section, key = target
        if not isinstance(data, dict) or not isinstance(data.get(section) or {}, dict):
            continue                    # the file's own shape is the problem, reported by validation
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if SCHEMA[section][key][1] in (str, "tokens", list) and value is not None:
            value = raw
        if data.get(section) is None:
            data[section] = {}
        if key == "tokens":     # tokens from the environment join those of the file
            try:
                value = list(data[section].get("tokens") or []) + parse_token_list(raw, name)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
        data[section][key] = value
        origins[section, key] = name
    if own_problems and problems:
        raise ConfigError(_report(problems, "the environment"))
    return data


def load(path=None, environ=None):
    """Load the configuration the way ``dpmq serve`` does: file, then environment, then validation.

    ``path`` defaults to ``$DPMQ_CONFIG``, then ``application.yaml`` in the working directory if it
    exists; with no file at all the defaults apply. Every problem of the file and the environment
    is reported in one ConfigError.
    """
    environ = os.environ if environ is None else environ
    path = path or default_path(environ)
    data = {}
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    origins, problems = {}, []
    data = apply_environment(data, environ, origins, problems)
    return _validate(data, path or "(defaults)", origins, problems,
                     f"{path or 'the defaults'} and the DPMQ_ environment variables")


def default_path(environ):
    """The file ``dpmq serve`` reads when none is given: ``$DPMQ_CONFIG``, else ``application.yaml``
    in the working directory if there is one; None for the defaults alone."""
    if environ.get("DPMQ_CONFIG"):
        return environ["DPMQ_CONFIG"]
    return "application.yaml" if os.path.exists("application.yaml") else None
