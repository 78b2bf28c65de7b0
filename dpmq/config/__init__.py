"""Configuration: ``application.yaml``, then ``DPMQ_…`` environment variables, validated once.

Three parts, one idea each: :mod:`.schema` (the keys, their defaults and bounds, the frozen
:class:`Settings`), :mod:`.environment` (``DPMQ_<SECTION>_<KEY>`` overrides, and unknown ``DPMQ_…``
names refused) and :mod:`.validation` (every problem of the file and the environment reported in
one :class:`~dpmq.errors.ConfigError`). :func:`load` puts them together the way ``dpmq serve``
reads its configuration; ``DPMQ_CONFIG`` names the file.
"""

import os

import yaml

from ..errors import ConfigError
from .environment import apply_environment, environment_key
from .schema import (
    ENGINES,
    LEVELS,
    OTHER_VARIABLES,
    ROLES,
    SCHEMA,
    SECRET_KEYS,
    SYNCHRONOUS,
    AuthSettings,
    LogSettings,
    MQSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    Token,
    parse_token_list,
)
from .validation import build, validate

__all__ = [
    "ENGINES", "LEVELS", "OTHER_VARIABLES", "ROLES", "SCHEMA", "SECRET_KEYS", "SYNCHRONOUS",
    "AuthSettings", "LogSettings", "MQSettings", "ServerSettings", "Settings", "StorageSettings",
    "Token", "apply_environment", "build", "default_path", "environment_key", "load",
    "parse_token_list",
]


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
    return validate(data, path or "(defaults)", origins, problems,
                    f"{path or 'the defaults'} and the DPMQ_ environment variables")


def default_path(environ):
    """The file ``dpmq serve`` reads when none is given: ``$DPMQ_CONFIG``, else ``application.yaml``
    in the working directory if there is one; None for the defaults alone."""
    if environ.get("DPMQ_CONFIG"):
        return environ["DPMQ_CONFIG"]
    return "application.yaml" if os.path.exists("application.yaml") else None
