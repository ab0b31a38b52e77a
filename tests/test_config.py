"""The run configuration is parsed and checked once, from CLI values or Flower's run config."""

from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import pytest

from common.config import PRESETS, TRAINING, RunConfig
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
    ("clip-norm", "inf", "clip-norm must be a finite number"),
    ("centring-noise", float("inf"), "centring-noise must be a finite number"),
    ("target-epsilon", "1e400", "target-epsilon must be a finite number"),
])
def test_bad_settings_are_refused_naming_the_setting(key: str, value: object,
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_flower({key: value})


@pytest.mark.parametrize(("settings", "message"), [
    ({"head-method": "ridge", "head-width": 64}, "one-shot head .* is linear"),
    ({"head-method": "ridge", "client-dp": "fixed"}, "use --head-method sgd with --client-dp"),
    ({"head-method": "lasso"}, "head-method must be one of"),
    ({"public-components": 0}, "public-components must be in"),
])
def test_a_one_shot_head_refuses_what_it_cannot_honour(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_flower(settings)


def test_rounds_of_a_one_shot_run() -> None:
    for method, rounds, sgd, run in [("sgd", 10, 10, 10), ("ridge+sgd", 10, 9, 10),
                                     ("ridge+sgd", 1, 0, 1), ("ridge", 10, 0, 1)]:
        cfg = RunConfig(head_method=method, rounds=rounds)
        assert (cfg.sgd_rounds, cfg.run_rounds) == (sgd, run)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        RunConfig().rounds = 3  # type: ignore[misc]


def test_flower_app_config_in_pyproject_declares_every_setting_with_its_default() -> None:
    import tomllib
    from dataclasses import fields

    from .conftest import PROJECT

    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    app_config = declared["tool"]["flwr"]["app"]["config"]
    assert set(app_config) == {f.name.replace("_", "-") for f in fields(RunConfig)}
    parsed = RunConfig.from_flower(app_config)
    assert parsed.replace(state=RunConfig().state) == RunConfig()
    assert parsed.site_cache_dir("site-0") == RunConfig().site_cache_dir("site-0")


def _options(command: str) -> dict[str, object]:
    from common.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize(("command", "scopes"), [
    ("simulate", {"scenario", "training", "engine"}),
    ("compare", {"scenario", "training", "engine"}),
    ("run", {"training"})])
def test_each_setting_has_one_command_line_option_made_from_its_declaration(
        command: str, scopes: set[str]) -> None:
    from dataclasses import fields

    from common.cli.options import default_of, option_name

    options = _options(command)
    for f in fields(RunConfig):
        assert f.metadata["help"], f.name
        if f.metadata["scope"] not in scopes:
            assert f.name not in options or f.name in ("out", "classes"), (command, f.name)
            continue
        action = options[f.name]
        assert option_name(f) in action.option_strings
        if str(f.type) == "bool":  # a switch that turns the default around
            assert action.default is default_of(f) and action.const is not default_of(f)
        else:
            assert action.default == default_of(f) and action.choices == f.metadata["choices"]


def test_parsed_defaults_are_the_dataclass_defaults() -> None:
    from common.cli import build_parser
    from common.cli.options import settings_from

    args = build_parser().parse_args(["simulate"])
    assert settings_from(args, out=RunConfig().out) == RunConfig()
    args = build_parser().parse_args(["simulate", "--no-dp", "--no-cache", "--cache-dir", "x",
                                      "--rounds", "3", "--base-dtype", "float32"])
    cfg = settings_from(args, out="o")
    assert (cfg.dp, cfg.cache, cfg.state, cfg.rounds, cfg.base_dtype) == \
        (False, False, "x", 3, "float32")


def test_every_numeric_setting_states_its_valid_values_and_its_default_is_one() -> None:
    from dataclasses import fields

    from common.cli.options import default_of

    for f in fields(RunConfig):
        if str(f.type) in ("int", "float") and f.name != "seed":
            valid = f.metadata["valid"]
            assert valid is not None, f.name
            assert valid.admits(default_of(f)), f.name


def test_a_switch_help_does_not_show_a_default_that_reads_as_its_opposite() -> None:
    from common.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["simulate"].format_help()
    text = " ".join(help_text.split())
    options = text[text.index("options:"):]
    no_dp = options[options.index("--no-dp "):options.index("--target-epsilon TARGET")]
    assert "train without DP" in no_dp and "default" not in no_dp
    assert "(default: 3.0)" in text and text.count("(default: runs/<time>)") == 1
    assert "(default: None)" not in text


def test_each_kind_of_error_exits_with_its_documented_code(capsys) -> None:
    from common import errors
    from common.cli import build_parser, main

    kinds = {errors.ConfigError: 4, errors.WeightsError: 4, errors.DataError: 5,
             errors.BudgetExhaustedError: 6, errors.PolicyRefusedError: 6,
             errors.RunFailedError: 7, errors.FedtlError: 1}
    for kind, code in kinds.items():
        assert kind.exit_code == code and code in errors.EXIT_CODES
    assert errors.REFUSED_BY_SERVER == 3
    assert main(["simulate", "--rounds", "0"]) == 4  # RunConfig refuses it
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["simulate", "--no-such-option"])
    assert usage.value.code == 2
    text = " ".join(build_parser().format_help().split())
    assert all(f"{k} {v}" in text for k, v in errors.EXIT_CODES.items())
    capsys.readouterr()


def test_version_names_fedtl_and_its_stack_without_starting_tensorflow() -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    probe = ("import sys\nfrom common.cli import main\ntry:\n    main(['--version'])\n"
             "except SystemExit as end:\n    assert end.code in (0, None), end.code\n"
             "print('tensorflow loaded' if 'tensorflow' in sys.modules else 'no tensorflow')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=True)
    lines = done.stdout.splitlines()
    for name in ("fedtl", "flwr", "tensorflow", "tensorflow-privacy", "dp-accounting"):
        assert f"{name} {version(name)}" in lines
    assert lines[-1] == "no tensorflow"


def test_every_option_of_every_command_says_what_it_does() -> None:
    import argparse

    from common.cli import build_parser

    def silent(parser: argparse.ArgumentParser, name: str) -> list[str]:
        found = []
        for action in parser._actions:  # argparse has no public walk over its options
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    found += silent(child, f"{name} {sub}")
            elif action.option_strings and not action.help:
                found.append(f"{name} {action.option_strings[0]}")
        return found

    assert silent(build_parser(), "fedtl") == []


def _parsed(*argv: str) -> RunConfig:
    from common.cli import build_parser
    from common.cli.options import settings_from

    return settings_from(build_parser().parse_args(list(argv)), out="o")


def test_a_preset_sets_its_settings_and_leaves_the_others_at_their_defaults() -> None:
    cfg = _parsed("simulate", "--preset", "domain-shift")
    assert cfg == RunConfig(out="o").replace(**PRESETS["domain-shift"])
    assert (cfg.second_moment, cfg.feature_centring, cfg.accountant, cfg.ridge_lambda,
            cfg.personalize, cfg.personal_method) == ("private", "site", "pld", 2.0, True,
                                                     "ridge+bias")


def test_an_option_given_beside_a_preset_wins_even_when_it_repeats_the_default() -> None:
    cfg = _parsed("simulate", "--preset", "domain-shift", "--accountant", "rdp",
                  "--ridge-lambda", "4", "--rounds", "3")
    assert (cfg.accountant, cfg.ridge_lambda, cfg.rounds) == ("rdp", 4.0, 3)
    assert (cfg.second_moment, cfg.feature_centring, cfg.personalize) == \
        ("private", "site", True)


def test_a_preset_is_offered_wherever_training_settings_are_and_every_preset_is_valid() -> None:
    from common.cli import build_parser
    from common.cli.options import preset_overridden, preset_text

    for name, settings in PRESETS.items():
        RunConfig(public="pub").replace(**settings)  # raises if a preset breaks a check
        for key in settings:  # simulate, compare and run all offer what a preset sets
            assert _field(key).metadata["scope"] == TRAINING, (name, key)
        assert preset_text(name).split()[0].startswith("--")
    args = build_parser().parse_args(["run", "--out", "o", "--classes", "a,b",
                                      "--preset", "domain-shift", "--accountant", "rdp"])
    assert preset_overridden(args) == ("--accountant rdp",)
    assert build_parser().parse_args(["compare", "--preset", "domain-shift"]).preset == \
        "domain-shift"
    assert preset_text("domain-shift") == ("--second-moment private --ridge-lambda 2 "
                                           "--feature-centring site --accountant pld "
                                           "--personalize --personal-weighting fixed")


def test_the_look_alike_preset_sets_the_hull_prior_the_noise_penalty_and_pld() -> None:
    from common.cli.options import preset_text

    cfg = _parsed("compare", "--preset", "look-alike", "--public", "pub")
    assert (cfg.sums_prior, cfg.ridge_penalty, cfg.accountant, cfg.head_method) == \
        ("public-hull", "noise", "pld", "ridge+sgd")
    assert preset_text("look-alike") == ("--sums-prior public-hull --ridge-penalty noise "
                                         "--accountant pld")


def test_a_preset_that_needs_an_option_the_command_line_lacks_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match=r"^--preset look-alike sets --sums-prior "
                       r"public-hull .*: --sums-prior public-hull .* needs .*--public"):
        _parsed("simulate", "--preset", "look-alike")
    # An error of the command line's own options is not blamed on the preset.
    with pytest.raises(ConfigError, match=r"^holdout must be in \(0, 1\)"):
        _parsed("simulate", "--preset", "look-alike", "--holdout", "1.5")


def test_a_fixed_penalty_beside_the_look_alike_preset_says_how_to_keep_it() -> None:
    with pytest.raises(ConfigError, match=r"--ridge-penalty noise \(set by --preset "
                       r"look-alike\) .* add --ridge-penalty fixed to keep yours"):
        _parsed("simulate", "--preset", "look-alike", "--public", "pub", "--ridge-lambda", "2")
    cfg = _parsed("simulate", "--preset", "look-alike", "--public", "pub",
                  "--ridge-lambda", "2", "--ridge-penalty", "fixed")
    assert (cfg.ridge_penalty, cfg.ridge_lambda, cfg.sums_prior) == ("fixed", 2.0,
                                                                     "public-hull")


def test_a_run_with_a_preset_says_what_the_preset_set_and_what_the_options_replaced(
        capsys: pytest.CaptureFixture[str]) -> None:
    from common.cli import build_parser
    from common.cli.main import _settings

    args = build_parser().parse_args(["simulate", "--preset", "domain-shift",
                                      "--accountant", "rdp"])
    assert _settings(args, out="o").accountant == "rdp"
    assert capsys.readouterr().out.strip() == (
        "preset domain-shift: --second-moment private --ridge-lambda 2 --feature-centring "
        "site --accountant pld --personalize --personal-weighting fixed (given beside it: "
        "--accountant rdp)")
    _settings(build_parser().parse_args(["simulate"]), out="o")
    assert capsys.readouterr().out == ""


def _field(name: str) -> Field[Any]:
    return next(f for f in fields(RunConfig) if f.name == name)


def test_the_readme_gives_each_preset_as_the_flower_run_config_it_stands_for() -> None:
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    literal = {bool: lambda v: str(v).lower(), str: lambda v: f"'{v}'", float: repr}
    for name, settings in PRESETS.items():
        run_config = " ".join(f"{key.replace('_', '-')}={literal[type(value)](value)}"
                              for key, value in settings.items())
        assert f'`--preset {name}` is `--run-config "{run_config}"`' in readme
        assert RunConfig.from_flower({"public": "pub", **{key.replace("_", "-"): value for
                                      key, value in settings.items()}}) == \
            RunConfig(public="pub").replace(**settings)
