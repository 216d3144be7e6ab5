"""Read a rule file and everything it references, validate it fully, and compile it.

Every problem is collected as `file:line: message`; a file with any error never yields a
Ruleset. One load reports every problem in one run: a value YAML refuses, a part the models
reject and a name that does not resolve are all found, because each stage goes on with what
the earlier ones accepted, and stays quiet about what they already reported. Reading files
is the only I/O here, and it goes through `RuleFolder`, which keeps it inside the rule
file's folder and within size caps, and records which files a ruleset came from.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from pydantic import ValidationError

from app.call_api import CallApi
from app.calls.call_control import END_CALL, CompanyFunction
from app.outbound_urls import check_outbound_url
from app.phone_numbers import NumberFormatError, normalize_number, normalize_prefix
from app.rules.accept_body import (
    BodyPath,
    SessionConfig,
    build_accept_body,
    function_tool_warnings,
    templated_fields,
    validate_session_config,
    voice_warnings,
)
from app.rules.api_reach import api_warnings
from app.rules.conditions import (
    ALWAYS,
    AllOf,
    AnyOf,
    ApiCondition,
    Condition,
    ExactNumber,
    HeaderCondition,
    InCountries,
    InNumberList,
    IsAnonymous,
    MediaSecurityCondition,
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
    ReferSpec,
    RuleSpec,
    SplitChoiceSpec,
    WhenSpec,
)
from app.rules.file_reading import (
    MAX_INSTRUCTIONS_FILE_BYTES,
    MAX_LIST_FILE_BYTES,
    FileRefused,
    RuleFolder,
    RuleSource,
)
from app.rules.file_shape import (
    FileParts,
    Finding,
    check_shape,
    did_you_mean,
    validation_findings,
    written,
)
from app.rules.linear_regex import Regex, RegexError, compile_regex
from app.rules.live_accept_body import (
    MODEL_REQUIRED,
    LiveSessionConfig,
    build_live_accept_body,
    live_function_tool_warnings,
    live_templated_fields,
    live_voice_warnings,
    responses_delegation,
    validate_live_session,
)
from app.rules.number_set import NumberListError, NumberSet
from app.rules.problems import Problem, RuleFileError
from app.rules.profile_control import (
    CONTROL_KEYS,
    CompiledTransferTarget,
    ProfileControl,
    ProfileControlSpec,
    parameters_problem,
)
from app.rules.profile_overrides import NOT_OVERRIDABLE
from app.rules.profile_overrides import deep_merge as _deep_merge
from app.rules.profile_overrides import max_duration as _max_duration
from app.rules.ruleset import (
    AcceptAction,
    Action,
    CompiledRule,
    Consult,
    ProfileBody,
    ReferAction,
    RejectAction,
    Ruleset,
    ServiceTarget,
    SplitAction,
    accept_body_of,
    accept_templates_of,
    announcer,
)
from app.rules.schedule import (
    CompiledSchedule,
    closest_zone,
    compile_schedule,
    load_zone,
)
from app.rules.shadowed_rules import shadowed_rules
from app.rules.target_uris import check_target_uri
from app.rules.templates import TemplateCompileError, compile_template
from app.rules.yaml_source import LineIndex, describe_path, load_yaml
from app.rules.yaml_source import Path as DataPath

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,100}")
_PATTERN_TOKEN = re.compile(r"[0-9]|X|Z|N|\[(?:[0-9](?:-[0-9])?)+\]")
_DEFAULT_ON_ERROR = RejectAction(503)
# Keys of a profile that are not accept fields: sip-router reads them itself.
_PROFILE_OWN_KEYS = ("extends", "instructions_file", "max_duration_s", "api", *CONTROL_KEYS)
# What GPT-Live profiles cannot have, and why.
_LIVE_TOOLS_REFUSED = (
    "{key} is not available on GPT-Live: function tools on GPT-Live run through its"
    " delegation protocol; sip-router offers end_call only"
)
_LIVE_END_CALL_NEEDS_RESPONSES = (
    "end_call on GPT-Live needs delegation: {type: responses, responses: {model: ...}}: the"
    " agent calls end_call through the Responses delegation, whose tools get it"
)


@dataclass
class _Context:
    """State of one load: the main file's data and lines, and the problems found."""

    main: str
    data: Any
    lines: LineIndex
    base_dir: Path
    folder: RuleSource
    region: str = "ZZ"
    # `defaults.region` was written but is not usable: numbers in national form cannot be
    # judged, and saying they are wrong would only repeat the region's problem.
    region_broken: bool = False
    # Places whose problem was already reported while reading the YAML.
    refused: frozenset[DataPath] = frozenset()
    incomplete: frozenset[DataPath] = frozenset()
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    # Every file read, by its path as shown in messages -> its text.
    files: dict[str, str] = field(default_factory=dict)
    # The same texts, by their path relative to the main file's folder (for the version).
    sources: dict[str, str] = field(default_factory=dict)
    attempted: list[str] = field(default_factory=list)
    # Templates read from instructions files, already checked there: text -> it compiles.
    checked_templates: dict[str, bool] = field(default_factory=dict)

    def fail(self) -> RuleFileError:
        return RuleFileError(_sorted(self.problems), tuple(dict.fromkeys(self.attempted)))

    def quiet(self, path: DataPath) -> bool:
        """True where the YAML reading already reported the problem at (or above) `path`."""
        return path in self.incomplete or self.refused_at(path)

    def refused_at(self, path: DataPath) -> bool:
        return any(path[: len(r)] == r for r in self.refused)

    def error(self, path: DataPath, message: str) -> None:
        if not self.quiet(path):
            self.problems.append(Problem(self.main, self.lines.line_of(path), message))

    def warn(self, path: DataPath, message: str) -> None:
        line = self.lines.line_of(path)
        self.warnings.append(Problem(self.main, line, message, "warning"))

    def report(self, base: DataPath, findings: Iterable[Finding]) -> None:
        """Report findings made inside the value at `base`, as `where: message`."""
        for finding in findings:
            path, where = (*base, *finding.path), (*base, *finding.where)
            if finding.kind == "unknown_key":
                # The key is news even when its value was refused.
                if self.refused_at(where):
                    continue
            elif self.quiet(path) or self.quiet(where):
                continue
            label = self.describe(where)
            text = f"{label}: {finding.message}" if label else finding.message
            self.problems.append(Problem(self.main, self.lines.line_of(path), text))

    def describe(self, path: DataPath) -> str:
        """`rule 'vip-desk' when.caller` for ('rules', 2, 'when', 'caller'), else the path."""
        if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
            name = _rule_name(self.data, path[1])
            if name is not None:
                rest = describe_path(path[2:])
                return f"rule '{name}' {rest}" if rest else f"rule '{name}'"
        return describe_path(path)

    def declared(self, section: str) -> Collection[str]:
        """The names written under a top-level mapping, valid or not."""
        written = self.data.get(section)
        return [k for k in written if isinstance(k, str)] if isinstance(written, dict) else ()

    def undeclared(self, section: str, name: Any) -> bool:
        """True when `name` is surely not written under `section`.

        False when the section itself is broken (already reported): then nobody can tell.
        """
        if section not in self.data:
            return True
        written = self.data[section]
        return isinstance(written, dict) and (not isinstance(name, str) or name not in written)

    def rule_names(self) -> set[str] | None:
        """The names of the rules as written; None when some rule has no usable name."""
        written = self.data.get("rules", [])
        if not isinstance(written, list):
            return None
        names = {_rule_name(self.data, i) for i in range(len(written))}
        return None if None in names else {n for n in names if n is not None}

    def read_referenced(self, path: DataPath, relative: str, limit: int) -> tuple[str, str] | None:
        """Read a file named in the rule file; None (and an error) when it cannot be read."""
        shown = str(self.base_dir / relative)
        if not Path(relative).is_absolute():
            self.attempted.append(shown)
        try:
            text = self.folder.read_named(relative, limit)
        except FileRefused as exc:
            self.error(path, f"cannot read {shown}: {exc}")
            return None
        self.files[shown] = text
        self.sources[posixpath.normpath(relative)] = text
        return shown, text


