"""Read a rule file and everything it references, validate it fully, and compile it.

Every problem is collected as `file:line: message`; a file with any error never yields a
Ruleset. Reading files is the only I/O here, and it goes through `read_text` so tests and
reloads can see exactly which files a ruleset came from.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import ValidationError

from app.phone_numbers import NumberFormatError, normalize_number, normalize_prefix
from app.rules.accept_body import (
    SessionConfig,
    build_accept_body,
    function_tool_warnings,
    validate_session_config,
)
from app.rules.conditions import (
    ALWAYS,
    AllOf,
    AnyOf,
    Condition,
    ExactNumber,
    HeaderCondition,
    InCountries,
    InNumberList,
    IsAnonymous,
    Not,
    NumberCondition,
    NumberPrefix,
    NumberRegex,
    NumberTest,
    ScheduleCondition,
    all_of,
)
from app.rules.file_model import (
    ActionSpec,
    NumberTermSpec,
    RuleFileSpec,
    WhenSpec,
)
from app.rules.number_set import NumberListError, NumberSet
from app.rules.problems import Problem, RuleFileError
from app.rules.regex_safety import nested_unbounded_repeat
from app.rules.ruleset import (
    AcceptAction,
    Action,
    CompiledRule,
    ReferAction,
    RejectAction,
    Ruleset,
    check_target_uri,
)
from app.rules.schedule import CompiledSchedule, compile_schedule
from app.rules.templates import TemplateCompileError, compile_template
from app.rules.yaml_source import LineIndex, describe_path, load_yaml
from app.rules.yaml_source import Path as DataPath

MAX_DURATION_LIMIT_S = 24 * 3600
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,100}")
_PATTERN_TOKEN = re.compile(r"[0-9]|X|Z|N|\[(?:[0-9](?:-[0-9])?)+\]")
_DEFAULT_ON_ERROR = RejectAction(503)

ReadText = Callable[[Path], str]


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@dataclass
class _Context:
    """State of one load: the main file's data and lines, and the problems found."""

    main: str
    data: Any
    lines: LineIndex
    base_dir: Path
    read: ReadText
    region: str = "ZZ"
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    attempted: list[str] = field(default_factory=list)
    # Templates read from instructions files, already checked there: text -> it compiles.
    checked_templates: dict[str, bool] = field(default_factory=dict)

    def fail(self) -> RuleFileError:
        return RuleFileError(_sorted(self.problems), tuple(dict.fromkeys(self.attempted)))

    def error(self, path: DataPath, message: str) -> None:
        self.problems.append(Problem(self.main, self.lines.line_of(path), message))

    def warn(self, path: DataPath, message: str) -> None:
        line = self.lines.line_of(path)
        self.warnings.append(Problem(self.main, line, message, "warning"))

    def read_referenced(self, path: DataPath, relative: str) -> tuple[str, str] | None:
        """Read a file named in the rule file; None (and an error) when it cannot be read."""
        target = (self.base_dir / relative).resolve()
        shown = str(self.base_dir / relative)
        self.attempted.append(shown)
        try:
            text = self.read(target)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.error(path, f"cannot read {shown}: {reason}")
            return None
        self.files[shown] = text
        return shown, text


