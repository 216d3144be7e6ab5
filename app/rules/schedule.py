"""Schedules: weekly windows in a time zone, closed and open days, evaluated at an instant.

A schedule with no weekly windows is open at all times except on its closed days.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from calendar import monthrange
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from difflib import get_close_matches
from functools import cache
from types import MappingProxyType
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from holidays import country_holidays, list_supported_countries
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_LABELS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_MINUTES = 24 * 60
_TIME = re.compile(r"(\d{2}):(\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH_DAY = re.compile(r"\d{2}-\d{2}")


def load_zone(key: str) -> ZoneInfo:
    """Return the IANA time zone `key`, or raise ValueError naming it."""
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = closest_zone(key)
        hint = f" (did you mean '{close}'?)" if close else ""
        raise ValueError(f"unknown time zone '{key}'{hint}") from None


def closest_zone(key: str) -> str | None:
    """The IANA time zone name `key` was most likely meant to be, if one is close."""
    close = get_close_matches(key, available_timezones(), n=1, cutoff=0.8)
    return close[0] if close else None


def _weekday(name: str) -> int:
    try:
        return WEEKDAYS.index(name)
    except ValueError:
        raise ValueError(f"unknown weekday '{name}' (use {', '.join(WEEKDAYS)})") from None


def _day_token(token: str) -> tuple[int, ...]:
    """Weekday numbers (Monday 0) named by "fri" or a range "mon-fri" / "fri-mon"."""
    text = token.strip().lower()
    if "-" not in text:
        return (_weekday(text),)
    first, _, last = (part.strip() for part in text.partition("-"))
    start, end = _weekday(first), _weekday(last)
    if start == end:
        raise ValueError(f"day range '{token}' starts and ends on the same day (write '{first}')")
    return tuple((start + i) % 7 for i in range((end - start) % 7 + 1))


def _checked_day_token(token: str) -> str:
    _day_token(token)
    return token.strip().lower()


_DAY_LIST: TypeAdapter[tuple[str, ...]] = TypeAdapter(
    tuple[Annotated[str, AfterValidator(_checked_day_token)], ...]
)


def _time_minutes(value: Any, *, field: str) -> int:
    """Minutes after midnight for "HH:MM"; "24:00" only where `field` is "to"."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f'time must be a quoted "HH:MM" string, got {value!r}')
    if isinstance(value, int):
        message = f'time must be a quoted "HH:MM" string, got the number {value}'
        if 0 <= value <= _DAY_MINUTES:
            # YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080.
            hours, minutes = divmod(value, 60)
            message += f" (YAML reads an unquoted {hours:02d}:{minutes:02d} as {value}; quote it)"
        raise ValueError(message)
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"time must be HH:MM, got '{value}'")
    hours, minutes = int(match[1]), int(match[2])
    if (hours, minutes) == (24, 0):
        if field != "to":
            raise ValueError(
                '"24:00" is allowed only for to; a window starting at midnight is "00:00"'
            )
        return _DAY_MINUTES
    if hours > 23 or minutes > 59:
        raise ValueError(f"time out of range, got '{value}' (00:00 to 23:59, or 24:00 for to)")
    return hours * 60 + minutes


def _checked_clock_time(value: Any, info: ValidationInfo) -> Any:
    """A `from`/`to` field's value, checked as a clock time (kept as written)."""
    _time_minutes(value, field="from" if info.field_name == "from_" else str(info.field_name))
    return value


# `from` and `to` of a window or a part-day closure: "HH:MM", checked when read.
ClockTime = Annotated[str, BeforeValidator(_checked_clock_time)]


_DATE_FORMS = "YYYY-MM-DD, MM-DD (every year), or a range of either form like 12-24..12-26"
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", -1: "last"}
# Every-year dates are checked against a leap year, so 02-29 is a date (in leap years).
_LEAP_YEAR = 2000


def _parse_date(text: str) -> date:
    text = text.strip()
    if _DATE.fullmatch(text) is None:
        raise ValueError(f"date must be {_DATE_FORMS}, got '{text}'")
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"invalid date '{text}': {error}") from None


