"""Settings are read once: flags > FLASHSTOCK_* env > config file > defaults."""

import dataclasses

import pytest

from flashstock.server._config import NodeConfig, load_config, setting_help


def test_defaults_without_anything():
    assert load_config(env={}) == NodeConfig()


def test_precedence_flags_env_file_defaults(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('port = 7001\nshards = 8\nredis_url = "redis://file:1/0"\n')
    config = load_config({"port": 7003}, env={"FLASHSTOCK_PORT": "7002", "FLASHSTOCK_SHARDS": "16"}, config_file=path)
    assert config.port == 7003  # flag
    assert config.shards == 16  # env over file
    assert config.redis_url == "redis://file:1/0"  # file over default
    assert config.workers == NodeConfig().workers  # default


def test_config_file_from_env_and_a_named_table(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[flashstock]\nworkers = 3\n")
    assert load_config(env={"FLASHSTOCK_CONFIG": str(path)}).workers == 3


@pytest.mark.parametrize(
    "env, setting",
    [
        ({"FLASHSTOCK_PORT": "x"}, "port"),
        ({"FLASHSTOCK_PORT": "70000"}, "port"),
        ({"FLASHSTOCK_REDIS_URL": "http://x"}, "redis_url"),
        ({"FLASHSTOCK_SHARDS": "0"}, "shards"),
        ({"FLASHSTOCK_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"FLASHSTOCK_LOG_FORMAT": "xml"}, "log_format"),
        ({"FLASHSTOCK_GRACE_S": "-1"}, "grace_s"),
        ({"FLASHSTOCK_SERVING_METRICS": "maybe"}, "serving_metrics"),
        ({"FLASHSTOCK_MAX_IN_FLIGHT_PER_CALLER": "-1"}, "max_in_flight_per_caller"),
        ({"FLASHSTOCK_MAX_RATE_PER_CALLER": "-0.5"}, "max_rate_per_caller"),
    ],
)
def test_a_bad_setting_is_named(env, setting):
    with pytest.raises(ValueError, match=setting):
        load_config(env=env)


def test_unknown_or_missing_config_file_is_refused(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_config(env={}, config_file=path)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(env={}, config_file=tmp_path / "missing.toml")


def test_serving_metrics_are_on_unless_switched_off():
    assert NodeConfig().serving_metrics is True
    assert load_config(env={"FLASHSTOCK_SERVING_METRICS": "false"}).serving_metrics is False
    assert load_config({"serving_metrics": False}, env={}).serving_metrics is False


def test_every_setting_has_help():
    assert all(help_text for _, help_text in setting_help().values())
    assert set(setting_help()) == set(NodeConfig.__dataclass_fields__)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NodeConfig().port = 1  # type: ignore[misc]


def test_per_caller_caps_are_off_by_default_and_read_from_the_environment():
    assert NodeConfig().max_in_flight_per_caller == 0 and NodeConfig().max_rate_per_caller == 0
    config = load_config(env={"FLASHSTOCK_MAX_IN_FLIGHT_PER_CALLER": "8", "FLASHSTOCK_MAX_RATE_PER_CALLER": "2.5"})
    assert config.max_in_flight_per_caller == 8 and config.max_rate_per_caller == 2.5
