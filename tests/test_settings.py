"""App settings: the core carries them untyped (file `settings:` map, PM_<NAME>), the app types them."""

from __future__ import annotations

from pathlib import Path

import pytest

from customer_email.settings import EmailSettings
from pm.config import Config, ConfigError, load_config


def test_every_other_pm_variable_is_an_app_setting(tmp_path: Path) -> None:
    env = {"PM_SMTP_PORT": "2525", "PM_REPLY_FROM": "help@shop.example", "PM_BOOTSTRAP": "k:9092", "PM_KAFKA_ACKS": "all"}
    config = load_config(env=env, config_file=None)
    assert config.bootstrap == "k:9092" and config.kafka == {"acks": "all"}
    assert config.settings == {"smtp_port": "2525", "reply_from": "help@shop.example"}
    settings = EmailSettings.of(config)
    assert settings.smtp_port == 2525 and settings.reply_from == "help@shop.example"
    assert settings.smtp_host == "127.0.0.1"  # the app's default


def test_the_config_file_settings_map_and_the_environment_over_it(tmp_path: Path) -> None:
    path = tmp_path / "pm.yaml"
    path.write_text("settings:\n  smtp_host: mail.internal\n  smtp_starttls: true\n  smtp_port: 587\n")
    config = load_config(env={"PM_SMTP_PORT": "465"}, config_file=path)
    settings = EmailSettings.of(config)
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_starttls) == ("mail.internal", 465, True)


def test_a_malformed_setting_names_itself() -> None:
    with pytest.raises(ConfigError, match="smtp_port"):
        EmailSettings.of(Config().with_settings(smtp_port="twenty-five"))


def test_an_old_top_level_app_key_says_where_it_goes_and_nulls_are_dropped(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("smtp_host: old.example\n")
    with pytest.raises(ConfigError, match="go under `settings:`"):
        load_config(env={}, config_file=old)
    path = tmp_path / "pm.yaml"
    path.write_text("settings:\n  smtp_password:\n  reply_from: a@b.example\n")
    assert load_config(env={}, config_file=path).settings == {"reply_from": "a@b.example"}


def test_an_empty_core_variable_is_not_an_app_setting() -> None:
    assert load_config(env={"PM_TOPIC_PREFIX": "", "PM_STATE_DIR": ""}, config_file=None).settings == {}


def test_fetch_wait_follows_the_broker_kind_unless_set(tmp_path: Path) -> None:
    kafka = Config(bootstrap="kafka-1:9092", state_dir=tmp_path)
    assert (kafka.resolved_broker_kind, kafka.fetch_wait_ms) == ("kafka", 500)
    assert Config(bootstrap="kafka-1:9092", state_dir=tmp_path, fetch_wait_max_ms=30).fetch_wait_ms == 30
    # The local broker `pm broker start` recorded: Tansu, whose fetches wait the whole wait.
    (tmp_path / "broker.json").write_text('{"bootstrap": "127.0.0.1:39001", "pid": 1}')
    assert Config(state_dir=tmp_path).fetch_wait_ms == 50
    assert Config(bootstrap="127.0.0.1:39001", state_dir=tmp_path).resolved_broker_kind == "tansu"
    assert Config(bootstrap="127.0.0.1:39002", state_dir=tmp_path).resolved_broker_kind == "kafka"
    assert Config(bootstrap="b:1", state_dir=tmp_path, broker_kind="tansu").fetch_wait_ms == 50
    with pytest.raises(ConfigError, match="broker_kind"):
        _ = Config(state_dir=tmp_path, broker_kind="redpanda").fetch_wait_ms