def _rule_name(data: Any, index: int) -> str | None:
    rules = data.get("rules") if isinstance(data, dict) else None
    if isinstance(rules, list) and 0 <= index < len(rules) and isinstance(rules[index], dict):
        name = rules[index].get("name")
        if isinstance(name, str) and name:
            return name
    return None


def load_ruleset(path: Path | str, *, source: RuleSource | None = None) -> Ruleset:
    """Load, validate and compile the rule file at `path`; raise RuleFileError listing problems.

    `source` reads the files instead of the disk (uploaded files, app.rules.file_reading);
    `path` then is the main file's name among them.
    """
    main_path = Path(path)
    shown = str(main_path)
    folder = source if source is not None else RuleFolder(main_path)
    try:
        text = folder.read_main()
    except FileRefused as exc:
        problem = Problem(shown, 0, f"cannot read the rule file: {exc}")
        raise RuleFileError([problem], (shown,)) from None
    try:
        document = load_yaml(text, shown)
    except RuleFileError as exc:
        raise RuleFileError(exc.problems, (shown,)) from None
    ctx = _Context(
        shown,
        document.data,
        document.lines,
        main_path.parent,
        folder,
        refused=document.refused,
        incomplete=document.incomplete,
        problems=list(document.problems),
        files={shown: text},
        sources={main_path.name: text},
    )
    ctx.attempted.append(shown)
    if not isinstance(document.data, dict):
        ctx.error((), "a rule file is a YAML mapping (version: 1, ...)")
        raise ctx.fail()
    return _compile(_validate(document.data, ctx), ctx)


