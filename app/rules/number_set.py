"""Compiled number lists: exact numbers and prefixes, matched in time independent of list size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from app.phone_numbers import NumberFormatError, normalize_number, normalize_prefix

__all__ = ["NumberListError", "NumberSet"]

_PREFIX_MARK: Final = "*"
_COMMENT_MARK: Final = "#"
# What a problem in a list file shows of the line: a list file may be any file the rule
# file names, and its lines are not echoed into logs and admin answers.
_EXCERPT_CHARS: Final = 4
_QUOTED_CHARS: Final = 40  # as app.phone_numbers quotes an entry in its messages


class NumberListError(ValueError):
    """An unreadable list entry.

    `index` is the 0-based entry index for `NumberSet.build` and the 1-based line number for
    `NumberSet.parse_file_text`; `message` fits after `file:line: `.
    """

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message

    def __reduce__(self) -> tuple[type[NumberListError], tuple[int, str]]:
        return type(self), (self.index, self.message)


class NumberSet:
    """Exact numbers and prefixes in E.164; `match` costs O(length of the number)."""

    __slots__ = ("_exact", "_prefix_lengths", "_prefixes")

    _exact: frozenset[str]
    _prefixes: frozenset[str]
    _prefix_lengths: tuple[int, ...]

    def __init__(self, exact: Iterable[str] = (), prefixes: Iterable[str] = ()) -> None:
        """Wrap already normalized "+digits" numbers and prefixes (without "*")."""
        exact_set = frozenset(exact)
        prefix_set = frozenset(prefixes)
        object.__setattr__(self, "_exact", exact_set)
        object.__setattr__(self, "_prefixes", prefix_set)
        # Longest first, and only the lengths that occur, so a probe never misses a longer prefix.
        lengths = sorted({len(prefix) for prefix in prefix_set}, reverse=True)
        object.__setattr__(self, "_prefix_lengths", tuple(lengths))

    @classmethod
    def build(cls, entries: Sequence[str], region: str) -> NumberSet:
        """Compile numbers and prefixes ("+1415555*", "0151*") written in any form."""
        return cls._compile(enumerate(entries), region)

    @classmethod
    def parse_file_text(cls, text: str, region: str) -> NumberSet:
        """Compile a list file: one number or prefix a line, blank lines and `#` comments.

        A problem names the line and quotes only its first few characters.
        """
        lines = text.removeprefix("\ufeff").split("\n")
        numbered = [
            (line_number, entry)
            for line_number, line in enumerate(lines, start=1)
            if (entry := line.partition(_COMMENT_MARK)[0].strip())
        ]
        try:
            return cls._compile(numbered, region)
        except NumberListError as exc:
            entry = dict(numbered)[exc.index]
            raise NumberListError(exc.index, _without_entry(exc.message, entry)) from None

    @classmethod
    def _compile(cls, entries: Iterable[tuple[int, str]], region: str) -> NumberSet:
        exact: set[str] = set()
        prefixes: set[str] = set()
        for position, entry in entries:
            text = entry.strip()
            try:
                if text.endswith(_PREFIX_MARK):
                    prefix = text[: -len(_PREFIX_MARK)]
                    if not prefix.strip():
                        raise NumberFormatError(
                            f"{text!r} alone would match every number: write a prefix such as '+1*'"
                        )
                    prefixes.add(normalize_prefix(prefix, region))
                else:
                    exact.add(normalize_number(text, region))
            except NumberFormatError as exc:
                raise NumberListError(position, str(exc)) from None
        return cls(exact, prefixes)

    def match(self, e164: str) -> str | None:
        """The entry matching `e164`: the number itself, else the longest prefix with "*"."""
        if e164 in self._exact:
            return e164
        for length in self._prefix_lengths:
            if length <= len(e164):
                candidate = e164[:length]
                if candidate in self._prefixes:
                    return candidate + _PREFIX_MARK
        return None

    def __len__(self) -> int:
        return len(self._exact) + len(self._prefixes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NumberSet):
            return NotImplemented
        return self._exact == other._exact and self._prefixes == other._prefixes

    def __hash__(self) -> int:
        return hash((self._exact, self._prefixes))

    def __repr__(self) -> str:
        return f"NumberSet({len(self._exact)} numbers, {len(self._prefixes)} prefixes)"

    def __reduce__(self) -> tuple[Any, tuple[tuple[str, ...], tuple[str, ...]]]:
        # A reload's worker process sends lists as text in chunks: the service rebuilds a
        # million numbers chunk by chunk, so its event loop gets turns in between.
        return _unpickled, (_chunks(self._exact), _chunks(self._prefixes))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NumberSet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("NumberSet is immutable")


def _without_entry(message: str, entry: str) -> str:
    """`message` with the quoted entry replaced by a marked excerpt of its start."""
    shown = entry.strip()
    quoted = repr(shown[:_QUOTED_CHARS] + "..." if len(shown) > _QUOTED_CHARS else shown)
    if len(shown) > _EXCERPT_CHARS:
        marked = f"the line starting {shown[:_EXCERPT_CHARS] + '…'!r}"
    else:
        marked = f"the line {shown!r}"
    if quoted in message:
        return message.replace(quoted, marked)
    return f"{marked} is not a phone number or prefix"


_CHUNK_ENTRIES: Final = 10_000


def _chunks(entries: frozenset[str]) -> tuple[str, ...]:
    ordered = list(entries)
    return tuple(
        "\n".join(ordered[i : i + _CHUNK_ENTRIES]) for i in range(0, len(ordered), _CHUNK_ENTRIES)
    )


def _unpickled(exact: tuple[str, ...], prefixes: tuple[str, ...]) -> NumberSet:
    def entries(chunks: tuple[str, ...]) -> set[str]:
        found: set[str] = set()
        for chunk in chunks:
            found.update(chunk.split("\n"))
        return found

    return NumberSet(entries(exact), entries(prefixes))
