"""Configuration: file, environment overrides, validation that names the key."""

import pathlib
import re

import pytest

from dpmq import config
from dpmq.errors import ConfigError


def test_defaults_keep_the_original_keys():
    settings = config.build({})
    assert settings.mq.messageChanBuffer == 100
    assert settings.mq.pushMessagesSpeed == 0
    assert settings.mq.sendRetryCount == 3
    assert settings.storage.engine == "sqlite"


def test_file_then_environment(tmp_path):
    path = tmp_path / "application.yaml"
    path.write_text("server:\n  port: 9000\nmq:\n  messageChanBuffer: 7\n  pushMessagesSpeed: 1\n")
    settings = config.load(str(path), environ={"DPMQ_MQ_PUSHMESSAGESSPEED": "0.5",
                                               "dpmq_storage_engine": "memory",
                                               "DPMQ_URL": "http://elsewhere:8080",
                                               "UNRELATED": "x"})
    assert settings.server.port == 9000
    assert settings.mq.messageChanBuffer == 7
    assert settings.mq.pushMessagesSpeed == 0.5
    assert settings.storage.engine == "memory"
    assert settings.source == str(path)


def test_dpmq_config_names_the_file(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("mq:\n  sendRetryCount: 9\n")
    assert config.load(environ={"DPMQ_CONFIG": str(path)}).mq.sendRetryCount == 9


def test_the_shipped_application_yaml_is_valid():
    settings = config.load("application.yaml", environ={})
    assert settings.server.port == 8080 and settings.storage.engine == "sqlite"
    assert settings.server.host == "127.0.0.1" and not settings.auth.enabled


@pytest.mark.parametrize("data, key", [
    ({"mq": {"pushMessagesSpeed": "fast"}}, "mq.pushMessagesSpeed"),
    ({"mq": {"messageChanBuffer": 0}}, "mq.messageChanBuffer"),
    ({"mq": {"messageChanBuffer": 2.5}}, "mq.messageChanBuffer"),
    ({"mq": {"sendRetryCount": -1}}, "mq.sendRetryCount"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"server": {"port": True}}, "server.port"),
    ({"storage": {"engine": "oracle"}}, "storage.engine"),
    ({"mq": {"pushMessageSpeed": 1}}, "mq.pushMessageSpeed"),
    ({"server": {"workers": 4}}, "server.workers"),
    ({"log": {"level": "LOUD"}}, "log.level"),
])
def test_bad_values_name_their_key(data, key):
    with pytest.raises(ConfigError) as caught:
        config.build(data)
    assert key in str(caught.value)


def test_bad_environment_value_names_the_key():
    with pytest.raises(ConfigError, match="mq.publishTimeout"):
        config.load(environ={"DPMQ_MQ_PUBLISHTIMEOUT": "soon"})


def test_missing_file_and_bad_yaml_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.yaml"), environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("mq: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(str(broken), environ={})


def test_settings_are_immutable_and_replace_makes_a_copy():
    settings = config.build({})
    with pytest.raises(AttributeError):
        settings.mq.sendRetryCount = 5
    changed = settings.replace(mq={"sendRetryCount": 5})
    assert changed.mq.sendRetryCount == 5 and settings.mq.sendRetryCount == 3


def test_the_redis_url_and_its_password_are_never_shown():
    settings = config.build({"storage": {"engine": "redis",
                                         "redisUrl": "redis://:s3cret@10.0.0.5:6379/0"}})
    shown = settings.as_dict(redact=True)
    assert shown["storage"]["redisUrl"] == "***" and "s3cret" not in str(shown)
    assert settings.as_dict(redact=False)["storage"]["redisUrl"].endswith("@10.0.0.5:6379/0")


ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_misspelt_environment_variable_stops_start_up_with_the_nearest_name():
    with pytest.raises(ConfigError) as caught:
        config.load(environ={"DPMQ_MQ_PUSHMESSAGESPEED": "0.5"})
    assert "DPMQ_MQ_PUSHMESSAGESPEED" in str(caught.value)
    assert "did you mean DPMQ_MQ_PUSHMESSAGESSPEED?" in str(caught.value)
    with pytest.raises(ConfigError, match="did you mean DPMQ_STORAGE_ENGINE"):
        config.load(environ={"dpmq_storage_engin": "memory"})
    with pytest.raises(ConfigError, match="DPMQ_WHATEVER.*DPMQ_<SECTION>_<KEY>"):
        config.load(environ={"DPMQ_WHATEVER": "1"})


