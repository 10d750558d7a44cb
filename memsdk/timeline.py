"""When a memory happened: the ``time`` metadata key, its filters, and times named in queries.

A memory can carry when it happened, separate from when it was stored (``created_at``): a chat
turn from last May stored today. ``add(..., time=...)`` (or ``metadata={"time": ...}``) takes a
:class:`~datetime.datetime` or an ISO-8601 string and stores it under the metadata key
``"time"`` as UTC text of fixed width, ``2023-05-08T13:56:00Z``, so that text order is time
order and the metadata filters compare times as they compare strings::

    filters={"time": {"gte": "2023-05-01", "lt": datetime(2023, 6, 1)}}

Why a metadata key and not a column of its own: the filters, the history of changes, the
LangChain metadata and both databases already handle metadata, and a new column would need a
migration of every existing memory directory. A time filter runs inside the same SQL query as
the scope condition, like every metadata filter.

A naive datetime (no timezone) is read as UTC. Dates alone (``2023-05-08``) are midnight UTC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from memsdk.errors import InputError

__all__ = [
    "TIME_KEY",
    "named_period",
    "parse_time",
    "relative_period",
    "stored_time",
    "to_time_text",
    "with_time",
]

TIME_KEY = "time"
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_EXAMPLE = "2023-05-08T13:56:00+00:00"

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        1,
    )
    for name in names
}
_MONTH_PATTERN = "|".join(sorted(_MONTHS, key=len, reverse=True))
# "in May 2023", "May, 2023", "in 2023", "in May": a month needs a preposition or a year beside
# it, so the verb "may" ("may I ...") never reads as the month.
_MONTH_YEAR = re.compile(rf"\b({_MONTH_PATTERN})\.?,?\s+((?:19|20)\d\d)\b", re.IGNORECASE)
_IN_MONTH = re.compile(rf"\b(?:in|during|since|last|of)\s+({_MONTH_PATTERN})\b", re.IGNORECASE)
_YEAR = re.compile(r"\b((?:19|20)\d\d)\b")


def to_time_text(value: Any, what: str = "time") -> str:
    """``value`` (a datetime or an ISO-8601 string) as the stored form, ``2023-05-08T13:56:00Z``.

    Raises:
        InputError: ``value`` is neither, or the string is not an ISO-8601 time.
    """
    return parse_time(value, what).strftime(_FORMAT)


def parse_time(value: Any, what: str = "time") -> datetime:
    """``value`` (a datetime or an ISO-8601 string) as an aware UTC datetime, to the second.

    Raises:
        InputError: ``value`` is neither, or the string is not an ISO-8601 time.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InputError(
                f"{what} {value[:80]!r} is not an ISO-8601 time: give a datetime or a string "
                f"such as {_EXAMPLE!r} or '2023-05-08'"
            ) from None
    else:
        raise InputError(
            f"{what} must be a datetime or an ISO-8601 string such as {_EXAMPLE!r}, got "
            f"{type(value).__name__}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC).replace(microsecond=0)
    if moment.year < 1000:
        raise InputError(f"{what} {value!r} is before the year 1000: times from 1000 to 9999")
    return moment


def with_time(metadata: Mapping[str, Any] | None, time: Any) -> Mapping[str, Any] | None:
    """``metadata`` with ``time`` (the ``time=`` argument of add and update) under its key.

    Raises:
        InputError: both name a time.
    """
    if time is None:
        return metadata
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")
    if metadata and TIME_KEY in metadata:
        raise InputError(
            'both time= and metadata["time"] were given: pass the time once, either way'
        )
    return {**(metadata or {}), TIME_KEY: time}


def stored_time(metadata: dict[str, Any]) -> datetime | None:
    """The time a stored memory's metadata holds, or None (absent, or stored before memsdk
    read the key, in a form it cannot parse)."""
    value = metadata.get(TIME_KEY)
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, _FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def named_period(query: str, now: datetime | None = None) -> tuple[datetime, datetime] | None:
    """The period ``[start, end)`` a query names ("in May 2023", "in 2023"), or, given ``now``
    (when the question is asked), the period it names relative to that (see
    :func:`relative_period`), or None.

    A month without a year is read in the year the query also names, or relative to ``now``
    ("last May"), or not at all: guessing a year would boost the wrong one.
    """
    match = _MONTH_YEAR.search(query)
    if match:
        month, year = _MONTHS[match.group(1).lower()], int(match.group(2))
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        return start, end
    years = _YEAR.findall(query)
    if len(years) == 1:
        year = int(years[0])
        if _IN_MONTH.search(query) is None:
            return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    return relative_period(query, now) if now is not None and not years else None


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_COUNTS = {"a": 1} | {
    word: number
    for number, word in enumerate(
        ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"), 1
    )
}
_UNITS = ("day", "week", "month", "year")
_RELATIVE = re.compile(
    r"\b(?:(?P<day>yesterday|today)"
    rf"|(?P<which>last|this)\s+(?P<unit>{'|'.join(_UNITS)}|{'|'.join(_WEEKDAYS)}"
    rf"|{_MONTH_PATTERN})"
    rf"|(?P<count>\d{{1,3}}|{'|'.join(_COUNTS)})\s+(?P<units>{'|'.join(_UNITS)})s?\s+ago)\b",
    re.IGNORECASE,
)


def relative_period(query: str, now: datetime) -> tuple[datetime, datetime] | None:
    """The period ``[start, end)`` a query names relative to ``now``, in calendar units (UTC),
    or None:

    - "yesterday", "today": that day;
    - "last week" / "this week" (weeks start on Monday), "last month", "this month", "last
      year", "this year";
    - "last Monday" (the latest Monday before today), "last May" (the latest May before this
      month);
    - "3 days ago", "two weeks ago", "a month ago", "2 years ago": that day, week, month or
      year.

    Fixed English phrases, not a parser of every way to say a time: a phrase it does not know
    names no period, so nothing is boosted.
    """
    match = _RELATIVE.search(query)
    if match is None:
        return None
    now = parse_time(now, "now")
    today = now.replace(hour=0, minute=0, second=0)
    if match.group("day"):
        start = today - timedelta(days=match.group("day").lower() == "yesterday")
        return start, start + timedelta(days=1)
    if match.group("count"):
        count, unit = match.group("count").lower(), match.group("units").lower()
        back = int(count) if count.isdigit() else _COUNTS[count]
    else:
        unit, back = match.group("unit").lower(), int(match.group("which").lower() != "this")
    if unit in _WEEKDAYS:  # the latest such day before today
        ago = (today.weekday() - _WEEKDAYS.index(unit) - 1) % 7 + 1
        start = today - timedelta(days=ago)
        return start, start + timedelta(days=1)
    if unit in _MONTHS:  # the latest such month before this one
        month = _MONTHS[unit]
        year = now.year - (month >= now.month)
        return _month(year, month), _month(year, month + 1)
    if unit == "day":
        start = today - timedelta(days=back)
        return start, start + timedelta(days=1)
    if unit == "week":
        start = today - timedelta(days=today.weekday() + 7 * back)
        return start, start + timedelta(days=7)
    if unit == "month":
        months = now.year * 12 + now.month - 1 - back
        return _month(months // 12, months % 12 + 1), _month(months // 12, months % 12 + 2)
    return _month(now.year - back, 1), _month(now.year - back + 1, 1)


def _month(year: int, month: int) -> datetime:
    """The first instant of ``month`` of ``year``; month 13 is January of the next year."""
    return datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=UTC)
