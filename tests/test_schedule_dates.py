"""Every-year dates, nth weekdays and part-day closures, across DST changes and year ends.

Instants are given in UTC where a wall-clock time would be ambiguous or missing, so each case
says exactly which moment it decides; the zones are real (zoneinfo).
"""

from __future__ import annotations

import pickle
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from app.rules.schedule import (
    CompiledSchedule,
    DaySetSpec,
    NthWeekdaySpec,
    ScheduleSpec,
    compile_schedule,
)

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"
SYDNEY = "Australia/Sydney"
KOLKATA = "Asia/Kolkata"


def build(
    tz: str,
    *,
    weekly: tuple[tuple[str, str, str], ...] = (),
    closed: dict[str, Any] | None = None,
    open_: dict[str, Any] | None = None,
) -> CompiledSchedule:
    data: dict[str, Any] = {
        "timezone": tz,
        "weekly": [{"days": d, "from": f, "to": t} for d, f, t in weekly],
    }
    if closed is not None:
        data["closed"] = closed
    if open_ is not None:
        data["open"] = open_
    return compile_schedule("test", ScheduleSpec.model_validate(data), "UTC")


def local(text: str, tz: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def closed_days(schedule: CompiledSchedule, tz: str, first: str, last: str) -> list[str]:
    """The days from `first` to `last` whose local noon is closed."""
    day, end = date.fromisoformat(first), date.fromisoformat(last)
    found = []
    while day <= end:
        if not schedule.is_open(local(f"{day.isoformat()} 12:00", tz)):
            found.append(day.isoformat())
        day += timedelta(days=1)
    return found


# --- every-year dates --------------------------------------------------------------------------


@pytest.mark.parametrize("year", [2025, 2026, 2027, 2028])
def test_every_year_date_closes_that_day_in_every_year(year: int) -> None:
    schedule = build(NEW_YORK, closed={"dates": ["12-25", "07-04"]})
    assert closed_days(schedule, NEW_YORK, f"{year}-01-01", f"{year}-12-31") == [
        f"{year}-07-04",
        f"{year}-12-25",
    ]


def test_every_year_range_and_a_range_across_the_year_end() -> None:
    schedule = build(BERLIN, closed={"dates": ["12-24..12-26", "12-31..01-02"]})
    assert closed_days(schedule, BERLIN, "2026-12-20", "2027-01-05") == [
        "2026-12-24",
        "2026-12-25",
        "2026-12-26",
        "2026-12-31",
        "2027-01-01",
        "2027-01-02",
    ]
    # The same dates a year later, without writing a year.
    assert closed_days(schedule, BERLIN, "2027-12-30", "2028-01-03") == [
        "2027-12-31",
        "2028-01-01",
        "2028-01-02",
    ]


def test_february_29_every_year_is_a_date_in_leap_years_only() -> None:
    schedule = build(BERLIN, closed={"dates": "02-29"})
    assert closed_days(schedule, BERLIN, "2027-02-27", "2027-03-02") == []
    assert closed_days(schedule, BERLIN, "2028-02-27", "2028-03-02") == ["2028-02-29"]


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # Sydney is on daylight time (UTC+11) over the year end.
        (utc("2026-12-30T12:59:00"), True),  # Wed 23:59 Dec 30 in Sydney
        (utc("2026-12-30T13:00:00"), False),  # Thu 00:00 Dec 31
        (utc("2027-01-01T12:59:00"), False),  # Fri 23:59 Jan 1
        (utc("2027-01-01T13:00:00"), True),  # Sat 00:00 Jan 2
    ],
)
def test_year_end_range_in_sydney_by_its_local_midnight(at: datetime, expected: bool) -> None:
    schedule = build(SYDNEY, closed={"dates": ["12-31..01-01"]})
    assert schedule.is_open(at) is expected
    assert schedule.evaluate(at).open is expected


