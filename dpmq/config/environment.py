"""Environment overrides: ``DPMQ_<SECTION>_<KEY>`` in any case overrides a key of the file
(``DPMQ_MQ_PUSHMESSAGESSPEED=0.5``), its value read as a YAML scalar.

The keys of ``auth.jwt`` are ``DPMQ_AUTH_JWT_<KEY>`` (``DPMQ_AUTH_JWT_SECRET``, so that the HMAC
secret stays out of the file), laid over the file's ``auth.jwt``.

A ``DPMQ_…`` variable that is neither a key nor one of :data:`~dpmq.config.schema.OTHER_VARIABLES`
is a problem too, reported with the nearest known name: a misspelt override silently ignored is a
setting the operator believes in and does not have.
"""

import copy

import yaml

from ..errors import ConfigError
from .schema import JWT_SCHEMA, OTHER_VARIABLES, SCHEMA, parse_token_list
from .validation import nearest, report


def environment_key(name):
    """The (section, key) that the environment variable ``name`` overrides, or None; for a key
    of ``auth.jwt``, ("auth", "jwt.<key>")."""
    wanted = name.upper()
    for key in JWT_SCHEMA:
        if f"DPMQ_AUTH_JWT_{key}".upper() == wanted:
            return "auth", "jwt." + key
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
            value = _value(section, key, raw, data, name)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if data.get(section) is None:
            data[section] = {}
        if key.startswith("jwt."):
            jwt = data[section].get("jwt")
            if jwt is not None and not isinstance(jwt, dict):
                continue                # the file's auth.jwt is the problem, reported by validation
            data[section]["jwt"] = dict(jwt or {}, **{key[4:]: value})
            key = "jwt"
        else:
            data[section][key] = value
        origins[section, key] = name
    if own_problems and problems:
        raise ConfigError(report(problems, "the environment"))
    return data


def _value(section, key, raw, data, name):
    """What the variable ``name`` sets ``section.key`` to: a YAML scalar, the raw text for a
    string, or for ``auth.tokens`` the file's tokens and those of the variable together."""
    if key == "tokens":
        return list((data.get(section) or {}).get("tokens") or []) + parse_token_list(raw, name)
    if key.startswith("jwt."):
        return raw if JWT_SCHEMA[key[4:]][1] in (str, list) else _scalar(raw)
    return _scalar(raw, SCHEMA[section][key][1])


def _scalar(raw, kind=None):
    """``raw`` read as a YAML scalar, or as it is for a string or a list."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if kind in (str, list) and value is not None:
        value = raw
    return value


def _unknown_variable(name):
    known = [f"DPMQ_{s}_{k}".upper() for s, keys in SCHEMA.items() for k in keys] + list(OTHER_VARIABLES)
    known += [f"DPMQ_AUTH_JWT_{key}".upper() for key in JWT_SCHEMA]
    near = nearest(name, known)
    if near is not None:
        return f"unknown environment variable {name}: did you mean {near}? Rename or unset it."
    return (f"unknown environment variable {name}: DPMQ reads DPMQ_<SECTION>_<KEY> for a key of the"
            f" configuration (the README's table) and {', '.join(OTHER_VARIABLES)}; rename or unset it")
