"""Storage engines behind one interface (:mod:`dpmq.storage.base`), chosen by ``storage.engine``.

Engines are imported lazily so that an optional driver is only needed by the engine that uses it.
"""

import importlib

_ENGINES = {
    "memory": ("dpmq.storage.memory", "MemoryEngine"),
    "sqlite": ("dpmq.storage.sqlite.engine", "SQLiteEngine"),
    "redis": ("dpmq.storage.redis.engine", "RedisEngine"),
}


def open_engine(settings):
    """Build the engine named by ``settings.storage.engine``; the broker opens it."""
    module, name = _ENGINES[settings.storage.engine]
    return getattr(importlib.import_module(module), name)(settings.storage)
