"""Read a YAML rule file into plain data plus the line of every value.

YAML 1.1 (what PyYAML implements) silently turns `08:30` into 510, `NO` into False and
`0151` into 105. Rule files are full of times, country codes and phone numbers, so those
plain scalars are refused with a hint instead of being converted. A refused value does not
stop the reading: the document is still returned, with the problem and the value's place,
so the rest of the file is checked in the same run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from app.rules.problems import Problem, RuleFileError

Path = tuple[str | int, ...]

_YAML11_BOOL_WORDS = frozenset({"yes", "no", "on", "off", "y", "n"})
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_OCTAL_LOOKING = re.compile(r"0[0-9_]+")
_PLUS_NUMBER = re.compile(r"\+[0-9][0-9_]*")
_MAX_DEPTH = 64
# An alias is a reference: nine of them nine levels deep stand for 9**9 values. So a
# value is built at most once, and every alias is refused.
_ALIAS_MESSAGE = "YAML anchors and aliases (&, *) are not supported; write the value out"
# libyaml's parser when PyYAML was built with it: same nodes and marks, far faster.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineIndex:
    """Maps a path of keys and list indexes to the 1-based line where it was written."""

    def __init__(self, lines: dict[Path, int]) -> None:
        self._lines = lines

    def line_of(self, path: Path) -> int:
        """The line of `path`, or of its closest enclosing value that has one."""
        probe = tuple(path)
        while probe:
            line = self._lines.get(probe)
            if line is not None:
                return line
            probe = probe[:-1]
        return self._lines.get((), 1)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed file: plain data, the line of every value, and what was refused on the way.

    `refused` holds the places of refused values (kept as their text, or left out); checks
    of the data stay quiet there, since the problem at that place is already reported.
    `incomplete` holds mappings a key was left out of (a duplicate, a merge key), whose
    missing keys are no news either.
    """

    data: Any
    lines: LineIndex
    problems: tuple[Problem, ...] = ()
    refused: frozenset[Path] = frozenset()
    incomplete: frozenset[Path] = frozenset()


def load_yaml(text: str, filename: str) -> YamlDocument:
    """Parse `text` into dicts/lists/scalars; raise RuleFileError if it is not YAML at all."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        raise RuleFileError([_syntax_problem(exc, text, filename)]) from None
    except yaml.YAMLError as exc:
        raise RuleFileError([Problem(filename, 0, f"invalid YAML: {exc}")]) from None
    if node is None:
        return YamlDocument(None, LineIndex({(): 1}))
    builder = _Builder(filename)
    data = builder.build(node, (), 0)
    if builder.aliased:
        builder.problems.extend(_alias_problems(text, filename))
    return YamlDocument(
        data,
        LineIndex(builder.lines),
        tuple(builder.problems),
        frozenset(builder.refused),
        frozenset(builder.incomplete),
    )


def _alias_problems(text: str, filename: str) -> list[Problem]:
    """One problem at each line that uses an alias (read again only when there is one)."""
    lines = sorted(
        {
            event.start_mark.line + 1
            for event in yaml.parse(text, Loader=_LOADER)
            if isinstance(event, yaml.AliasEvent) and event.start_mark is not None
        }
    )
    return [Problem(filename, line, _ALIAS_MESSAGE) for line in lines]


_UNCLOSED = {
    "while parsing a flow mapping": "this '{' is not closed",
    "while parsing a flow sequence": "this '[' is not closed",
    "while scanning a quoted scalar": "this quoted string is not closed",
}


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str, filename: str) -> Problem:
    """The line where the mistake was written: the tab, or the bracket or quote left open."""
    problem_mark, context_mark = exc.problem_mark, exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if problem_mark is not None:
        lines = text.splitlines()
        source = lines[problem_mark.line] if problem_mark.line < len(lines) else ""
        indentation = source[: len(source) - len(source.lstrip(" \t"))]
        if "\t" in indentation:
            return Problem(
                filename,
                problem_mark.line + 1,
                "invalid YAML: tab character in indentation: use spaces",
            )
        at_tab = problem_mark.column < len(source) and source[problem_mark.column] == "\t"
        if at_tab or "'\\t'" in problem:
            return Problem(
                filename,
                problem_mark.line + 1,
                "invalid YAML: tab character where YAML allows only spaces",
            )
    opened = _UNCLOSED.get(exc.context or "")
    if opened is not None and context_mark is not None:
        where = ""
        if problem_mark is not None:
            where = f" at line {problem_mark.line + 1}, column {problem_mark.column + 1}"
        return Problem(
            filename, context_mark.line + 1, f"invalid YAML: {opened} ({problem}{where})"
        )
    mark = problem_mark or context_mark
    return Problem(filename, mark.line + 1 if mark is not None else 0, f"invalid YAML: {problem}")


class _Builder:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[Path, int] = {}
        self.problems: list[Problem] = []
        self.refused: set[Path] = set()
        self.incomplete: set[Path] = set()
        self._constructor = yaml.SafeLoader("")
        self._built: set[int] = set()
        self.aliased = False

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self._built:  # an alias of a value already built
            self.aliased = True
            self.refused.add(path)
            return None
        self._built.add(id(node))
        if depth > _MAX_DEPTH:
            self._problem(node, "nesting is too deep")
            self.refused.add(path)
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._problem(key_node, "merge keys (<<) are not supported; repeat the values")
                self.incomplete.add(path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, "keys must be plain strings")
                self.incomplete.add(path)
                continue
            key = key_node.value
            if key in result:
                self._problem(key_node, f"duplicate key '{key}'")
                continue
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        problems_before = len(self.problems)
        value = self._checked_scalar(node)
        if len(self.problems) > problems_before:
            self.refused.add(path)
        return value

    def _checked_scalar(self, node: yaml.ScalarNode) -> Any:
        if not node.style:  # plain: None from PyYAML's parser, "" from libyaml's
            # Checked on the text, not the resolved tag: PyYAML reads `8:30` as 510 but
            # `08:30` as a string, and `0151` as octal but `0189` as a string.
            text = node.value
            if text.lower() in _YAML11_BOOL_WORDS:
                self._problem(
                    node,
                    f'{text} is read by YAML as a boolean; quote it: "{text}"'
                    " (write true or false for a boolean)",
                )
                return text
            if _SEXAGESIMAL.fullmatch(text):
                self._problem(
                    node, f'{text} is read by YAML as a number; times must be quoted: "{text}"'
                )
                return text
            if _PLUS_NUMBER.fullmatch(text):
                self._problem(
                    node, f'{text} is read by YAML as a number without its +; quote it: "{text}"'
                )
                return text
            if _OCTAL_LOOKING.fullmatch(text):
                self._problem(
                    node, f'{text} is read by YAML as an octal number; quote it: "{text}"'
                )
                return text
        return self._constructor.construct_object(node, deep=True)

    def _problem(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.filename, node.start_mark.line + 1, message))


def describe_path(path: Path) -> str:
    """`rules[2].when.caller` for ('rules', 2, 'when', 'caller')."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
