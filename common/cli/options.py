"""Command-line options made from RunConfig's own declaration of each setting."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields
from typing import Any

from common.config import PRESET_USES, PRESETS, TRAINING, RunConfig
from common.errors import ConfigError

_TYPES = {"int": int, "float": float, "str": str}
GIVEN = "given_settings"  # the namespace attribute naming the settings the command line set


class _Given(argparse.Action):
    """Stores a setting and notes that the command line gave it: a --preset fills only the
    settings left alone, even where an option repeats the default (argparse cannot tell)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        setattr(namespace, GIVEN, getattr(namespace, GIVEN, frozenset()) | {self.dest})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except a switch's ("--no-dp (default: True)" reads as the opposite),
    None and one the help already states."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def option_name(f: Field) -> str:
    """The option a setting has on the command line (a true-by-default switch is --no-x)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_settings(parser: argparse.ArgumentParser | Any, *scopes: str) -> None:
    """One option per RunConfig setting of ``scopes``, with its default, choices and help
    (and --preset where training settings are)."""
    if TRAINING in scopes:
        parser.add_argument(
            "--preset", choices=tuple(PRESETS), default=None,
            help="a set of settings measured together; options given beside it win. "
            + "; ".join(f"{name}: {preset_text(name)} (for {PRESET_USES[name]})"
                        for name in PRESETS).replace("%", "%%")
            + ". With pld a deployed site whose ledger composes with rdp counts the run "
            "above its target")
    for f in fields(RunConfig):
        meta = f.metadata
        if meta.get("scope") not in scopes:
            continue
        kind = str(f.type)
        default = default_of(f)
        if kind == "bool":
            if default and not meta.get("flag"):
                raise TypeError(f"setting {f.name} is true by default and needs a --no- flag")
            parser.add_argument(option_name(f), dest=f.name, action=_Given, nargs=0,
                                const=not default, default=default, help=meta["help"])
            continue
        parser.add_argument(option_name(f), *meta.get("aliases", ()), dest=f.name,
                            action=_Given, type=_TYPES[kind], default=default,
                            choices=meta.get("choices"), help=meta["help"])


def preset_text(name: str) -> str:
    """A preset as the options it stands for: ``--second-moment private --personalize``."""
    return " ".join(_as_option(key, value) for key, value in PRESETS[name].items())


def _as_option(key: str, value: Any) -> str:
    option = next(option_name(f) for f in fields(RunConfig) if f.name == key)
    return option if value is True else f"{option} {value:g}" if isinstance(value, float) \
        else f"{option} {value}"


def settings_from(args: argparse.Namespace, **fixed: Any) -> RunConfig:
    """The RunConfig of the parsed ``args`` (``fixed`` values over them), checked once: a
    --preset's settings under the options the command line gave."""
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)
              if hasattr(args, f.name) and f.name not in fixed}
    preset, given = _preset_and_given(args)
    kept = {key: value for key, value in preset.items() if key not in given}
    try:
        cfg = RunConfig(**{**values, **kept, **fixed})
    except ConfigError as error:
        if kept and _valid({**values, **fixed}):
            # The user typed --preset, not the options it stands for: name it.
            raise ConfigError(f"--preset {args.preset} sets {preset_text(args.preset)}: "
                              f"{error}") from error
        raise
    # Only the command line can tell a penalty given from the default one (a Flower run
    # config always carries ridge-lambda): one given and then ignored would mislead.
    if "ridge_lambda" in given and cfg.ridge_penalty == "noise":
        by_preset = "ridge_penalty" in kept
        raise ConfigError(f"--ridge-lambda {cfg.ridge_lambda:g} is the fixed penalty, and "
                          "--ridge-penalty noise"
                          + (f" (set by --preset {args.preset})" if by_preset else "")
                          + " sets the penalty from the release's noise instead: "
                          + ("add --ridge-penalty fixed to keep yours" if by_preset
                             else "pass one of the two"))
    return cfg


def _valid(values: dict[str, Any]) -> bool:
    try:
        RunConfig(**values)
    except ConfigError:
        return False
    return True


def preset_overridden(args: argparse.Namespace) -> tuple[str, ...]:
    """The options given beside --preset that replace one of its settings."""
    preset, given = _preset_and_given(args)
    return tuple(_as_option(key, getattr(args, key)) for key in preset if key in given)


def _preset_and_given(args: argparse.Namespace) -> tuple[dict[str, Any], frozenset[str]]:
    """The --preset's settings ({} without one) and the settings the command line gave."""
    return (PRESETS.get(getattr(args, "preset", None) or "", {}),
            getattr(args, GIVEN, frozenset()))