def _parse_month_day(text: str) -> tuple[int, int]:
    """(month, day) of an every-year date "MM-DD"; 02-29 is allowed."""
    text = text.strip()
    if _MONTH_DAY.fullmatch(text) is None:
        raise ValueError(f"date must be {_DATE_FORMS}, got '{text}'")
    month, day = int(text[:2]), int(text[3:])
    if not 1 <= month <= 12:
        raise ValueError(f"invalid date '{text}': month must be 01 to 12")
    try:
        date(_LEAP_YEAR, month, day)
    except ValueError as error:
        raise ValueError(f"invalid date '{text}': {error}") from None
    return month, day


def _date_span(entry: str) -> tuple[date, date]:
    """First and last day (inclusive) of "YYYY-MM-DD" or "YYYY-MM-DD..YYYY-MM-DD"."""
    first, dots, last = entry.partition("..")
    start = _parse_date(first)
    if not dots:
        return start, start
    end = _parse_date(last)
    if end < start:
        raise ValueError(f"date range end is before its start: '{entry}'")
    return start, end


def _month_day_span(entry: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """First and last (month, day) of "MM-DD" or "MM-DD..MM-DD" (which may cross the year end)."""
    first, dots, last = entry.partition("..")
    start = _parse_month_day(first)
    return start, (_parse_month_day(last) if dots else start)


def _is_every_year(text: str) -> bool:
    return _MONTH_DAY.fullmatch(text.partition("..")[0].strip()) is not None


def _date_text(value: str) -> str:
    """A date string in its canonical form; raises ValueError saying what is wrong."""
    first, dots, last = value.partition("..")
    if _is_every_year(first):
        if dots and not _is_every_year(last):
            raise ValueError(
                f"a range is either YYYY-MM-DD..YYYY-MM-DD or MM-DD..MM-DD, got '{value}'"
            )
        (m1, d1), (m2, d2) = _month_day_span(value)
        return f"{m1:02d}-{d1:02d}" + (f"..{m2:02d}-{d2:02d}" if dots else "")
    if dots and _is_every_year(last):
        raise ValueError(f"a range is either YYYY-MM-DD..YYYY-MM-DD or MM-DD..MM-DD, got '{value}'")
    start, end = _date_span(value)
    return start.isoformat() if not dots else f"{start.isoformat()}..{end.isoformat()}"


def _weekday_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"weekday must be one of {', '.join(WEEKDAYS)}, got {value!r}")
    text = value.strip().lower()
    if text in WEEKDAYS:
        return text
    close = text[:3] if text[:3] in WEEKDAYS else None
    close = close or next(iter(get_close_matches(text, WEEKDAYS, n=1, cutoff=0.6)), None)
    hint = f" (did you mean '{close}'?)" if close else ""
    raise ValueError(f"unknown weekday '{value}'{hint}; use one of {', '.join(WEEKDAYS)}")


class NthWeekdaySpec(BaseModel):
    """The nth weekday of a month every year: {month: 5, weekday: mon, nth: -1} (the last)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    month: StrictInt = Field(ge=1, le=12)
    weekday: str
    nth: StrictInt

    @field_validator("weekday", mode="before")
    @classmethod
    def _known_weekday(cls, value: Any) -> Any:
        return _weekday_name(value)

    @field_validator("nth")
    @classmethod
    def _known_nth(cls, value: int) -> int:
        if value not in _ORDINALS:
            raise ValueError(
                f"nth must be 1 to 5 (the first to fifth) or -1 (the last), got {value}"
            )
        return value

    def label(self) -> str:
        """ "the last Monday of May"."""
        weekday = _WEEKDAY_NAMES[WEEKDAYS.index(self.weekday)]
        return f"the {_ORDINALS[self.nth]} {weekday} of {_MONTH_NAMES[self.month - 1]}"

    def holds_on(self, day: date) -> bool:
        if day.month != self.month or day.weekday() != WEEKDAYS.index(self.weekday):
            return False
        if self.nth == -1:
            return day.day + 7 > monthrange(day.year, day.month)[1]
        return (day.day - 1) // 7 + 1 == self.nth


def _date_entry(value: Any) -> str | NthWeekdaySpec:
    # datetime is a date subclass; YAML produces one for "2026-12-24 10:00".
    if isinstance(value, datetime):
        raise ValueError(f"expected a date, got the date and time '{value.isoformat()}'")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, NthWeekdaySpec):
        return value
    if isinstance(value, Mapping):
        return NthWeekdaySpec.model_validate(value)
    if not isinstance(value, str):
        raise ValueError(
            f"date must be a string ({_DATE_FORMS}) or a mapping {{month, weekday, nth}},"
            f" got {value!r}"
        )
    return _date_text(value)


DateEntry = Annotated[
    str | NthWeekdaySpec,
    PlainValidator(_date_entry, json_schema_input_type=str | NthWeekdaySpec),
]


class ClosedTimeSpec(BaseModel):
    """Part of a day closed: [from, to) on a date; `to` not after `from` runs overnight."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    date: DateEntry
    from_: ClockTime = Field(alias="from")
    to: ClockTime


