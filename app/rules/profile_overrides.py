"""A profile with a rule's (or a service's) `overrides` merged over it."""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from typing import Any

from app.rules.file_shape import Finding
from app.rules.yaml_source import Path as DataPath

MAX_DURATION_LIMIT_S = 24 * 3600
# Keys that shape a profile itself and so cannot be overridden per rule or per answer.
NOT_OVERRIDABLE = ("extends", "instructions_file", "api")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base's."""
    merged = deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = deepcopy(value)
    return merged


def max_duration(value: Any, findings: list[Finding]) -> float | None:
    """`max_duration_s` as seconds; None (and a finding) when it is not a valid limit."""
    if value is None:
        return None
    path: DataPath = ("max_duration_s",)
    if isinstance(value, bool) or not isinstance(value, int | float):
        findings.append(Finding(path, (), "max_duration_s must be a number of seconds"))
        return None
    if not 0 < value <= MAX_DURATION_LIMIT_S:
        findings.append(Finding(path, (), "max_duration_s must be between 0 and 86400"))
        return None
    return float(value)
