"""Schedules of LimeBackupSchedule: a 5-field cron subset, a few @-macros and `@every D`, and
the next time each one fires (pure, UTC).

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12), day of week (0-7, 0 and
7 are Sunday). Each field is `*`, a number, a range `a-b`, a list `a,b,c`, or any of these with
a step (`*/15`, `10-50/10`). As in Vixie cron, when both day fields are restricted a day
matches if either does. Names (`MON`, `JAN`), `L`, `W`, `#` and `?` are not supported.
Macros: `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`, and
`@every D` (D = `30s`, `10m`, `2h`; at least EVERY_MIN_S) counted from the previous run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EVERY_MIN_S = 10
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = re.compile(r"^@every\s+(\d+)([smh])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# (name, low, high) of the five fields
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))  # fmt: skip
# Far enough for any valid expression (Feb 29 on a given weekday recurs within 28 years).
_HORIZON_DAYS = 366 * 29


class CronError(ValueError):
    """A schedule this module cannot read; the message says which part and why."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: either `every_s` (an interval) or the five sets of allowed values."""

    text: str
    every_s: int | None = None
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()  # 0 = Sunday .. 6 = Saturday
    day_restricted: bool = False
    weekday_restricted: bool = False

    def next_after(self, after: datetime) -> datetime:
        """The first time strictly after `after` that the schedule fires (UTC, whole
        seconds). For `@every`, `after` is the previous run (or the schedule's creation)."""
        after = _utc(after)
        if self.every_s is not None:
            return after.replace(microsecond=0) + timedelta(seconds=self.every_s)
        t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        end = t + timedelta(days=_HORIZON_DAYS)
        while t < end:
            if t.month not in self.months:
                t = _first_of_next_month(t)
                continue
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0)
                continue
            if t.minute not in self.minutes:
                t += timedelta(minutes=1)
                continue
            return t
        raise CronError(f"{self.text!r} never fires")

    def _day_matches(self, t: datetime) -> bool:
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return dom or dow
        return dom and dow


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _first_of_next_month(t: datetime) -> datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month, day=1, hour=0, minute=0)


def _number(text: str, name: str, low: int, high: int) -> int:
    if not text.isdigit():
        raise CronError(f"{name}: {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name}: {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            step = _number(step_text, name, 1, high - low + 1)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, stop = _number(a, name, low, high), _number(b, name, low, high)
            if start > stop:
                raise CronError(f"{name}: range {base!r} runs backwards")
        else:
            start = _number(base, name, low, high)
            stop = high if step_text else start  # `5/15` means 5, 20, 35, 50
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def parse(text: str) -> Schedule:
    """A Schedule, or CronError naming what is wrong."""
    spec = " ".join(text.split())
    every = _EVERY.match(spec)
    if every is not None:
        seconds = int(every.group(1)) * _UNIT_S[every.group(2)]
        if seconds < EVERY_MIN_S:
            raise CronError(f"@every needs at least {EVERY_MIN_S}s, got {every.group(0)[7:]}")
        return Schedule(text, every_s=seconds)
    if spec.startswith("@"):
        if spec not in _MACROS:
            raise CronError(
                f"unknown macro {spec!r}: use {', '.join(sorted(_MACROS))} or @every <30s|10m|2h>"
            )
        spec = _MACROS[spec]
    parts = spec.split(" ")
    if len(parts) != 5:
        raise CronError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    sets = [_field(p, *f) for p, f in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    schedule = Schedule(
        text,
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        day_restricted=parts[2] != "*" and not parts[2].startswith("*/"),
        weekday_restricted=parts[4] != "*" and not parts[4].startswith("*/"),
    )
    schedule.next_after(datetime(2001, 1, 1, tzinfo=UTC))  # `0 0 31 2 *` never fires: say so
    return schedule


def due(schedule: Schedule, last: datetime, now: datetime) -> datetime | None:
    """The newest fire time in (last, now], or None when none is due: a schedule that missed
    several runs (the operator was down) runs once, for the newest one."""
    last, now = _utc(last).replace(microsecond=0), _utc(now)
    if schedule.every_s is not None:
        runs = int((now - last).total_seconds()) // schedule.every_s
        return last + timedelta(seconds=runs * schedule.every_s) if runs >= 1 else None
    fire = schedule.next_after(last)
    if fire > now:
        return None
    while True:
        following = schedule.next_after(fire)
        if following > now:
            return fire
        fire = following