@dataclass(frozen=True, slots=True)
class _CountryInfo:
    country: str
    subdivisions: tuple[str, ...]
    aliases: Mapping[str, str]
    categories: tuple[str, ...]


@cache
def _country_info(code: str) -> _CountryInfo:
    calendar = country_holidays(code)
    return _CountryInfo(
        country=calendar.country,
        subdivisions=tuple(calendar.subdivisions),
        aliases=dict(calendar.subdivisions_aliases),
        categories=tuple(calendar.supported_categories),
    )


def _not_a_code(value: Any, what: str) -> str:
    if isinstance(value, bool):
        # YAML 1.1 reads unquoted NO (Norway), ON (Ontario), YES and OFF as booleans.
        return f"{what} was read by YAML as the boolean {str(value).lower()}; quote it"
    return f"{what} must be a quoted string, got {value!r}"


class HolidaySpec(BaseModel):
    """Public holidays of a country, optionally of one subdivision, via the holidays library."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    country: str
    subdiv: str | None = None
    categories: tuple[str, ...] | None = None

    @field_validator("country", mode="before")
    @classmethod
    def _known_country(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(_not_a_code(value, "country code"))
        code = value.strip().upper()
        if code not in list_supported_countries():
            raise ValueError(
                f"unknown country '{value}' for holidays (use an ISO code like DE or US)"
            )
        return _country_info(code).country

    @field_validator("subdiv", mode="before")
    @classmethod
    def _known_subdivision(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(_not_a_code(value, "subdivision code"))
        country = info.data.get("country")
        if country is None:
            return value
        known = _country_info(country)
        wanted = value.strip().casefold()
        for code in known.subdivisions:
            if code.casefold() == wanted:
                return code
        for alias, code in known.aliases.items():
            if alias.casefold() == wanted:
                return code
        listed = ", ".join(known.subdivisions) if known.subdivisions else "none"
        raise ValueError(f"unknown subdivision '{value}' for {country} (known: {listed})")

    @field_validator("categories", mode="before")
    @classmethod
    def _one_or_many_categories(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("categories")
    @classmethod
    def _known_categories(
        cls, value: tuple[str, ...] | None, info: ValidationInfo
    ) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("categories must name at least one category (or be left out)")
        country = info.data.get("country")
        if country is None:
            return value
        known = _country_info(country).categories
        names = tuple(name.strip().lower() for name in value)
        for name in names:
            if name not in known:
                raise ValueError(
                    f"unknown holiday category '{name}' for {country} (known: {', '.join(known)})"
                )
        return names

    def label(self) -> str:
        """Short name for traces: "DE-BE", "US"."""
        return f"{self.country}-{self.subdiv}" if self.subdiv else self.country


_HOLIDAY_LIST: TypeAdapter[tuple[HolidaySpec, ...]] = TypeAdapter(tuple[HolidaySpec, ...])


class DaySetSpec(BaseModel):
    """Whole days: public holidays, dates (once or every year), ranges "a..b", nth weekdays."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    holidays: HolidaySpec | tuple[HolidaySpec, ...] | None = None
    dates: tuple[DateEntry, ...] = ()

    @field_validator("holidays", mode="before")
    @classmethod
    def _one_or_many_holidays(cls, value: Any) -> Any:
        # Validating the chosen shape here keeps error locations free of union branch names.
        if value is None or isinstance(value, HolidaySpec):
            return value
        if isinstance(value, Mapping):
            return HolidaySpec.model_validate(value)
        if isinstance(value, list | tuple):
            return _HOLIDAY_LIST.validate_python(tuple(value))
        raise ValueError(
            "holidays must be a mapping like {country: DE, subdiv: BE} or a list of them"
        )

    @field_validator("dates", mode="before")
    @classmethod
    def _one_or_many_dates(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str | date | Mapping) else value


