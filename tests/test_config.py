"""The run configuration is parsed and checked once, from CLI values or Flower's run config."""

import pytest

from common.config import RunConfig
from common.errors import ConfigError


def test_flower_run_config_round_trips() -> None:
    cfg = RunConfig(clients=3, target_epsilon=2.5, dp=False, classes=("a", "b"))
    assert RunConfig.from_flower(cfg.to_flower()) == cfg


def test_empty_flower_run_config_gives_the_defaults() -> None:
    assert RunConfig.from_flower({}) == RunConfig()


def test_flower_values_are_coerced_from_strings() -> None:
    cfg = RunConfig.from_flower({"rounds": "7", "dp": "false", "delta": "1e-6",
                                 "classes": "x,y"})
    assert (cfg.rounds, cfg.dp, cfg.delta, cfg.classes) == (7, False, 1e-6, ("x", "y"))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("rounds", 0, "rounds must be in 1..100000"),
    ("rounds", 10**9, "rounds must be in 1..100000"),
    ("batch-size", 10**9, "batch-size must be in"),
    ("head-width", 10**6, "head-width must be in"),
    ("local-epochs", 5000, "local-epochs must be in"),
    ("image-size", 4096, "image-size must be in 32..1024"),
    ("run-id", "../x", "run-id must be"),
    ("max-weight-ratio", 0.5, "max-weight-ratio must be"),
    ("target-epsilon", -1.0, "target-epsilon must be positive"),
    ("delta", 1.5, "delta must be in"),
    ("partition", "zipf", "partition must be one of"),
    ("base-layer", "block9_pool", "base-layer must be one of"),
    ("image-size", 16, "image-size must be in 32..1024"),
    ("rounds", "many", "'rounds' must be a int"),
    ("dp", "maybe", "'dp' must be a bool"),
    ("colour", "red", "unknown setting 'colour'"),
])
def test_bad_settings_are_refused_naming_the_setting(key: str, value: object,
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_flower({key: value})


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        RunConfig().rounds = 3  # type: ignore[misc]


def test_flower_app_config_in_pyproject_matches_the_dataclass_defaults() -> None:
    import tomllib

    from .conftest import PROJECT

    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    app_config = declared["tool"]["flwr"]["app"]["config"]
    parsed = RunConfig.from_flower(app_config)
    assert parsed.replace(state=RunConfig().state) == RunConfig()
    assert parsed.site_cache_dir("site-0") == RunConfig().site_cache_dir("site-0")
