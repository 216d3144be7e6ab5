"""Compiled number lists: forms, precedence, list files, errors and size."""

from __future__ import annotations

import pickle
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.rules.number_set import NumberListError, NumberSet


@pytest.mark.parametrize(
    ("entries", "region", "number", "expected"),
    [
        (["4155550123"], "US", "+14155550123", "+14155550123"),
        (["+1 (415) 555-0123"], "US", "+14155550123", "+14155550123"),
        (["14155550123"], "US", "+14155550123", "+14155550123"),
        (["415.555.0123"], "US", "+14155550123", "+14155550123"),
        (["011 44 20 7946 0958"], "US", "+442079460958", "+442079460958"),
        (["030 123456"], "DE", "+4930123456", "+4930123456"),
        (["00 49 30 123456"], "DE", "+4930123456", "+4930123456"),
        (["020 7946 0958"], "GB", "+442079460958", "+442079460958"),
        (["01 23 45 67 89"], "FR", "+33123456789", "+33123456789"),
        (["+1415555*"], "US", "+14155550123", "+1415555*"),
        (["1415555*"], "US", "+14155550123", "+1415555*"),
        (["415555*"], "US", "+14155550123", "+1415555*"),
        (["(415) 555-*"], "US", "+14155550123", "+1415555*"),
        (["0151*"], "DE", "+4915112345678", "+49151*"),
        (["0151 *"], "DE", "+4915112345678", "+49151*"),
        (["00 44 20*"], "DE", "+442079460958", "+4420*"),
        (["+44 20 *"], "US", "+442079460958", "+4420*"),
        (["06*"], "FR", "+33612345678", "+336*"),
        (["1*"], "US", "+18005551212", "+1*"),
        (["+4930123456", "+1*"], "US", "+14155550123", "+1*"),
    ],
)
def test_entries_in_any_written_form(
    entries: list[str], region: str, number: str, expected: str
) -> None:
    assert NumberSet.build(entries, region).match(number) == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+14155550100", "+14155550100"),
        ("+14155550101", "+1415555010*"),
        ("+14155550123", "+1415555*"),
        ("+14155560000", "+1415*"),
        ("+14165550100", "+1*"),
        ("+4930123456", None),
        ("+1415", "+1415*"),
        ("+1", "+1*"),
        ("", None),
        ("14155550100", None),
        ("anonymous", None),
    ],
)
def test_exact_before_longest_prefix(number: str, expected: str | None) -> None:
    numbers = NumberSet.build(["+1*", "+1415*", "+1415555*", "+1415555010*", "+14155550100"], "US")
    assert numbers.match(number) == expected


def test_an_exact_number_beats_an_identical_prefix() -> None:
    numbers = NumberSet.build(["+14155550100*", "+14155550100"], "US")
    assert numbers.match("+14155550100") == "+14155550100"
    assert numbers.match("+141555501001") == "+14155550100*"


def test_duplicates_in_any_form_count_once() -> None:
    numbers = NumberSet.build(
        ["+14155550100", "4155550100", "(415) 555-0100", "+1415*", "1415*", "415 *"], "US"
    )
    assert len(numbers) == 2
    assert numbers == NumberSet.build(["+1415*", "+14155550100"], "US")
    assert numbers != NumberSet.build(["+1415*"], "US")


def test_empty_set_matches_nothing() -> None:
    numbers = NumberSet.build([], "US")
    assert len(numbers) == 0
    assert numbers.match("+14155550100") is None


def test_number_set_is_immutable() -> None:
    numbers = NumberSet.build(["+1415*"], "US")
    with pytest.raises(AttributeError):
        numbers._exact = frozenset()
    assert "1 prefixes" in repr(numbers)


@pytest.mark.parametrize(
    ("entries", "index", "fragment"),
    [
        (["+14155550100", "not a number"], 1, "letters are not allowed"),
        (["", "+14155550100"], 0, "empty phone number"),
        (["+1415*", "  "], 1, "empty phone number"),
        (["+1 415"], 0, "too short"),
        (["+1415*", "+4930123456", "*"], 2, "would match every number"),
        (["+1*415*"], 0, "only digits"),
        (["+1415**"], 0, "only digits"),
        (["+*"], 0, "no digits"),
        (["+999*"], 0, "country calling code"),
        (["+14155550100", "+14155550101", "5550123"], 2, "local number"),
        (["0151*"], 0, "region 'XX'"),
    ],
)
def test_build_errors_name_the_entry_index(entries: list[str], index: int, fragment: str) -> None:
    region = "XX" if entries == ["0151*"] else "US"
    with pytest.raises(NumberListError) as caught:
        NumberSet.build(entries, region)
    assert caught.value.index == index
    assert fragment in caught.value.message
    assert str(caught.value) == caught.value.message


