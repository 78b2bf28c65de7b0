"""What the configuration is: every key with its default, type and bounds, and the frozen settings
objects that a validated configuration becomes.

The keys keep the original project's camelCase names (``mq.messageChanBuffer``) so that an existing
``application.yaml`` works unchanged.
"""

import dataclasses
import urllib.parse

from ..errors import ConfigError

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
        # The original Go API's channel size, hence its name. It bounds the messages accepted and
        # not yet handed to the delivery shards: a publish reserves room before it commits and
        # gives it back at the hand-out. Paced, they wait for their push in the pacing queue;
        # unpaced, it bounds only the messages being committed at once. A publish that finds no
        # room waits mq.publishTimeout, then gets 503.
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
        "catchUpCacheBytes": (33_554_432, int, 0, 1 << 40),
        "fanoutWorkers": (1, int, 1, 64),
        "writeCoalesce": (0.01, float, 0, 0.1),
        "cursorFlushInterval": (0.5, float, 0.01, 60),
        "ackTimeout": (30.0, float, 0.01, 86400),
        "maxInFlight": (100, int, 1, 100_000),
        "maxDelaySeconds": (86400.0, float, 0, 31_536_000),
        "maxTtl": (86400.0, float, 0.001, 31_536_000),
        "maxPullMessages": (1000, int, 1, 100_000),
        "maxPullWait": (60.0, float, 0, 3600),
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
        "jwt": (None, "jwt", None, None),
    },
    "events": {
        # Lifecycle events on the reserved topic _dpmq.events (dpmq.broker.events), and the
        # webhooks fed from it (dpmq.broker.webhooks).
        "enabled": (True, bool, None, None),
        "webhooks": ((), "webhooks", None, None),
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
#: The lifecycle events the broker publishes on _dpmq.events (see dpmq.broker.events).
EVENT_TYPES = ("consumer.connected", "consumer.left", "message.deadLettered", "subscription.gap",
               "subscription.forgotten", "buffer.full", "store.error", "store.recovered")
#: Keys whose values GetConfig and the logs show as "***".
SECRET_KEYS = frozenset({"redisUrl", "tokens", "password"})
#: The keys of ``auth.jwt``: (default, type, minimum, maximum) as in SCHEMA; ``algorithms``
#: defaults to those the given keys serve.
JWT_SCHEMA = {
    "algorithms": ((), list, None, None),
    "secret": ("", str, None, None),
    "publicKey": ("", str, None, None),
    "jwks": ("", str, None, None),
    "audience": ("", str, None, None),
    "issuer": ("", str, None, None),
    "leeway": (5.0, float, 0, 300),
    "maxLifetime": (86400.0, float, 0, 366 * 86400),
}
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
#: The shortest HS256 secret, in bytes (RFC 7518 section 3.2: at least the hash's 256 bits).
JWT_MIN_SECRET = 32


@dataclasses.dataclass(frozen=True)
class Token:
    """One auth token: its secret, its role, for a producer or consumer the topic patterns (globs)
    it may use (none means every topic), and the consumerId and group patterns it may take over from
    another identity (none means only the subscriptions it created)."""

    token: str
    role: str
    topics: tuple = ()
    consumers: tuple = ()


@dataclasses.dataclass(frozen=True)
class Webhook:
    """One ``events.webhooks`` entry: where to POST each event, of which ``types`` (glob patterns
    such as ``consumer.*``; none means every type), signed with ``secret``."""

    url: str
    secret: str
    types: tuple = ()


@dataclasses.dataclass(frozen=True)
class JWTSettings:
    """``auth.jwt``: the algorithms accepted, their keys (an HS256 ``secret``; a PEM ``publicKey``
    file or a ``jwks`` file for RS256 and ES256), the ``audience`` and ``issuer`` a token must
    name if set, the ``leeway`` in seconds allowed on its times, and ``maxLifetime``, the furthest
    a token's ``exp`` may be from now or from its ``iat`` (seconds; 0: no limit)."""

    algorithms: tuple
    secret: str = ""
    publicKey: str = ""
    jwks: str = ""
    audience: str = ""
    issuer: str = ""
    leeway: float = 5.0
    maxLifetime: float = 86400.0


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


def _section_class(name, keys):
    fields = [(key, spec[1] if isinstance(spec[1], type) else tuple) for key, spec in keys.items()]
    return dataclasses.make_dataclass(name, fields, frozen=True)


ServerSettings = _section_class("ServerSettings", SCHEMA["server"])
MQSettings = _section_class("MQSettings", SCHEMA["mq"])
StorageSettings = _section_class("StorageSettings", SCHEMA["storage"])
LogSettings = _section_class("LogSettings", SCHEMA["log"])
AuthSettings = _section_class("AuthSettings", SCHEMA["auth"])
EventsSettings = _section_class("EventsSettings", SCHEMA["events"])
SECTION_CLASSES = {"server": ServerSettings, "mq": MQSettings, "storage": StorageSettings,
                   "log": LogSettings, "auth": AuthSettings, "events": EventsSettings}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective, validated configuration of one broker. Immutable: share it freely."""

    server: ServerSettings
    mq: MQSettings
    storage: StorageSettings
    log: LogSettings
    auth: AuthSettings
    events: EventsSettings
    source: str = "(defaults)"

    def as_dict(self, redact=True):
        """The configuration as the nested camelCase mapping of ``application.yaml``."""
        out = {}
        for section in SECTION_CLASSES:
            values = dataclasses.asdict(getattr(self, section))
            values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
            if "webhooks" in values:
                values["webhooks"] = [dict(w, types=list(w["types"])) for w in values["webhooks"]]
            if values.get("jwt"):
                values["jwt"] = dict(values["jwt"], algorithms=list(values["jwt"]["algorithms"]))
            if redact:
                values = {k: ("***" if k in SECRET_KEYS and v and k != "tokens" else v)
                          for k, v in values.items()}
                if "tokens" in values:
                    values["tokens"] = [dict(t, token="***") for t in values["tokens"]]
                if values.get("jwt") and values["jwt"]["secret"]:
                    values["jwt"] = dict(values["jwt"], secret="***")
                if "webhooks" in values:
                    values["webhooks"] = [dict(w, secret="***", url=masked_url(w["url"]))
                                          for w in values["webhooks"]]
            out[section] = values
        return out

    def replace(self, **sections):
        """A copy with some keys changed: ``settings.replace(mq={"pushMessagesSpeed": 0.2})``."""
        from .validation import build  # it builds Settings, so it is imported when used
        data = self.as_dict(redact=False)
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return build(data, source=self.source)


def url_origin(url):
    """``scheme://host[:port]`` of ``url``: all of a webhook's URL that is ever shown or logged.
    The path, query and user info of a hook URL often carry its credentials (Slack, Discord and
    GitHub hook URLs do)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"          # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def masked_url(url):
    """``url`` as GetConfig shows it: its origin, and ``/***`` for whatever else it has."""
    origin = url_origin(url)
    return origin if url.rstrip("/") == origin else origin + "/***"
