"""Schedules against real time zones and real holiday calendars, at instants passed in."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from app.rules.schedule import (
    CompiledSchedule,
    DaySetSpec,
    HolidaySpec,
    ScheduleSpec,
    ScheduleVerdict,
    WeeklyWindowSpec,
    compile_schedule,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def build(
    *windows: tuple[Any, str, str],
    tz: str | None = "Europe/Berlin",
    closed: dict[str, Any] | None = None,
    open_: dict[str, Any] | None = None,
    default_tz: str = "America/New_York",
) -> CompiledSchedule:
    data: dict[str, Any] = {
        "weekly": [{"days": days, "from": start, "to": end} for days, start, end in windows],
    }
    if tz is not None:
        data["timezone"] = tz
    if closed is not None:
        data["closed"] = closed
    if open_ is not None:
        data["open"] = open_
    return compile_schedule("test", ScheduleSpec.model_validate(data), default_tz)


def local(text: str, zone: ZoneInfo = BERLIN, fold: int = 0) -> datetime:
    """A wall-clock time in `zone`, e.g. local("2026-03-20 22:00")."""
    return datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def open_minutes(schedule: CompiledSchedule, start: datetime, hours: int) -> int:
    return sum(schedule.is_open(start + timedelta(minutes=m)) for m in range(hours * 60))


# --- weekly windows ------------------------------------------------------------------------


# 2026-03-25 is a Wednesday.
@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        ("2026-03-25 08:29:59", False),
        ("2026-03-25 08:30:00", True),
        ("2026-03-25 12:00:00", True),
        ("2026-03-25 17:59:59", True),
        ("2026-03-25 18:00:00", False),
        ("2026-03-25 18:00:01", False),
    ],
)
def test_windows_are_half_open(wall: str, expected: bool) -> None:
    schedule = build(("mon-fri", "08:30", "18:00"))
    assert schedule.is_open(local(wall)) is expected
    assert schedule.evaluate(local(wall)).open is expected


# 2026-03-19 Thu, 20 Fri, 21 Sat, 22 Sun, 23 Mon (no DST change that week in Berlin).
@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        ("2026-03-20 01:00", False),  # the start day's own morning is not in the window
        ("2026-03-19 23:00", False),
        ("2026-03-20 21:59", False),
        ("2026-03-20 22:00", True),  # start minute
        ("2026-03-20 23:59", True),
        ("2026-03-21 00:00", True),  # past midnight, still Friday's window
        ("2026-03-21 01:59", True),  # last minute before the end
        ("2026-03-21 01:59:59", True),
        ("2026-03-21 02:00", False),  # end
        ("2026-03-21 22:00", False),  # Saturday has no window of its own
        ("2026-03-22 01:00", False),
    ],
)
def test_overnight_window_belongs_to_its_start_day(wall: str, expected: bool) -> None:
    schedule = build(("fri", "22:00", "02:00"))
    assert schedule.is_open(local(wall)) is expected
    assert schedule.evaluate(local(wall)).open is expected


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        ("2026-03-22 05:00", False),  # Sunday morning: Saturday has no window
        ("2026-03-22 21:59", False),
        ("2026-03-22 22:00", True),
        ("2026-03-23 00:00", True),  # wraps from Sunday into Monday
        ("2026-03-23 05:59", True),
        ("2026-03-23 06:00", False),
        ("2026-03-23 22:00", False),
        ("2026-03-24 01:00", False),
    ],
)
def test_overnight_window_wraps_from_sunday_to_monday(wall: str, expected: bool) -> None:
    assert build(("sun", "22:00", "06:00")).is_open(local(wall)) is expected


@pytest.mark.parametrize(
    ("window", "wall", "expected"),
    [
        (("sat", "10:00", "24:00"), "2026-03-21 09:59", False),
        (("sat", "10:00", "24:00"), "2026-03-21 23:59:59", True),
        (("sat", "10:00", "24:00"), "2026-03-22 00:00", False),
        (("sun", "00:00", "24:00"), "2026-03-22 00:00", True),
        (("sun", "00:00", "24:00"), "2026-03-22 23:59", True),
        (("sun", "00:00", "24:00"), "2026-03-21 23:59", False),
        (("sun", "00:00", "24:00"), "2026-03-23 00:00", False),
        # `to` equal to `from` is not after it: a 24-hour overnight window.
        (("mon", "08:00", "08:00"), "2026-03-23 07:59", False),
        (("mon", "08:00", "08:00"), "2026-03-23 08:00", True),
        (("mon", "08:00", "08:00"), "2026-03-24 07:59", True),
        (("mon", "08:00", "08:00"), "2026-03-24 08:00", False),
        (("mon", "00:00", "00:00"), "2026-03-23 23:59", True),
        (("mon", "00:00", "00:00"), "2026-03-24 00:00", False),
    ],
)
def test_end_of_day_and_full_day_windows(
    window: tuple[str, str, str], wall: str, expected: bool
) -> None:
    assert build(window).is_open(local(wall)) is expected


WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@pytest.mark.parametrize(
    ("days", "open_days"),
    [
        ("mon-fri", {"mon", "tue", "wed", "thu", "fri"}),
        ("fri-mon", {"fri", "sat", "sun", "mon"}),
        ("sun-tue", {"sun", "mon", "tue"}),
        ("sat", {"sat"}),
        ("MON-Fri", {"mon", "tue", "wed", "thu", "fri"}),
        (" tue - thu ", {"tue", "wed", "thu"}),
        (["sat", "sun"], {"sat", "sun"}),
        (["mon", "wed-thu"], {"mon", "wed", "thu"}),
        (["mon-wed", "tue-thu"], {"mon", "tue", "wed", "thu"}),
    ],
)
def test_day_ranges_wrapping_ranges_and_lists(days: Any, open_days: set[str]) -> None:
    schedule = build((days, "09:00", "17:00"))
    monday = date(2026, 3, 16)
    for offset, name in enumerate(WEEK):
        noon = datetime.combine(monday + timedelta(days=offset), datetime.min.time(), BERLIN)
        noon = noon.replace(hour=12)
        assert schedule.is_open(noon) is (name in open_days), name


def test_several_windows_on_one_day() -> None:
    schedule = build(("mon-fri", "08:00", "12:00"), ("mon-fri", "13:00", "17:00"))
    assert schedule.is_open(local("2026-03-25 11:59"))
    assert not schedule.is_open(local("2026-03-25 12:30"))
    assert schedule.is_open(local("2026-03-25 13:00"))


def test_no_weekly_windows_is_open_except_on_closed_days() -> None:
    schedule = build(closed={"dates": ["2026-03-25"]})
    assert schedule.is_open(local("2026-03-24 03:00"))
    assert schedule.is_open(local("2026-03-28 23:59"))
    assert not schedule.is_open(local("2026-03-25 00:00"))
    assert not schedule.is_open(local("2026-03-25 23:59"))
    assert schedule.is_open(local("2026-03-26 00:00"))


# --- daylight saving time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "instant", "expected"),
    [
        # 2026-03-08 02:00 EST becomes 03:00 EDT: 02:00-02:59 never happens.
        (("sun", "02:00", "03:00"), "2026-03-08 06:59:59", False),  # 01:59:59 EST
        (("sun", "02:00", "03:00"), "2026-03-08 07:00:00", False),  # 03:00 EDT
        (("sun", "01:00", "04:00"), "2026-03-08 05:59", False),  # 00:59 EST
        (("sun", "01:00", "04:00"), "2026-03-08 06:00", True),  # 01:00 EST
        (("sun", "01:00", "04:00"), "2026-03-08 07:00", True),  # 03:00 EDT
        (("sun", "01:00", "04:00"), "2026-03-08 07:59", True),  # 03:59 EDT
        (("sun", "01:00", "04:00"), "2026-03-08 08:00", False),  # 04:00 EDT
        # 2026-11-01 02:00 EDT becomes 01:00 EST: 01:00-01:59 happens twice.
        (("sun", "01:00", "02:00"), "2026-11-01 04:59", False),  # 00:59 EDT
        (("sun", "01:00", "02:00"), "2026-11-01 05:00", True),  # 01:00 EDT
        (("sun", "01:00", "02:00"), "2026-11-01 05:30", True),  # 01:30 EDT
        (("sun", "01:00", "02:00"), "2026-11-01 06:30", True),  # 01:30 EST
        (("sun", "01:00", "02:00"), "2026-11-01 06:59:59", True),  # 01:59:59 EST
        (("sun", "01:00", "02:00"), "2026-11-01 07:00", False),  # 02:00 EST
        # By wall clock: 01:00 EST is inside [00:00, 01:30) again after 01:30 EDT left it.
        (("sun", "00:00", "01:30"), "2026-11-01 05:29", True),  # 01:29 EDT
        (("sun", "00:00", "01:30"), "2026-11-01 05:30", False),  # 01:30 EDT
        (("sun", "00:00", "01:30"), "2026-11-01 06:00", True),  # 01:00 EST
        (("sun", "00:00", "01:30"), "2026-11-01 06:30", False),  # 01:30 EST
    ],
)
def test_new_york_daylight_saving_changes(
    window: tuple[str, str, str], instant: str, expected: bool
) -> None:
    assert build(window, tz="America/New_York").is_open(utc(instant)) is expected


@pytest.mark.parametrize(
    ("window", "instant", "expected"),
    [
        # 2026-03-29 02:00 CET becomes 03:00 CEST at 01:00 UTC.
        (("sun", "02:00", "03:00"), "2026-03-29 00:59:59", False),  # 01:59:59 CET
        (("sun", "02:00", "03:00"), "2026-03-29 01:00:00", False),  # 03:00 CEST
        (("sun", "01:30", "03:30"), "2026-03-29 00:30", True),  # 01:30 CET
        (("sun", "01:30", "03:30"), "2026-03-29 01:29", True),  # 03:29 CEST
        (("sun", "01:30", "03:30"), "2026-03-29 01:30", False),  # 03:30 CEST
        # 2026-10-25 03:00 CEST becomes 02:00 CET at 01:00 UTC: 02:00-02:59 twice.
        (("sun", "02:00", "03:00"), "2026-10-24 23:59", False),  # 01:59 CEST
        (("sun", "02:00", "03:00"), "2026-10-25 00:00", True),  # 02:00 CEST
        (("sun", "02:00", "03:00"), "2026-10-25 00:30", True),  # 02:30 CEST
        (("sun", "02:00", "03:00"), "2026-10-25 01:00", True),  # 02:00 CET
        (("sun", "02:00", "03:00"), "2026-10-25 01:30", True),  # 02:30 CET
        (("sun", "02:00", "03:00"), "2026-10-25 01:59:59", True),  # 02:59:59 CET
        (("sun", "02:00", "03:00"), "2026-10-25 02:00", False),  # 03:00 CET
    ],
)
def test_berlin_daylight_saving_changes(
    window: tuple[str, str, str], instant: str, expected: bool
) -> None:
    assert build(window, tz="Europe/Berlin").is_open(utc(instant)) is expected


@pytest.mark.parametrize(
    ("zone", "wall", "shown", "in_gap_window"),
    [
        (NEW_YORK, "2026-03-08 02:30", "Sun 03:30 America/New_York", False),
        (BERLIN, "2026-03-29 02:30", "Sun 03:30 Europe/Berlin", False),
    ],
)
def test_wall_time_that_does_not_exist_is_read_as_the_instant_it_names(
    zone: ZoneInfo, wall: str, shown: str, in_gap_window: bool
) -> None:
    at = local(wall, zone)  # fold=0: the offset from before the change
    gap = build(("sun", "02:00", "03:00"), tz=zone.key)
    after = build(("sun", "03:00", "04:00"), tz=zone.key)
    assert gap.is_open(at) is in_gap_window
    assert gap.evaluate(at) == ScheduleVerdict(
        False, f"closed: {shown} is outside the weekly windows"
    )
    assert after.is_open(at)


@pytest.mark.parametrize(
    ("zone", "wall"),
    [(NEW_YORK, "2026-11-01 01:30"), (BERLIN, "2026-10-25 02:30")],
)
def test_wall_time_that_happens_twice_is_open_both_times(zone: ZoneInfo, wall: str) -> None:
    first, second = local(wall, zone, fold=0), local(wall, zone, fold=1)
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    hour = int(wall[11:13])
    inside = build(("sun", f"{hour:02d}:00", f"{hour + 1:02d}:00"), tz=zone.key)
    before = build(("sun", "00:00", f"{hour:02d}:00"), tz=zone.key)
    for at in (first, second):
        assert inside.is_open(at)
        assert not before.is_open(at)
        verdict = inside.evaluate(at)
        assert (
            verdict.reason
            == f"open: Sun {wall[11:]} {zone.key} in sun {hour:02d}:00-{hour + 1:02d}:00"
        )


@pytest.mark.parametrize(
    ("zone", "night_start_utc", "open_hours"),
    [
        # Saturday 22:00 to Sunday 06:00 local, over each change: 7 real hours, then 9.
        ("Europe/Berlin", "2026-03-28 18:00", 7),
        ("Europe/Berlin", "2026-10-24 18:00", 9),
        ("America/New_York", "2026-03-07 23:00", 7),
        ("America/New_York", "2026-10-31 23:00", 9),
    ],
)
def test_overnight_window_over_a_daylight_saving_change(
    zone: str, night_start_utc: str, open_hours: int
) -> None:
    schedule = build(("sat", "22:00", "06:00"), tz=zone)
    assert open_minutes(schedule, utc(night_start_utc), 16) == open_hours * 60


def test_window_edges_over_the_spring_change_in_berlin() -> None:
    schedule = build(("sat", "22:00", "06:00"))
    assert not schedule.is_open(utc("2026-03-28 20:59"))
    assert schedule.is_open(utc("2026-03-28 21:00"))  # 22:00 CET
    assert schedule.is_open(utc("2026-03-29 03:59"))  # 05:59 CEST
    assert not schedule.is_open(utc("2026-03-29 04:00"))  # 06:00 CEST


def test_instants_in_other_offsets_are_converted_to_the_schedule_zone() -> None:
    schedule = build(("mon-fri", "09:00", "17:00"), tz="America/New_York")
    # 2026-03-16 is a Monday; New York is on EDT (UTC-4) already.
    assert not schedule.is_open(datetime.fromisoformat("2026-03-16T14:59:00+02:00"))
    assert schedule.is_open(datetime.fromisoformat("2026-03-16T15:00:00+02:00"))
    assert schedule.is_open(datetime.fromisoformat("2026-03-17T05:59:00+09:00"))
    assert not schedule.is_open(datetime.fromisoformat("2026-03-17T06:00:00+09:00"))


def test_default_timezone_applies_when_the_schedule_names_none() -> None:
    instant = utc("2026-03-16 12:30")  # Monday 08:30 in New York, 13:30 in Berlin
    in_new_york = build(("mon", "09:00", "17:00"), tz=None, default_tz="America/New_York")
    in_berlin = build(("mon", "09:00", "17:00"), tz=None, default_tz="Europe/Berlin")
    assert in_new_york.timezone == NEW_YORK
    assert not in_new_york.is_open(instant)
    assert in_berlin.is_open(instant)
    own = build(("mon", "09:00", "17:00"), tz="Europe/Berlin", default_tz="America/New_York")
    assert own.timezone == BERLIN


def test_unknown_default_timezone_is_refused_at_compile_time() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        compile_schedule("x", ScheduleSpec(), "Mars/Olympus")


def test_naive_datetime_is_refused() -> None:
    schedule = build(("mon", "09:00", "17:00"))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.evaluate(datetime(2026, 3, 16, 10, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.is_open(datetime(2026, 3, 16, 10, 0))


# --- holidays ------------------------------------------------------------------------------


# 2026-01-06 (Tue) Epiphany: Bavaria only. 2027-03-08 (Mon) Women's Day: Berlin only.
# 2026-04-20 (Mon) Patriots' Day: Massachusetts only.
@pytest.mark.parametrize(
    ("country", "subdiv", "tz", "wall", "holiday"),
    [
        ("DE", "BY", "Europe/Berlin", "2026-01-06 12:00", "Epiphany"),
        ("DE", "BE", "Europe/Berlin", "2026-01-06 12:00", None),
        ("DE", None, "Europe/Berlin", "2026-01-06 12:00", None),
        ("DE", "BE", "Europe/Berlin", "2027-03-08 12:00", "Women's Day"),
        ("DE", "BY", "Europe/Berlin", "2027-03-08 12:00", None),
        ("US", "MA", "America/New_York", "2026-04-20 12:00", "Patriots' Day"),
        ("US", "NY", "America/New_York", "2026-04-20 12:00", None),
        ("US", None, "America/New_York", "2026-04-20 12:00", None),
        ("US", "TX", "America/Chicago", "2026-12-24 12:00", "Christmas Eve"),
        ("US", "CA", "America/Los_Angeles", "2026-12-24 12:00", None),
    ],
)
def test_holidays_observed_only_by_a_subdivision(
    country: str, subdiv: str | None, tz: str, wall: str, holiday: str | None
) -> None:
    schedule = build(
        ("mon-fri", "09:00", "17:00"),
        tz=tz,
        closed={"holidays": {"country": country, "subdiv": subdiv}},
    )
    verdict = schedule.evaluate(local(wall, ZoneInfo(tz)))
    if holiday is None:
        assert verdict.open
    else:
        where = f"{country}-{subdiv}" if subdiv else country
        day = wall[:10]
        assert verdict == ScheduleVerdict(False, f"closed: {day} is a holiday ({holiday}, {where})")


def test_national_holiday_closes_every_subdivision() -> None:
    for subdiv in ("BE", "BY", None):
        schedule = build(
            ("mon-fri", "09:00", "17:00"),
            closed={"holidays": {"country": "DE", "subdiv": subdiv}},
        )
        assert schedule.is_open(local("2026-10-02 12:00"))  # the Friday before German Unity Day
        assert not schedule.is_open(local("2026-12-25 12:00"))  # Christmas Day, a Friday


def test_several_holiday_calendars_all_close() -> None:
    schedule = build(
        ("mon-fri", "00:00", "24:00"),
        closed={"holidays": [{"country": "DE", "subdiv": "BY"}, {"country": "US", "subdiv": "MA"}]},
    )
    assert not schedule.is_open(local("2026-01-06 12:00"))
    assert not schedule.is_open(local("2026-04-20 12:00"))
    assert schedule.is_open(local("2026-04-21 12:00"))


def test_holiday_categories_add_to_the_calendar() -> None:
    # 2025-08-15 (Fri) Assumption Day is in the catholic category for Bavaria.
    public = build(
        ("fri", "09:00", "17:00"), closed={"holidays": {"country": "DE", "subdiv": "BY"}}
    )
    catholic = build(
        ("fri", "09:00", "17:00"),
        closed={
            "holidays": {"country": "DE", "subdiv": "BY", "categories": ["public", "catholic"]}
        },
    )
    assert public.is_open(local("2025-08-15 12:00"))
    assert catholic.evaluate(local("2025-08-15 12:00")) == ScheduleVerdict(
        False, "closed: 2025-08-15 is a holiday (Assumption Day, DE-BY)"
    )


def test_holidays_are_found_in_every_year() -> None:
    schedule = build(closed={"holidays": {"country": "DE", "subdiv": "BE"}})
    for year in (2024, 2026, 2031, 2045):
        assert not schedule.is_open(local(f"{year}-12-25 12:00")), year
        assert schedule.is_open(local(f"{year}-12-23 12:00")), year


def test_evaluation_does_not_rebuild_the_holiday_calendar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each (calendar, year) is built once and then only looked up.
    import app.rules.schedule as schedule_module

    built: list[int] = []
    real = schedule_module.country_holidays

    def counting(*args: Any, **kwargs: Any) -> Any:
        if "years" in kwargs:
            built.append(kwargs["years"])
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule_module, "country_holidays", counting)
    schedule_module._holiday_year.cache_clear()
    schedule = build(
        ("mon-fri", "09:00", "17:00"), closed={"holidays": {"country": "DE", "subdiv": "BE"}}
    )
    for i in range(200):
        day = "2026-12-25 10:00" if i % 2 else "2026-12-23 10:00"
        schedule.evaluate(local(day))
        schedule.is_open(local(day))
    assert built == [2026]
    schedule.is_open(local("2027-01-04 10:00"))
    assert built == [2026, 2027]


# --- dates, ranges, open over closed -------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2026-12-23", True),
        ("2026-12-24", False),
        ("2026-12-27", True),
        ("2026-12-28", False),  # range start
        ("2026-12-30", False),
        ("2026-12-31", False),  # range end is inclusive
        ("2027-01-01", True),  # no holiday calendar here
    ],
)
def test_closed_dates_and_inclusive_ranges(day: str, expected: bool) -> None:
    schedule = build(closed={"dates": ["2026-12-24", "2026-12-28..2026-12-31"]})
    assert schedule.is_open(local(f"{day} 12:00")) is expected


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2026-02-28", True),
        ("2026-03-01", False),
        ("2026-06-01", False),  # inside the long range, after a later single date
        ("2026-06-30", False),
        ("2026-07-01", True),
        ("2026-07-05", False),
        ("2026-07-06", False),
        ("2026-07-07", True),
    ],
)
def test_overlapping_and_adjacent_ranges(day: str, expected: bool) -> None:
    schedule = build(
        closed={
            "dates": [
                "2026-04-01",
                "2026-03-01..2026-06-30",
                "2026-07-05",
                "2026-07-06..2026-07-06",
                "2026-05-01..2026-05-03",
            ]
        }
    )
    assert schedule.is_open(local(f"{day} 12:00")) is expected


def test_dates_written_as_yaml_dates() -> None:
    spec = DaySetSpec.model_validate({"dates": [date(2026, 12, 24), "2026-12-28..2026-12-31"]})
    assert spec.dates == ("2026-12-24", "2026-12-28..2026-12-31")
    single = DaySetSpec.model_validate({"dates": date(2026, 12, 24)})
    assert single.dates == ("2026-12-24",)


def test_open_dates_cancel_closed_and_weekly_windows_apply() -> None:
    schedule = build(
        ("mon-fri", "09:00", "17:00"),
        closed={
            "holidays": {"country": "DE", "subdiv": "BE"},
            "dates": ["2026-12-28..2026-12-31"],
        },
        open_={"dates": ["2026-12-29", "2026-12-25", "2026-12-26"]},
    )
    assert schedule.evaluate(local("2026-12-29 10:00")) == ScheduleVerdict(
        True,
        "open: Tue 10:00 Europe/Berlin in mon-fri 09:00-17:00; 2026-12-29 is listed in open dates",
    )
    assert schedule.evaluate(local("2026-12-29 17:00")) == ScheduleVerdict(
        False, "closed: Tue 17:00 Europe/Berlin is outside the weekly windows"
    )
    assert schedule.is_open(local("2026-12-25 10:00"))  # Christmas Day reopened
    assert not schedule.is_open(local("2026-12-30 10:00"))  # still closed
    # Open does not add hours: 2026-12-26 is a Saturday without a window.
    assert schedule.evaluate(local("2026-12-26 10:00")) == ScheduleVerdict(
        False, "closed: Sat 10:00 Europe/Berlin is outside the weekly windows"
    )


def test_open_holidays_cancel_closed_dates() -> None:
    schedule = build(
        closed={"dates": ["2026-01-01..2026-01-31"]},
        open_={"holidays": {"country": "DE", "subdiv": "BY"}},
    )
    assert schedule.is_open(local("2026-01-06 10:00"))
    assert not schedule.is_open(local("2026-01-07 10:00"))


# 2026-04-03 is Good Friday, a holiday in Berlin; 2026-04-02 is the Thursday before it.
@pytest.mark.parametrize(
    ("wall", "expected", "reason"),
    [
        ("2026-04-03 23:00", False, "closed: 2026-04-03 is a holiday (Good Friday, DE-BE)"),
        ("2026-04-04 01:00", False, "closed: 2026-04-03 is a holiday (Good Friday, DE-BE)"),
        ("2026-04-02 23:00", True, "open: Thu 23:00 Europe/Berlin in thu-fri 22:00-02:00"),
        ("2026-04-03 01:00", True, "open: Fri 01:00 Europe/Berlin in thu-fri 22:00-02:00"),
        ("2026-04-03 02:00", False, "closed: 2026-04-03 is a holiday (Good Friday, DE-BE)"),
        ("2026-04-10 23:00", True, "open: Fri 23:00 Europe/Berlin in thu-fri 22:00-02:00"),
    ],
)
def test_overnight_windows_and_closed_days(wall: str, expected: bool, reason: str) -> None:
    schedule = build(
        ("thu-fri", "22:00", "02:00"), closed={"holidays": {"country": "DE", "subdiv": "BE"}}
    )
    assert schedule.evaluate(local(wall)) == ScheduleVerdict(expected, reason)
    assert schedule.is_open(local(wall)) is expected


def test_overnight_window_starting_on_a_closed_date_stays_closed_past_midnight() -> None:
    schedule = build(("fri", "22:00", "02:00"), closed={"dates": ["2026-03-20"]})
    assert not schedule.is_open(local("2026-03-20 23:00"))
    assert schedule.evaluate(local("2026-03-21 01:00")) == ScheduleVerdict(
        False, "closed: 2026-03-20 is listed in closed dates"
    )
    assert schedule.is_open(local("2026-03-28 01:00", BERLIN))  # the next week


def test_closed_reasons_name_ranges() -> None:
    schedule = build(("mon-fri", "09:00", "17:00"), closed={"dates": ["2026-12-28..2026-12-31"]})
    assert schedule.evaluate(local("2026-12-29 10:00")) == ScheduleVerdict(
        False, "closed: 2026-12-29 is in closed dates 2026-12-28..2026-12-31"
    )


def test_no_weekly_windows_reason() -> None:
    schedule = build(closed={"dates": ["2026-03-25"]})
    assert schedule.evaluate(local("2026-03-24 03:00")) == ScheduleVerdict(
        True, "open: Tue 03:00 Europe/Berlin, no weekly windows"
    )
    assert schedule.evaluate(local("2026-03-25 03:00")) == ScheduleVerdict(
        False, "closed: 2026-03-25 is listed in closed dates"
    )


# --- the documented example ------------------------------------------------------------------

OFFICE = {
    "timezone": "Europe/Berlin",
    "weekly": [
        {"days": "mon-fri", "from": "08:30", "to": "18:00"},
        {"days": "fri", "from": "22:00", "to": "02:00"},
    ],
    "closed": {
        "holidays": {"country": "DE", "subdiv": "BE"},
        "dates": ["2026-12-24", "2026-12-28..2026-12-31"],
    },
}


@pytest.mark.parametrize(
    ("instant", "verdict"),
    [
        (
            "2026-03-27T23:30:00+01:00",
            ScheduleVerdict(True, "open: Fri 23:30 Europe/Berlin in fri 22:00-02:00"),
        ),
        (
            "2026-03-29T03:30:00+02:00",
            ScheduleVerdict(False, "closed: Sun 03:30 Europe/Berlin is outside the weekly windows"),
        ),
        (
            "2026-03-30T08:30:00+02:00",
            ScheduleVerdict(True, "open: Mon 08:30 Europe/Berlin in mon-fri 08:30-18:00"),
        ),
        (
            "2026-12-25T10:00:00+01:00",
            ScheduleVerdict(False, "closed: 2026-12-25 is a holiday (Christmas Day, DE-BE)"),
        ),
        (
            "2026-12-24T10:00:00+01:00",
            ScheduleVerdict(False, "closed: 2026-12-24 is listed in closed dates"),
        ),
        (
            "2026-12-23T10:00:00-05:00",
            ScheduleVerdict(True, "open: Wed 16:00 Europe/Berlin in mon-fri 08:30-18:00"),
        ),
    ],
)
def test_spec_example_office(instant: str, verdict: ScheduleVerdict) -> None:
    office = compile_schedule("office", ScheduleSpec.model_validate(OFFICE), "America/New_York")
    assert office.name == "office"
    assert office.timezone == BERLIN
    assert office.evaluate(datetime.fromisoformat(instant)) == verdict


# --- validation ----------------------------------------------------------------------------


def errors_of(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        ScheduleSpec.model_validate(data)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


def window(**fields: Any) -> dict[str, Any]:
    return {"weekly": [{"days": "mon", "from": "08:00", "to": "18:00", **fields}]}


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        (
            {"timezone": "Europe/Berln"},
            ("timezone",),
            "unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
        ),
        ({"timezone": "Europe"}, ("timezone",), "unknown time zone 'Europe'"),
        ({"timezone": "../etc/passwd"}, ("timezone",), "unknown time zone '../etc/passwd'"),
        (
            window(days="mnd"),
            ("weekly", 0, "days"),
            "unknown weekday 'mnd' (use mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            window(days=["sat", "sunday"]),
            ("weekly", 0, "days", 1),
            "unknown weekday 'sunday' (use mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            window(days="mon-mon"),
            ("weekly", 0, "days"),
            "day range 'mon-mon' starts and ends on the same day (write 'mon')",
        ),
        (window(days=[]), ("weekly", 0, "days"), "days must name at least one day"),
        (window(**{"from": "8:3"}), ("weekly", 0, "from"), "time must be HH:MM, got '8:3'"),
        (window(to="8:30"), ("weekly", 0, "to"), "time must be HH:MM, got '8:30'"),
        (
            window(to="24:01"),
            ("weekly", 0, "to"),
            "time out of range, got '24:01' (00:00 to 23:59, or 24:00 for to)",
        ),
        (
            window(**{"from": "12:60"}),
            ("weekly", 0, "from"),
            "time out of range, got '12:60' (00:00 to 23:59, or 24:00 for to)",
        ),
        (
            window(**{"from": "24:00"}),
            ("weekly", 0, "from"),
            '"24:00" is allowed only for to; a window starting at midnight is "00:00"',
        ),
        (
            window(to=1080),
            ("weekly", 0, "to"),
            'time must be a quoted "HH:MM" string, got the number 1080 '
            "(YAML reads an unquoted 18:00 as 1080; quote it)",
        ),
        (window(until="09:00"), ("weekly", 0, "until"), "Extra inputs are not permitted"),
        (
            {"closed": {"dates": ["2026-12-31..2026-12-28"]}},
            ("closed", "dates", 0),
            "date range end is before its start: '2026-12-31..2026-12-28'",
        ),
        (
            {"closed": {"dates": ["2026-12-24", "2026-02-30"]}},
            ("closed", "dates", 1),
            "invalid date '2026-02-30': day is out of range for month",
        ),
        (
            {"open": {"dates": ["24.12.2026"]}},
            ("open", "dates", 0),
            "date must be YYYY-MM-DD, MM-DD (every year), or a range of either form like"
            " 12-24..12-26, got '24.12.2026'",
        ),
        (
            {"open": {"dates": [datetime(2026, 12, 24, 10, 0)]}},
            ("open", "dates", 0),
            "expected a date, got the date and time '2026-12-24T10:00:00'",
        ),
        (
            {"closed": {"holidays": {"country": "XX"}}},
            ("closed", "holidays", "country"),
            "unknown country 'XX' for holidays (use an ISO code like DE or US)",
        ),
        (
            {"closed": {"holidays": {"country": False}}},
            ("closed", "holidays", "country"),
            "country code was read by YAML as the boolean false; quote it",
        ),
        (
            {"closed": {"holidays": {"country": "DE", "subdiv": "XX"}}},
            ("closed", "holidays", "subdiv"),
            "unknown subdivision 'XX' for DE (known: BB, BE, BW, BY, HB, HE, HH, MV, NI, NW, "
            "RP, SH, SL, SN, ST, TH, Augsburg)",
        ),
        (
            {"closed": {"holidays": [{"country": "DE"}, {"country": "CA", "subdiv": True}]}},
            ("closed", "holidays", 1, "subdiv"),
            "subdivision code was read by YAML as the boolean true; quote it",
        ),
        (
            {"closed": {"holidays": {"country": "DE", "categories": ["public", "bank"]}}},
            ("closed", "holidays", "categories"),
            "unknown holiday category 'bank' for DE (known: catholic, public, school)",
        ),
        (
            {"closed": {"holidays": {"country": "DE", "categories": []}}},
            ("closed", "holidays", "categories"),
            "categories must name at least one category (or be left out)",
        ),
        (
            {"closed": {"holidays": "DE"}},
            ("closed", "holidays"),
            "holidays must be a mapping like {country: DE, subdiv: BE} or a list of them",
        ),
        (
            {"closed": {"holidays": {"country": "DE", "region": "BE"}}},
            ("closed", "holidays", "region"),
            "Extra inputs are not permitted",
        ),
        ({"hours": []}, ("hours",), "Extra inputs are not permitted"),
    ],
)
def test_validation_errors(data: dict[str, Any], loc: tuple[str | int, ...], message: str) -> None:
    found = errors_of(data)
    expected = message if message.startswith("Extra") else f"Value error, {message}"
    assert (loc, expected) in found, found


def test_deprecated_subdivision_is_refused_not_warned() -> None:
    found = errors_of({"closed": {"holidays": {"country": "US", "subdiv": "FM"}}})
    assert found[0][0] == ("closed", "holidays", "subdiv")
    assert found[0][1].startswith("Value error, unknown subdivision 'FM' for US (known: AK, AL,")


def test_values_are_normalized() -> None:
    holiday = HolidaySpec.model_validate(
        {"country": "de", "subdiv": "Bayern", "categories": "Catholic"}
    )
    assert holiday == HolidaySpec(country="DE", subdiv="BY", categories=("catholic",))
    assert HolidaySpec(country="DEU").country == "DE"
    assert HolidaySpec(country="US", subdiv="ma").subdiv == "MA"
    spec = WeeklyWindowSpec.model_validate(
        {"days": ["SAT", " Sun "], "from": "10:00", "to": "24:00"}
    )
    assert spec.days == ("sat", "sun")
    assert spec.weekdays() == frozenset({5, 6})
    assert WeeklyWindowSpec.model_validate(
        {"days": "Fri-Mon", "from": "22:00", "to": "02:00"}
    ).days == ("fri-mon")


def test_window_accepts_field_name_and_alias() -> None:
    by_alias = WeeklyWindowSpec.model_validate({"days": "mon", "from": "08:00", "to": "09:00"})
    by_name = WeeklyWindowSpec(days="mon", from_="08:00", to="09:00")
    assert by_alias == by_name
    assert by_name.from_ == "08:00"


def test_models_are_frozen() -> None:
    spec = ScheduleSpec.model_validate(OFFICE)
    with pytest.raises(ValidationError):
        spec.timezone = "UTC"  # type: ignore[misc]
    assert isinstance(spec.closed, DaySetSpec)
    assert isinstance(spec.closed.holidays, HolidaySpec)