def _validate(data: dict[str, Any], ctx: _Context) -> FileParts:
    """Validate the file's shape; on problems, report them and go on with what is valid."""
    parts, findings = check_shape(data)
    ctx.report((), findings)
    return parts


def _compile(parts: FileParts, ctx: _Context) -> Ruleset:
    timezone = _zone(parts.defaults.timezone, ("defaults", "timezone"), ctx) or ZoneInfo("UTC")
    written_defaults = ctx.data.get("defaults")
    if parts.defaults.region is not None:
        region = parts.defaults.region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            ctx.error(("defaults", "region"), f"unknown region '{parts.defaults.region}'")
            ctx.region_broken = True
        else:
            ctx.region = region
    elif isinstance(written_defaults, dict) and "region" in written_defaults:
        ctx.region_broken = True
    lists = _compile_lists(parts, ctx)
    schedules = _compile_schedules(parts, ctx, timezone.key)
    called = _CallControlParts(
        _compile_transfer_targets(parts, ctx), _compile_functions(parts, ctx)
    )
    profiles = _resolve_profiles(parts, ctx, called)
    services = _compile_services(parts, ctx)
    compiler = _RuleCompiler(ctx, lists, schedules, profiles, services)
    numbered = [(i, compiler.rule(i, rule)) for i, rule in parts.rules]
    rules = tuple(rule for _, rule in numbered)
    _check_unique_rule_names(parts, ctx)
    default = compiler.action(parts.default, ("default",)) if parts.default else None
    on_error = (
        compiler.action(parts.on_error, ("on_error",))
        if parts.on_error is not None
        else _DEFAULT_ON_ERROR
    )
    for shadowed in shadowed_rules(compiler.signatures):
        ctx.warn(
            ("rules", shadowed.index),
            f"rule '{shadowed.name}' can never match: rule "
            f"'{shadowed.by}' before it catches every call it would",
        )
    for warning in api_warnings(
        [(i, rule) for i, rule in numbered if rule is not None],
        default,
        on_error,
        live_profiles=any(profile.api == "live" for profile in profiles.values()),
    ):
        ctx.warn(warning.path, warning.message)
    _check_test_expectations(parts, ctx)
    if ctx.problems:
        raise ctx.fail()
    assert default is not None
    assert on_error is not None
    return Ruleset(
        version=_version(ctx.sources),
        files=tuple(ctx.files),
        timezone=timezone,
        region=None if ctx.region == "ZZ" else ctx.region,
        rules=tuple(r for r in rules if r is not None),
        default=default,
        on_error=on_error,
        warnings=tuple(str(w) for w in _sorted(ctx.warnings)),
        tests=tuple((ctx.lines.line_of(("tests", i)), t) for i, t in parts.tests),
        main_file=ctx.main,
        services=services,
        functions={name: function.url for name, function in called.functions.items()},
        profiles=compiler.profile_bodies() if services else {},
    )


def _compile_services(parts: FileParts, ctx: _Context) -> dict[str, ServiceTarget]:
    """`services`, each URL checked: https, or http to a private address."""
    services = {}
    for name, spec in parts.services.items():
        path: DataPath = ("services", name, "url")
        problem, warning = check_outbound_url(spec.url)
        if problem is not None:
            ctx.error(path, f"services.{name}.url: {problem}")
            continue
        if warning is not None:
            ctx.warn(path, f"services.{name}.url: {warning}")
        services[name] = ServiceTarget(spec.url, spec.timeout_s)
    return services


def _version(sources: Mapping[str, str]) -> str:
    """A hash of the files' contents and their paths relative to the main file's folder.

    Relative paths, so the same files give the same version however the main file's path is
    spelled (relative, absolute, through a symlink) and wherever the folder is: `check` on a
    laptop and the running service agree.
    """
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(sources[name].encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.file, p.line))


def _zone(name: str, path: DataPath, ctx: _Context) -> ZoneInfo | None:
    try:
        return load_zone(name)
    except ValueError:
        close = closest_zone(name)
        hint = f"did you mean '{close}'?" if close else "use an IANA name such as Europe/Berlin"
        ctx.error(path, f"unknown time zone '{name}' ({hint})")
        return None