def load_ruleset(path: Path | str, *, read_text: ReadText = _read_text) -> Ruleset:
    """Load, validate and compile the rule file at `path`; raise RuleFileError listing problems."""
    main_path = Path(path)
    shown = str(main_path)
    try:
        text = read_text(main_path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problem = Problem(shown, 0, f"cannot read the rule file: {reason}")
        raise RuleFileError([problem], (shown,)) from None
    try:
        data, lines = load_yaml(text, shown)
    except RuleFileError as exc:
        raise RuleFileError(exc.problems, (shown,)) from None
    ctx = _Context(shown, data, lines, main_path.parent, read_text, files={shown: text})
    ctx.attempted.append(shown)
    if not isinstance(data, dict):
        ctx.error((), "a rule file is a YAML mapping (version: 1, ...)")
        raise ctx.fail()
    try:
        spec = RuleFileSpec.model_validate(data)
    except ValidationError as exc:
        ctx.problems.extend(_validation_problems(exc, (), ctx))
        raise ctx.fail() from None
    return _compile(spec, ctx)


def _compile(spec: RuleFileSpec, ctx: _Context) -> Ruleset:
    timezone = _zone(spec.defaults.timezone, ("defaults", "timezone"), ctx) or ZoneInfo("UTC")
    if spec.defaults.region is not None:
        region = spec.defaults.region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            ctx.error(("defaults", "region"), f"unknown region '{spec.defaults.region}'")
        else:
            ctx.region = region
    lists = _compile_lists(spec, ctx)
    schedules = _compile_schedules(spec, ctx, timezone.key)
    profiles = _resolve_profiles(spec, ctx)
    compiler = _RuleCompiler(ctx, lists, schedules, profiles)
    rules = tuple(compiler.rule(i, rule) for i, rule in enumerate(spec.rules))
    _check_unique_rule_names(spec, ctx)
    default = compiler.action(spec.default, ("default",))
    on_error = (
        compiler.action(spec.on_error, ("on_error",))
        if spec.on_error is not None
        else _DEFAULT_ON_ERROR
    )
    _warn_shadowed(compiler.signatures, spec, ctx)
    _check_test_expectations(spec, ctx)
    if ctx.problems:
        raise ctx.fail()
    assert default is not None
    assert on_error is not None
    return Ruleset(
        version=_version(ctx.files),
        files=tuple(ctx.files),
        timezone=timezone,
        region=None if ctx.region == "ZZ" else ctx.region,
        rules=tuple(r for r in rules if r is not None),
        default=default,
        on_error=on_error,
        warnings=tuple(str(w) for w in _sorted(ctx.warnings)),
        tests=tuple((ctx.lines.line_of(("tests", i)), t) for i, t in enumerate(spec.tests)),
        main_file=ctx.main,
    )


def _version(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(files[name].encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.file, p.line))


def _zone(name: str, path: DataPath, ctx: _Context) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        ctx.error(path, f"unknown time zone '{name}' (use an IANA name such as Europe/Berlin)")
        return None


def _validation_problems(exc: ValidationError, base: DataPath, ctx: _Context) -> list[Problem]:
    """Turn pydantic errors into `file:line: where: message`, one per place."""
    problems = []
    seen: set[tuple[DataPath, str]] = set()
    errors = exc.errors()
    # A list left empty because its only item was invalid is noise next to that item's error.
    errors = [e for e in errors if e["type"] != "too_short" or len(errors) == 1]
    for error in errors:
        path = _data_path(ctx.data, (*base, *error["loc"]))
        kind = error["type"]
        if kind == "extra_forbidden":
            where, message = path[:-1], f"unknown key '{path[-1]}'"
        elif kind == "missing":
            where, message = path[:-1], f"missing key '{error['loc'][-1]}'"
        else:
            where, message = path, str(error["msg"]).removeprefix("Value error, ")
        if (where, message) in seen:
            continue
        seen.add((where, message))
        label = describe_path(where)
        text = f"{label}: {message}" if label else message
        problems.append(Problem(ctx.main, ctx.lines.line_of(path), text))
    return problems


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


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _compile_lists(spec: RuleFileSpec, ctx: _Context) -> dict[str, NumberSet]:
    lists: dict[str, NumberSet] = {}
    for name, list_spec in spec.lists.items():
        path: DataPath = ("lists", name)
        if list_spec.numbers is not None:
            try:
                lists[name] = NumberSet.build(list_spec.numbers, ctx.region)
            except NumberListError as exc:
                ctx.error((*path, exc.index), f"lists.{name}[{exc.index}]: {exc.message}")
            continue
        assert list_spec.file is not None
        read = ctx.read_referenced((*path, "file"), list_spec.file)
        if read is None:
            continue
        shown, text = read
        try:
            lists[name] = NumberSet.parse_file_text(text, ctx.region)
        except NumberListError as exc:
            ctx.problems.append(Problem(shown, exc.index, exc.message))
    return lists


def _compile_schedules(
    spec: RuleFileSpec, ctx: _Context, default_timezone: str
) -> dict[str, CompiledSchedule]:
    compiled = {}
    for name, schedule in spec.schedules.items():
        try:
            compiled[name] = compile_schedule(name, schedule, default_timezone)
        except ValueError as exc:
            ctx.error(("schedules", name), f"schedules.{name}: {exc}")
    return compiled


@dataclass(frozen=True)
class _Profile:
    merged: dict[str, Any]
    max_duration_s: float | None


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base's."""
    merged = deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = deepcopy(value)
    return merged


def _resolve_profiles(spec: RuleFileSpec, ctx: _Context) -> dict[str, _Profile]:
    own: dict[str, dict[str, Any]] = {}
    for name, raw in spec.profiles.items():
        path: DataPath = ("profiles", name)
        body = dict(raw)
        instructions_file = body.pop("instructions_file", None)
        if instructions_file is not None:
            if "instructions" in body:
                ctx.error(
                    path, f"profiles.{name}: give instructions or instructions_file, not both"
                )
            elif not isinstance(instructions_file, str):
                ctx.error((*path, "instructions_file"), "instructions_file must be a path")
            else:
                read = ctx.read_referenced((*path, "instructions_file"), instructions_file)
                if read is not None:
                    shown, text = read
                    body["instructions"] = text
                    try:
                        compile_template(text)
                    except TemplateCompileError as exc:
                        ctx.problems.append(Problem(shown, exc.lineno, str(exc)))
                        ctx.checked_templates[text] = False
                    else:
                        ctx.checked_templates[text] = True
        own[name] = body

    resolved: dict[str, _Profile] = {}
    merged_cache: dict[str, dict[str, Any] | None] = {}

    def merged(name: str, chain: tuple[str, ...]) -> dict[str, Any] | None:
        if name in merged_cache:
            return merged_cache[name]
        body = own[name]
        parent = body.get("extends")
        result: dict[str, Any] | None
        if parent is None:
            result = body
        elif not isinstance(parent, str) or parent not in own:
            ctx.error(
                ("profiles", name, "extends"),
                f"profiles.{name}.extends: unknown profile '{parent}'"
                + _did_you_mean(str(parent), own),
            )
            result = None
        elif parent in chain or parent == name:
            cycle = " -> ".join((*chain, name, parent))
            ctx.error(
                ("profiles", name, "extends"), f"profiles extend each other in a cycle: {cycle}"
            )
            result = None
        else:
            base = merged(parent, (*chain, name))
            result = None if base is None else _deep_merge(base, body)
        merged_cache[name] = result
        return result

    for name in own:
        found = merged(name, ())
        if found is None:
            continue
        body = {k: v for k, v in found.items() if k != "extends"}
        max_duration = _max_duration(body.pop("max_duration_s", None), ("profiles", name), ctx)
        config = _session_config(body, ("profiles", name), ctx)
        if config is not None:
            for warning in function_tool_warnings(config):
                ctx.warn(("profiles", name), f"profiles.{name}: {warning}")
            resolved[name] = _Profile(body, max_duration)
    return resolved


def _max_duration(value: Any, path: DataPath, ctx: _Context) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        ctx.error((*path, "max_duration_s"), "max_duration_s must be a number of seconds")
        return None
    if not 0 < value <= MAX_DURATION_LIMIT_S:
        ctx.error((*path, "max_duration_s"), "max_duration_s must be between 0 and 86400")
        return None
    return float(value)


def _session_config(body: Mapping[str, Any], path: DataPath, ctx: _Context) -> SessionConfig | None:
    try:
        config = validate_session_config(body)
    except ValidationError as exc:
        ctx.problems.extend(_validation_problems(exc, path, ctx))
        return None
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions in ctx.checked_templates:
        return config if ctx.checked_templates[instructions] else None
    if isinstance(instructions, str):
        try:
            compile_template(instructions)
        except TemplateCompileError as exc:
            ctx.error((*path, "instructions"), f"{describe_path(path)}.instructions: {exc}")
            return None
    return config


class _RuleCompiler:
    def __init__(
        self,
        ctx: _Context,
        lists: Mapping[str, NumberSet],
        schedules: Mapping[str, CompiledSchedule],
        profiles: Mapping[str, _Profile],
    ) -> None:
        self.ctx = ctx
        self.lists = lists
        self.schedules = schedules
        self.profiles = profiles
        # What each rule's `when` requires, for the shadowed-rule warning.
        self.signatures: list[dict[str, Any] | None] = []

    def rule(self, index: int, spec: Any) -> CompiledRule | None:
        path: DataPath = ("rules", index)
        errors_before = len(self.ctx.problems)
        when = self.when(spec.when, (*path, "when")) if spec.when is not None else ALWAYS
        self.signatures.append(_signature(spec.when, when) if spec.when is not None else {})
        action = self.action(spec, path)
        if len(self.ctx.problems) > errors_before or action is None:
            return None
        return CompiledRule(spec.name, when, action, self.ctx.lines.line_of(path))

    def when(self, spec: WhenSpec, path: DataPath) -> Condition:
        parts: list[Condition] = []
        if spec.caller is not None:
            parts.append(self.numbers("caller", spec.caller, (*path, "caller")))
        if spec.called is not None:
            parts.append(self.numbers("called", spec.called, (*path, "called")))
        for name, test in (spec.header or {}).items():
            parts.append(self.header(name, test, (*path, "header", name)))
        if spec.schedule is not None:
            schedule = self.schedules.get(spec.schedule)
            if schedule is None:
                if spec.schedule not in self.ctx.data.get("schedules", {}):
                    self.ctx.error(
                        (*path, "schedule"),
                        f"unknown schedule '{spec.schedule}'"
                        + _did_you_mean(spec.schedule, self.ctx.data.get("schedules", {})),
                    )
            else:
                parts.append(ScheduleCondition(schedule))
        if spec.all is not None:
            parts.append(
                AllOf(tuple(self.when(s, (*path, "all", i)) for i, s in enumerate(spec.all)))
            )
        if spec.any is not None:
            parts.append(
                AnyOf(tuple(self.when(s, (*path, "any", i)) for i, s in enumerate(spec.any)))
            )
        if spec.not_ is not None:
            parts.append(Not(self.when(spec.not_, (*path, "not"))))
        return all_of(parts) if parts else ALWAYS

    def numbers(
        self, role: str, terms: tuple[NumberTermSpec, ...], path: DataPath
    ) -> NumberCondition:
        compiled: list[NumberTest] = []
        for i, term in enumerate(terms):
            term_path = (*path, i) if isinstance(self._at(path), list) else path
            test = self.number_term(term, term_path)
            if test is not None:
                compiled.append(test)
        assert role in ("caller", "called")
        return NumberCondition(role, tuple(compiled))  # type: ignore[arg-type]

    def _at(self, path: DataPath) -> Any:
        node = self.ctx.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    def number_term(self, term: NumberTermSpec, path: DataPath) -> NumberTest | None:
        region = self.ctx.region
        test: NumberTest
        try:
            if term.exact is not None:
                number = normalize_number(term.exact, region)
                test = ExactNumber(number, number)
                return test
            if term.prefix is not None:
                prefix = normalize_prefix(term.prefix.removesuffix("*"), region)
                test = NumberPrefix(prefix, f"prefix {prefix}*")
                return test
        except NumberFormatError as exc:
            self.ctx.error(path, f"{describe_path(path)}: {exc}")
            return None
        if term.pattern is not None:
            regex = _pattern_regex(term.pattern)
            if regex is None:
                self.ctx.error(
                    path,
                    f"{describe_path(path)}: pattern '{term.pattern}' may hold digits, X (0-9),"
                    " Z (1-9), N (2-9) and classes like [1-5], after an optional +",
                )
                return None
            test = NumberRegex(regex, f"pattern {term.pattern}")
            return test
        if term.regex is not None:
            try:
                compiled = re.compile(term.regex, re.ASCII)
            except re.error as exc:
                self.ctx.error(path, f"{describe_path(path)}: invalid regex: {exc}")
                return None
            test = NumberRegex(compiled, f"regex {term.regex}")
            return test
        if term.in_ is not None:
            numbers = self.lists.get(term.in_)
            if numbers is None:
                if term.in_ not in self.ctx.data.get("lists", {}):
                    self.ctx.error(
                        path,
                        f"{describe_path(path)}: unknown list '{term.in_}'"
                        + _did_you_mean(term.in_, self.ctx.data.get("lists", {})),
                    )
                return None
            test = InNumberList(numbers, f"in list {term.in_}")
            return test
        if term.country is not None:
            countries = []
            for code in term.country:
                if not isinstance(code, str) or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
                    self.ctx.error(path, f"{describe_path(path)}: unknown country code '{code}'")
                    return None
                countries.append(code.upper())
            test = InCountries(frozenset(countries), "in country " + "/".join(countries))
            return test
        assert term.anonymous is not None
        test = IsAnonymous(term.anonymous, "anonymous" if term.anonymous else "not anonymous")
        return test

    def header(self, name: str, test: Any, path: DataPath) -> Condition:
        if not _HEADER_NAME.fullmatch(name):
            self.ctx.error(path, f"'{name}' is not a valid SIP header name")
        if test.present is not None:
            state = "present" if test.present else "absent"
            return HeaderCondition(name.lower(), "present", test.present, f"{name} is {state}")
        if test.regex is not None:
            try:
                regex = re.compile(test.regex)
            except re.error as exc:
                self.ctx.error(path, f"{describe_path(path)}: invalid regex: {exc}")
                return ALWAYS
            if nested_unbounded_repeat(test.regex):
                self.ctx.error(
                    path,
                    f"{describe_path(path)}: regex repeats a group that itself repeats without"
                    " bound (like (a+)+); on a hostile header value it can take exponential"
                    " time. Rewrite it without the nested repetition",
                )
                return ALWAYS
            return HeaderCondition(name.lower(), "regex", regex, f"{name} matches {test.regex}")
        assert test.equals is not None
        return HeaderCondition(name.lower(), "equals", test.equals, f"{name} = {test.equals!r}")

    def action(self, spec: ActionSpec, path: DataPath) -> Action | None:
        if spec.reject is not None:
            return RejectAction(spec.reject.status_code)
        if spec.refer is not None:
            uri_path = (*path, "refer", "target_uri")
            try:
                target = compile_template(spec.refer.target_uri, "uri")
            except ValueError as exc:
                self.ctx.error(uri_path, f"{describe_path(uri_path)}: {exc}")
                return None
            if target.is_static:
                problem = check_target_uri(target.source)
                if problem is not None:
                    self.ctx.error(uri_path, f"{describe_path(uri_path)}: {problem}")
                    return None
            return ReferAction(target)
        assert spec.accept is not None
        accept_path = (*path, "accept")
        profile = self.profiles.get(spec.accept.profile)
        if profile is None:
            if spec.accept.profile not in self.ctx.data.get("profiles", {}):
                self.ctx.error(
                    (*accept_path, "profile"),
                    f"unknown profile '{spec.accept.profile}'"
                    + _did_you_mean(spec.accept.profile, self.ctx.data.get("profiles", {})),
                )
            return None
        body = profile.merged
        max_duration = profile.max_duration_s
        if spec.accept.overrides:
            overrides = dict(spec.accept.overrides)
            if "max_duration_s" in overrides:
                max_duration = _max_duration(
                    overrides.pop("max_duration_s"), (*accept_path, "overrides"), self.ctx
                )
            for key in ("extends", "instructions_file"):
                if key in overrides:
                    self.ctx.error(
                        (*accept_path, "overrides", key),
                        f"{key} is not allowed in overrides (use a profile)",
                    )
                    return None
            body = _deep_merge(body, overrides)
            if _session_config(body, (*accept_path, "overrides"), self.ctx) is None:
                return None
        config = validate_session_config(body)
        instructions = body.get("instructions")
        template = compile_template(instructions) if isinstance(instructions, str) else None
        return AcceptAction(
            profile=spec.accept.profile,
            body=build_accept_body(config),
            instructions=None if template is None or template.is_static else template,
            max_duration_s=max_duration,
        )


def _pattern_regex(pattern: str) -> re.Pattern[str] | None:
    text = pattern.removeprefix("+")
    out = [r"\+"]
    pos = 0
    while pos < len(text):
        match = _PATTERN_TOKEN.match(text, pos)
        if match is None:
            return None
        token = match.group()
        out.append({"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]"}.get(token, token))
        pos = match.end()
    if not text:
        return None
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error:  # a class like [5-1]
        return None


def _check_test_expectations(spec: RuleFileSpec, ctx: _Context) -> None:
    """`tests:` may only name rules and profiles that exist."""
    rules = {rule.name for rule in spec.rules}
    for i, case in enumerate(spec.tests):
        expect = case.expect
        if expect.rule is not None and expect.rule != "default" and expect.rule not in rules:
            ctx.error(
                ("tests", i, "expect"),
                f"tests[{i}].expect: unknown rule '{expect.rule}'"
                + _did_you_mean(expect.rule, rules),
            )
        if expect.profile is not None and expect.profile not in spec.profiles:
            ctx.error(
                ("tests", i, "expect"),
                f"tests[{i}].expect: unknown profile '{expect.profile}'"
                + _did_you_mean(expect.profile, spec.profiles),
            )


def _check_unique_rule_names(spec: RuleFileSpec, ctx: _Context) -> None:
    seen: set[str] = set()
    for i, rule in enumerate(spec.rules):
        if rule.name in seen:
            ctx.error(("rules", i, "name"), f"rule name '{rule.name}' is used twice")
        if rule.name == "default":
            ctx.error(("rules", i, "name"), "'default' is reserved for the default action")
        seen.add(rule.name)


def _signature(spec: WhenSpec, compiled: Condition) -> dict[str, Any] | None:
    """What a rule requires, key by key, in a form two rules can be compared in."""
    signature: dict[str, Any] = {}
    parts = compiled.parts if isinstance(compiled, AllOf) else (compiled,)
    for part in parts:
        if isinstance(part, NumberCondition):
            signature[part.role] = tuple(_term_key(t) for t in part.terms)
    dumped = spec.model_dump(by_alias=True, exclude_none=True, exclude={"caller", "called"})
    if "header" in dumped:
        dumped["header"] = {name.lower(): test for name, test in dumped["header"].items()}
    for key, value in dumped.items():
        signature[key] = json.dumps(value, sort_keys=True, default=str)
    return signature


def _term_key(term: NumberTest) -> tuple[str, str]:
    if isinstance(term, ExactNumber):
        return ("exact", term.number)
    if isinstance(term, NumberPrefix):
        return ("prefix", term.prefix)
    return ("other", term.description)


def _covers(broad: tuple[tuple[str, str], ...], narrow: tuple[tuple[str, str], ...]) -> bool:
    def covered(term: tuple[str, str]) -> bool:
        kind, value = term
        for b_kind, b_value in broad:
            if (b_kind, b_value) == (kind, value):
                return True
            if b_kind == "prefix" and kind in ("exact", "prefix") and value.startswith(b_value):
                return True
        return False

    return all(covered(term) for term in narrow)


def _warn_shadowed(
    signatures: list[dict[str, Any] | None], spec: RuleFileSpec, ctx: _Context
) -> None:
    for later, later_sig in enumerate(signatures):
        if later_sig is None:
            continue
        for earlier in range(later):
            earlier_sig = signatures[earlier]
            if earlier_sig is None or not _broader(earlier_sig, later_sig):
                continue
            ctx.warn(
                ("rules", later),
                f"rule '{spec.rules[later].name}' can never match: rule "
                f"'{spec.rules[earlier].name}' before it catches every call it would",
            )
            break


def _broader(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> bool:
    for key, value in earlier.items():
        if key not in later:
            return False
        if key in ("caller", "called"):
            if not _covers(value, later[key]):
                return False
        elif later[key] != value:
            return False
    return True
