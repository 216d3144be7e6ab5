"""The shape check of a rule file: pydantic's verdict as findings, and the parts that pass.

A finding names its place as a path in the data (the loader turns it into `file:line`), and
an unknown key comes with the closest key the model takes there. When a file has problems,
each part of it (a rule, a list, a schedule, ...) is validated on its own, leaving out keys
whose values fail, so the checks after this one still see everything that is valid.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from app.rules.file_model import (
    ActionSpec,
    DefaultsSpec,
    FunctionSpec,
    ListSpec,
    Name,
    RuleFileSpec,
    RuleSpec,
    ServiceSpec,
    TestCaseSpec,
    TransferTargetSpec,
)
from app.rules.schedule import ScheduleSpec
from app.rules.yaml_source import Path as DataPath

_NAME = TypeAdapter(Name)
# Rounds of leaving out failing keys before a part of a broken file is given up on.
_SALVAGE_ROUNDS = 4
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem inside one value being validated: where it is, relative to that value.

    `path` gives the line; `where` names the place in the message (for an unknown or a
    missing key, the mapping holding it). `kind` says what the finding is about: a value, a
    key written that is not known, or a key that is missing.
    """

    path: DataPath
    where: DataPath
    message: str
    kind: Literal["value", "unknown_key", "missing_key"] = "value"


@dataclass(frozen=True)
class FileParts:
    """The parts of a rule file that passed validation; rules and tests keep their index."""

    defaults: DefaultsSpec
    profiles: Mapping[str, Mapping[str, Any]]
    lists: Mapping[str, ListSpec]
    schedules: Mapping[str, ScheduleSpec]
    services: Mapping[str, ServiceSpec]
    rules: tuple[tuple[int, RuleSpec], ...]
    default: ActionSpec | None
    on_error: ActionSpec | None
    tests: tuple[tuple[int, TestCaseSpec], ...]
    transfer_targets: Mapping[str, TransferTargetSpec] = field(default_factory=dict)
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)


def check_shape(data: dict[str, Any]) -> tuple[FileParts, list[Finding]]:
    """Validate a rule file's data against its models: the valid parts, and what is wrong.

    With problems, the parts are what still validates on its own (see `_salvage`), so later
    checks can look at it and report its problems in the same run.
    """
    try:
        spec = RuleFileSpec.model_validate(data)
    except ValidationError as exc:
        return _salvaged_parts(data), validation_findings(exc, data, RuleFileSpec)
    parts = FileParts(
        defaults=spec.defaults,
        profiles=spec.profiles,
        lists=spec.lists,
        schedules=spec.schedules,
        services=spec.services,
        rules=tuple(enumerate(spec.rules)),
        default=spec.default,
        on_error=spec.on_error,
        tests=tuple(enumerate(spec.tests)),
        transfer_targets=spec.transfer_targets,
        functions=spec.functions,
    )
    return parts, []


def _salvaged_parts(data: dict[str, Any]) -> FileParts:
    """Each part of a file with shape problems on its own, so later checks see the rest."""

    def mapping(section: str) -> dict[Any, Any]:
        value = data.get(section)
        return value if isinstance(value, dict) else {}

    def sequence(section: str) -> list[Any]:
        value = data.get(section)
        return value if isinstance(value, list) else []

    def named(section: str, model: type[_M]) -> dict[str, _M]:
        parts = {}
        for name, raw in mapping(section).items():
            if _is_name(name) and (part := _salvage(model, raw)) is not None:
                parts[name] = part
        return parts

    def indexed(section: str, model: type[_M]) -> tuple[tuple[int, _M], ...]:
        salvaged = ((i, _salvage(model, raw)) for i, raw in enumerate(sequence(section)))
        return tuple((i, part) for i, part in salvaged if part is not None)

    return FileParts(
        defaults=_salvage(DefaultsSpec, mapping("defaults")) or DefaultsSpec(),
        profiles={
            name: body
            for name, body in mapping("profiles").items()
            if _is_name(name) and isinstance(body, dict)
        },
        lists=named("lists", ListSpec),
        schedules=named("schedules", ScheduleSpec),
        services=named("services", ServiceSpec),
        rules=indexed("rules", RuleSpec),
        default=_salvage(ActionSpec, data["default"]) if "default" in data else None,
        on_error=_salvage(ActionSpec, data["on_error"]) if "on_error" in data else None,
        tests=indexed("tests", TestCaseSpec),
        transfer_targets=named("transfer_targets", TransferTargetSpec),
        functions=named("functions", FunctionSpec),
    )


def _is_name(value: Any) -> bool:
    try:
        _NAME.validate_python(value)
    except ValidationError:
        return False
    return True