def _compile_lists(parts: FileParts, ctx: _Context) -> dict[str, NumberSet]:
    lists: dict[str, NumberSet] = {}
    for name, list_spec in parts.lists.items():
        path: DataPath = ("lists", name)
        if list_spec.numbers is not None:
            try:
                lists[name] = NumberSet.build(list_spec.numbers, ctx.region)
            except NumberListError as exc:
                if not ctx.region_broken:
                    ctx.error((*path, exc.index), f"lists.{name}[{exc.index}]: {exc.message}")
            continue
        assert list_spec.file is not None
        read = ctx.read_referenced((*path, "file"), list_spec.file, MAX_LIST_FILE_BYTES)
        if read is None:
            continue
        shown, text = read
        try:
            lists[name] = NumberSet.parse_file_text(text, ctx.region)
        except NumberListError as exc:
            if not ctx.region_broken:
                ctx.problems.append(Problem(shown, exc.index, exc.message))
    return lists


def _compile_schedules(
    parts: FileParts, ctx: _Context, default_timezone: str
) -> dict[str, CompiledSchedule]:
    compiled = {}
    for name, schedule in parts.schedules.items():
        try:
            compiled[name] = compile_schedule(name, schedule, default_timezone)
        except ValueError as exc:
            ctx.error(("schedules", name), f"schedules.{name}: {exc}")
    return compiled


@dataclass(frozen=True)
class _CallControlParts:
    """The top-level `transfer_targets` and `functions` that compiled."""

    transfer_targets: Mapping[str, CompiledTransferTarget]
    functions: Mapping[str, CompanyFunction]


def _compile_transfer_targets(parts: FileParts, ctx: _Context) -> dict[str, CompiledTransferTarget]:
    compiled: dict[str, CompiledTransferTarget] = {}
    for name, spec in parts.transfer_targets.items():
        path: DataPath = ("transfer_targets", name, "target_uri")
        try:
            target = compile_template(spec.target_uri, "uri")
        except ValueError as exc:
            ctx.error(path, f"transfer_targets.{name}.target_uri: {exc}")
            continue
        if target.is_static and (problem := check_target_uri(target.source)) is not None:
            ctx.error(path, f"transfer_targets.{name}.target_uri: {problem}")
            continue
        compiled[name] = CompiledTransferTarget(target, spec.description)
    return compiled


def _compile_functions(parts: FileParts, ctx: _Context) -> dict[str, CompanyFunction]:
    compiled: dict[str, CompanyFunction] = {}
    for name, spec in parts.functions.items():
        path: DataPath = ("functions", name)
        ok = True
        if name in ("transfer_call", "end_call"):
            ctx.error(path, f"functions.{name}: '{name}' is a built-in tool (use the profile key)")
            ok = False
        problem, warning = check_outbound_url(spec.url)
        if problem is not None:
            ctx.error((*path, "url"), f"functions.{name}.url: {problem}")
            ok = False
        elif warning is not None:
            ctx.warn((*path, "url"), f"functions.{name}.url: {warning}")
        schema_problem = parameters_problem(spec.parameters)
        if schema_problem is not None:
            inside, message = schema_problem
            ctx.error((*path, "parameters", *inside), f"functions.{name}.parameters: {message}")
            ok = False
        if ok:
            compiled[name] = CompanyFunction(
                name, spec.url, spec.description, dict(spec.parameters), spec.timeout_s
            )
    return compiled


@dataclass(frozen=True)
class _Profile:
    merged: dict[str, Any]
    max_duration_s: float | None
    control: ProfileControl | None = None
    api: CallApi = "realtime"


@dataclass(frozen=True)
class _ProfileCheck:
    """One profile validated with what it inherits: the result, and what is wrong with it."""

    profile: _Profile | None
    findings: tuple[Finding, ...] = ()
    warnings: tuple[str, ...] = ()