def test_year_end_in_kolkata_half_hour_offset() -> None:
    schedule = build(KOLKATA, weekly=(("mon-sun", "00:00", "24:00"),), closed={"dates": ["01-01"]})
    # Midnight in Kolkata (UTC+05:30) is 18:30 UTC the day before.
    assert schedule.is_open(utc("2026-12-31T18:29:00"))
    assert not schedule.is_open(utc("2026-12-31T18:30:00"))
    assert not schedule.is_open(utc("2027-01-01T18:29:00"))
    assert schedule.is_open(utc("2027-01-01T18:30:00"))
    verdict = schedule.evaluate(utc("2026-12-31T20:00:00"))
    assert verdict.reason == "closed: 2027-01-01 is in closed dates 01-01 (every year)"


def test_every_year_date_and_a_dated_range_together_and_open_wins() -> None:
    schedule = build(
        BERLIN,
        weekly=(("mon-fri", "09:00", "17:00"),),
        closed={"dates": ["12-24..12-26", "2026-12-28..2026-12-31"]},
        open_={"dates": ["2026-12-24"]},
    )
    assert schedule.is_open(local("2026-12-24 10:00", BERLIN))  # Thursday, reopened
    assert not schedule.is_open(local("2027-12-24 10:00", BERLIN))  # Friday, a year later
    assert schedule.evaluate(local("2026-12-25 10:00", BERLIN)).reason == (
        "closed: 2026-12-25 is in closed dates 12-24..12-26 (every year)"
    )


# --- the nth weekday of a month ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "year", "expected"),
    [
        ({"month": 5, "weekday": "mon", "nth": -1}, 2026, ["2026-05-25"]),  # Memorial Day
        ({"month": 5, "weekday": "mon", "nth": -1}, 2027, ["2027-05-31"]),
        ({"month": 11, "weekday": "thu", "nth": 4}, 2026, ["2026-11-26"]),  # Thanksgiving
        ({"month": 11, "weekday": "thu", "nth": 4}, 2027, ["2027-11-25"]),
        ({"month": 1, "weekday": "mon", "nth": 1}, 2024, ["2024-01-01"]),  # the 1st is a Monday
        ({"month": 9, "weekday": "sun", "nth": 1}, 2026, ["2026-09-06"]),
        ({"month": 1, "weekday": "fri", "nth": 5}, 2026, ["2026-01-30"]),
        # February 2026 has four Fridays: a fifth is simply no date.
        ({"month": 2, "weekday": "fri", "nth": 5}, 2026, []),
        # February 2027 has 28 days and starts on a Monday: its last Sunday is the 28th.
        ({"month": 2, "weekday": "sun", "nth": -1}, 2027, ["2027-02-28"]),
    ],
)
def test_nth_weekday_of_a_month(spec: dict[str, Any], year: int, expected: list[str]) -> None:
    schedule = build(NEW_YORK, closed={"dates": [spec]})
    assert closed_days(schedule, NEW_YORK, f"{year}-01-01", f"{year}-12-31") == expected


def test_nth_weekday_reason_names_it() -> None:
    schedule = build(NEW_YORK, closed={"dates": {"month": 5, "weekday": "Mon", "nth": -1}})
    assert schedule.evaluate(local("2026-05-25 10:00", NEW_YORK)).reason == (
        "closed: 2026-05-25 is the last Monday of May, in closed dates"
    )


def test_nth_weekday_in_open_reopens_a_holiday() -> None:
    schedule = build(
        NEW_YORK,
        weekly=(("mon-fri", "09:00", "17:00"),),
        closed={"holidays": {"country": "US"}},
        open_={"dates": [{"month": 10, "weekday": "mon", "nth": 2}]},  # Columbus Day
    )
    assert schedule.is_open(local("2026-10-12 10:00", NEW_YORK))
    assert not schedule.is_open(local("2026-11-26 10:00", NEW_YORK))  # Thanksgiving


# --- part-day closures -------------------------------------------------------------------------