class ClosedDaySetSpec(DaySetSpec):
    """`closed`: whole days as in DaySetSpec, and parts of days (`times`)."""

    times: tuple[ClosedTimeSpec, ...] = ()


class WeeklyWindowSpec(BaseModel):
    """Half-open window [from, to) on some weekdays; `to` not after `from` runs overnight."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    days: str | tuple[str, ...]
    from_: ClockTime = Field(alias="from")
    to: ClockTime

    @field_validator("days", mode="before")
    @classmethod
    def _known_days(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _checked_day_token(value)
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("days must name at least one day")
            return _DAY_LIST.validate_python(tuple(value))
        raise ValueError(
            "days must be a weekday like mon, a range like mon-fri, or a list of them, "
            f"got {value!r}"
        )

    def weekdays(self) -> frozenset[int]:
        """Weekday numbers (Monday 0) on which the window starts."""
        tokens = (self.days,) if isinstance(self.days, str) else self.days
        return frozenset(day for token in tokens for day in _day_token(token))

    def label(self) -> str:
        """The window as written, for traces: "fri 22:00-02:00"."""
        days = self.days if isinstance(self.days, str) else ",".join(self.days)
        return f"{days} {self.from_}-{self.to}"


class ScheduleSpec(BaseModel):
    """A named schedule as written in the rule file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str | None = None
    weekly: tuple[WeeklyWindowSpec, ...] = ()
    closed: ClosedDaySetSpec | None = None
    open: DaySetSpec | None = None

    @field_validator("timezone", mode="before")
    @classmethod
    def _known_timezone(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"time zone must be an IANA name like Europe/Berlin, got {value!r}")
        load_zone(value)
        return value


@dataclass(frozen=True, slots=True)
class ScheduleVerdict:
    """Whether a schedule is open at an instant, and a short sentence saying why."""

    open: bool
    reason: str


@dataclass(frozen=True, slots=True)
class _Window:
    # Minutes after midnight of the start day; an overnight window ends past 1440.
    start: int
    end: int
    label: str


class _HolidayCalendar:
    """Holidays of one HolidaySpec, computed once per year and then looked up."""

    __slots__ = ("_label", "_spec", "_years")

    def __init__(self, spec: HolidaySpec) -> None:
        self._spec = spec
        self._label = spec.label()
        # Filling a year twice under concurrency yields equal values, so no lock is needed.
        self._years: dict[int, Mapping[date, str]] = {}

    def __reduce__(self) -> tuple[type[_HolidayCalendar], tuple[HolidaySpec]]:
        # The years are filled again where it is unpickled, from the shared cache.
        return type(self), (self._spec,)

    def name_on(self, day: date) -> str | None:
        names = self._years.get(day.year)
        if names is None:
            names = self._load(day.year)
            self._years[day.year] = names
        return names.get(day)

    def label(self) -> str:
        return self._label

    def _load(self, year: int) -> Mapping[date, str]:
        spec = self._spec
        return _holiday_year(spec.country, spec.subdiv, spec.categories, year)


@functools.lru_cache(maxsize=512)
def _holiday_year(
    country: str, subdiv: str | None, categories: tuple[str, ...] | None, year: int
) -> Mapping[date, str]:
    """One calendar year of holidays, shared by every ruleset: reloads do not rebuild it."""
    calendar = country_holidays(country, subdiv=subdiv, years=year, categories=categories)
    return MappingProxyType(dict(calendar.items()))


@dataclass(frozen=True, slots=True)
class _EveryYear:
    """Every-year dates: one (month, day), or an inclusive range that may cross the year end."""

    first: tuple[int, int]
    last: tuple[int, int]
    label: str

    def holds_on(self, day: date) -> bool:
        today = (day.month, day.day)
        if self.first <= self.last:
            return self.first <= today <= self.last
        return today >= self.first or today <= self.last


def _day_rule(entry: str | NthWeekdaySpec) -> _EveryYear | NthWeekdaySpec | tuple[date, date]:
    """What a validated date entry means: a span of days, every-year dates, an nth weekday."""
    if isinstance(entry, NthWeekdaySpec):
        return entry
    if _is_every_year(entry):
        first, last = _month_day_span(entry)
        return _EveryYear(first, last, entry)
    return _date_span(entry)