def _resolve_profiles(
    parts: FileParts, ctx: _Context, called: _CallControlParts
) -> dict[str, _Profile]:
    own: dict[str, dict[str, Any]] = {}
    for name, raw in parts.profiles.items():
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
                read = ctx.read_referenced(
                    (*path, "instructions_file"), instructions_file, MAX_INSTRUCTIONS_FILE_BYTES
                )
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
            if ctx.undeclared("profiles", parent):
                ctx.error(
                    ("profiles", name, "extends"),
                    f"profiles.{name}.extends: unknown profile '{parent}'"
                    + did_you_mean(str(parent), own),
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

    checks: dict[str, _ProfileCheck] = {}

    def check(name: str) -> _ProfileCheck:
        if name not in checks:
            found = merged(name, ())
            checks[name] = (
                _ProfileCheck(None) if found is None else _check_profile(found, ctx, called)
            )
        return checks[name]

    resolved: dict[str, _Profile] = {}
    for name in own:
        result = check(name)
        parent = own[name].get("extends")
        inherited = check(parent) if isinstance(parent, str) and parent in own else None
        # What the parent got wrong is reported once, at the profile that wrote it.
        ctx.report(
            ("profiles", name),
            (
                f
                for f in result.findings
                if inherited is None or f not in inherited.findings or written(own[name], f.path)
            ),
        )
        for warning in result.warnings:
            if inherited is None or warning not in inherited.warnings:
                ctx.warn(("profiles", name), f"profiles.{name}: {warning}")
        if result.profile is not None:
            resolved[name] = result.profile
    return resolved


def _check_profile(
    merged: Mapping[str, Any], ctx: _Context, called: _CallControlParts
) -> _ProfileCheck:
    body = {k: v for k, v in merged.items() if k != "extends"}
    findings: list[Finding] = []
    max_duration = _max_duration(body.pop("max_duration_s", None), findings)
    api = _profile_api(body.pop("api", None), findings)
    # The call-control keys are sip-router's own: never part of the accept body.
    written_control = {key: body.pop(key) for key in CONTROL_KEYS if key in body}
    if api == "live":
        for key in ("transfer", "functions"):
            if written_control.get(key) is not None:
                findings.append(Finding((key,), (key,), _LIVE_TOOLS_REFUSED.format(key=key)))
                written_control.pop(key)
    control, control_ok = _profile_control(written_control, called, findings, ctx)
    if api == "live":
        return _check_live_profile(body, max_duration, control, control_ok, findings, ctx)
    if api is None:
        return _ProfileCheck(None, tuple(findings))
    config = _session_config(body, findings, ctx)
    if config is None:
        return _ProfileCheck(None, tuple(findings))
    warnings = [*voice_warnings(config), *function_tool_warnings(config)]
    if control is not None:
        taken = {getattr(tool, "name", None) for tool in config.tools or ()}
        for name in control.added_tools:
            if name in taken:
                key = {"transfer_call": "transfer", "end_call": "end_call"}.get(name, "functions")
                at: DataPath = (key,)
                findings.append(
                    Finding(
                        at,
                        at,
                        f"adds a tool named '{name}', and the profile's tools already have one;"
                        " rename the tool",
                    )
                )
        if control.transcript and not _has_input_transcription(body):
            warnings.append(
                "transcript: true keeps only the agent's side without input transcription"
                " (set audio.input.transcription to keep the caller's turns too)"
            )
    if findings or not control_ok:
        return _ProfileCheck(None, tuple(findings), tuple(warnings))
    return _ProfileCheck(_Profile(body, max_duration, control), (), tuple(warnings))


def _profile_api(value: Any, findings: list[Finding]) -> CallApi | None:
    """A profile's `api` (default realtime); None (and a finding) when it is not one."""
    if value is None or value == "realtime":
        return "realtime"
    if value == "live":
        return "live"
    findings.append(Finding(("api",), ("api",), "api must be realtime or live"))
    return None


def _check_live_profile(
    body: dict[str, Any],
    max_duration: float | None,
    control: ProfileControl | None,
    control_ok: bool,
    findings: list[Finding],
    ctx: _Context,
) -> _ProfileCheck:
    """An `api: live` profile: its session against the Live accept schema (section 11)."""
    config = _live_session(body, findings, ctx)
    if config is None:
        return _ProfileCheck(None, tuple(findings))
    warnings = [*live_voice_warnings(config), *live_function_tool_warnings(config)]
    if control is not None and control.end_call:
        backend = responses_delegation(config)
        if backend is None:
            findings.append(Finding(("end_call",), ("end_call",), _LIVE_END_CALL_NEEDS_RESPONSES))
        elif any(getattr(tool, "name", None) == END_CALL for tool in backend.tools or ()):
            at: DataPath = ("end_call",)
            findings.append(
                Finding(
                    at,
                    at,
                    f"adds a tool named '{END_CALL}' to delegation.responses.tools, and they"
                    " already have one; rename the tool",
                )
            )
    if findings or not control_ok:
        return _ProfileCheck(None, tuple(findings), tuple(warnings))
    return _ProfileCheck(_Profile(body, max_duration, control, "live"), (), tuple(warnings))


def _live_session(
    body: Mapping[str, Any], findings: list[Finding], ctx: _Context
) -> LiveSessionConfig | None:
    """The session fields of a Live profile (with overrides), or None with findings why not."""
    try:
        config = validate_live_session(body)
    except ValidationError as exc:
        for finding in validation_findings(
            exc, dict(body), LiveSessionConfig, _PROFILE_OWN_KEYS, refused_by="GPT-Live"
        ):
            if finding.kind == "missing_key" and finding.path == ("model",):
                finding = replace(finding, message=MODEL_REQUIRED)
            findings.append(finding)
        return None
    session = build_live_accept_body(config)["session"]
    return config if _templates_compile(live_templated_fields(session), findings, ctx) else None


def _has_input_transcription(body: Mapping[str, Any]) -> bool:
    audio = body.get("audio")
    audio_input = audio.get("input") if isinstance(audio, Mapping) else None
    return isinstance(audio_input, Mapping) and audio_input.get("transcription") is not None


def _profile_control(
    written_control: dict[str, Any],
    called: _CallControlParts,
    findings: list[Finding],
    ctx: _Context,
) -> tuple[ProfileControl | None, bool]:
    """The profile's call-control keys compiled; False when they cannot be (findings say why,
    or a name they use is broken and reported where it is defined)."""
    if not written_control:
        return None, True
    try:
        spec = ProfileControlSpec.model_validate(written_control)
    except ValidationError as exc:
        findings.extend(validation_findings(exc, written_control, ProfileControlSpec))
        return None, False
    ok = True
    greeting = None
    if spec.greeting is not None:
        try:
            greeting = compile_template(spec.greeting)
        except TemplateCompileError as exc:
            findings.append(Finding(("greeting",), ("greeting",), str(exc)))
            ok = False
    targets: dict[str, CompiledTransferTarget] = {}
    for i, name in enumerate(spec.transfer or ()):
        if name in called.transfer_targets:
            targets[name] = called.transfer_targets[name]
        elif ctx.undeclared("transfer_targets", name):
            message = f"unknown transfer target '{name}'" + did_you_mean(
                name, ctx.declared("transfer_targets")
            )
            findings.append(Finding(("transfer", i), ("transfer",), message))
            ok = False
        else:
            ok = False
    functions: dict[str, CompanyFunction] = {}
    for i, name in enumerate(spec.functions or ()):
        if name in called.functions:
            functions[name] = called.functions[name]
        elif ctx.undeclared("functions", name):
            message = f"unknown function '{name}'" + did_you_mean(name, ctx.declared("functions"))
            findings.append(Finding(("functions", i), ("functions",), message))
            ok = False
        else:
            ok = False
    control = ProfileControl(
        greeting=greeting,
        transfer=targets,
        end_call=bool(spec.end_call),
        functions=functions,
        transcript=bool(spec.transcript),
    )
    return control, ok


def _session_config(
    body: Mapping[str, Any], findings: list[Finding], ctx: _Context
) -> SessionConfig | None:
    """The accept fields of a profile (with overrides), or None with findings why not."""
    try:
        config = validate_session_config(body)
    except ValidationError as exc:
        findings.extend(validation_findings(exc, dict(body), SessionConfig, _PROFILE_OWN_KEYS))
        return None
    fields = templated_fields(build_accept_body(config))
    return config if _templates_compile(fields, findings, ctx) else None


def _templates_compile(
    fields: Iterable[tuple[BodyPath, str]], findings: list[Finding], ctx: _Context
) -> bool:
    """Whether every templated field compiles; each one that does not becomes a finding."""
    compiles = True
    for path, source in fields:
        # Instructions read from a file were checked there, with the file's own lines.
        if path == ("instructions",) and source in ctx.checked_templates:
            compiles = compiles and ctx.checked_templates[source]
            continue
        try:
            compile_template(source)
        except TemplateCompileError as exc:
            findings.append(Finding(path, path, str(exc)))
            compiles = False
    return compiles


class _RuleCompiler:
    def __init__(
        self,
        ctx: _Context,
        lists: Mapping[str, NumberSet],
        schedules: Mapping[str, CompiledSchedule],
        profiles: Mapping[str, _Profile],
        services: Mapping[str, ServiceTarget],
    ) -> None:
        self.ctx = ctx
        self.lists = lists
        self.schedules = schedules
        self.profiles = profiles
        self.services = services
        # Each rule's index, name, and what its `when` requires, for the shadowed-rule warning.
        self.signatures: list[tuple[int, str, dict[str, Any] | None]] = []

    def rule(self, index: int, spec: RuleSpec) -> CompiledRule | None:
        path: DataPath = ("rules", index)
        errors_before = len(self.ctx.problems)
        when = self.when(spec.when, (*path, "when")) if spec.when is not None else ALWAYS
        signature = _signature(spec.when, when) if spec.when is not None else {}
        if spec.consult is not None:
            # A service may answer `continue`: a consult rule never hides the rules after it.
            signature = None
        self.signatures.append((index, spec.name, signature))
        action: Action | Consult | None
        if spec.consult is not None:
            action = self.consult(spec.consult, (*path, "consult"))
        else:
            action = self.action(spec, path)
        if len(self.ctx.problems) > errors_before or action is None:
            return None
        return CompiledRule(spec.name, when, action, self.ctx.lines.line_of(path))

    def consult(self, service: str, path: DataPath) -> Consult | None:
        if service in self.services:
            return Consult(service)
        if self.ctx.undeclared("services", service):
            self.ctx.error(
                path,
                f"{self.ctx.describe(path)}: unknown service '{service}'"
                + did_you_mean(service, self.ctx.declared("services")),
            )
        return None

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
                if self.ctx.undeclared("schedules", spec.schedule):
                    self.ctx.error(
                        (*path, "schedule"),
                        f"unknown schedule '{spec.schedule}'"
                        + did_you_mean(spec.schedule, self.ctx.declared("schedules")),
                    )
            else:
                parts.append(ScheduleCondition(schedule))
        if spec.api is not None:
            parts.append(ApiCondition(spec.api))
        if spec.media_security is not None:
            parts.append(MediaSecurityCondition(spec.media_security))
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
            written = term.exact if term.exact is not None else term.prefix
            if not (self.ctx.region_broken and not str(written).lstrip().startswith("+")):
                self.ctx.error(path, f"{self.ctx.describe(path)}: {exc}")
            return None
        if term.pattern is not None:
            regex = _pattern_regex(term.pattern)
            if regex is None:
                self.ctx.error(
                    path,
                    f"{self.ctx.describe(path)}: pattern '{term.pattern}' may hold digits, X (0-9),"
                    " Z (1-9), N (2-9) and classes like [1-5], after an optional +",
                )
                return None
            test = NumberRegex(regex, f"pattern {term.pattern}")
            return test
        if term.regex is not None:
            try:
                compiled = compile_regex(term.regex)
            except RegexError as exc:
                self.ctx.error(path, f"{self.ctx.describe(path)}: invalid regex: {exc}")
                return None
            test = NumberRegex(compiled, f"regex {term.regex}")
            return test
        if term.in_ is not None:
            numbers = self.lists.get(term.in_)
            if numbers is None:
                if self.ctx.undeclared("lists", term.in_):
                    self.ctx.error(
                        path,
                        f"{self.ctx.describe(path)}: unknown list '{term.in_}'"
                        + did_you_mean(term.in_, self.ctx.declared("lists")),
                    )
                return None
            test = InNumberList(numbers, f"in list {term.in_}")
            return test
        if term.country is not None:
            countries = []
            for code in term.country:
                if not isinstance(code, str) or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
                    self.ctx.error(
                        path, f"{self.ctx.describe(path)}: unknown country code '{code}'"
                    )
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
                regex = compile_regex(test.regex)
            except RegexError as exc:
                self.ctx.error(path, f"{self.ctx.describe(path)}: invalid regex: {exc}")
                return ALWAYS
            return HeaderCondition(name.lower(), "regex", regex, f"{name} matches {test.regex}")
        assert test.equals is not None
        return HeaderCondition(name.lower(), "equals", test.equals, f"{name} = {test.equals!r}")

    def action(self, spec: ActionSpec, path: DataPath) -> Action | None:
        if spec.reject is not None:
            return RejectAction(spec.reject.status_code)
        if spec.refer is not None:
            return self.refer(spec.refer, (*path, "refer"))
        assert spec.accept is not None
        accept_path = (*path, "accept")
        if spec.accept.split is not None:
            return self.split(spec.accept.split, (*accept_path, "split"))
        assert spec.accept.profile is not None
        return self.accept(
            spec.accept.profile, spec.accept.overrides, accept_path, (*accept_path, "profile")
        )

    def refer(self, spec: ReferSpec, path: DataPath) -> ReferAction | None:
        uri_path = (*path, "target_uri")
        try:
            target = compile_template(spec.target_uri, "uri")
        except ValueError as exc:
            self.ctx.error(uri_path, f"{self.ctx.describe(uri_path)}: {exc}")
            return None
        if target.is_static:
            problem = check_target_uri(target.source)
            if problem is not None:
                self.ctx.error(uri_path, f"{self.ctx.describe(uri_path)}: {problem}")
                return None
        if spec.before_accept:
            return ReferAction(target)
        announce = None
        if spec.announce is not None:
            try:
                announce = compile_template(spec.announce)
            except TemplateCompileError as exc:
                self.ctx.error((*path, "announce"), f"{self.ctx.describe(path)}.announce: {exc}")
                return None
        if spec.profile is None:
            accept: AcceptAction | None = announcer()
        else:
            accept = self.accept(spec.profile, None, path, (*path, "profile"))
        if accept is None:
            return None
        return ReferAction(target, before_accept=False, accept=accept, announce=announce)

    def split(self, choices: tuple[SplitChoiceSpec, ...], path: DataPath) -> SplitAction | None:
        compiled: list[tuple[AcceptAction, int]] = []
        seen: set[str] = set()
        for i, choice in enumerate(choices):
            if choice.profile in seen:
                self.ctx.error(
                    (*path, i, "profile"),
                    f"{self.ctx.describe(path)}: profile '{choice.profile}' is listed twice",
                )
            seen.add(choice.profile)
            action = self.accept(choice.profile, None, path, (*path, i, "profile"))
            if action is not None:
                compiled.append((action, choice.weight))
        if len(compiled) != len(choices):
            return None
        return SplitAction(tuple(compiled))

    def accept(
        self,
        name: str,
        overrides_spec: Mapping[str, Any] | None,
        accept_path: DataPath,
        name_path: DataPath,
    ) -> AcceptAction | None:
        profile = self.profiles.get(name)
        if profile is None:
            if self.ctx.undeclared("profiles", name):
                self.ctx.error(
                    name_path,
                    f"unknown profile '{name}'" + did_you_mean(name, self.ctx.declared("profiles")),
                )
            return None
        body = profile.merged
        max_duration = profile.max_duration_s
        if overrides_spec:
            overrides = dict(overrides_spec)
            findings: list[Finding] = []
            if "max_duration_s" in overrides:
                max_duration = _max_duration(overrides.pop("max_duration_s"), findings)
            for key in NOT_OVERRIDABLE:
                if key in overrides:
                    self.ctx.error(
                        (*accept_path, "overrides", key),
                        f"{key} is not allowed in overrides (use a profile)",
                    )
                    return None
            body = _deep_merge(body, overrides)
            if profile.api == "live":
                overridden: object = _live_session(body, findings, self.ctx)
            else:
                overridden = _session_config(body, findings, self.ctx)
            self.ctx.report((*accept_path, "overrides"), findings)
            if overridden is None or findings:
                return None
        try:
            accept_body = accept_body_of(profile.api, body, profile.control)
        except ValueError as exc:
            self.ctx.error((*accept_path, "overrides"), f"{self.ctx.describe(accept_path)}: {exc}")
            return None
        return AcceptAction(
            profile=name,
            body=accept_body,
            templates=accept_templates_of(profile.api, accept_body),
            max_duration_s=max_duration,
            control=profile.control,
            api=profile.api,
        )

    def profile_bodies(self) -> dict[str, ProfileBody]:
        """Every valid profile as consulted services' accept answers use it."""
        bodies = {}
        for name, profile in self.profiles.items():
            action = self.accept(name, None, (), ())
            if action is not None:
                bodies[name] = ProfileBody(profile.merged, profile.max_duration_s, action)
        return bodies


def _pattern_regex(pattern: str) -> Regex | None:
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
        return compile_regex("".join(out))
    except RegexError:  # a class like [5-1]
        return None


def _check_test_expectations(parts: FileParts, ctx: _Context) -> None:
    """`tests:` may only name rules and profiles that exist (written, valid or not)."""
    rules = ctx.rule_names()
    profiles = ctx.declared("profiles")
    for i, case in parts.tests:
        expect = case.expect
        if (
            rules is not None
            and expect.rule is not None
            and expect.rule != "default"
            and expect.rule not in rules
        ):
            ctx.error(
                ("tests", i, "expect"),
                f"tests[{i}].expect: unknown rule '{expect.rule}'"
                + did_you_mean(expect.rule, rules),
            )
        for service in case.consult or {}:
            if ctx.undeclared("services", service):
                ctx.error(
                    ("tests", i, "consult", service),
                    f"tests[{i}].consult: unknown service '{service}'"
                    + did_you_mean(service, ctx.declared("services")),
                )
        if expect.profile is not None and ctx.undeclared("profiles", expect.profile):
            ctx.error(
                ("tests", i, "expect"),
                f"tests[{i}].expect: unknown profile '{expect.profile}'"
                + did_you_mean(expect.profile, profiles),
            )


def _check_unique_rule_names(parts: FileParts, ctx: _Context) -> None:
    seen: set[str] = set()
    for i, rule in parts.rules:
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