def test_part_day_closure_is_half_open() -> None:
    schedule = build(
        BERLIN,
        weekly=(("mon-fri", "08:00", "18:00"),),
        closed={"times": [{"date": "2026-12-23", "from": "14:00", "to": "16:30"}]},
    )
    assert schedule.is_open(local("2026-12-23 13:59:59", BERLIN))
    assert not schedule.is_open(local("2026-12-23 14:00", BERLIN))
    assert not schedule.is_open(local("2026-12-23 16:29:59", BERLIN))
    assert schedule.is_open(local("2026-12-23 16:30", BERLIN))
    assert schedule.is_open(local("2026-12-22 15:00", BERLIN))
    assert schedule.evaluate(local("2026-12-23 15:00", BERLIN)).reason == (
        "closed: Wed 15:00 Europe/Berlin is in closed times 2026-12-23 14:00-16:30"
    )


def test_part_day_closure_to_midnight_and_without_weekly_windows() -> None:
    schedule = build(
        NEW_YORK, closed={"times": [{"date": "12-24", "from": "12:00", "to": "24:00"}]}
    )
    assert schedule.is_open(local("2026-12-24 11:59", NEW_YORK))
    assert not schedule.is_open(local("2026-12-24 23:59:59", NEW_YORK))
    assert schedule.is_open(local("2026-12-25 00:00", NEW_YORK))
    assert not schedule.is_open(local("2031-12-24 18:00", NEW_YORK))


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("2026-12-31 17:59", True),
        ("2026-12-31 18:00", False),
        ("2027-01-01 00:00", False),  # past midnight and the year end: still Dec 31's closure
        ("2027-01-01 01:59", False),
        ("2027-01-01 02:00", True),
        ("2026-01-01 01:00", False),  # the closure of 2025-12-31
        ("2026-12-31 01:00", True),  # Dec 31's own early morning is not in it
    ],
)
def test_overnight_closure_belongs_to_its_start_date_across_the_year_end(
    at: str, expected: bool
) -> None:
    schedule = build(SYDNEY, closed={"times": [{"date": "12-31", "from": "18:00", "to": "02:00"}]})
    assert schedule.is_open(local(at, SYDNEY)) is expected
    assert schedule.evaluate(local(at, SYDNEY)).open is expected


def test_overnight_closure_is_not_applied_when_its_start_date_is_open() -> None:
    schedule = build(
        BERLIN,
        closed={"times": [{"date": "12-31", "from": "18:00", "to": "02:00"}]},
        open_={"dates": ["2026-12-31"]},
    )
    assert schedule.is_open(local("2026-12-31 20:00", BERLIN))
    assert schedule.is_open(local("2027-01-01 01:00", BERLIN))
    assert not schedule.is_open(local("2027-12-31 20:00", BERLIN))


def test_closure_on_an_nth_weekday_and_a_dated_range() -> None:
    schedule = build(
        NEW_YORK,
        weekly=(("mon-fri", "09:00", "17:00"),),
        closed={
            "times": [
                # Early close on the day after Thanksgiving (the 4th Thursday of November).
                {"date": {"month": 11, "weekday": "fri", "nth": 4}, "from": "13:00", "to": "17:00"},
                {"date": "2026-08-03..2026-08-07", "from": "09:00", "to": "10:00"},
            ]
        },
    )
    assert not schedule.is_open(local("2026-11-27 14:00", NEW_YORK))
    assert schedule.is_open(local("2026-11-27 12:00", NEW_YORK))
    assert schedule.is_open(local("2026-11-20 14:00", NEW_YORK))
    assert not schedule.is_open(local("2026-08-05 09:30", NEW_YORK))
    assert schedule.is_open(local("2026-08-10 09:30", NEW_YORK))


def closed_minutes(schedule: CompiledSchedule, start: datetime, minutes: int) -> int:
    return sum(not schedule.is_open(start + timedelta(minutes=m)) for m in range(minutes))