def _holds_on(rule: _EveryYear | NthWeekdaySpec | tuple[date, date], day: date) -> bool:
    if isinstance(rule, tuple):
        return rule[0] <= day <= rule[1]
    return rule.holds_on(day)


class _DaySet:
    """Compiled DaySetSpec: merged date ranges searched by bisection, every-year dates and nth
    weekdays, plus holiday calendars."""

    __slots__ = ("_calendars", "_ends", "_kind", "_recurring", "_starts")

    def __init__(self, spec: DaySetSpec, kind: str) -> None:
        self._kind = kind
        rules = [_day_rule(entry) for entry in spec.dates]
        spans = sorted(
            (rule[0].toordinal(), rule[1].toordinal()) for rule in rules if isinstance(rule, tuple)
        )
        self._recurring = tuple(rule for rule in rules if not isinstance(rule, tuple))
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self._starts = tuple(start for start, _ in merged)
        self._ends = tuple(end for _, end in merged)
        specs: Sequence[HolidaySpec]
        if spec.holidays is None:
            specs = ()
        elif isinstance(spec.holidays, HolidaySpec):
            specs = (spec.holidays,)
        else:
            specs = spec.holidays
        self._calendars = tuple(_HolidayCalendar(holiday) for holiday in specs)

    def match(self, day: date) -> str | None:
        """Why `day` is in the set ("2026-12-25 is a holiday (...)"), or None."""
        ordinal = day.toordinal()
        index = bisect_right(self._starts, ordinal) - 1
        if index >= 0 and ordinal <= self._ends[index]:
            start, end = self._starts[index], self._ends[index]
            if start == end:
                return f"{day.isoformat()} is listed in {self._kind} dates"
            span = f"{date.fromordinal(start).isoformat()}..{date.fromordinal(end).isoformat()}"
            return f"{day.isoformat()} is in {self._kind} dates {span}"
        for rule in self._recurring:
            if not rule.holds_on(day):
                continue
            if isinstance(rule, NthWeekdaySpec):
                return f"{day.isoformat()} is {rule.label()}, in {self._kind} dates"
            return f"{day.isoformat()} is in {self._kind} dates {rule.label} (every year)"
        for calendar in self._calendars:
            name = calendar.name_on(day)
            if name is not None:
                return f"{day.isoformat()} is a holiday ({name}, {calendar.label()})"
        return None


@dataclass(frozen=True, slots=True)
class _ClosedTime:
    """A compiled part-day closure: minutes after midnight of its day; overnight past 1440."""

    day: _EveryYear | NthWeekdaySpec | tuple[date, date]
    start: int
    end: int
    label: str


def _closed_time(spec: ClosedTimeSpec) -> _ClosedTime:
    start = _time_minutes(spec.from_, field="from")
    end = _time_minutes(spec.to, field="to")
    if end <= start:
        end += _DAY_MINUTES
    written = spec.date.label() if isinstance(spec.date, NthWeekdaySpec) else spec.date
    return _ClosedTime(_day_rule(spec.date), start, end, f"{written} {spec.from_}-{spec.to}")