def _salvage(model: type[_M], raw: Any) -> _M | None:
    """`raw` as `model`, leaving out the keys whose values fail; None when that is not enough.

    Only used for a file whose findings are reported: what is left out here is in them, and
    what remains is checked further so its problems come out in the same run. A list item is
    never left out, so the items after it keep their places.
    """
    value = deepcopy(raw)
    for _ in range(_SALVAGE_ROUNDS):
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            failing = []
            for error in exc.errors():
                path = _data_path(value, error["loc"])
                if error["type"] == "missing" or not path or not isinstance(path[-1], str):
                    continue
                parent = _node_at(value, path[:-1])
                if isinstance(parent, dict) and path[-1] in parent:
                    failing.append((parent, path[-1]))
            if not failing:
                return None
            for parent, key in failing:
                parent.pop(key, None)
    return None


_ABSENT = object()


def _node_at(data: Any, path: DataPath) -> Any:
    """The value at `path` in `data`, or _ABSENT."""
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return _ABSENT
    return node


def written(data: Any, path: DataPath) -> bool:
    """True when `path` leads to a value written in `data` (not only to its parent)."""
    return _node_at(data, path) is not _ABSENT


def validation_findings(
    exc: ValidationError,
    data: Any,
    model: Any,
    own_keys: Iterable[str] = (),
    *,
    refused_by: str | None = None,
) -> list[Finding]:
    """Pydantic's errors on `data` (validated as `model`) as findings, one per place.

    An unknown key gets the closest key the model has at that place as a suggestion;
    `own_keys` are further keys allowed at the top of `data`. With `refused_by` (an API's
    name), an unknown key's message also names the keys the API takes at that place.
    """
    findings: list[Finding] = []
    errors = exc.errors()
    # A list left empty because its only item was invalid is noise next to that item's error.
    errors = [e for e in errors if e["type"] != "too_short" or len(errors) == 1]
    for error in errors:
        path = _data_path(data, error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            known = list(_allowed_keys(model, tuple(error["loc"][:-1])))
            if len(path) == 1:
                known += own_keys
            message = f"unknown key '{path[-1]}'" + did_you_mean(str(path[-1]), known)
            allowed = _allowed_keys(model, tuple(error["loc"][:-1]), sent_only=True)
            if refused_by is not None and allowed:
                place = ".".join(str(p) for p in path[:-1]) or "the session"
                message += f": {refused_by} refuses it ({place} takes {', '.join(allowed)})"
            finding = Finding(path, path[:-1], message, "unknown_key")
        elif kind == "missing":
            missing = [
                str(e["loc"][-1])
                for e in errors
                if e["type"] == "missing" and _data_path(data, e["loc"])[:-1] == path[:-1]
            ]
            keys = ", ".join(f"'{key}'" for key in missing)
            message = f"missing key{'s' if len(missing) > 1 else ''} {keys}"
            finding = Finding(path, path[:-1], message, "missing_key")
        else:
            finding = Finding(path, path, str(error["msg"]).removeprefix("Value error, "))
        where, message = finding.where, finding.message
        if all((f.where, f.message) != (where, message) for f in findings):
            findings.append(finding)
    return findings


def _allowed_keys(
    annotation: Any, loc: tuple[Any, ...], *, sent_only: bool = False
) -> tuple[str, ...]:
    """The keys the model at `loc` (a pydantic error location under `annotation`) takes.

    `sent_only` leaves out the fields a model refuses and never sends (`exclude`).
    """
    if get_origin(annotation) is Annotated:
        return _allowed_keys(get_args(annotation)[0], loc, sent_only=sent_only)
    if get_origin(annotation) in (Union, types.UnionType):
        choices = [a for a in get_args(annotation) if a is not type(None)]
        for choice in choices:
            if keys := _allowed_keys(choice, loc, sent_only=sent_only):
                return keys
        # A union can name the member it tried in the location: skip that part.
        for choice in choices if loc else ():
            if keys := _allowed_keys(choice, loc[1:], sent_only=sent_only):
                return keys
        return ()
    model = annotation if isinstance(annotation, type) else None
    if model is not None and issubclass(model, BaseModel):
        fields = model.model_fields
        if not loc:
            return tuple(
                info.alias or name
                for name, info in fields.items()
                if not (sent_only and info.exclude)
            )
        for name, info in fields.items():
            if loc[0] in (name, info.alias):
                return _allowed_keys(info.annotation, loc[1:], sent_only=sent_only)
        return ()
    if not loc:
        return ()
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (tuple, list) and args and isinstance(loc[0], int):
        return _allowed_keys(args[0], loc[1:], sent_only=sent_only)
    if origin is dict and len(args) == 2:
        return _allowed_keys(args[1], loc[1:], sent_only=sent_only)
    return ()


def _data_path(data: Any, loc: Iterable[Any]) -> DataPath:
    """Keep the parts of a pydantic `loc` that exist in the data (drops union tags)."""
    path: list[str | int] = []
    node = data
    parts = list(loc)
    for i, part in enumerate(parts):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and i == len(parts) - 1 and isinstance(part, str):
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and part.endswith("_"):
            alias = part.rstrip("_")
            if alias in node:
                node = node[alias]
                path.append(alias)
    return tuple(path)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