def test_closure_over_the_spring_forward_hour_in_berlin() -> None:
    # 2026-03-29: at 02:00 CET clocks go to 03:00 CEST; 01:00 to 04:00 local is two real hours.
    schedule = build(BERLIN, closed={"times": [{"date": "03-29", "from": "01:00", "to": "04:00"}]})
    assert schedule.is_open(utc("2026-03-28T23:59:00"))  # 00:59 CET
    assert not schedule.is_open(utc("2026-03-29T00:00:00"))  # 01:00 CET
    assert not schedule.is_open(utc("2026-03-29T01:00:00"))  # 03:00 CEST
    assert schedule.is_open(utc("2026-03-29T02:00:00"))  # 04:00 CEST
    assert closed_minutes(schedule, utc("2026-03-28T22:00:00"), 6 * 60) == 120


def test_closure_over_the_fall_back_hour_in_new_york() -> None:
    # 2026-11-01 (the first Sunday of November): 01:00-02:00 happens twice, so a closure from
    # 00:00 to 02:00 local lasts three real hours.
    schedule = build(
        NEW_YORK,
        closed={
            "times": [
                {"date": {"month": 11, "weekday": "sun", "nth": 1}, "from": "00:00", "to": "02:00"}
            ]
        },
    )
    assert schedule.is_open(utc("2026-11-01T03:59:00"))  # 23:59 EDT Oct 31
    assert not schedule.is_open(utc("2026-11-01T05:30:00"))  # 01:30 EDT
    assert not schedule.is_open(utc("2026-11-01T06:30:00"))  # 01:30 EST
    assert schedule.is_open(utc("2026-11-01T07:00:00"))  # 02:00 EST
    assert closed_minutes(schedule, utc("2026-11-01T02:00:00"), 8 * 60) == 180


def test_overnight_closure_over_the_fall_back_hour_in_sydney() -> None:
    # 2026-04-05 (the first Sunday of April): at 03:00 AEDT clocks go back to 02:00 AEST.
    schedule = build(
        SYDNEY,
        weekly=(("mon-sun", "00:00", "24:00"),),
        closed={
            "times": [
                {"date": {"month": 4, "weekday": "sat", "nth": 1}, "from": "22:00", "to": "04:00"}
            ]
        },
    )
    assert schedule.is_open(utc("2026-04-04T10:59:00"))  # 21:59 AEDT Saturday
    assert not schedule.is_open(utc("2026-04-04T11:00:00"))  # 22:00 AEDT
    assert not schedule.is_open(utc("2026-04-04T15:30:00"))  # 02:30 AEDT Sunday
    assert not schedule.is_open(utc("2026-04-04T16:30:00"))  # 02:30 AEST, the second time
    assert schedule.is_open(utc("2026-04-04T18:00:00"))  # 04:00 AEST
    # 22:00 to 04:00 local is seven real hours that night.
    assert closed_minutes(schedule, utc("2026-04-04T10:00:00"), 10 * 60) == 7 * 60


# --- validation ----------------------------------------------------------------------------------


