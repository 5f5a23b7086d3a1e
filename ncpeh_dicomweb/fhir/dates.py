"""The ``date`` search parameter type (FHIR R4 search, http://hl7.org/fhir/R4/search.html#date)
matched against StudyDate / StudyTime / TimezoneOffsetFromUTC, and pushed down as a StudyDate
range (PS3.4 C.2.2.2.5).

Both sides are ranges (R4 search #date: "the date parameter format ... represents a range"):
a search value spans every instant its precision leaves open (``2024`` is all of 2024,
``2024-06-01T10:00`` a whole minute), and so does the study (StudyDate alone is a whole day;
StudyTime ``1015`` a whole minute). Each prefix compares the two ranges as R4 search #prefix
defines it; ``ap`` widens the search value by 10% of its distance from now (R4's suggestion).

Time zones. A search value with a time zone (``Z``, ``+02:00``) names instants: the study's
instants are StudyDate + StudyTime at TimezoneOffsetFromUTC (0008,0201), or in the site's time
zone when the PACS gives no offset; with neither, the time of day means nothing and the study
spans its whole day (as the mapping then writes ``started`` as a date alone). A search value
without a time zone (every value without a time, and a time without a zone) is a wall-clock
date or time where the study was made, compared with StudyDate + StudyTime as written. A
``+`` of an offset that arrives as a space (an unencoded ``+`` in a query string decodes to a
space) is read as ``+``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, Final

from ..dicomweb import vr_values
from ..dicomweb.dicomjson import first_value
from ..errors import BadRequest

__all__ = [
    "PREFIXES",
    "DateValue",
    "StudyTimes",
    "date_matches",
    "parse_date",
    "study_date_range",
    "study_times",
]

PREFIXES: Final = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

Span = tuple[datetime, datetime]  # first and last instant (inclusive, to the microsecond)

_DATE = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<mo>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?"
    r"(?P<tz>Z|[+\- ][0-9]{2}:[0-9]{2})?)?)?)?"
)
_TM = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")
_DOTTED_DA = re.compile(r"[0-9]{4}\.[0-9]{2}\.[0-9]{2}")  # ACR-NEMA (PS3.5 6.2 DA)
_OFFSET = re.compile(r"[+-][0-9]{4}")
_MICRO = timedelta(microseconds=1)
_AP_SHARE = 0.1  # R4 search #prefix: "10% of the gap between now and the date"
# PS3.3 C.12.1.1.8: TimezoneOffsetFromUTC lies in -12:00 .. +14:00, so the wall-clock date of
# an instant at the study's place is at most this far from its UTC date.
_WEST, _EAST = timedelta(hours=12), timedelta(hours=14)
_TIMEZONE_OFFSET_FROM_UTC = "00080201"
_STUDY_DATE, _STUDY_TIME = "00080020", "00080030"


@dataclass(frozen=True, slots=True)
class DateValue:
    """One value of a ``date`` parameter: its prefix and the range its precision spans.

    ``low``/``high`` are aware when the value names a time zone, naive (wall clock)
    otherwise. ``slack`` is the widening of ``ap`` (zero for the other prefixes).
    """

    prefix: str
    text: str
    low: datetime
    high: datetime
    slack: timedelta = timedelta(0)

    @property
    def aware(self) -> bool:
        return self.low.tzinfo is not None

    def normalised(self) -> str:
        """The value for a ``self`` link: ``eq`` left implicit, prefixes lower case."""
        return self.text if self.prefix == "eq" else self.prefix + self.text


@dataclass(frozen=True, slots=True)
class StudyTimes:
    """When a study started, as a range: wall clock (naive) and instants (aware)."""

    wall: Span
    instant: Span


def parse_date(raw: str, parameter: str, *, now: datetime) -> DateValue:
    """A ``date`` search value ``[prefix]YYYY[-MM[-DD[Thh:mm[:ss[.f]][Z|(+|-)hh:mm]]]]``.

    R4 search #date and #prefix. The hour needs its minutes (R4: "the minutes SHALL be
    present if an hour is present"). Malformed or impossible values (month 13, 30 February,
    hour 24) raise :class:`BadRequest` naming ``parameter``.
    """
    prefix, text = "eq", raw
    if raw[:2] in PREFIXES:
        prefix, text = raw[:2], raw[2:]
    match = _DATE.fullmatch(text)
    span = None if match is None else _span(match)
    if match is None or span is None:
        raise BadRequest(
            f"parameter {parameter!r}: {raw[:80]!r} is not a date "
            "([prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|+hh:mm]]]], prefixes "
            f"{' '.join(PREFIXES)})",
            detail={"parameter": parameter, "value": raw[:80]},
        )
    if match["tz"] is not None and match["tz"][0] == " ":
        text = text.replace(" ", "+")
    slack = timedelta(0)
    if prefix == "ap":
        reference = now if span[0].tzinfo is not None else now.replace(tzinfo=None)
        slack = abs(reference - span[0]) * _AP_SHARE
    return DateValue(prefix, text, span[0], span[1], slack)


def _span(match: re.Match[str]) -> Span | None:
    """The range of a parsed value, through the DICOM DT parser (PS3.5 6.2, same precision
    rules: absent components span their whole range)."""
    parts = (match[k] for k in ("y", "mo", "d", "h", "mi", "s"))
    dt = "".join(p for p in parts if p is not None)
    if match["f"] is not None:
        dt += "." + match["f"][:6]
    zone = match["tz"]
    if zone is not None:
        dt += (
            "+0000" if zone == "Z" else ("+" if zone[0] == " " else zone[0]) + zone[1:3] + zone[4:]
        )
    return vr_values.temporal_span("DT", dt)


def study_times(study: dict[str, Any], site_tz: tzinfo | None) -> StudyTimes | None:
    """When ``study`` (DICOM JSON) started, or None without a valid StudyDate.

    As the mapping writes ``started`` (:func:`.codes.fhir_datetime`): StudyTime (PS3.5 TM,
    ACR-NEMA colons accepted) narrows the day to its precision and TimezoneOffsetFromUTC
    (PS3.3 C.12.1.1.8, ``+HHMM``) places it; without an offset ``site_tz`` does; without
    either the time is dropped and the study spans its whole day (in UTC as an instant).
    An invalid StudyTime is ignored.
    """
    day = first_value(study, _STUDY_DATE)
    if isinstance(day, str) and _DOTTED_DA.fullmatch(day.strip()):
        day = day.strip().replace(".", "")
    if not isinstance(day, str) or vr_values.temporal_span("DA", day) is None:
        return None
    time = first_value(study, _STUDY_TIME)
    time = time.strip().replace(":", "") if isinstance(time, str) else ""
    offset = first_value(study, _TIMEZONE_OFFSET_FROM_UTC)
    offset = offset.strip() if isinstance(offset, str) and _OFFSET.fullmatch(offset.strip()) else ""
    if not (offset or site_tz is not None) or not _TM.fullmatch(time):
        time = ""
    wall = vr_values.temporal_span("DT", day + time) or vr_values.temporal_span("DT", day)
    if wall is None:
        return None
    placed = vr_values.temporal_span("DT", day + time + offset) if offset else None
    zone = site_tz or UTC
    instant = placed or (wall[0].replace(tzinfo=zone), wall[1].replace(tzinfo=zone))
    return StudyTimes(wall, instant)


def _eq(s: DateValue, t: Span) -> bool:
    return s.low <= t[0] and t[1] <= s.high


# R4 search #prefix, with s the range of the search value and t that of the study:
# "the range above the search value" is every instant after s.high, "below" before s.low.
_PREFIX_TESTS: dict[str, Callable[[DateValue, Span], bool]] = {
    "eq": _eq,  # the range of the search value fully contains the range of the target
    "ne": lambda s, t: not _eq(s, t),  # ... does not fully contain ...
    "gt": lambda s, t: t[1] > s.high,  # the range above the search value intersects the target
    "lt": lambda s, t: t[0] < s.low,  # the range below ... intersects the target
    "ge": lambda s, t: t[1] > s.high or _eq(s, t),  # gt, or eq
    "le": lambda s, t: t[0] < s.low or _eq(s, t),  # lt, or eq
    "sa": lambda s, t: t[0] > s.high,  # no overlap, the range above contains the target
    "eb": lambda s, t: t[1] < s.low,  # no overlap, the range below contains the target
    "ap": lambda s, t: t[0] <= s.high + s.slack and t[1] >= s.low - s.slack,
}


def date_matches(value: DateValue, times: StudyTimes | None) -> bool:
    """True if the study's start matches ``value`` (R4 search #prefix).

    A study without a start matches no value, whatever the prefix (``ne`` included: R4 search
    matches values, and there is none).
    """
    if times is None:
        return False
    return _PREFIX_TESTS[value.prefix](value, times.instant if value.aware else times.wall)


# The instants a study may start at and still match one value: (first, last), None = open.
_CANDIDATES: dict[str, Callable[[DateValue], tuple[datetime | None, datetime | None]]] = {
    "eq": lambda s: (s.low, s.high),
    "ne": lambda s: (None, None),
    "gt": lambda s: (s.high + _MICRO, None),
    "sa": lambda s: (s.high + _MICRO, None),
    "ge": lambda s: (s.low, None),
    "lt": lambda s: (None, s.low - _MICRO),
    "eb": lambda s: (None, s.low - _MICRO),
    "le": lambda s: (None, s.high),
    "ap": lambda s: (s.low - s.slack, s.high + s.slack),
}

DayRange = tuple[date | None, date | None]


def _days(value: DateValue) -> DayRange:
    """The StudyDate values a study matching ``value`` may have, at most whole days wider."""
    try:
        first, last = _CANDIDATES[value.prefix](value)
    except OverflowError:  # ap far from now, gt9999: leave that side open
        return (None, None)
    return (_day(first, -_WEST), _day(last, _EAST))


def _day(instant: datetime | None, reach: timedelta) -> date | None:
    if instant is None:
        return None
    if instant.tzinfo is None:
        return instant.date()
    try:  # an instant falls on one of several dates where the study was made
        return (instant.astimezone(UTC).replace(tzinfo=None) + reach).date()
    except OverflowError:
        return None


def study_date_range(clauses: Iterable[Iterable[DateValue]]) -> DayRange | None:
    """The tightest StudyDate range implied by ``started`` clauses (AND of ORs), in whole days.

    Each clause gives the hull of its values' day ranges; the clauses intersect. None when
    they cannot all hold (nothing can match); ``(None, None)`` when nothing narrows StudyDate.
    The exact time and ``ne`` are checked in the gateway (:func:`date_matches`).
    """
    low: date | None = None
    high: date | None = None
    for clause in clauses:
        ranges = [_days(value) for value in clause]
        if not ranges:
            continue
        lows, highs = [r[0] for r in ranges], [r[1] for r in ranges]
        clause_low = None if None in lows else min(d for d in lows if d is not None)
        clause_high = None if None in highs else max(d for d in highs if d is not None)
        if clause_low is not None:
            low = clause_low if low is None else max(low, clause_low)
        if clause_high is not None:
            high = clause_high if high is None else min(high, clause_high)
    if low is not None and high is not None and low > high:
        return None
    return (low, high)
