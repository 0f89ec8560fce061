"""``key=value`` command-line overrides for config dataclasses (values parsed as JSON when possible)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from genrec.errors import ConfigError

T = TypeVar("T")


def apply_overrides(config: T, pairs: list[str]) -> T:
    """Return a copy of dataclass ``config`` with ``key=value`` pairs applied; unknown keys or
    values of the wrong type are a clear error listing the valid keys."""
    names = {f.name: f for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        if key not in names:
            raise ConfigError(f"unknown setting {key!r} for {type(config).__name__}; valid: {', '.join(sorted(names))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # bare strings need no quotes
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):  # a nested config: a partial update
            changes[key] = apply_overrides(current, [f"{k}={json.dumps(v)}" for k, v in value.items()])
            continue
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key} expects true/false, got {raw!r}")
        if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if current is not None and not isinstance(value, type(current)):
            raise ConfigError(f"{key} expects {type(current).__name__}, got {raw!r}")
        changes[key] = value
    return dataclasses.replace(config, **changes)