def errors_of(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        ScheduleSpec.model_validate(data)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({"closed": {"dates": ["02-30"]}}, ("closed", "dates", 0), "invalid date '02-30'"),
        ({"closed": {"dates": ["13-01"]}}, ("closed", "dates", 0), "month must be 01 to 12"),
        ({"closed": {"dates": ["00-10"]}}, ("closed", "dates", 0), "month must be 01 to 12"),
        ({"open": {"dates": ["12-24..12-32"]}}, ("open", "dates", 0), "invalid date '12-32'"),
        (
            {"closed": {"dates": ["2026-12-24..12-26"]}},
            ("closed", "dates", 0),
            "a range is either YYYY-MM-DD..YYYY-MM-DD or MM-DD..MM-DD",
        ),
        (
            {"closed": {"dates": ["12-24..2026-12-26"]}},
            ("closed", "dates", 0),
            "a range is either YYYY-MM-DD..YYYY-MM-DD or MM-DD..MM-DD",
        ),
        ({"closed": {"dates": ["1-5"]}}, ("closed", "dates", 0), "MM-DD (every year)"),
        (
            {"closed": {"dates": [{"month": 5, "weekday": "mon", "nth": 0}]}},
            ("closed", "dates", 0, "nth"),
            "nth must be 1 to 5 (the first to fifth) or -1 (the last), got 0",
        ),
        (
            {"closed": {"dates": [{"month": 5, "weekday": "mon", "nth": 6}]}},
            ("closed", "dates", 0, "nth"),
            "got 6",
        ),
        (
            {"closed": {"dates": [{"month": 13, "weekday": "mon", "nth": 1}]}},
            ("closed", "dates", 0, "month"),
            "less than or equal to 12",
        ),
        (
            {"closed": {"dates": [{"month": "5", "weekday": "mon", "nth": 1}]}},
            ("closed", "dates", 0, "month"),
            "valid integer",
        ),
        (
            {"closed": {"dates": [{"month": 5, "weekday": "monday", "nth": -1}]}},
            ("closed", "dates", 0, "weekday"),
            "unknown weekday 'monday' (did you mean 'mon'?)",
        ),
        (
            {"closed": {"dates": [{"month": 5, "weekday": "tues", "nth": 1}]}},
            ("closed", "dates", 0, "weekday"),
            "did you mean 'tue'?",
        ),
        (
            {"closed": {"dates": [{"month": 5, "weekday": "xyz", "nth": 1}]}},
            ("closed", "dates", 0, "weekday"),
            "unknown weekday 'xyz'; use one of mon, tue",
        ),
        (
            {"closed": {"dates": [{"month": 5, "weekday": "mon"}]}},
            ("closed", "dates", 0, "nth"),
            "Field required",
        ),
        (
            {"closed": {"dates": [{"month": 5, "weekday": "mon", "nth": 1, "year": 2026}]}},
            ("closed", "dates", 0, "year"),
            "Extra inputs are not permitted",
        ),
        (
            {"closed": {"times": [{"date": "02-30", "from": "09:00", "to": "10:00"}]}},
            ("closed", "times", 0, "date"),
            "invalid date '02-30'",
        ),
        (
            {"closed": {"times": [{"date": "12-24", "from": "24:00", "to": "10:00"}]}},
            ("closed", "times", 0, "from"),
            '"24:00" is allowed only for to',
        ),
        (
            {"closed": {"times": [{"date": "12-24", "from": "09:00"}]}},
            ("closed", "times", 0, "to"),
            "Field required",
        ),
        (
            {"open": {"times": [{"date": "12-24", "from": "09:00", "to": "10:00"}]}},
            ("open", "times"),
            "Extra inputs are not permitted",
        ),
    ],
)
def test_malformed_dates_are_refused(
    data: dict[str, Any], loc: tuple[str | int, ...], message: str
) -> None:
    found = errors_of(data)
    assert any(place == loc and message in text for place, text in found), found


def test_dates_are_kept_in_one_written_form() -> None:
    spec = DaySetSpec.model_validate(
        {
            "dates": [
                "12-24",
                " 12-31..01-02 ",
                date(2026, 5, 1),
                {"month": 5, "weekday": "MON", "nth": -1},
            ]
        }
    )
    assert spec.dates == (
        "12-24",
        "12-31..01-02",
        "2026-05-01",
        NthWeekdaySpec(month=5, weekday="mon", nth=-1),
    )
    single = DaySetSpec.model_validate({"dates": {"month": 11, "weekday": "thu", "nth": 4}})
    assert single.dates == (NthWeekdaySpec(month=11, weekday="thu", nth=4),)


def test_compiled_schedule_with_new_dates_pickles() -> None:
    schedule = build(
        BERLIN,
        closed={
            "dates": ["12-25", {"month": 5, "weekday": "mon", "nth": -1}],
            "times": [{"date": "12-31", "from": "18:00", "to": "02:00"}],
        },
    )
    # A reload's worker process sends the compiled ruleset back pickled.
    copy = pickle.loads(pickle.dumps(schedule))  # noqa: S301
    assert not copy.is_open(local("2027-01-01 01:00", BERLIN))
    assert not copy.is_open(local("2026-05-25 12:00", BERLIN))
    assert copy.is_open(local("2026-05-26 12:00", BERLIN))
