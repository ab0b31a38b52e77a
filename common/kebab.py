"""Kebab-case mappings (a Flower run config, a site's policy file) into frozen dataclasses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import Field, fields
from typing import Any, TypeVar

from common.errors import ConfigError

T = TypeVar("T")


def from_kebab(cls: type[T], values: Mapping[str, Any],
               coerce: Callable[[str, Any, Field], Any], where: str = "") -> T:
    """``cls`` from kebab-case ``values``: each coerced to its field's type by ``coerce``;
    missing keys keep their defaults, unknown keys are refused naming the known ones."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{where}unknown setting {key!r}; known: "
                              f"{sorted(k.replace('_', '-') for k in known)}")
        kwargs[name] = coerce(name, value, known[name])
    return cls(**kwargs)