def test_list_file_with_comments_and_blank_lines() -> None:
    text = (
        "\ufeff# blocked callers, reviewed 2026-01-05\n"
        "\n"
        "+14155550100\n"
        "  4155550101   # the same caller from a second line\n"
        "+1 (212) 555-0123\r\n"
        "\t\n"
        "   # indented comment\n"
        "212 555 *    # a whole exchange\n"
        "011 49 151 *\n"
        "+4930123456#no space before the comment\n"
        "#+18005551212\n"
    )
    numbers = NumberSet.parse_file_text(text, "US")
    assert len(numbers) == 6
    assert numbers.match("+14155550100") == "+14155550100"
    assert numbers.match("+14155550101") == "+14155550101"
    assert numbers.match("+12125550123") == "+12125550123"
    assert numbers.match("+4915112345678") == "+49151*"
    assert numbers.match("+12125550199") == "+1212555*"
    assert numbers.match("+4930123456") == "+4930123456"
    assert numbers.match("+18005551212") is None


def test_list_file_in_region_de() -> None:
    numbers = NumberSet.parse_file_text("0151*\n030 123456\n0049 89 *\n", "DE")
    assert numbers.match("+4915112345678") == "+49151*"
    assert numbers.match("+4930123456") == "+4930123456"
    assert numbers.match("+4989123456") == "+4989*"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("+14155550100\nnot a number\n", 2, "letters are not allowed"),
        ("# header\n\n+14155550100\n\n+1 415 # too short\n", 5, "too short"),
        ("+14155550100\r\n\r\n*\r\n", 3, "would match every number"),
        ("\ufeffabc\n", 1, "letters are not allowed"),
        ("+1415*\n" * 1000 + "+1-415-x\n", 1001, "letters are not allowed"),
        # Line numbers count "\n" only, the way editors do.
        ("+1415*\x0b\n+1 415\n", 2, "too short"),
    ],
)
def test_list_file_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(NumberListError) as caught:
        NumberSet.parse_file_text(text, "US")
    assert caught.value.index == line
    assert fragment in caught.value.message


def test_list_error_survives_pickling() -> None:
    error = NumberListError(3, "'x' is not a phone number")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301
    assert (copy.index, copy.message) == (3, "'x' is not a phone number")


@given(st.lists(st.text(max_size=30), max_size=10), st.sampled_from(["US", "DE", "XX"]))
def test_build_raises_only_number_list_error(entries: list[str], region: str) -> None:
    error: NumberListError | None = None
    try:
        numbers = NumberSet.build(entries, region)
    except NumberListError as raised:
        error = raised
    if error is None:
        assert len(numbers) <= len(entries)
    else:
        assert 0 <= error.index < len(entries)
        assert error.message


@given(st.text(max_size=300))
def test_parse_file_text_raises_only_number_list_error(text: str) -> None:
    error: NumberListError | None = None
    try:
        NumberSet.parse_file_text(text, "US")
    except NumberListError as raised:
        error = raised
    if error is not None:
        assert 1 <= error.index <= text.count("\n") + 1
        assert error.message


@given(
    st.lists(st.from_regex(r"\A\+1415[0-9]{0,7}\Z"), max_size=30),
    st.lists(st.from_regex(r"\A\+1415[0-9]{7}\Z"), max_size=30),
    st.from_regex(r"\A\+1415[0-9]{7}\Z"),
)
def test_match_agrees_with_a_plain_scan(prefixes: list[str], exact: list[str], number: str) -> None:
    numbers = NumberSet.build([p + "*" for p in prefixes] + exact, "US")
    if number in exact:
        expected: str | None = number
    else:
        covering = [p for p in prefixes if number.startswith(p)]
        expected = max(covering, key=len) + "*" if covering else None
    assert numbers.match(number) == expected


def test_a_million_entries() -> None:
    rng = random.Random(7)
    entries = [f"+1415{rng.randrange(10**7):07d}" for _ in range(1_000_000)]
    entries += ["+1212555*", "+4930*"]
    started = time.perf_counter()
    numbers = NumberSet.build(entries, "US")
    # A full phonenumbers parse per entry takes tens of seconds; canonical entries must not.
    assert time.perf_counter() - started < 10
    assert len(numbers) == len(set(entries))
    assert numbers.match(entries[123_456]) == entries[123_456]
    assert numbers.match("+12125550123") == "+1212555*"
    assert numbers.match("+4930123456") == "+4930*"
    assert numbers.match("+16505550123") is None
