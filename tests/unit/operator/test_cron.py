"""LimeBackupSchedule's schedules fire when cron would, and malformed ones are refused by name."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from limedb_operator.cron import CronError, due, parse


def t(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("* * * * *", "2026-12-03 10:15:30", "2026-12-03 10:16:00"),
        ("* * * * *", "2026-12-03 10:15:00", "2026-12-03 10:16:00"),  # strictly after
        ("*/15 * * * *", "2026-12-03 10:15:00", "2026-12-03 10:30:00"),
        ("5/20 * * * *", "2026-12-03 10:26:00", "2026-12-03 10:45:00"),
        ("0 3 * * *", "2026-12-03 10:15:00", "2026-12-04 03:00:00"),
        ("30 2 1 * *", "2026-12-03 10:15:00", "2027-01-01 02:30:00"),  # across a year
        ("0 0 29 2 *", "2026-03-01 00:00:00", "2028-02-29 00:00:00"),  # the next leap day
        ("0 12 * * 1-5", "2026-12-04 13:00:00", "2026-12-07 12:00:00"),  # Fri -> Mon
        ("0 0 * * 7", "2026-12-03 10:00:00", "2026-12-06 00:00:00"),  # 7 is Sunday
        ("0 0 * * 0", "2026-12-03 10:00:00", "2026-12-06 00:00:00"),
        # Both day fields restricted: either matches (the 13th, or a Friday).
        ("0 0 13 * 5", "2026-12-03 10:00:00", "2026-12-04 00:00:00"),
        ("0 0 13 * 5", "2026-12-11 01:00:00", "2026-12-13 00:00:00"),
        ("0,30 9-10 * * *", "2026-12-03 10:00:00", "2026-12-03 10:30:00"),
        ("0,30 9-10 * * *", "2026-12-03 10:30:00", "2026-12-04 09:00:00"),
        ("@hourly", "2026-12-03 10:15:00", "2026-12-03 11:00:00"),
        ("@daily", "2026-12-03 10:15:00", "2026-12-04 00:00:00"),
        ("@weekly", "2026-12-03 10:15:00", "2026-12-06 00:00:00"),
        ("@monthly", "2026-12-03 10:15:00", "2027-01-01 00:00:00"),
        ("@yearly", "2026-12-03 10:15:00", "2027-01-01 00:00:00"),
        ("@every 15s", "2026-12-03 10:15:00", "2026-12-03 10:15:15"),
        ("@every 2h", "2026-12-03 10:15:00", "2026-12-03 12:15:00"),
    ],
)
def test_next_fire_time(expr, after, expected):
    assert parse(expr).next_after(t(after)) == t(expected)


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24"),
        ("* * 0 * *", "day of month: 0"),
        ("* * * 13 *", "month: 13"),
        ("* * * * 8", "day of week: 8"),
        ("*/0 * * * *", "minute: 0 is outside"),
        ("10-5 * * * *", "runs backwards"),
        ("* * * JAN *", "'JAN' is not a number"),
        ("@every 5s", "at least 10s"),
        ("@fortnightly", "unknown macro"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_a_malformed_schedule_is_refused_saying_why(expr, complaint):
    with pytest.raises(CronError, match=complaint):
        parse(expr)


def test_due_returns_the_newest_missed_run_once_and_nothing_before_the_next():
    every_minute = parse("* * * * *")
    last = t("2026-12-03 10:00:00")
    assert due(every_minute, last, t("2026-12-03 10:00:59")) is None
    assert due(every_minute, last, t("2026-12-03 10:01:00")) == t("2026-12-03 10:01:00")
    # The operator was down for 5 minutes: one run, for the newest missed time.
    assert due(every_minute, last, t("2026-12-03 10:05:30")) == t("2026-12-03 10:05:00")
    every = parse("@every 20s")
    assert due(every, last, t("2026-12-03 10:00:19")) is None
    assert due(every, last, t("2026-12-03 10:01:05")) == t("2026-12-03 10:01:00")


@given(
    minute=st.integers(0, 59), hour=st.integers(0, 23),
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1)),
)  # fmt: skip
def test_a_daily_time_fires_within_a_day_exactly_at_that_time(minute, hour, start):
    got = parse(f"{minute} {hour} * * *").next_after(start)
    assert (got.hour, got.minute, got.second) == (hour, minute, 0)
    assert start.replace(tzinfo=UTC) < got <= start.replace(tzinfo=UTC) + timedelta(days=1)


@given(
    step=st.sampled_from([1, 2, 5, 7, 10, 15, 30]),
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1)),
)
def test_every_n_minutes_fires_on_multiples_of_n_and_skips_none(step, start):
    schedule = parse(f"*/{step} * * * *")
    got = schedule.next_after(start)
    assert got.minute % step == 0 and got.second == 0
    # No fire time between `start` and `got` was skipped.
    probe = start.replace(tzinfo=UTC, second=0, microsecond=0) + timedelta(minutes=1)
    while probe < got:
        assert probe.minute % step != 0
        probe += timedelta(minutes=1)