def test_the_variables_dpmq_reads_besides_keys_are_allowed(tmp_path):
    path = tmp_path / "application.yaml"
    path.write_text("mq:\n  sendRetryCount: 2\n")
    settings = config.load(environ={"DPMQ_CONFIG": str(path), "DPMQ_URL": "http://x:1",
                                    "DPMQ_TOKEN": "t" * 8, "DPMQ_AUTH_TOKENS": "admin:a-secret-1"})
    assert settings.mq.sendRetryCount == 2 and settings.auth.tokens[0].role == "admin"


def test_every_dpmq_variable_named_in_the_code_and_docs_is_accepted():
    """A DPMQ_ name the code reads or the docs tell users to set must never be refused as unknown:
    this fails when one is added without being added to config.OTHER_VARIABLES."""
    names = set()
    for pattern in ("dpmq/**/*.py", "wsgi.py", "bench/*.py", "examples/*", "*.md", "docs/*.md",
                    ".ci/*"):
        for path in ROOT.glob(pattern):
            names.update(re.findall(r"\bDPMQ_[A-Z][A-Z_]*[A-Z]\b", path.read_text(errors="replace")))
    assert {"DPMQ_CONFIG", "DPMQ_URL", "DPMQ_TOKEN", "DPMQ_MQ_PUSHMESSAGESSPEED"} <= names
    for name in sorted(names):
        assert config.environment_key(name) or name in config.OTHER_VARIABLES, name
        problems = []
        config.apply_environment({}, {name: "1"}, problems=problems)
        assert not any("unknown" in p for p in problems), (name, problems)


def test_a_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError) as caught:
        config.load(environ={"DPMQ_MQ_PUSHMESSAGESSPEED": "abc"})
    assert "mq.pushMessagesSpeed (from DPMQ_MQ_PUSHMESSAGESSPEED) must be a number" in str(caught.value)


def test_every_problem_of_file_and_environment_is_reported_at_once(tmp_path):
    path = tmp_path / "application.yaml"
    path.write_text("mq:\n  pushMessageSpeed: 1\n  sendRetryCount: -1\nserver:\n  engine: memory\n"
                    "storag:\n  path: x.db\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path), environ={"DPMQ_MQ_ACKTIMEOUT": "soon", "DPMQ_SERVER_PROT": "80"})
    text = str(caught.value)
    assert text.startswith(f"6 problems in {path} and the DPMQ_ environment variables:\n"), text
    for problem in ("unknown key mq.pushMessageSpeed: did you mean mq.pushMessagesSpeed?",
                    "unknown key server.engine: did you mean storage.engine?",
                    "unknown section 'storag': did you mean storage?",
                    "mq.sendRetryCount must be between 0 and 1000, got -1",
                    "mq.ackTimeout (from DPMQ_MQ_ACKTIMEOUT) must be a number, got 'soon'",
                    "unknown environment variable DPMQ_SERVER_PROT: did you mean DPMQ_SERVER_PORT?"):
        assert f"\n  - {problem}" in text, problem


def test_one_problem_reads_as_one_line():
    with pytest.raises(ConfigError) as caught:
        config.build({"mq": {"messageChanBuffer": 0}})
    assert str(caught.value) == "mq.messageChanBuffer must be between 1 and 10000000, got 0"


def test_rules_across_keys_are_checked_only_when_both_keys_are_valid():
    with pytest.raises(ConfigError) as caught:
        config.build({"mq": {"maxDelaySeconds": "long", "retentionSeconds": 10}})
    assert str(caught.value) == "mq.maxDelaySeconds must be a number, got 'long'"
    with pytest.raises(ConfigError, match="must be less than mq.retentionSeconds"):
        config.build({"mq": {"maxDelaySeconds": 20, "retentionSeconds": 10}})
