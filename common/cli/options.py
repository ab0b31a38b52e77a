"""Command-line options made from RunConfig's own declaration of each setting."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields
from typing import Any

from common.config import RunConfig

_TYPES = {"int": int, "float": float, "str": str}


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
    """One option per RunConfig setting of ``scopes``, with its default, choices and help."""
    for f in fields(RunConfig):
        meta = f.metadata
        if meta.get("scope") not in scopes:
            continue
        kind = str(f.type)
        default = default_of(f)
        if kind == "bool":
            if default and not meta.get("flag"):
                raise TypeError(f"setting {f.name} is true by default and needs a --no- flag")
            parser.add_argument(option_name(f), dest=f.name,
                                action="store_false" if default else "store_true",
                                help=meta["help"])
            continue
        parser.add_argument(option_name(f), *meta.get("aliases", ()), dest=f.name,
                            type=_TYPES[kind], default=default, choices=meta.get("choices"),
                            help=meta["help"])


def settings_from(args: argparse.Namespace, **fixed: Any) -> RunConfig:
    """The RunConfig of the parsed ``args`` (``fixed`` values over them), checked once."""
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)
              if hasattr(args, f.name) and f.name not in fixed}
    return RunConfig(**{**values, **fixed})
