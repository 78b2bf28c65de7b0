"""Configuration: file, environment overrides, validation that names the key."""

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
                                               "DPMQ_UNRELATED": "x"})
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