class CompiledSchedule:
    """A schedule ready to evaluate: windows per start weekday, day sets, a ZoneInfo."""

    __slots__ = ("_closed", "_closed_times", "_open", "_windows", "name", "timezone")

    def __init__(
        self,
        name: str,
        timezone: ZoneInfo,
        windows: tuple[tuple[_Window, ...], ...],
        closed: _DaySet | None,
        open_days: _DaySet | None,
        closed_times: tuple[_ClosedTime, ...] = (),
    ) -> None:
        self.name = name
        self.timezone = timezone
        self._windows = windows
        self._closed = closed
        self._open = open_days
        self._closed_times = closed_times

    def evaluate(self, at: datetime) -> ScheduleVerdict:
        """Decide whether the schedule is open at the aware instant `at`, with a reason."""
        local, today, minute = self._local(at)
        when = f"{_WEEKDAY_LABELS[today.weekday()]} {local:%H:%M} {self.timezone.key}"
        closed_time = self._closed_time(today, minute)
        if closed_time is not None:
            return ScheduleVerdict(False, f"closed: {when} is in closed times {closed_time}")
        if not any(self._windows):
            closed, reopened = self._day_status(today)
            if closed is not None:
                return ScheduleVerdict(False, f"closed: {closed}")
            return ScheduleVerdict(True, _with_note(f"open: {when}, no weekly windows", reopened))
        blocked: str | None = None
        for window, start_day in self._matching_windows(today, minute):
            closed, reopened = self._day_status(start_day)
            if closed is None:
                return ScheduleVerdict(
                    True, _with_note(f"open: {when} in {window.label}", reopened)
                )
            blocked = blocked or closed
        if blocked is None:
            blocked = self._day_status(today)[0]
        if blocked is not None:
            return ScheduleVerdict(False, f"closed: {blocked}")
        return ScheduleVerdict(False, f"closed: {when} is outside the weekly windows")

    def is_open(self, at: datetime) -> bool:
        """Whether the schedule is open at the aware instant `at`."""
        _, today, minute = self._local(at)
        if self._closed_times and self._closed_time(today, minute) is not None:
            return False
        if not any(self._windows):
            return self._day_status(today)[0] is None
        return any(
            self._day_status(start_day)[0] is None
            for _, start_day in self._matching_windows(today, minute)
        )

    def _local(self, at: datetime) -> tuple[datetime, date, int]:
        if at.utcoffset() is None:
            raise ValueError("schedule evaluation needs a timezone-aware datetime, got a naive one")
        # Through UTC so a wall time that never existed in this zone becomes the real instant
        # (astimezone to the same tzinfo object would return it unchanged).
        local = at.astimezone(UTC).astimezone(self.timezone)
        return local, local.date(), local.hour * 60 + local.minute

    def _matching_windows(self, today: date, minute: int) -> list[tuple[_Window, date]]:
        found = [
            (window, today)
            for window in self._windows[today.weekday()]
            if window.start <= minute < window.end
        ]
        if today > date.min:
            yesterday = today - timedelta(days=1)
            later = minute + _DAY_MINUTES
            found.extend(
                (window, yesterday)
                for window in self._windows[yesterday.weekday()]
                if later < window.end
            )
        return found

    def _closed_time(self, today: date, minute: int) -> str | None:
        """The part-day closure holding at `minute` of `today`, unless its day is in `open`."""
        yesterday = today - timedelta(days=1) if today > date.min else None
        for closure in self._closed_times:
            if closure.start <= minute < closure.end:
                day = today
            elif yesterday is not None and minute + _DAY_MINUTES < closure.end:
                day = yesterday
            else:
                continue
            if not _holds_on(closure.day, day):
                continue
            if self._open is not None and self._open.match(day) is not None:
                continue
            return closure.label
        return None

    def _day_status(self, day: date) -> tuple[str | None, str | None]:
        """(why the day is closed or None, why a closed day was reopened or None)."""
        closed = self._closed.match(day) if self._closed is not None else None
        if closed is None:
            return None, None
        reopened = self._open.match(day) if self._open is not None else None
        if reopened is None:
            return closed, None
        return None, reopened


def _with_note(reason: str, note: str | None) -> str:
    return reason if note is None else f"{reason}; {note}"


def compile_schedule(name: str, spec: ScheduleSpec, default_timezone: str) -> CompiledSchedule:
    """Compile a validated ScheduleSpec; `default_timezone` applies when it names none."""
    zone = load_zone(spec.timezone or default_timezone)
    per_day: list[dict[_Window, None]] = [{} for _ in WEEKDAYS]
    for window_spec in spec.weekly:
        start = _time_minutes(window_spec.from_, field="from")
        end = _time_minutes(window_spec.to, field="to")
        if end <= start:
            end += _DAY_MINUTES
        window = _Window(start, end, window_spec.label())
        for day in window_spec.weekdays():
            per_day[day][window] = None
    return CompiledSchedule(
        name=name,
        timezone=zone,
        windows=tuple(tuple(windows) for windows in per_day),
        closed=_DaySet(spec.closed, "closed") if spec.closed is not None else None,
        open_days=_DaySet(spec.open, "open") if spec.open is not None else None,
        closed_times=tuple(_closed_time(t) for t in spec.closed.times) if spec.closed else (),
    )
