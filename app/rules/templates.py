"""`{{ ... }}` in `instructions` and `target_uri`, rendered in Jinja2's immutable sandbox.

Variables: caller, called, call_id, rule, headers, now, and `vars` (the `variables` of
consulted services' answers).

Unknown variables and attributes of `caller`/`called` are load-time errors; anything
only detectable while rendering raises TemplateRenderError, and `on_error` applies.
Header values and display names come from the caller's INVITE: they are untrusted,
so control and bidirectional-override characters are removed, line breaks and tabs
become spaces, and length is capped. In a URI template every `{{ ... }}` must yield only
characters that cannot end a user part or host (no `;`, `?`, `@`, `:`, `>`, spaces): a
value can fill in an extension but never add URI parameters or headers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

VARIABLES = frozenset({"caller", "called", "call_id", "rule", "headers", "now", "vars"})
PARTY_FIELDS = frozenset({"e164", "display_name", "country", "anonymous"})
MAX_UNTRUSTED_CHARS = 256
MAX_RENDERED_CHARS = 64 * 1024

# Line breaks and tabs would let a header value start a new paragraph of instructions.
_LINE_BREAKS = re.compile("[\t\n\x0b\x0c\r\x85\u2028\u2029]+")
# Other C0/C1 controls, and the Unicode marks that reorder or hide text (bidi overrides,
# isolates, zero-width characters), so a header cannot smuggle instructions past a reader.
_UNSAFE_CHARS = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
# What a value may bring into a SIP or tel URI: RFC 3261 "unreserved" characters and "+".
_URI_VALUE = re.compile(r"[A-Za-z0-9+\-_.!~*'()]*")

TemplateContext = Literal["text", "uri"]


class TemplateCompileError(ValueError):
    """A template that cannot work; `lineno` is its line within the template text."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.lineno = lineno


class TemplateRenderError(Exception):
    """A template failed while rendering (undefined value, sandbox violation, too long)."""


def _finalize(value: object) -> object:
    return "" if value is None else value


def _finalize_for_uri(value: object) -> str:
    text = "" if value is None else str(value)
    if not _URI_VALUE.fullmatch(text):
        bad = next(c for c in text if not _URI_VALUE.fullmatch(c))
        raise ValueError(f"a value inside the URI holds {bad!r}, which a URI value cannot")
    return text


_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    finalize=_finalize,
    keep_trailing_newline=True,
)
_URI_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    finalize=_finalize_for_uri,
    keep_trailing_newline=True,
)


def clean_untrusted(text: str) -> str:
    """Caller-supplied text made safe to place in a prompt or a log: no controls, capped."""
    text = _UNSAFE_CHARS.sub("", text[: MAX_UNTRUSTED_CHARS * 2])
    return _LINE_BREAKS.sub(" ", text)[:MAX_UNTRUSTED_CHARS]


@dataclass(frozen=True, slots=True)
class Template:
    """A string that may contain `{{ ... }}`; plain strings render to themselves."""

    source: str
    compiled: jinja2.Template | None
    context: TemplateContext = "text"

    def __reduce__(self) -> tuple[Any, ...]:
        # Compiled Jinja code does not pickle; a reload's worker process sends the source.
        return compile_template, (self.source, self.context)

    @property
    def is_static(self) -> bool:
        return self.compiled is None

    def render(self, variables: Mapping[str, Any]) -> str:
        if self.compiled is None:
            return self.source
        try:
            text = self.compiled.render(variables)
        except jinja2.TemplateError as exc:
            raise TemplateRenderError(str(exc)) from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateRenderError(f"{type(exc).__name__}: {exc}") from None
        if len(text) > MAX_RENDERED_CHARS:
            raise TemplateRenderError("rendered text is longer than 64 KiB")
        return text


def compile_template(source: str, context: TemplateContext = "text") -> Template:
    """Compile `source`; raise TemplateCompileError naming the problem when it cannot work.

    `context="uri"` (a `target_uri`): what every `{{ ... }}` yields is limited to characters
    that stay inside one URI component.
    """
    if "{{" not in source and "{%" not in source and "{#" not in source:
        return Template(source, None)
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateCompileError(f"template syntax error: {exc.message}", exc.lineno) from None
    unknown = sorted(meta.find_undeclared_variables(tree) - VARIABLES)
    if unknown:
        known = ", ".join(sorted(VARIABLES))
        line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == unknown[0]), 1)
        raise TemplateCompileError(
            f"unknown template variable '{unknown[0]}' (known: {known})", line
        )
    for node in tree.find_all(nodes.Getattr):
        target = node.node
        if (
            isinstance(target, nodes.Name)
            and target.name in ("caller", "called")
            and node.attr not in PARTY_FIELDS
        ):
            fields = ", ".join(sorted(PARTY_FIELDS))
            raise TemplateCompileError(
                f"unknown field '{target.name}.{node.attr}' (known: {fields})", node.lineno
            )
    env = _URI_ENV if context == "uri" else _ENV
    return Template(source, env.from_string(source), context)


def template_variables(
    *,
    caller: Mapping[str, Any],
    called: Mapping[str, Any],
    call_id: str,
    rule: str | None,
    headers: Mapping[str, str],
    now: datetime,
    variables: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The template variables of the rule language, with untrusted values cleaned."""
    return {
        "caller": dict(caller),
        "called": dict(called),
        "call_id": call_id,
        "rule": rule or "default",
        "headers": {name: clean_untrusted(value) for name, value in headers.items()},
        "now": now,
        "vars": ServiceVariables(
            {name: clean_untrusted(value) for name, value in (variables or {}).items()}
        ),
    }


class ServiceVariables(dict[str, str]):
    """`vars`: what consulted services answered. A name no service sent renders empty, so a
    service that is down (or says less) never turns a call into `on_error`."""

    def __missing__(self, key: str) -> str:
        return ""
