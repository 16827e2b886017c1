"""Logical dates: D is a calendar day in the configured time zone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"date {text!r} is not YYYY-MM-DD") from None


def date_range(start: dt.date, until: dt.date) -> Iterator[dt.date]:
    """Every date from ``start`` to ``until`` inclusive."""
    if until < start:
        raise ValueError(f"--until {until} is before --date {start}")
    day = start
    while day <= until:
        yield day
        day += dt.timedelta(days=1)


def day_bounds(day: dt.date, timezone: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of ``day`` as UTC datetimes: midnights in ``timezone``."""
    zone = ZoneInfo(timezone)
    start = dt.datetime.combine(day, dt.time(0), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def epoch_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)
